//! API tests: the real server on 127.0.0.1, port 0, with a fresh database per test (SQLite by
//! default; PostgreSQL with `ATLAS_TEST_BACKEND=postgres`), driven over HTTP with a Digest
//! client.

#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

mod auth;
mod cli;
mod helpers;
mod integrations;
mod lifecycle;
#[path = "../common/pg.rs"]
mod pg;
mod postgres;
mod robustness;
mod secrets;
mod seed;
