//! Master-key rotation: re-encrypts every sealed value under a new key.
//! (Filled in with the secrets-at-rest work.)

use serde_json::Value;

use crate::crypto::{Keyring, MasterKey};
use crate::store::Store;

/// Re-encrypts everything under `new_key`.
pub async fn rotate(
    _store: &dyn Store,
    _keyring: &Keyring,
    _new_key: MasterKey,
) -> anyhow::Result<Value> {
    anyhow::bail!("key rotation is not available yet")
}
