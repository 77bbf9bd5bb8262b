//! The pure domain: identifiers, integration types and their field rules, masking.
//!
//! Nothing here does I/O or knows about HTTP or SQL, so every rule is unit-tested in isolation.

pub mod ids;
pub mod integration;
pub mod mask;
