//! Identifiers: 24-hex ObjectIds (organizations, projects, integrations, API keys) and API
//! public keys. Constructors named `parse` only accept valid text.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// A MongoDB-style ObjectId: 4-byte big-endian timestamp, 5 random bytes, 3-byte counter,
/// written as 24 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 12]);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl ObjectId {
    /// A new id, unique within this process and very likely across processes.
    pub fn generate() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&(secs as u32).to_be_bytes());
        rand::thread_rng().fill(&mut bytes[4..9]);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        bytes[9..].copy_from_slice(&count.to_be_bytes()[1..]);
        Self(bytes)
    }

    /// Parses 24 lowercase hex digits (`^[a-f0-9]{24}$`, as Atlas requires of path ids).
    pub fn parse(text: &str) -> Option<Self> {
        let raw = text.as_bytes();
        if raw.len() != 24 {
            return None;
        }
        let mut bytes = [0u8; 12];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            bytes[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Some(Self(bytes))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl ObjectId {
    /// The 24 lowercase hexadecimal digits, without formatting machinery.
    pub fn hex(&self) -> [u8; 24] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 24];
        for (pair, b) in text.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0f)];
        }
        text
    }

    /// The 24 digits as text on the stack: a SQL parameter without a `String` (the read
    /// lane and the writer bind one per lookup and per write).
    pub fn text(&self) -> HexText {
        HexText(self.hex())
    }
}

/// An id's 24 lowercase hexadecimal digits ([`ObjectId::text`]).
#[derive(Clone, Copy)]
pub struct HexText([u8; 24]);

impl HexText {
    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and letters are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for ObjectId {
    /// One `write_str` of 24 digits (formatting each byte with `{:02x}` showed in the
    /// profile of every request).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// A project (Atlas "group") id.
pub type GroupId = ObjectId;
/// An organization id.
pub type OrgId = ObjectId;

/// A new API public key: 8 random lowercase letters, as Atlas issues them.
pub fn generate_public_key() -> String {
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| char::from(rng.gen_range(b'a'..=b'z')))
        .collect()
}

/// Whether `text` has the shape of an API public key (8 lowercase ASCII letters).
pub fn is_public_key(text: &str) -> bool {
    text.len() == 8 && text.bytes().all(|b| b.is_ascii_lowercase())
}

/// A new API private key: a random UUID v4 in its hyphenated lowercase form.
pub fn generate_private_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_24_hex_and_parse_back() {
        let id = ObjectId::generate();
        let text = id.to_string();
        assert_eq!(text.len(), 24);
        assert_eq!(ObjectId::parse(&text), Some(id));
    }

    #[test]
    fn ids_generated_in_a_row_differ_and_rise() {
        let a = ObjectId::generate();
        let b = ObjectId::generate();
        assert_ne!(a, b);
    }

    #[test]
    fn uppercase_short_long_and_non_hex_ids_are_rejected() {
        for bad in [
            "",
            "5D791C84FF7A2522CC4F9AA1",
            "5d791c84ff7a2522cc4f9aa",
            "5d791c84ff7a2522cc4f9aa12",
            "5d791c84ff7a2522cc4f9aag",
            "5d791c84ff7a2522cc4f9a€",
        ] {
            assert_eq!(ObjectId::parse(bad), None, "{bad}");
        }
        assert!(ObjectId::parse("5d791c84ff7a2522cc4f9aa1").is_some());
    }

    #[test]
    fn public_keys_are_eight_lowercase_letters() {
        let key = generate_public_key();
        assert!(is_public_key(&key), "{key}");
        assert!(!is_public_key("ABCDEFGH"));
        assert!(!is_public_key("abcdefg"));
    }

    #[test]
    fn private_keys_are_uuid_v4() {
        let key = generate_private_key();
        let parsed = uuid::Uuid::parse_str(&key).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(key, key.to_lowercase());
    }
}
