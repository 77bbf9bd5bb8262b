//! atlas-integrations: a server that speaks MongoDB Atlas's Administration API for third-party
//! service integrations (v1.0 and v2), behind Atlas's HTTP Digest API-key authentication,
//! on embedded SQLite or shared PostgreSQL, with secrets encrypted at rest.

pub mod admin;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod http;
pub mod rotation;
pub mod startup;
pub mod store;
pub mod telemetry;
