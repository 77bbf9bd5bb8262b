//! Master-key rotation: re-encrypts every sealed value under a new key while servers keep
//! serving.
//!
//! 1. `keys rotate` stores the new key in the database sealed under the current one
//!    (`pending_key`). Every server polls for it and, from then on, decrypts with both keys
//!    and encrypts with the new one ([`LiveKeys`]).
//! 2. It re-seals every value still under another key, compare-and-swap per row, pass after
//!    pass until a pass finds nothing left (rows a server wrote meanwhile are caught by the
//!    next pass).
//! 3. It moves the key check to the new key and removes `pending_key`. From then on a server
//!    must start with the new key.
//!
//! An interrupted rotation loses nothing: every row is readable with one of the two keys,
//! servers started with the old key pick up `pending_key` again, and running the same command
//! again resumes where it stopped.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::auth::private_key_aad;
use crate::crypto::{Keyring, MasterKey};
use crate::http::integrations::config_aad;
use crate::startup::{meta, meta_aad};
use crate::store::{SealedRef, Store};

/// The keyring in force, replaced when a rotation starts.
#[derive(Debug)]
pub struct LiveKeys {
    ring: RwLock<Keyring>,
}

impl LiveKeys {
    /// Starts with `ring`.
    pub fn new(ring: Keyring) -> Arc<Self> {
        Arc::new(Self {
            ring: RwLock::new(ring),
        })
    }

    /// The keyring to use now (a cheap clone).
    pub fn ring(&self) -> Keyring {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, ring: Keyring) {
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
    }

    /// Adopts a pending rotation's new key, if there is one this ring does not have yet.
    pub async fn adopt_pending(&self, store: &dyn Store) -> anyhow::Result<bool> {
        let Some(sealed) = store.meta(meta::PENDING_KEY).await? else {
            return Ok(false);
        };
        let ring = self.ring();
        if Keyring::key_id_of(&sealed).is_none_or(|id| !ring.contains(id)) {
            // Sealed under a key this server does not have: nothing it can do.
            return Ok(false);
        }
        let new_key = open_pending(&ring, &sealed)?;
        if new_key.id() == ring.current_id() {
            return Ok(false);
        }
        let next = ring.rotated_to(&new_key);
        tracing::info!(key_id = %next.current_id(), "adopted the new master key of a rotation in progress");
        self.set(next);
        Ok(true)
    }
}

fn open_pending(ring: &Keyring, sealed: &[u8]) -> anyhow::Result<MasterKey> {
    let plain = ring
        .decrypt(&meta_aad(meta::PENDING_KEY), sealed)
        .context("cannot decrypt the pending master key")?;
    let text = std::str::from_utf8(plain.expose_secret()).context("pending key is not text")?;
    Ok(MasterKey::from_base64(text)?)
}

/// Associated data of a sealed value.
fn aad(at: &SealedRef) -> Option<Vec<u8>> {
    match at {
        SealedRef::Integration { group, kind } => Some(config_aad(*group, *kind).to_vec()),
        SealedRef::ApiKey { .. } => None,
        SealedRef::Meta { name } if name == meta::NONCE_KEY => Some(meta_aad(name)),
        SealedRef::Meta { .. } => None,
    }
}

/// How long a rotation waits for running servers to adopt the new key.
const ADOPTION_WAIT: Duration = Duration::from_millis(1500);

/// How far a rotation got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Values re-sealed by this run.
    pub resealed: usize,
    /// Whether the rotation finished (key check moved, pending key removed).
    pub complete: bool,
}

/// Rotates to `new_key`; `stop_after` (tests) interrupts after that many values.
pub async fn rotate_with_limit(
    store: &dyn Store,
    current: &Keyring,
    new_key: MasterKey,
    stop_after: Option<usize>,
) -> anyhow::Result<Progress> {
    let new_id = new_key.id();
    if let Some(sealed) = store.meta(meta::PENDING_KEY).await? {
        let pending = open_pending(current, &sealed)?;
        if pending.id() != new_id {
            bail!(
                "another rotation, to key {}, is in progress: finish it first (run keys rotate \
                 with that key)",
                pending.id()
            );
        }
    } else {
        if current.current_id() == new_id {
            bail!("the database is already encrypted with key {new_id}");
        }
        let sealed = current.encrypt(
            &meta_aad(meta::PENDING_KEY),
            new_key.to_base64().expose_secret().as_bytes(),
        );
        store.put_meta_if_absent(meta::PENDING_KEY, &sealed).await?;
        // Let every server adopt the new key (they poll every quarter second by default)
        // before any row is sealed under it.
        tokio::time::sleep(ADOPTION_WAIT).await;
    }
    let ring = current.rotated_to(&new_key);
    let mut resealed = 0;
    for pass in 0.. {
        let mut changed = 0;
        for (at, sealed) in store.sealed_values().await? {
            if matches!(&at, SealedRef::Meta { name } if name != meta::NONCE_KEY) {
                continue;
            }
            if Keyring::key_id_of(&sealed) == Some(new_id) {
                continue;
            }
            if stop_after.is_some_and(|limit| resealed >= limit) {
                return Ok(Progress {
                    resealed,
                    complete: false,
                });
            }
            let aad = match (&at, aad(&at)) {
                (_, Some(aad)) => aad,
                (SealedRef::ApiKey { id }, None) => {
                    let key = store
                        .list_api_keys()
                        .await?
                        .into_iter()
                        .find(|k| k.id == *id)
                        .ok_or_else(|| anyhow!("API key {id} vanished during rotation"))?;
                    private_key_aad(&key.public_key)
                }
                (_, None) => continue,
            };
            let plain = ring
                .decrypt(&aad, &sealed)
                .with_context(|| format!("cannot decrypt {at:?}: it stays as it is"))?;
            let fresh = ring.encrypt(&aad, plain.expose_secret());
            if store.reseal(&at, &sealed, &fresh).await? {
                resealed += 1;
                changed += 1;
            }
        }
        if changed == 0 && pass > 0 {
            break;
        }
        if changed == 0 {
            // Give servers that have not yet seen the pending key one refresh to adopt it,
            // then make sure nothing was written under the old key meanwhile.
            tokio::time::sleep(ADOPTION_WAIT).await;
        }
    }
    let old_check = store
        .meta(meta::KEY_CHECK)
        .await?
        .ok_or_else(|| anyhow!("the database has no key check"))?;
    let new_check = ring.key_check();
    if !store
        .reseal(
            &SealedRef::Meta {
                name: meta::KEY_CHECK.to_owned(),
            },
            &old_check,
            &new_check,
        )
        .await?
    {
        bail!("the key check changed during rotation; run the rotation again");
    }
    store.delete_meta(meta::PENDING_KEY).await?;
    Ok(Progress {
        resealed,
        complete: true,
    })
}

/// `keys rotate`: rotates to `new_key` and reports what it did.
pub async fn rotate(
    store: &dyn Store,
    current: &Keyring,
    new_key: MasterKey,
) -> anyhow::Result<Value> {
    let new_id = new_key.id();
    let progress = rotate_with_limit(store, current, new_key, None).await?;
    Ok(json!({
        "rotated": progress.complete,
        "resealed": progress.resealed,
        "keyId": new_id.to_string(),
        "next": "restart every server with the new key (--master-key-file or ATLAS_INTEGRATIONS_MASTER_KEY)",
    }))
}
