//! # Secrets at rest: AES-256-GCM with key rotation
//!
//! This module seals the secrets the server stores in its database
//! (integration credentials, tokens and the like) so that a copy of the
//! database alone does not reveal them.
//!
//! ## Pieces
//!
//! - [`MasterKey`]: 32 random bytes, kept in a zeroize-on-drop box. It is
//!   written to and read from a key file as standard base64 text
//!   ([`MasterKey::write_new_file`], [`MasterKey::load_file`]) or parsed from
//!   an environment variable ([`MasterKey::from_base64`]).
//! - [`KeyId`]: a 4-byte public name of a master key, derived from the key
//!   (first 4 bytes of HMAC-SHA256(key, `"atlas-integrations key id"`)). It is
//!   shown as 8 lowercase hex digits and is safe to log.
//! - [`Keyring`]: the current key (used to encrypt) plus any previous keys
//!   (used only to decrypt), for key rotation.
//!
//! ## Sealed format
//!
//! `[version 0x01][key id: 4 bytes][nonce: 12 random bytes][ciphertext][tag: 16 bytes]`
//!
//! The caller's `aad` (associated data) is authenticated but not stored: the
//! same `aad` must be given to decrypt. Use something that names the row and
//! column (for example `b"integrations:42:api_token"`), so that a sealed value
//! copied into another row fails to decrypt instead of being accepted.
//!
//! The header bytes are not part of the associated data; changing them still
//! makes decryption fail (an unknown version is [`CryptoError::Malformed`], an
//! unknown key id is [`CryptoError::UnknownKey`], and any other key or nonce
//! fails authentication).
//!
//! ## Key rotation
//!
//! Start the server with the new key as current and the old one as previous
//! ([`Keyring::with_previous`]); everything still decrypts, new writes use the
//! new key. [`Keyring::key_id_of`] tells which rows still name an old key so
//! they can be re-sealed; once none do, the old key can be dropped.
//!
//! A key-check value ([`Keyring::key_check`]) stored next to the data lets the
//! server refuse to start with the wrong key ([`Keyring::verify_key_check`])
//! rather than fail later on every read.
//!
//! ## Limits
//!
//! - Nonces are random, so one key should seal at most about 2^32 values;
//!   rotate well before that.
//! - Key ids are 4 bytes: two different keys share an id with probability
//!   about 2^-32. The keyring then tries every key with that id.
//! - Memory hygiene is best effort: master keys and decrypted plaintext are
//!   wiped when dropped, but the AES key schedule kept by a [`Keyring`] and
//!   transient copies made by the operating system or allocator are not.
//! - The key file is protected only by file permissions (mode 0600 on unix);
//!   nothing here stops the process owner or root from reading it.
//! - Errors and `Debug` output never contain key material, key text or
//!   plaintext; they name keys only by [`KeyId`].

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce, Tag};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox, SecretSlice, SecretString};
use sha2::Sha256;

/// Length of a master key in bytes (AES-256).
const KEY_LEN: usize = 32;
/// Format version byte written first in every sealed value.
const VERSION: u8 = 0x01;
const ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes before the ciphertext: version, key id, nonce.
const HEADER_LEN: usize = 1 + ID_LEN + NONCE_LEN;
/// The shortest valid sealed value (empty plaintext).
const MIN_SEALED_LEN: usize = HEADER_LEN + TAG_LEN;
/// Label for deriving a [`KeyId`] from a key.
const KEY_ID_LABEL: &[u8] = b"atlas-integrations key id";
/// Plaintext of the key-check value.
const KEY_CHECK_PLAINTEXT: &[u8] = b"atlas-integrations key check";
/// Associated data of the key-check value.
const KEY_CHECK_AAD: &[u8] = b"key-check";
/// A key file larger than this is not a key file; do not read it all.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// 4-byte identifier of a master key, derived from the key itself: first 4
/// bytes of HMAC-SHA256(key, "atlas-integrations key id").
///
/// It reveals nothing useful about the key and is safe to log. Displayed as 8
/// lowercase hex digits, e.g. `1a2b3c4d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Key ids shown as `a, b, c` (for `Debug` output).
struct KeyIds<I>(I);

impl<I: Iterator<Item = KeyId> + Clone> fmt::Display for KeyIds<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.clone().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

/// A list of key ids shown as "key a" or "keys a, b" in messages.
struct KeyList<'a>(&'a [KeyId]);

impl fmt::Display for KeyList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("no key"),
            [one] => write!(f, "key {one}"),
            many => write!(f, "keys {}", KeyIds(many.iter().copied())),
        }
    }
}

/// Errors from sealing, unsealing and key handling.
///
/// Messages are meant for an operator. None of them contains key material,
/// key text or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The sealed value names a key this server does not have.
    #[error(
        "an encrypted value was sealed with master key {0}, which this server does not have; \
         start the server with that key as its current or a previous master key"
    )]
    UnknownKey(KeyId),
    /// Authentication failed: tampered data, wrong `aad` (e.g. a value moved
    /// to another row), or a different key that happens to share the key id.
    #[error(
        "an encrypted value failed authentication: it was altered, copied from another record, \
         or sealed with a different key"
    )]
    Tampered,
    /// The sealed value is too short or has an unknown version byte.
    #[error("an encrypted value is malformed: too short or of an unknown format version")]
    Malformed,
    /// The database was encrypted under another master key.
    #[error(
        "the master key does not match this database: the database was encrypted with key \
         {expected}, this server has {}; start with the right --master-key-file or \
         ATLAS_INTEGRATIONS_MASTER_KEY",
        KeyList(.have)
    )]
    WrongKey {
        /// Id of the key the database's key-check value was sealed with.
        expected: KeyId,
        /// Ids of the keys this server has (current first).
        have: Vec<KeyId>,
    },
    /// The master key text is invalid. The text itself is never echoed.
    #[error(
        "invalid master key text: {0}; expected standard base64 of exactly 32 bytes \
         (44 characters)"
    )]
    BadKeyText(&'static str),
    /// Reading or creating a key file failed.
    #[error("cannot use master key file {}", .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A 32-byte AES-256 master key.
///
/// The bytes live in a [`SecretBox`] and are wiped on drop. `Debug` prints
/// only the [`KeyId`].
pub struct MasterKey {
    bytes: SecretBox<[u8; KEY_LEN]>,
    id: KeyId,
}

impl MasterKey {
    /// Generates a new random key from the operating system's RNG.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn generate() -> Self {
        Self::from_secret(SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| {
            OsRng.fill_bytes(k);
        }))
    }

    fn from_secret(bytes: SecretBox<[u8; KEY_LEN]>) -> Self {
        let id = derive_key_id(bytes.expose_secret());
        Self { bytes, id }
    }

    /// Parses a key from standard base64 text (with padding). Surrounding
    /// whitespace and newlines are ignored; the text must decode to exactly
    /// 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CryptoError::BadKeyText("it is empty"));
        }
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text)
                .map_err(|_| CryptoError::BadKeyText("it is not valid standard base64"))?,
        );
        if decoded.len() != KEY_LEN {
            return Err(CryptoError::BadKeyText("it does not decode to 32 bytes"));
        }
        Ok(Self::from_secret(SecretBox::init_with_mut(
            |k: &mut [u8; KEY_LEN]| k.copy_from_slice(&decoded),
        )))
    }

    /// The key as standard base64 text (44 characters, no newline).
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.bytes.expose_secret()))
    }

    /// The key's public identifier.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Reads a key file holding the base64 text (as written by
    /// [`MasterKey::write_new_file`]; a trailing newline is fine).
    pub fn load_file(path: &Path) -> Result<Self, CryptoError> {
        let io_err = |source| CryptoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = fs::File::open(path).map_err(io_err)?;
        let mut buf = Zeroizing::new(Vec::with_capacity(128));
        // Read one byte past the limit to notice an oversized file.
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut buf)
            .map_err(io_err)?;
        if buf.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(CryptoError::BadKeyText(
                "the key file is far too large to hold a key",
            ));
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|_| CryptoError::BadKeyText("it is not valid standard base64"))?;
        Self::from_base64(text)
    }

    /// Writes a new key file readable only by the owner (mode 0600 on unix,
    /// set at creation: OpenOptions create_new + mode), never overwriting an
    /// existing file (error if it exists).
    ///
    /// The file holds the base64 text and a newline. If writing fails after
    /// the file was created, the partial file is removed.
    pub fn write_new_file(&self, path: &Path) -> Result<(), CryptoError> {
        let io_err = |source| CryptoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io_err)?;
        let text = self.to_base64();
        let written = file
            .write_all(text.expose_secret().as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all());
        if let Err(source) = written {
            drop(file);
            // Best effort: a half-written key file must not be mistaken for a key.
            let _ = fs::remove_file(path);
            return Err(io_err(source));
        }
        Ok(())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &format_args!("{}", self.id))
            .finish()
    }
}

fn derive_key_id(key: &[u8; KEY_LEN]) -> KeyId {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(KEY_ID_LABEL);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&digest[..ID_LEN]);
    KeyId(id)
}

/// One key of a keyring, ready to use.
#[derive(Clone)]
struct RingKey {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl RingKey {
    fn new(key: &MasterKey) -> Self {
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.bytes.expose_secret()));
        Self { id: key.id, cipher }
    }
}

/// The keys the server can decrypt with; encrypts with `current`.
///
/// Cheap to clone (shared behind an [`Arc`]), `Send` and `Sync`. `Debug`
/// prints key ids only.
#[derive(Clone)]
pub struct Keyring {
    /// Current key first, then previous keys in the order added.
    keys: Arc<Vec<RingKey>>,
}

impl Keyring {
    /// A keyring that encrypts and decrypts with `current`.
    pub fn new(current: MasterKey) -> Self {
        Self {
            keys: Arc::new(vec![RingKey::new(&current)]),
        }
    }

    /// Also decrypt with `old` (a previous master key). Encryption keeps using
    /// the current key. Adding a key that is already in the ring (same bytes)
    /// changes nothing.
    pub fn with_previous(mut self, old: MasterKey) -> Self {
        let old = RingKey::new(&old);
        // A key id is derived from the key, so the same key always has the same
        // id; a different key with the same id (a 2^-32 chance) is still added
        // and tried, but identical keys are not duplicated. Comparing ciphers
        // is not possible, so compare by sealing a probe with the new key.
        let probe = seal_with(&old, KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT);
        let duplicate = self
            .keys
            .iter()
            .any(|k| k.id == old.id && open_with(k, KEY_CHECK_AAD, &probe).is_ok());
        if !duplicate {
            Arc::make_mut(&mut self.keys).push(old);
        }
        self
    }

    /// A ring that encrypts with `new` and still decrypts with every key of this one (the
    /// state of a rotation in progress). If `new` is already in the ring, it just becomes
    /// current.
    pub fn rotated_to(&self, new: &MasterKey) -> Self {
        let first = RingKey::new(new);
        let probe = seal_with(&first, KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT);
        let mut keys = vec![first];
        keys.extend(
            self.keys
                .iter()
                .filter(|k| !(k.id == new.id && open_with(k, KEY_CHECK_AAD, &probe).is_ok()))
                .cloned(),
        );
        Self {
            keys: Arc::new(keys),
        }
    }

    /// Id of the key used for encryption.
    pub fn current_id(&self) -> KeyId {
        self.current().id
    }

    /// Whether the ring has a key with this id.
    pub fn contains(&self, id: KeyId) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    /// Ids of all keys in the ring, current first.
    pub fn ids(&self) -> Vec<KeyId> {
        let mut ids: Vec<KeyId> = Vec::with_capacity(self.keys.len());
        for key in self.keys.iter() {
            if !ids.contains(&key.id) {
                ids.push(key.id);
            }
        }
        ids
    }

    fn current(&self) -> &RingKey {
        // `new` always puts the current key first and nothing removes keys.
        &self.keys[0]
    }

    /// Encrypts `plaintext` with the current key.
    ///
    /// Format: [version byte 0x01][key id: 4][nonce: 12 random bytes][AES-256-GCM
    /// ciphertext + 16-byte tag]; `aad` is bound as associated data.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails, or if
    /// `plaintext` or `aad` exceeds AES-GCM's limit (about 64 GiB).
    pub fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(self.current(), aad, plaintext)
    }

    /// Decrypts a value sealed by [`Keyring::encrypt`] with any key of the
    /// ring, checking that it was sealed with the same `aad`.
    ///
    /// Errors: [`CryptoError::Malformed`] if too short or of an unknown
    /// version, [`CryptoError::UnknownKey`] if it names a key the ring lacks,
    /// [`CryptoError::Tampered`] if authentication fails. Never returns
    /// unauthenticated data.
    pub fn decrypt(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretSlice<u8>, CryptoError> {
        let id = Self::key_id_of(sealed).ok_or(CryptoError::Malformed)?;
        let mut candidates = self.keys.iter().filter(|k| k.id == id).peekable();
        if candidates.peek().is_none() {
            return Err(CryptoError::UnknownKey(id));
        }
        for key in candidates {
            if let Ok(plain) = open_with(key, aad, sealed) {
                return Ok(plain);
            }
        }
        Err(CryptoError::Tampered)
    }

    /// The key id a sealed value names, or `None` if it is too short or of an
    /// unknown version. Does not check authenticity; use it to find values
    /// still sealed under an old key.
    pub fn key_id_of(sealed: &[u8]) -> Option<KeyId> {
        if sealed.len() < MIN_SEALED_LEN || sealed[0] != VERSION {
            return None;
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&sealed[1..1 + ID_LEN]);
        Some(KeyId(id))
    }

    /// A key-check value to store in the database: encrypt(b"atlas-integrations
    /// key check", aad b"key-check").
    pub fn key_check(&self) -> Vec<u8> {
        self.encrypt(KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT)
    }

    /// Ok if `stored_check` decrypts with one of our keys;
    /// Err(CryptoError::WrongKey{expected, have}) otherwise.
    ///
    /// A check value that names one of our keys but fails authentication (or
    /// decrypts to something else) is reported as [`CryptoError::Tampered`],
    /// and one that cannot be parsed as [`CryptoError::Malformed`]: in both
    /// cases the stored value is damaged and no key id can be trusted.
    pub fn verify_key_check(&self, stored_check: &[u8]) -> Result<(), CryptoError> {
        match self.decrypt(KEY_CHECK_AAD, stored_check) {
            Ok(plain) if plain.expose_secret() == KEY_CHECK_PLAINTEXT => Ok(()),
            Ok(_) => Err(CryptoError::Tampered),
            Err(CryptoError::UnknownKey(expected)) => Err(CryptoError::WrongKey {
                expected,
                have: self.ids(),
            }),
            Err(other) => Err(other),
        }
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous = self.keys.iter().skip(1).map(|k| k.id);
        f.debug_struct("Keyring")
            .field("current", &format_args!("{}", self.current().id))
            .field("previous", &format_args!("[{}]", KeyIds(previous)))
            .finish()
    }
}

fn seal_with(key: &RingKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    // Exact capacity: the buffer never reallocates, so no stray copy of the
    // plaintext is left behind in freed memory.
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(VERSION);
    out.extend_from_slice(&key.id.0);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[HEADER_LEN..])
        .expect("plaintext and aad within AES-GCM limits");
    out.extend_from_slice(&tag);
    out
}

/// Opens `sealed` (already checked to be at least `MIN_SEALED_LEN` bytes with
/// a good version byte) with one key.
fn open_with(key: &RingKey, aad: &[u8], sealed: &[u8]) -> Result<SecretSlice<u8>, CryptoError> {
    if sealed.len() < MIN_SEALED_LEN {
        return Err(CryptoError::Malformed);
    }
    let nonce = Nonce::from_slice(&sealed[1 + ID_LEN..HEADER_LEN]);
    let (body, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - MIN_SEALED_LEN);
    let tag = Tag::from_slice(tag);
    // Allocate the exact size once and wrap it before decrypting, so the
    // plaintext is only ever in wiped-on-drop memory.
    let mut plain: SecretSlice<u8> = SecretSlice::from(body.to_vec());
    key.cipher
        .decrypt_in_place_detached(nonce, aad, plain.expose_secret_mut(), tag)
        .map_err(|_| CryptoError::Tampered)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(MasterKey::generate())
    }

    fn open(ring: &Keyring, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        ring.decrypt(aad, sealed)
            .map(|p| p.expose_secret().to_vec())
    }

    #[test]
    fn round_trip() {
        let ring = ring();
        for plaintext in [&b""[..], b"x", b"hunter2", &[0u8; 1000][..]] {
            let sealed = ring.encrypt(b"row:1", plaintext);
            assert_eq!(sealed.len(), HEADER_LEN + plaintext.len() + TAG_LEN);
            assert_eq!(sealed[0], VERSION);
            assert_eq!(Keyring::key_id_of(&sealed), Some(ring.current_id()));
            assert_eq!(open(&ring, b"row:1", &sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext_and_nonces_differ() {
        let ring = ring();
        let plaintext = b"a fairly long secret value that should not appear";
        let a = ring.encrypt(b"aad", plaintext);
        let b = ring.encrypt(b"aad", plaintext);
        assert_ne!(a, b, "each seal uses a fresh nonce");
        assert_ne!(a[5..17], b[5..17]);
        assert!(!a.windows(8).any(|w| plaintext.windows(8).any(|p| p == w)));
    }

    #[test]
    fn aad_mismatch_is_tampered() {
        let ring = ring();
        let sealed = ring.encrypt(b"integrations:1:token", b"secret");
        // The same value copied into another row does not decrypt there.
        assert!(matches!(
            ring.decrypt(b"integrations:2:token", &sealed),
            Err(CryptoError::Tampered)
        ));
        assert!(matches!(
            ring.decrypt(b"", &sealed),
            Err(CryptoError::Tampered)
        ));
        assert!(open(&ring, b"integrations:1:token", &sealed).is_ok());
    }

    #[test]
    fn any_single_bit_flip_fails() {
        let ring = ring().with_previous(MasterKey::generate());
        let sealed = ring.encrypt(b"aad", b"some secret");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                let result = ring.decrypt(b"aad", &bad);
                assert!(
                    result.is_err(),
                    "flip of bit {bit} in byte {i} was accepted"
                );
                let expected_ok = matches!(
                    (i, &result),
                    (0, Err(CryptoError::Malformed))
                        | (1..=4, Err(CryptoError::UnknownKey(_)))
                        | (5.., Err(CryptoError::Tampered))
                );
                assert!(expected_ok, "byte {i} bit {bit}: {result:?}");
            }
        }
    }

    #[test]
    fn truncated_input_is_rejected_without_panic() {
        let ring = ring();
        let sealed = ring.encrypt(b"aad", b"secret");
        for len in 0..sealed.len() {
            let result = ring.decrypt(b"aad", &sealed[..len]);
            if len < MIN_SEALED_LEN {
                assert!(
                    matches!(result, Err(CryptoError::Malformed)),
                    "len {len}: {result:?}"
                );
                assert_eq!(Keyring::key_id_of(&sealed[..len]), None);
            } else {
                // Long enough to parse, but the tag no longer matches.
                assert!(
                    matches!(result, Err(CryptoError::Tampered)),
                    "len {len}: {result:?}"
                );
            }
        }
        // Extra bytes appended are rejected too.
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(matches!(
            ring.decrypt(b"aad", &longer),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn bad_version_is_malformed() {
        let ring = ring();
        let mut sealed = ring.encrypt(b"aad", b"secret");
        for version in [0x00, 0x02, 0xff] {
            sealed[0] = version;
            assert!(matches!(
                ring.decrypt(b"aad", &sealed),
                Err(CryptoError::Malformed)
            ));
            assert_eq!(Keyring::key_id_of(&sealed), None);
        }
    }

    #[test]
    fn garbage_input_never_panics() {
        let ring = ring();
        for len in 0..80 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert!(ring.decrypt(b"", &data).is_err());
            let mut versioned = data.clone();
            if let Some(first) = versioned.first_mut() {
                *first = VERSION;
            }
            assert!(ring.decrypt(b"", &versioned).is_err());
        }
    }

    #[test]
    fn unknown_key_id() {
        let a = ring();
        let b = ring();
        let sealed = a.encrypt(b"aad", b"secret");
        match b.decrypt(b"aad", &sealed) {
            Err(CryptoError::UnknownKey(id)) => assert_eq!(id, a.current_id()),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
        assert!(!b.contains(a.current_id()));
    }

    #[test]
    fn same_id_different_key_is_tampered_not_garbage() {
        // Simulate a key-id collision: forge a value that names our key id but
        // was sealed with another key.
        let ring = ring();
        let other = Keyring::new(MasterKey::generate());
        let mut sealed = other.encrypt(b"aad", b"secret");
        sealed[1..5].copy_from_slice(&ring.current_id().0);
        assert!(matches!(
            ring.decrypt(b"aad", &sealed),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn rotation_decrypts_old_and_encrypts_new() {
        let old_key = MasterKey::generate();
        let old_id = old_key.id();
        let old_text = old_key.to_base64();
        let old_ring = Keyring::new(old_key);
        let old_sealed = old_ring.encrypt(b"row:7", b"old secret");

        let new_key = MasterKey::generate();
        let new_id = new_key.id();
        let ring = Keyring::new(new_key)
            .with_previous(MasterKey::from_base64(old_text.expose_secret()).unwrap());
        assert_eq!(ring.current_id(), new_id);
        assert!(ring.contains(old_id));
        assert!(ring.contains(new_id));
        assert!(!ring.contains(MasterKey::generate().id()));
        assert_eq!(ring.ids(), vec![new_id, old_id]);

        // Old values still decrypt; new ones are sealed with the new key.
        assert_eq!(open(&ring, b"row:7", &old_sealed).unwrap(), b"old secret");
        let new_sealed = ring.encrypt(b"row:7", b"new secret");
        assert_eq!(Keyring::key_id_of(&new_sealed), Some(new_id));
        assert_eq!(Keyring::key_id_of(&old_sealed), Some(old_id));
        assert_eq!(open(&ring, b"row:7", &new_sealed).unwrap(), b"new secret");
        // The aad still binds under the previous key.
        assert!(matches!(
            ring.decrypt(b"row:8", &old_sealed),
            Err(CryptoError::Tampered)
        ));
        // The old server cannot read what the new key sealed.
        assert!(matches!(
            old_ring.decrypt(b"row:7", &new_sealed),
            Err(CryptoError::UnknownKey(id)) if id == new_id
        ));
    }

    #[test]
    fn with_previous_ignores_duplicates() {
        let text = MasterKey::generate().to_base64();
        let key = |t: &SecretString| MasterKey::from_base64(t.expose_secret()).unwrap();
        let ring = Keyring::new(key(&text)).with_previous(key(&text));
        assert_eq!(ring.ids().len(), 1);
        let other = MasterKey::generate();
        let ring = ring.with_previous(other).with_previous(key(&text));
        assert_eq!(ring.ids().len(), 2);
    }

    #[test]
    fn clones_share_keys_and_are_send_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Keyring>();
        let ring = ring();
        let clone = ring.clone();
        let sealed = ring.encrypt(b"a", b"b");
        assert_eq!(open(&clone, b"a", &sealed).unwrap(), b"b");
        // Adding a previous key to one clone does not change the other.
        let bigger = clone.with_previous(MasterKey::generate());
        assert_eq!(bigger.ids().len(), 2);
        assert_eq!(ring.ids().len(), 1);
    }

    #[test]
    fn key_check_right_and_wrong() {
        let key_text = MasterKey::generate().to_base64();
        let ring = Keyring::new(MasterKey::from_base64(key_text.expose_secret()).unwrap());
        let check = ring.key_check();
        ring.verify_key_check(&check).unwrap();

        // The same key loaded again (e.g. after a restart) accepts it.
        let restarted = Keyring::new(MasterKey::from_base64(key_text.expose_secret()).unwrap());
        restarted.verify_key_check(&check).unwrap();

        // A rotated server that still has the old key as previous accepts it.
        let rotated = Keyring::new(MasterKey::generate())
            .with_previous(MasterKey::from_base64(key_text.expose_secret()).unwrap());
        rotated.verify_key_check(&check).unwrap();

        // A server with another key refuses with WrongKey and a clear message.
        let wrong = Keyring::new(MasterKey::generate());
        let err = wrong.verify_key_check(&check).unwrap_err();
        match &err {
            CryptoError::WrongKey { expected, have } => {
                assert_eq!(*expected, ring.current_id());
                assert_eq!(have, &vec![wrong.current_id()]);
            }
            other => panic!("expected WrongKey, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&ring.current_id().to_string()), "{msg}");
        assert!(msg.contains(&wrong.current_id().to_string()), "{msg}");
        assert!(msg.contains("--master-key-file"), "{msg}");
        assert!(msg.contains("ATLAS_INTEGRATIONS_MASTER_KEY"), "{msg}");

        // A damaged check value is not mistaken for a key mismatch.
        let mut damaged = check.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(
            ring.verify_key_check(&damaged),
            Err(CryptoError::Tampered)
        ));
        assert!(matches!(
            ring.verify_key_check(&check[..10]),
            Err(CryptoError::Malformed)
        ));
        // An ordinary secret sealed with our key is not a key check.
        let not_check = ring.encrypt(b"key-check", b"something else");
        assert!(matches!(
            ring.verify_key_check(&not_check),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn wrong_key_message_lists_all_keys() {
        let err = CryptoError::WrongKey {
            expected: KeyId([0x1a, 0x2b, 0x3c, 0x4d]),
            have: vec![KeyId([0x5e, 0x6f, 0x7a, 0x8b]), KeyId([0, 1, 2, 3])],
        };
        assert_eq!(
            err.to_string(),
            "the master key does not match this database: the database was encrypted with key \
             1a2b3c4d, this server has keys 5e6f7a8b, 00010203; start with the right \
             --master-key-file or ATLAS_INTEGRATIONS_MASTER_KEY"
        );
        let err = CryptoError::WrongKey {
            expected: KeyId([0x1a, 0x2b, 0x3c, 0x4d]),
            have: vec![KeyId([0x5e, 0x6f, 0x7a, 0x8b])],
        };
        assert!(err.to_string().contains("this server has key 5e6f7a8b;"));
    }

    #[test]
    fn key_id_is_derived_and_displayed_as_hex() {
        let text = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let key = MasterKey::from_base64(text).unwrap();
        // Independent computation of the documented derivation.
        let bytes: Vec<u8> = (0u8..32).collect();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes).unwrap();
        mac.update(b"atlas-integrations key id");
        let digest = mac.finalize().into_bytes();
        assert_eq!(key.id().0, digest[..4]);
        assert_eq!(MasterKey::from_base64(text).unwrap().id(), key.id());
        assert_ne!(MasterKey::generate().id(), key.id());

        assert_eq!(KeyId([0x1a, 0x2b, 0x3c, 0x4d]).to_string(), "1a2b3c4d");
        assert_eq!(KeyId([0, 0, 0, 0xff]).to_string(), "000000ff");
    }

    #[test]
    fn base64_parsing() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        assert_eq!(text.expose_secret().len(), 44);
        let parsed = MasterKey::from_base64(text.expose_secret()).unwrap();
        assert_eq!(parsed.id(), key.id());

        // Surrounding whitespace and newlines are trimmed.
        let padded = format!("  \n\t{}\r\n\n", text.expose_secret());
        assert_eq!(MasterKey::from_base64(&padded).unwrap().id(), key.id());

        // Wrong lengths.
        let short = STANDARD.encode([7u8; 31]);
        let long = STANDARD.encode([7u8; 33]);
        let tiny = STANDARD.encode([7u8; 16]);
        for bad in [short.as_str(), long.as_str(), tiny.as_str()] {
            assert!(matches!(
                MasterKey::from_base64(bad),
                Err(CryptoError::BadKeyText(_))
            ));
        }
        // Empty / whitespace only.
        for bad in ["", "   \n"] {
            assert!(matches!(
                MasterKey::from_base64(bad),
                Err(CryptoError::BadKeyText(_))
            ));
        }
        // Bad characters, URL-safe alphabet, missing padding, inner whitespace.
        let good = text.expose_secret().to_string();
        let with_bang = format!("!{}", &good[1..]);
        let url_safe = good.replace('+', "-").replace('/', "_");
        let unpadded = good.trim_end_matches('=').to_string();
        let inner_space = format!("{} {}", &good[..20], &good[20..]);
        let mut cases = vec![with_bang, unpadded, inner_space];
        if url_safe != good {
            cases.push(url_safe);
        }
        for bad in &cases {
            let err = MasterKey::from_base64(bad).unwrap_err();
            assert!(matches!(err, CryptoError::BadKeyText(_)), "{err:?}");
            // The error never echoes the text.
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(&good[2..20]), "{shown}");
        }
    }

    #[test]
    fn write_new_file_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::generate();
        key.write_new_file(&path).unwrap();

        let contents = fs::read_to_string(&path).unwrap();
        assert_eq!(contents, format!("{}\n", key.to_base64().expose_secret()));
        assert_eq!(MasterKey::load_file(&path).unwrap().id(), key.id());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        }

        // Never overwrites an existing file.
        let other = MasterKey::generate();
        match other.write_new_file(&path) {
            Err(CryptoError::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
            }
            res => panic!("expected Io error, got {res:?}"),
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), contents);
        assert_eq!(MasterKey::load_file(&path).unwrap().id(), key.id());
    }

    #[test]
    fn load_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key");
        match MasterKey::load_file(&missing) {
            Err(err @ CryptoError::Io { .. }) => {
                assert!(err.to_string().contains("missing.key"), "{err}");
                assert!(std::error::Error::source(&err).is_some());
            }
            other => panic!("expected Io, got {other:?}"),
        }

        let garbage = dir.path().join("garbage.key");
        fs::write(&garbage, "not a key at all").unwrap();
        assert!(matches!(
            MasterKey::load_file(&garbage),
            Err(CryptoError::BadKeyText(_))
        ));

        let binary = dir.path().join("binary.key");
        fs::write(&binary, [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
        assert!(matches!(
            MasterKey::load_file(&binary),
            Err(CryptoError::BadKeyText(_))
        ));

        let huge = dir.path().join("huge.key");
        fs::write(&huge, vec![b'A'; 10_000]).unwrap();
        assert!(matches!(
            MasterKey::load_file(&huge),
            Err(CryptoError::BadKeyText(_))
        ));

        // A hand-written file without the trailing newline loads too.
        let key = MasterKey::generate();
        let bare = dir.path().join("bare.key");
        fs::write(&bare, key.to_base64().expose_secret()).unwrap();
        assert_eq!(MasterKey::load_file(&bare).unwrap().id(), key.id());
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let key_text = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let key = MasterKey::from_base64(key_text).unwrap();
        let id = key.id();
        let old = MasterKey::generate();
        let old_text = old.to_base64();
        let old_id = old.id();

        let key_debug = format!("{key:?} {key:#?}");
        assert!(
            key_debug.starts_with(&format!("MasterKey {{ id: {id} }}")),
            "{key_debug}"
        );

        let ring = Keyring::new(key).with_previous(old);
        let ring_debug = format!("{ring:?} {ring:#?}");
        assert!(ring_debug.contains(&id.to_string()), "{ring_debug}");
        assert!(ring_debug.contains(&old_id.to_string()), "{ring_debug}");
        assert!(
            ring_debug.starts_with(&format!(
                "Keyring {{ current: {id}, previous: [{old_id}] }}"
            )),
            "{ring_debug}"
        );

        for shown in [&key_debug, &ring_debug] {
            assert!(!shown.contains(&key_text[..16]), "{shown}");
            assert!(!shown.contains(&old_text.expose_secret()[..16]), "{shown}");
            // Raw bytes 0..32 as a Debug list would start like this.
            assert!(!shown.contains("0, 1, 2, 3"), "{shown}");
            assert!(!shown.contains("[0, 1"), "{shown}");
        }

        // Decrypted plaintext is redacted in Debug too.
        let sealed = ring.encrypt(b"aad", b"very secret plaintext");
        let plain = ring.decrypt(b"aad", &sealed).unwrap();
        assert!(!format!("{plain:?}").contains("very secret"));
        // And errors never include the plaintext.
        let err = ring.decrypt(b"other", &sealed).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("very secret"));
    }
}
