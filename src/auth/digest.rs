//! Server side of HTTP Digest authentication (RFC 7616, compatible with RFC 2617).
//!
//! This module parses `Authorization: Digest ...` headers, builds the
//! `WWW-Authenticate` challenge, checks a digest response against a password,
//! issues stateless tamper-proof nonces ([`NonceKey`]) and refuses replayed
//! requests ([`ReplayGuard`]). It does no I/O and holds no async state.
//!
//! Rules kept throughout:
//! - Only `qop=auth` is accepted; the algorithms are MD5, MD5-sess, SHA-256 and
//!   SHA-256-sess. `userhash=true` is refused.
//! - Secrets (passwords, HA1, digest responses, nonce keys) never appear in an
//!   error message or in `Debug` output.
//! - Secret comparisons (digest responses, nonce MACs) are constant time.
//! - The parser never panics, whatever bytes it is given, and refuses headers
//!   longer than [`MAX_HEADER_LEN`] bytes.
//! - Memory held by [`ReplayGuard`] is bounded by its capacity.
//!
//! Typical flow for one request: [`parse_authorization`], then
//! [`NonceKey::check`] on `creds.nonce`, then [`verify`] with the stored
//! password (and a check that `creds.uri` names the request target), and only
//! after a successful verification [`ReplayGuard::check_and_record`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The realm this server announces and requires in every `Authorization` header.
pub const REALM: &str = "MMS Public API";

/// Longest `Authorization` header value accepted by [`parse_authorization`], in bytes.
pub const MAX_HEADER_LEN: usize = 16 * 1024;

/// How far in the future a nonce's issue time may lie before it is treated as stale.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Length of an encoded nonce issued by [`NonceKey::issue`]: 32 bytes in base64url without padding.
pub const NONCE_LEN: usize = 43;

/// Digest algorithm named by the client's `algorithm` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5` (also the default when the parameter is missing).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// Parses an algorithm name, ignoring ASCII case. Returns `None` for unsupported names.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            ("MD5", Self::Md5),
            ("MD5-sess", Self::Md5Sess),
            ("SHA-256", Self::Sha256),
            ("SHA-256-sess", Self::Sha256Sess),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, a)| a)
    }

    /// The canonical name as written in RFC 7616 (e.g. `SHA-256-sess`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Number of hex digits in a digest produced by this algorithm (32 or 64).
    pub fn hex_len(self) -> usize {
        match self {
            Self::Md5 | Self::Md5Sess => 32,
            Self::Sha256 | Self::Sha256Sess => 64,
        }
    }

    /// Whether this is a session variant (`-sess`), whose HA1 also covers nonce and cnonce.
    pub fn is_session(self) -> bool {
        matches!(self, Self::Md5Sess | Self::Sha256Sess)
    }
}

/// A parsed and validated `Authorization: Digest` header. Values borrow from the header
/// (only a quoted value with escapes, or a response in upper case, is copied): parsing a
/// request's header allocates nothing in the common case.
///
/// `Debug` prints `response` as `<redacted>`.
#[derive(Clone)]
pub struct Credentials<'a> {
    /// The `username` parameter (never empty).
    pub username: Cow<'a, str>,
    /// The `realm` parameter (always [`REALM`] after parsing).
    pub realm: Cow<'a, str>,
    /// The `nonce` parameter, as sent back by the client.
    pub nonce: Cow<'a, str>,
    /// The `uri` parameter; the caller should check it against the request target.
    pub uri: Cow<'a, str>,
    /// The client's digest response, lowercase hex of the algorithm's length.
    pub response: Cow<'a, str>,
    /// The `algorithm` parameter (MD5 when absent).
    pub algorithm: Algorithm,
    /// The nonce count `nc` as a number.
    pub nc: u32,
    /// The nonce count exactly as sent (8 hex digits); this form enters the hash.
    pub nc_raw: Cow<'a, str>,
    /// The client nonce `cnonce`.
    pub cnonce: Cow<'a, str>,
    /// The `opaque` parameter, if sent.
    pub opaque: Option<Cow<'a, str>>,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("nonce", &self.nonce)
            .field("uri", &self.uri)
            .field("response", &"<redacted>")
            .field("algorithm", &self.algorithm)
            .field("nc", &self.nc)
            .field("nc_raw", &self.nc_raw)
            .field("cnonce", &self.cnonce)
            .field("opaque", &self.opaque)
            .finish()
    }
}

/// Why an `Authorization` header was refused. Messages never contain secrets or header values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The header is longer than [`MAX_HEADER_LEN`] bytes.
    #[error("authorization header is longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    /// The header is not valid UTF-8.
    #[error("authorization header is not valid UTF-8")]
    NotUtf8,
    /// The scheme is not `Digest` (or is not followed by whitespace and parameters).
    #[error("authorization scheme is not Digest")]
    NotDigest,
    /// The parameter list does not follow the `name=value, ...` syntax.
    #[error("malformed digest parameter list at byte {offset}")]
    Malformed {
        /// Byte offset in the header where parsing failed.
        offset: usize,
    },
    /// A quoted string has no closing quote.
    #[error("unterminated quoted string in authorization header")]
    UnterminatedQuote,
    /// A parameter appears more than once.
    #[error("duplicate digest parameter `{0}`")]
    DuplicateParameter(String),
    /// A required parameter is missing.
    #[error("missing digest parameter `{0}`")]
    MissingParameter(&'static str),
    /// A required parameter is present but empty.
    #[error("empty digest parameter `{0}`")]
    EmptyParameter(&'static str),
    /// The username is empty.
    #[error("empty username")]
    EmptyUsername,
    /// The client asked for a hashed username (`userhash=true`), which is not supported.
    #[error("userhash is not supported")]
    UserhashUnsupported,
    /// The realm is not [`REALM`].
    #[error("realm does not match")]
    WrongRealm,
    /// The algorithm is not one of MD5, MD5-sess, SHA-256, SHA-256-sess.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// `qop` is not `auth`.
    #[error("unsupported qop (only `auth` is accepted)")]
    UnsupportedQop,
    /// `nc` is not exactly 8 hex digits.
    #[error("nc must be exactly 8 hex digits")]
    InvalidNonceCount,
    /// `response` is not hex of the algorithm's digest length.
    #[error("response must be {expected} hex digits")]
    InvalidResponse {
        /// The number of hex digits the algorithm requires.
        expected: usize,
    },
}

/// Parameters this module knows; every other parameter name is ignored.
const KNOWN: [&str; 11] = [
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "qop",
    "nc",
    "cnonce",
    "opaque",
    "userhash",
];

/// Index of each parameter in [`KNOWN`].
mod idx {
    pub const USERNAME: usize = 0;
    pub const REALM: usize = 1;
    pub const NONCE: usize = 2;
    pub const URI: usize = 3;
    pub const RESPONSE: usize = 4;
    pub const ALGORITHM: usize = 5;
    pub const QOP: usize = 6;
    pub const NC: usize = 7;
    pub const CNONCE: usize = 8;
    pub const OPAQUE: usize = 9;
    pub const USERHASH: usize = 10;
}

/// The index in [`KNOWN`] of a parameter name (any ASCII case): its length and first letter
/// pick the one candidate to compare, rather than comparing it with each known name.
fn known(name: &str) -> Option<usize> {
    let bytes = name.as_bytes();
    let letter = |i: usize| bytes.get(i).map(|b| b | 0x20);
    let candidate = match (bytes.len(), letter(0)?) {
        (8, b'u') if letter(4) == Some(b'n') => idx::USERNAME,
        (8, b'u') => idx::USERHASH,
        (5, b'r') => idx::REALM,
        (5, b'n') => idx::NONCE,
        (3, b'u') => idx::URI,
        (8, b'r') => idx::RESPONSE,
        (9, b'a') => idx::ALGORITHM,
        (3, b'q') => idx::QOP,
        (2, b'n') => idx::NC,
        (6, b'c') => idx::CNONCE,
        (6, b'o') => idx::OPAQUE,
        _ => return None,
    };
    KNOWN
        .get(candidate)
        .is_some_and(|known| known.eq_ignore_ascii_case(name))
        .then_some(candidate)
}

/// [`HEX_DIGIT`]'s classes.
const NOT_HEX: u8 = 0;
const LOWER_HEX: u8 = 1;
const UPPER_HEX: u8 = 2;

/// Each byte's class as a hex digit: a digit or `a`–`f`, `A`–`F`, or none.
const HEX_DIGIT: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'0'..=b'9' | b'a'..=b'f' => LOWER_HEX,
            b'A'..=b'F' => UPPER_HEX,
            _ => NOT_HEX,
        };
        b += 1;
    }
    table
};

/// RFC 7230 `tchar`, by byte: one load per byte of every token the parser scans rather than
/// a search of the punctuation list.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// Bytes a quoted value holds as they are: not `"`, not `\\`, not a control byte other than
/// tab (a table, like [`TCHAR`]: the quoted values are most of a header's bytes).
const QUOTED_PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = !(c == b'"' || c == b'\\' || (c < 0x20 && c != b'\t') || c == 0x7f);
        b += 1;
    }
    table
};

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// RFC 7230 `OWS` characters.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A cursor over the header, already checked to be UTF-8.
struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while self.peek().is_some_and(is_ows) {
            self.pos += 1;
        }
    }

    fn malformed(&self) -> ParseError {
        ParseError::Malformed { offset: self.pos }
    }

    /// Reads `1*tchar`.
    fn token(&mut self) -> Result<&'a str, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.malformed());
        }
        // Token characters are ASCII, so both ends are character boundaries.
        let text: &'a str = self.text;
        text.get(start..self.pos)
            .ok_or(ParseError::Malformed { offset: start })
    }

    /// Reads an RFC 7230 `quoted-string`, the cursor being on the opening quote. The
    /// common case, no escapes, is the checked span itself, borrowed.
    fn quoted_string(&mut self) -> Result<Cow<'a, str>, ParseError> {
        self.pos += 1;
        let start = self.pos;
        // Fast path: scan to the first byte that is not plain quoted text; when it is the
        // closing quote, the value is that span (it ends at ASCII bytes, so on character
        // boundaries). Anything else (an escape, a control byte, no end) goes the careful way.
        let rest = self.bytes.get(start..).unwrap_or_default();
        let stop = rest.iter().position(|&b| !QUOTED_PLAIN[usize::from(b)]);
        if let Some(len) = stop.filter(|&len| rest.get(len) == Some(&b'"')) {
            self.pos = start + len + 1;
            let text: &'a str = self.text;
            return text
                .get(start..start + len)
                .map(Cow::Borrowed)
                .ok_or(ParseError::Malformed { offset: start });
        }
        let mut escaped = false;
        loop {
            let Some(b) = self.peek() else {
                return Err(ParseError::UnterminatedQuote);
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(next) = self.peek() else {
                        return Err(ParseError::UnterminatedQuote);
                    };
                    if !(next == b'\t' || next == b' ' || (next >= 0x21 && next != 0x7f)) {
                        return Err(self.malformed());
                    }
                    self.pos += 1;
                    escaped = true;
                }
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => {}
                _ => {
                    return Err(ParseError::Malformed {
                        offset: self.pos - 1,
                    })
                }
            }
        }
        let raw = self.bytes.get(start..self.pos - 1).unwrap_or_default();
        let out = if escaped {
            // Every backslash escapes the byte after it.
            let mut out = Vec::with_capacity(raw.len());
            let mut bytes = raw.iter();
            while let Some(&b) = bytes.next() {
                out.push(if b == b'\\' {
                    *bytes.next().unwrap_or(&b)
                } else {
                    b
                });
            }
            out
        } else {
            raw.to_vec()
        };
        // Only whole UTF-8 sequences were copied (escapes only drop an ASCII backslash).
        String::from_utf8(out)
            .map(Cow::Owned)
            .map_err(|_| self.malformed())
    }
}

/// Parses and validates an `Authorization` header value of scheme `Digest`.
///
/// Accepts quoted or unquoted values, any ASCII case in the scheme, parameter
/// names and algorithm names, optional whitespace around `,` and `=`, and
/// ignores unknown parameters. Never panics.
pub fn parse_authorization(header: &[u8]) -> Result<Credentials<'_>, ParseError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(ParseError::TooLong);
    }
    let text = std::str::from_utf8(header).map_err(|_| ParseError::NotUtf8)?;
    let mut cur = Cursor {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    cur.skip_ows();
    let scheme = cur.token().map_err(|_| ParseError::NotDigest)?;
    if !scheme.eq_ignore_ascii_case("Digest") || !cur.peek().is_some_and(is_ows) {
        return Err(ParseError::NotDigest);
    }
    let mut values: [Option<Cow<'_, str>>; KNOWN.len()] = Default::default();
    let mut unknown_seen: Vec<&str> = Vec::new();
    let mut expect_separator = false;
    loop {
        cur.skip_ows();
        match cur.peek() {
            None => break,
            Some(b',') => {
                // Empty list elements are allowed by RFC 7230 section 7.
                cur.pos += 1;
                expect_separator = false;
                continue;
            }
            Some(_) if expect_separator => return Err(cur.malformed()),
            Some(_) => {}
        }
        let name = cur.token()?;
        cur.skip_ows();
        if cur.peek() != Some(b'=') {
            return Err(cur.malformed());
        }
        cur.pos += 1;
        cur.skip_ows();
        let value = match cur.peek() {
            Some(b'"') => cur.quoted_string()?,
            _ => Cow::Borrowed(cur.token()?),
        };
        expect_separator = true;
        match known(name) {
            Some(i) => {
                let slot = values.get_mut(i).ok_or_else(|| cur.malformed())?;
                if slot.is_some() {
                    return Err(ParseError::DuplicateParameter(name.to_ascii_lowercase()));
                }
                *slot = Some(value);
            }
            None => {
                if unknown_seen
                    .iter()
                    .any(|seen| seen.eq_ignore_ascii_case(name))
                {
                    return Err(ParseError::DuplicateParameter(name.to_ascii_lowercase()));
                }
                unknown_seen.push(name);
            }
        }
    }
    let mut take = |i: usize| values.get_mut(i).and_then(Option::take);
    let mut required = |i: usize| {
        let name = KNOWN.get(i).copied().unwrap_or("?");
        take(i).ok_or(ParseError::MissingParameter(name))
    };
    let username = required(idx::USERNAME)?;
    let realm = required(idx::REALM)?;
    let nonce = required(idx::NONCE)?;
    let uri = required(idx::URI)?;
    let response = required(idx::RESPONSE)?;
    let qop = required(idx::QOP)?;
    let nc_raw = required(idx::NC)?;
    let cnonce = required(idx::CNONCE)?;
    let algorithm = take(idx::ALGORITHM);
    let opaque = take(idx::OPAQUE);
    let userhash = take(idx::USERHASH);

    if username.is_empty() {
        return Err(ParseError::EmptyUsername);
    }
    if let Some(userhash) = userhash {
        if !userhash.eq_ignore_ascii_case("false") {
            return Err(ParseError::UserhashUnsupported);
        }
    }
    if *realm != *REALM {
        return Err(ParseError::WrongRealm);
    }
    for (value, name) in [(&nonce, "nonce"), (&uri, "uri"), (&cnonce, "cnonce")] {
        if value.is_empty() {
            return Err(ParseError::EmptyParameter(name));
        }
    }
    let algorithm = match algorithm {
        None => Algorithm::Md5,
        Some(name) => Algorithm::from_name(&name).ok_or(ParseError::UnsupportedAlgorithm)?,
    };
    if qop != "auth" {
        return Err(ParseError::UnsupportedQop);
    }
    if nc_raw.len() != 8 || !nc_raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ParseError::InvalidNonceCount);
    }
    let nc = u32::from_str_radix(&nc_raw, 16).map_err(|_| ParseError::InvalidNonceCount)?;
    // Hex digits are compared in lower case; a response already in lower case is not copied.
    let expected = algorithm.hex_len();
    let (mut hex, mut upper) = (response.len() == expected, false);
    for b in response.bytes() {
        match HEX_DIGIT[usize::from(b)] {
            NOT_HEX => hex = false,
            UPPER_HEX => upper = true,
            _ => {}
        }
    }
    if !hex {
        return Err(ParseError::InvalidResponse { expected });
    }
    let response = match upper {
        true => Cow::Owned(response.to_ascii_lowercase()),
        false => response,
    };
    Ok(Credentials {
        username,
        realm,
        nonce,
        uri,
        response,
        algorithm,
        nc,
        nc_raw,
        cnonce,
        opaque,
    })
}

/// Builds the `WWW-Authenticate` header value for a 401 answer.
///
/// Returns exactly
/// `Digest realm="MMS Public API", domain="", nonce="<nonce>", algorithm=MD5, qop="auth", stale=false`
/// (`stale=true` when `stale`). Nonces from [`NonceKey::issue`] need no escaping;
/// a `"` or `\` in `nonce` would be backslash-escaped.
pub fn challenge(nonce: &str, stale: bool) -> String {
    // Written piece by piece: `format!` was most of the cost of every 401's header.
    let mut out = String::with_capacity(100 + nonce.len());
    out.push_str("Digest realm=\"");
    out.push_str(REALM);
    out.push_str("\", domain=\"\", nonce=\"");
    for c in nonce.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str("\", algorithm=MD5, qop=\"auth\", stale=");
    out.push_str(if stale { "true" } else { "false" });
    out
}

/// Lowercase hex of `H(part0 ":" part1 ":" ...)`, the building block of every Digest value
/// (also used by the benchmark's client).
pub fn hash_hex<D: Digest>(parts: &[&[u8]]) -> String {
    Hex::of::<D>(parts).into_string()
}

/// `H(username:realm:password)` for both algorithms, computed once per key rather than on
/// every request. Password-equivalent: `Debug` does not show it.
#[derive(Clone)]
pub struct Ha1 {
    md5: secrecy::SecretString,
    sha256: secrecy::SecretString,
}

impl fmt::Debug for Ha1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ha1(<redacted>)")
    }
}

impl Ha1 {
    /// The HA1 values of `username` with `password` in [`REALM`].
    pub fn new(username: &str, password: &str) -> Self {
        let parts = [username.as_bytes(), REALM.as_bytes(), password.as_bytes()];
        Self {
            md5: hash_hex::<Md5>(&parts).into(),
            sha256: hash_hex::<Sha256>(&parts).into(),
        }
    }
}

fn response_from_ha1<D: Digest>(creds: &Credentials<'_>, method: &str, ha1: &str) -> Hex {
    let session;
    let ha1 = if creds.algorithm.is_session() {
        session = Hex::of::<D>(&[
            ha1.as_bytes(),
            creds.nonce.as_bytes(),
            creds.cnonce.as_bytes(),
        ]);
        session.as_bytes()
    } else {
        ha1.as_bytes()
    };
    let ha2 = Hex::of::<D>(&[method.as_bytes(), creds.uri.as_bytes()]);
    Hex::of::<D>(&[
        ha1,
        creds.nonce.as_bytes(),
        creds.nc_raw.as_bytes(),
        creds.cnonce.as_bytes(),
        b"auth",
        ha2.as_bytes(),
    ])
}

/// Lowercase hex of a digest of at most 32 bytes, on the stack: the per-request hashes of
/// [`verify_ha1`] allocate nothing.
struct Hex {
    buf: [u8; 64],
    len: usize,
}

impl Hex {
    /// `H(part0 ":" part1 ":" ...)` in lowercase hex, like [`hash_hex`].
    fn of<D: Digest>(parts: &[&[u8]]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hasher = D::new();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                hasher.update(b":");
            }
            hasher.update(part);
        }
        let mut out = Self {
            buf: [0; 64],
            len: 0,
        };
        for (b, pair) in hasher.finalize().iter().zip(out.buf.chunks_exact_mut(2)) {
            pair.copy_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]]);
            out.len += 2;
        }
        out
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    fn into_string(self) -> String {
        // Only ASCII hex digits are ever written to `buf`.
        self.as_bytes().iter().map(|&b| char::from(b)).collect()
    }
}

fn expected_response_with<D: Digest>(
    creds: &Credentials<'_>,
    method: &str,
    password: &str,
) -> String {
    let ha1 = hash_hex::<D>(&[
        creds.username.as_bytes(),
        creds.realm.as_bytes(),
        password.as_bytes(),
    ]);
    response_from_ha1::<D>(creds, method, &ha1).into_string()
}

/// Computes the digest response a client knowing `password` would send
/// (`qop=auth`), as lowercase hex. The result is secret: do not log it.
///
/// HA1 = H(username:realm:password), or H(H(username:realm:password):nonce:cnonce)
/// for `-sess`; HA2 = H(method:uri); response = H(HA1:nonce:nc:cnonce:auth:HA2).
/// The realm is taken from `creds` as is.
pub fn expected_response(creds: &Credentials<'_>, method: &str, password: &str) -> String {
    match creds.algorithm {
        Algorithm::Md5 | Algorithm::Md5Sess => {
            expected_response_with::<Md5>(creds, method, password)
        }
        Algorithm::Sha256 | Algorithm::Sha256Sess => {
            expected_response_with::<Sha256>(creds, method, password)
        }
    }
}

/// Whether `creds.response` is the right digest for `method` and `password`,
/// compared in constant time (case-insensitively for the hex digits).
pub fn verify(creds: &Credentials<'_>, method: &str, password: &str) -> bool {
    let expected = expected_response(creds, method, password);
    let given = creds.response.to_ascii_lowercase();
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// [`verify`] from the key's precomputed [`Ha1`] (of `creds.username` in [`REALM`], which
/// parsing guarantees `creds.realm` is), compared in constant time.
pub fn verify_ha1(creds: &Credentials<'_>, method: &str, ha1: &Ha1) -> bool {
    let expected = match creds.algorithm {
        Algorithm::Md5 | Algorithm::Md5Sess => {
            response_from_ha1::<Md5>(creds, method, ha1.md5.expose_secret())
        }
        Algorithm::Sha256 | Algorithm::Sha256Sess => {
            response_from_ha1::<Sha256>(creds, method, ha1.sha256.expose_secret())
        }
    };
    bool::from(expected.as_bytes().ct_eq(creds.response.as_bytes()))
}

type HmacSha256 = Hmac<Sha256>;

/// The 32-byte HMAC key that signs and checks nonces. `Debug` does not show it.
#[derive(Clone)]
pub struct NonceKey {
    bytes: [u8; 32],
    /// HMAC state with the key already absorbed: every nonce issued or checked clones it
    /// instead of hashing the key's pads again.
    keyed: HmacSha256,
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

/// Result of [`NonceKey::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Issued by this key and not expired.
    Valid {
        /// Issue time, unix milliseconds.
        issued_at_ms: u64,
    },
    /// Issued by this key but older than the allowed age, or too far in the future.
    Stale {
        /// Issue time, unix milliseconds.
        issued_at_ms: u64,
    },
    /// Malformed, or not issued by this key.
    Invalid,
}

/// Milliseconds since the unix epoch (0 before it, saturating far in the future).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl NonceKey {
    /// Wraps an existing key (e.g. shared by several server instances).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed = <HmacSha256 as Mac>::new_from_slice(&b)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { bytes: b, keyed }
    }

    /// Makes a new random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self::from_bytes(b)
    }

    /// The raw key bytes (secret).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    fn mac(&self, payload: &[u8; 16]) -> [u8; 16] {
        let mut mac = self.keyed.clone();
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// Issues a nonce: base64url (no padding) of issue time in unix ms (u64
    /// big-endian) ‖ 8 random bytes ‖ the first 16 bytes of HMAC-SHA256 over
    /// those 16 bytes. The result is [`NONCE_LEN`] characters long.
    pub fn issue(&self, now: SystemTime) -> String {
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(&unix_ms(now).to_be_bytes());
        rand::thread_rng().fill_bytes(&mut payload[8..]);
        let mut raw = [0u8; 32];
        raw[..16].copy_from_slice(&payload);
        raw[16..].copy_from_slice(&self.mac(&payload));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a nonce issued by [`NonceKey::issue`]: `Invalid` when malformed or
    /// signed by another key (MAC compared in constant time), `Stale` when older
    /// than `max_age` or more than [`MAX_CLOCK_SKEW`] in the future, else `Valid`.
    pub fn check(&self, nonce: &str, now: SystemTime, max_age: Duration) -> NonceStatus {
        if nonce.len() != NONCE_LEN {
            return NonceStatus::Invalid;
        }
        let mut raw = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(nonce.as_bytes(), &mut raw) {
            Ok(32) => {}
            _ => return NonceStatus::Invalid,
        }
        let mut payload = [0u8; 16];
        payload.copy_from_slice(&raw[..16]);
        let expected = self.mac(&payload);
        if !bool::from(expected.ct_eq(&raw[16..])) {
            return NonceStatus::Invalid;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&payload[..8]);
        let issued_at_ms = u64::from_be_bytes(ts);
        let now_ms = unix_ms(now);
        let too_new = issued_at_ms > now_ms.saturating_add(duration_ms(MAX_CLOCK_SKEW));
        let too_old = now_ms.saturating_sub(issued_at_ms) > duration_ms(max_age);
        if too_new || too_old {
            NonceStatus::Stale { issued_at_ms }
        } else {
            NonceStatus::Valid { issued_at_ms }
        }
    }
}

/// Verdict of [`ReplayGuard::check_and_record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// First use of this `(nonce, cnonce, nc)`; it is now recorded.
    Fresh,
    /// This `(nonce, cnonce, nc)` was seen before, or `nc` is too far behind.
    Replayed,
    /// The nonce is too old to be tracked any more; answer 401 with `stale=true`.
    Stale,
}

/// Number of shards in a [`ReplayGuard`].
const REPLAY_SHARDS: usize = 16;

/// Width of the out-of-order window below the highest `nc` seen.
const REPLAY_WINDOW: u32 = 128;

/// Replay state of one `(nonce, cnonce)` pair.
struct ReplayEntry {
    issued_at_ms: u64,
    /// Highest `nc` seen.
    max_nc: u32,
    /// Bit `i` set when `max_nc - 1 - i` has been seen.
    seen_below: u128,
}

impl ReplayEntry {
    /// Records `nc`; returns false when it was seen before or is out of the window.
    fn record(&mut self, nc: u32) -> bool {
        if nc > self.max_nc {
            let shift = nc - self.max_nc;
            self.seen_below = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen_below << shift
            };
            if shift <= REPLAY_WINDOW {
                // The previous maximum now sits `shift` below the new one.
                self.seen_below |= 1u128 << (shift - 1);
            }
            self.max_nc = nc;
            return true;
        }
        let distance = self.max_nc - nc;
        if distance == 0 || distance > REPLAY_WINDOW {
            return false;
        }
        let bit = 1u128 << (distance - 1);
        if self.seen_below & bit != 0 {
            return false;
        }
        self.seen_below |= bit;
        true
    }
}

/// One lock's worth of the replay map.
#[derive(Default)]
struct ReplayShard {
    entries: HashMap<[u8; 16], ReplayEntry>,
    /// Nonces issued at or before this time (unix ms) may have been evicted.
    watermark_ms: Option<u64>,
    /// New entries since the last prune.
    inserts_since_prune: usize,
}

impl ReplayShard {
    fn prune_expired(&mut self, now_ms: u64, max_age_ms: u64) {
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.issued_at_ms) <= max_age_ms);
        self.inserts_since_prune = 0;
    }

    /// Evicts the oldest entries (by issue time) until at most `keep` remain,
    /// raising the watermark to the newest evicted issue time.
    fn evict_oldest(&mut self, keep: usize) {
        let excess = self.entries.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let mut times: Vec<u64> = self.entries.values().map(|e| e.issued_at_ms).collect();
        let (_, cut, _) = times.select_nth_unstable(excess - 1);
        let cut = *cut;
        self.entries.retain(|_, e| e.issued_at_ms > cut);
        self.watermark_ms = Some(self.watermark_ms.map_or(cut, |w| w.max(cut)));
    }
}

/// Refuses replayed `(nonce, cnonce, nc)` triples, with bounded memory.
///
/// For each `(nonce, cnonce)` pair it keeps the highest `nc` seen and a bitmap
/// of the 128 counts below it, so requests arriving slightly out of order are
/// accepted once. Entries whose nonce is older than `max_age` are pruned; when
/// more than `capacity` entries remain, those with the oldest nonces are
/// evicted and requests with nonces issued at or before the evicted ones get
/// [`ReplayVerdict::Stale`]. The map is split into 16 independently locked
/// shards; the capacity is enforced per shard (`capacity / 16`, rounded up).
pub struct ReplayGuard {
    shards: Vec<Mutex<ReplayShard>>,
    max_age_ms: u64,
    shard_capacity: usize,
}

impl fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("max_age_ms", &self.max_age_ms)
            .field("shard_capacity", &self.shard_capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl ReplayGuard {
    /// Creates a guard that tracks nonces up to `max_age` old and about
    /// `capacity` `(nonce, cnonce)` pairs at most (at least one per shard).
    pub fn new(max_age: Duration, capacity: usize) -> Self {
        Self {
            shards: (0..REPLAY_SHARDS)
                .map(|_| Mutex::new(ReplayShard::default()))
                .collect(),
            max_age_ms: duration_ms(max_age),
            shard_capacity: capacity.div_ceil(REPLAY_SHARDS).max(1),
        }
    }

    /// Number of `(nonce, cnonce)` pairs currently tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }

    /// Whether no pair is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks `(nonce, cnonce, nc)` and records it when fresh.
    ///
    /// `issued_at_ms` is the nonce's issue time from [`NonceKey::check`]. Call
    /// this only after the digest response has been verified, so that
    /// unauthenticated clients cannot fill the map or burn other clients' counts.
    pub fn check_and_record(
        &self,
        nonce: &str,
        cnonce: &str,
        nc: u32,
        issued_at_ms: u64,
        now: SystemTime,
    ) -> ReplayVerdict {
        let now_ms = unix_ms(now);
        if now_ms.saturating_sub(issued_at_ms) > self.max_age_ms {
            return ReplayVerdict::Stale;
        }
        let key = replay_key(nonce, cnonce);
        let shard_index = usize::from(key[0]) % REPLAY_SHARDS;
        let Some(shard) = self.shards.get(shard_index) else {
            return ReplayVerdict::Stale;
        };
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.watermark_ms.is_some_and(|w| issued_at_ms <= w) {
            return ReplayVerdict::Stale;
        }
        if let Some(entry) = shard.entries.get_mut(&key) {
            return if entry.record(nc) {
                ReplayVerdict::Fresh
            } else {
                ReplayVerdict::Replayed
            };
        }
        shard.entries.insert(
            key,
            ReplayEntry {
                issued_at_ms,
                max_nc: nc,
                seen_below: 0,
            },
        );
        shard.inserts_since_prune += 1;
        let len = shard.entries.len();
        if len > self.shard_capacity || shard.inserts_since_prune >= (len / 2).max(64) {
            shard.prune_expired(now_ms, self.max_age_ms);
        }
        if shard.entries.len() > self.shard_capacity {
            // Evict down to 7/8 of the capacity so the O(n) work is amortised.
            let keep = self.shard_capacity - self.shard_capacity / 8;
            shard.evict_oldest(keep);
            if !shard.entries.contains_key(&key) {
                // The new entry itself was among the oldest.
                return ReplayVerdict::Stale;
            }
        }
        ReplayVerdict::Fresh
    }
}

/// A collision-resistant fixed-size key for a `(nonce, cnonce)` pair.
fn replay_key(nonce: &str, cnonce: &str) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update((nonce.len() as u64).to_be_bytes());
    hasher.update(nonce.as_bytes());
    hasher.update(cnonce.as_bytes());
    let digest = hasher.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc7616_creds(algorithm: Algorithm, response: &str) -> Credentials<'static> {
        Credentials {
            username: "Mufasa".into(),
            realm: "http-auth@example.org".into(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
            uri: "/dir/index.html".into(),
            response: response.to_owned().into(),
            algorithm,
            nc: 1,
            nc_raw: "00000001".into(),
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into(),
            opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".into()),
        }
    }

    #[test]
    fn rfc2617_example() {
        let creds = Credentials {
            username: "Mufasa".into(),
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            uri: "/dir/index.html".into(),
            response: "6629fae49393a05397450978507c4ef1".into(),
            algorithm: Algorithm::Md5,
            nc: 1,
            nc_raw: "00000001".into(),
            cnonce: "0a4f113b".into(),
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".into()),
        };
        assert_eq!(
            expected_response(&creds, "GET", "Circle Of Life"),
            "6629fae49393a05397450978507c4ef1"
        );
        assert!(verify(&creds, "GET", "Circle Of Life"));
        assert!(!verify(&creds, "GET", "Circle of Life"));
        assert!(!verify(&creds, "POST", "Circle Of Life"));
    }

    #[test]
    fn rfc7616_md5_example() {
        let creds = rfc7616_creds(Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec");
        assert_eq!(
            expected_response(&creds, "GET", "Circle of Life"),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        assert!(verify(&creds, "GET", "Circle of Life"));
        assert!(!verify(&creds, "GET", "Circle Of Life"));
    }

    #[test]
    fn rfc7616_sha256_example() {
        let response = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1";
        let creds = rfc7616_creds(Algorithm::Sha256, response);
        assert_eq!(expected_response(&creds, "GET", "Circle of Life"), response);
        assert!(verify(&creds, "GET", "Circle of Life"));
        let mut upper = creds.clone();
        upper.response = response.to_ascii_uppercase().into();
        assert!(verify(&upper, "GET", "Circle of Life"));
        let mut wrong = creds;
        wrong.nc_raw = "00000002".into();
        assert!(!verify(&wrong, "GET", "Circle of Life"));
    }

    #[test]
    fn sess_variants_hash_ha1_with_nonce_and_cnonce() {
        // Computed independently: HA1' = H(H(u:r:p):nonce:cnonce).
        let md5 = rfc7616_creds(Algorithm::Md5Sess, "");
        let ha1 = hash_hex::<Md5>(&[b"Mufasa", b"http-auth@example.org", b"Circle of Life"]);
        let ha1s = hash_hex::<Md5>(&[ha1.as_bytes(), md5.nonce.as_bytes(), md5.cnonce.as_bytes()]);
        let ha2 = hash_hex::<Md5>(&[b"GET", b"/dir/index.html"]);
        let want = hash_hex::<Md5>(&[
            ha1s.as_bytes(),
            md5.nonce.as_bytes(),
            b"00000001",
            md5.cnonce.as_bytes(),
            b"auth",
            ha2.as_bytes(),
        ]);
        assert_eq!(expected_response(&md5, "GET", "Circle of Life"), want);
        let plain = rfc7616_creds(Algorithm::Md5, "");
        assert_ne!(expected_response(&plain, "GET", "Circle of Life"), want);
        let sha = rfc7616_creds(Algorithm::Sha256Sess, "");
        let got = expected_response(&sha, "GET", "Circle of Life");
        assert_eq!(got.len(), 64);
        let sha_plain = rfc7616_creds(Algorithm::Sha256, "");
        assert_ne!(got, expected_response(&sha_plain, "GET", "Circle of Life"));
    }

    #[test]
    fn sess_known_vectors() {
        // Reference values computed independently (Python hashlib) from the
        // RFC 7616 section 3.9.1 inputs with the -sess algorithms.
        let md5 = rfc7616_creds(Algorithm::Md5Sess, "");
        assert_eq!(
            expected_response(&md5, "GET", "Circle of Life"),
            "e783283f46242139c486a698fec7211d"
        );
        let sha = rfc7616_creds(Algorithm::Sha256Sess, "");
        assert_eq!(
            expected_response(&sha, "GET", "Circle of Life"),
            "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7"
        );
    }

    fn header(extra: &str) -> String {
        format!(
            "Digest username=\"Mufasa\", realm=\"{REALM}\", nonce=\"abc\", uri=\"/api/x?y=1\", \
             response=\"6629fae49393a05397450978507c4ef1\", qop=auth, nc=00000001, \
             cnonce=\"0a4f113b\"{extra}"
        )
    }

    #[test]
    fn parses_typical_header() {
        let text = header(", opaque=\"xyz\"");
        let c = parse_authorization(text.as_bytes()).expect("parses");
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.realm, REALM);
        assert_eq!(c.nonce, "abc");
        assert_eq!(c.uri, "/api/x?y=1");
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(c.nc, 1);
        assert_eq!(c.nc_raw, "00000001");
        assert_eq!(c.cnonce, "0a4f113b");
        assert_eq!(c.opaque.as_deref(), Some("xyz"));
    }

    #[test]
    fn values_borrow_from_the_header_unless_they_must_change() {
        let text = header("");
        let c = parse_authorization(text.as_bytes()).expect("parses");
        for (name, value) in [
            ("username", &c.username),
            ("nonce", &c.nonce),
            ("uri", &c.uri),
            ("response", &c.response),
            ("nc", &c.nc_raw),
            ("cnonce", &c.cnonce),
        ] {
            assert!(matches!(value, Cow::Borrowed(_)), "{name} was copied");
        }
        // An escaped quoted string and an upper-case response are the two copies.
        let text = format!(
            "Digest username=\"a\\\"b\", realm=\"{REALM}\", nonce=\"n\", uri=\"/a\", \
             response=\"6629FAE49393A05397450978507C4EF1\", qop=auth, nc=00000001, cnonce=\"c\""
        );
        let c = parse_authorization(text.as_bytes()).expect("parses");
        assert_eq!(c.username, "a\"b");
        assert!(matches!(c.username, Cow::Owned(_)));
        assert_eq!(c.response, "6629fae49393a05397450978507c4ef1");
        assert!(matches!(c.response, Cow::Owned(_)));
        assert!(matches!(c.nonce, Cow::Borrowed(_)));
    }

    #[test]
    fn hex_on_the_stack_matches_hash_hex_for_both_algorithms() {
        let parts: [&[u8]; 3] = [b"Mufasa", b"realm", b"Circle of Life"];
        assert_eq!(Hex::of::<Md5>(&parts).as_bytes().len(), 32);
        assert_eq!(Hex::of::<Sha256>(&parts).as_bytes().len(), 64);
        // Against the digest crate's own output, formatted independently.
        for (hex, digest) in [
            (hash_hex::<Md5>(&parts), {
                let mut h = Md5::new();
                h.update(b"Mufasa:realm:Circle of Life");
                h.finalize().to_vec()
            }),
            (Hex::of::<Sha256>(&parts).into_string(), {
                let mut h = Sha256::new();
                h.update(b"Mufasa:realm:Circle of Life");
                h.finalize().to_vec()
            }),
        ] {
            let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, expected);
        }
    }

    #[test]
    fn parses_client_variants() {
        let cases = [
            // Go (mongodb-forks/digest) style.
            format!(
                "Digest username=\"pub\", realm=\"{REALM}\", nonce=\"n\", uri=\"/a\", \
                 response=\"6629FAE49393A05397450978507C4EF1\", algorithm=\"MD5\", qop=auth, \
                 nc=0000000a, cnonce=\"c\""
            ),
            // curl style.
            format!(
                "Digest username=\"pub\", realm=\"{REALM}\", nonce=\"n\", uri=\"/a\", \
                 cnonce=\"c\", nc=0000000a, qop=auth, \
                 response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5"
            ),
            // python-requests style (quoted qop, unquoted algorithm).
            format!(
                "Digest username=\"pub\", realm=\"{REALM}\", nonce=\"n\", uri=\"/a\", \
                 response=\"6629fae49393a05397450978507c4ef1\", algorithm=\"md5\", qop=\"auth\", \
                 nc=0000000A, cnonce=\"c\""
            ),
            // No whitespace, odd case, tabs, BWS around '=', unknown params, empty elements.
            format!(
                "dIgEsT\tUserName=\"pub\",REALM=\"{REALM}\",nonce=\"n\",uri=\"/a\",\
                 response = \"6629fae49393a05397450978507c4ef1\" ,qop=\"auth\",nc=\"0000000a\",\
                 cnonce=c,,future-param=\"x, y\",domain=\"\",userhash=false,"
            ),
        ];
        for h in &cases {
            let c = parse_authorization(h.as_bytes()).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert_eq!(c.username, "pub");
            assert_eq!(c.nc, 10);
            assert_eq!(c.algorithm, Algorithm::Md5);
            assert_eq!(c.response, "6629fae49393a05397450978507c4ef1");
        }
    }

    #[test]
    fn accepts_headers_captured_from_real_clients() {
        // Sent by curl 7.88 (`--digest`) and python-requests 2.34 (one session,
        // two requests) to a local server answering with `challenge(..)`.
        let captured = [
            (
                "Digest username=\"pubkey\", realm=\"MMS Public API\", \
                 nonce=\"AAABjL2q3xAxMjM0NTY3OKqqu7vMzN3d7u7_AAAAAAA\", \
                 uri=\"/api/atlas/v2/groups?pretty=true&x=1\", \
                 cnonce=\"NGQ0Yjg2OGRjYTY5NzYxYzNmZmI2YjI1NGUyNjA5MWE=\", nc=00000001, \
                 qop=auth, response=\"6859a9ad814bfa9e6debf9ad4ce7f43d\", algorithm=MD5",
                1,
            ),
            (
                "Digest username=\"pubkey\", realm=\"MMS Public API\", \
                 nonce=\"AAABjL2q3xAxMjM0NTY3OKqqu7vMzN3d7u7_AAAAAAA\", \
                 uri=\"/api/atlas/v1.0/groups\", response=\"66e706e8f61c6a572694575e53753ee5\", \
                 algorithm=\"MD5\", qop=\"auth\", nc=00000001, cnonce=\"00978b34698f11a4\"",
                1,
            ),
            (
                "Digest username=\"pubkey\", realm=\"MMS Public API\", \
                 nonce=\"AAABjL2q3xAxMjM0NTY3OKqqu7vMzN3d7u7_AAAAAAA\", \
                 uri=\"/api/atlas/v1.0/groups/2\", response=\"2c9034c469d2e797f2a5b14aece357b3\", \
                 algorithm=\"MD5\", qop=\"auth\", nc=00000002, cnonce=\"8f453ecd17625544\"",
                2,
            ),
        ];
        for (h, nc) in captured {
            let c = parse_authorization(h.as_bytes()).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert_eq!(c.username, "pubkey");
            assert_eq!(c.nc, nc);
            assert!(verify(&c, "GET", "priv-key-1"), "{h}");
            assert!(!verify(&c, "GET", "priv-key-2"), "{h}");
        }
    }

    #[test]
    fn quoted_values_keep_tabs_and_non_ascii_and_refuse_control_bytes() {
        let with = |username: &str| {
            format!(
                "Digest username=\"{username}\", realm=\"{REALM}\", nonce=\"n\", uri=\"/\", \
                 response=\"{}\", qop=auth, nc=00000001, cnonce=\"c\"",
                "a".repeat(32)
            )
        };
        let text = with("é\tx");
        let c = parse_authorization(text.as_bytes()).expect("parses");
        assert_eq!(c.username, "é\tx");
        for bad in ["a\u{1}b", "a\u{7f}b", "a\nb"] {
            assert!(
                matches!(
                    parse_authorization(with(bad).as_bytes()),
                    Err(ParseError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        // The escape is found after plain text, and the value still ends at its quote.
        let text = with("plain\\\"quoted");
        let c = parse_authorization(text.as_bytes()).expect("parses");
        assert_eq!(c.username, "plain\"quoted");
    }

    #[test]
    fn parses_escapes_and_algorithms() {
        let h = format!(
            "Digest username=\"a\\\"b\\\\c\", realm=\"{REALM}\", nonce=\"n\", uri=\"/\", \
             response=\"{}\", algorithm=sha-256-SESS, qop=auth, nc=ffffffff, cnonce=\"c\"",
            "a".repeat(64)
        );
        let c = parse_authorization(h.as_bytes()).expect("parses");
        assert_eq!(c.username, "a\"b\\c");
        assert_eq!(c.algorithm, Algorithm::Sha256Sess);
        assert_eq!(c.nc, u32::MAX);
        for (name, alg) in [
            ("MD5", Algorithm::Md5),
            ("md5-SESS", Algorithm::Md5Sess),
            ("SHA-256", Algorithm::Sha256),
            ("Sha-256-Sess", Algorithm::Sha256Sess),
        ] {
            assert_eq!(Algorithm::from_name(name), Some(alg));
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Algorithm::from_name("SHA-512-256"), None);
    }

    #[test]
    fn rejects_bad_headers() {
        let md5 = "6629fae49393a05397450978507c4ef1";
        let ok = |s: &str| format!("Digest username=\"u\", realm=\"{REALM}\", {s}");
        let base = "nonce=\"n\", uri=\"/\", qop=auth, nc=00000001, cnonce=\"c\"";
        let cases: Vec<(Vec<u8>, ParseError)> = vec![
            (vec![b'a'; MAX_HEADER_LEN + 1], ParseError::TooLong),
            (b"Digest username=\"\xff\"".to_vec(), ParseError::NotUtf8),
            (b"Basic dXNlcjpwYXNz".to_vec(), ParseError::NotDigest),
            (b"".to_vec(), ParseError::NotDigest),
            (b"Digest".to_vec(), ParseError::NotDigest),
            (b"Digestusername=\"u\"".to_vec(), ParseError::NotDigest),
            (b"DigestX username=\"u\"".to_vec(), ParseError::NotDigest),
            (
                ok(&format!("{base}, response=\"{md5}")).into_bytes(),
                ParseError::UnterminatedQuote,
            ),
            (
                ok(&format!("{base}, response={md5}, nc=00000002")).into_bytes(),
                ParseError::DuplicateParameter("nc".into()),
            ),
            (
                ok(&format!("{base}, response={md5}, NONCE=x")).into_bytes(),
                ParseError::DuplicateParameter("nonce".into()),
            ),
            (
                ok(&format!("{base}, response={md5}, foo=1, Foo=2")).into_bytes(),
                ParseError::DuplicateParameter("foo".into()),
            ),
            (
                format!("Digest username=\"\", realm=\"{REALM}\", {base}, response={md5}")
                    .into_bytes(),
                ParseError::EmptyUsername,
            ),
            (
                ok(&format!("{base}, response={md5}, userhash=true")).into_bytes(),
                ParseError::UserhashUnsupported,
            ),
            (
                format!("Digest username=\"u\", realm=\"other\", {base}, response={md5}")
                    .into_bytes(),
                ParseError::WrongRealm,
            ),
            (
                ok(&format!("{base}, response={md5}, algorithm=SHA-512")).into_bytes(),
                ParseError::UnsupportedAlgorithm,
            ),
            (
                ok(&format!("{base}, response={md5}, algorithm=SHA-256")).into_bytes(),
                ParseError::InvalidResponse { expected: 64 },
            ),
            (
                ok(&format!("{base}, response=\"{}\"", "z".repeat(32))).into_bytes(),
                ParseError::InvalidResponse { expected: 32 },
            ),
            (
                ok(&format!(
                    "{}, response={md5}",
                    base.replace("qop=auth", "qop=\"auth,auth-int\"")
                ))
                .into_bytes(),
                ParseError::UnsupportedQop,
            ),
            (
                ok(&format!(
                    "{}, response={md5}",
                    base.replace("qop=auth", "qop=auth-int")
                ))
                .into_bytes(),
                ParseError::UnsupportedQop,
            ),
            (
                ok(&format!(
                    "{}, response={md5}",
                    base.replace("00000001", "1")
                ))
                .into_bytes(),
                ParseError::InvalidNonceCount,
            ),
            (
                ok(&format!(
                    "{}, response={md5}",
                    base.replace("00000001", "0000000g")
                ))
                .into_bytes(),
                ParseError::InvalidNonceCount,
            ),
            (
                ok(&format!(
                    "{}, response={md5}",
                    base.replace("00000001", "+0000001")
                ))
                .into_bytes(),
                ParseError::InvalidNonceCount,
            ),
            (
                ok(base).into_bytes(),
                ParseError::MissingParameter("response"),
            ),
            (
                ok(&format!(
                    "{}, response={md5}",
                    base.replace("cnonce=\"c\"", "x=1")
                ))
                .into_bytes(),
                ParseError::MissingParameter("cnonce"),
            ),
            (
                ok(&format!(
                    "{}, response={md5}",
                    base.replace("\"/\"", "\"\"")
                ))
                .into_bytes(),
                ParseError::EmptyParameter("uri"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_authorization(&input).err(),
                Some(want),
                "{}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn known_names_are_found_in_any_case_and_nothing_else_is() {
        let mut names: Vec<String> = Vec::new();
        for name in KNOWN {
            names.push(name.to_owned());
            names.push(name.to_ascii_uppercase());
            let mut mixed: Vec<u8> = name.bytes().collect();
            mixed[0] = mixed[0].to_ascii_uppercase();
            names.push(String::from_utf8(mixed).unwrap());
            names.push(format!("{name}x"));
            names.push(name[1..].to_owned());
            names.push(format!("x{}", &name[1..]));
            names.push(format!("{}x", &name[..name.len() - 1]));
        }
        names.extend(
            [
                "", "a", "u", "usernamf", "userhasx", "r", "x-custom", "stale", "domain",
            ]
            .map(String::from),
        );
        for name in &names {
            let linear = KNOWN.iter().position(|k| k.eq_ignore_ascii_case(name));
            assert_eq!(known(name), linear, "{name:?}");
        }
    }

    #[test]
    fn hex_digit_classes_match_the_ascii_rules() {
        for b in 0..=u8::MAX {
            let class = match b {
                _ if !b.is_ascii_hexdigit() => NOT_HEX,
                _ if b.is_ascii_uppercase() => UPPER_HEX,
                _ => LOWER_HEX,
            };
            assert_eq!(HEX_DIGIT[usize::from(b)], class, "byte {b}");
        }
    }

    #[test]
    fn byte_tables_are_rfc_7230_tchar_and_plain_quoted_text() {
        for b in 0..=u8::MAX {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_tchar(b), tchar, "byte {b}");
            // qdtext (tab, space, 0x21, 0x23-0x5B, 0x5D-0x7E, obs-text 0x80-0xFF).
            let qdtext = matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff);
            assert_eq!(QUOTED_PLAIN[usize::from(b)], qdtext, "byte {b}");
        }
    }

    #[test]
    fn rejects_garbage_between_parameters() {
        let md5 = "6629fae49393a05397450978507c4ef1";
        let bad = [
            format!("Digest username=\"u\" garbage, realm=\"{REALM}\""),
            format!("Digest username=\"u\" realm=\"{REALM}\""),
            format!("Digest username=\"u\"; realm=\"{REALM}\""),
            "Digest username=\"u\", realm".to_owned(),
            "Digest username=\"u\", realm=".to_owned(),
            "Digest username=\"u\", =x".to_owned(),
            "Digest username=u/v".to_owned(),
            "Digest username=\"u\"x".to_owned(),
            format!("Digest abc==, response={md5}"),
            "Digest username=\"a\u{1}b\"".to_owned(),
            "Digest username=\"a\\\u{1}b\"".to_owned(),
        ];
        for h in &bad {
            assert!(
                matches!(
                    parse_authorization(h.as_bytes()),
                    Err(ParseError::Malformed { .. })
                ),
                "{h}: {:?}",
                parse_authorization(h.as_bytes())
            );
        }
        assert_eq!(
            parse_authorization(b"Digest username=\"u\\").err(),
            Some(ParseError::UnterminatedQuote)
        );
    }

    #[test]
    fn parser_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let good = header(", algorithm=\"MD5-sess\", opaque=\"o\\\"p\"");
        let good = good.as_bytes();
        // Every truncation and every single-byte mutation of a valid header.
        for end in 0..=good.len() {
            let _ = parse_authorization(&good[..end]);
        }
        let alphabet = b"\"\\,= \t\x00\x7f\xc3\xa9aZ09-_/Digest";
        for i in 0..good.len() {
            for &b in alphabet {
                let mut v = good.to_vec();
                v[i] = b;
                let _ = parse_authorization(&v);
            }
        }
        // Random byte strings, random strings built from header fragments.
        let fragments: [&[u8]; 14] = [
            b"Digest ",
            b"username=",
            b"\"",
            b"\\",
            b",",
            b" ",
            b"=",
            b"nc=",
            b"00000001",
            b"response=",
            b"algorithm=SHA-256",
            b"\xf0\x9f\x92",
            b"qop=auth",
            b"realm=\"MMS Public API\"",
        ];
        for _ in 0..20_000 {
            let len = rng.gen_range(0..200);
            let v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = parse_authorization(&v);
            let mut w = Vec::new();
            for _ in 0..rng.gen_range(0..30) {
                w.extend_from_slice(fragments[rng.gen_range(0..fragments.len())]);
            }
            let _ = parse_authorization(&w);
        }
        let mut long = b"Digest ".to_vec();
        long.resize(MAX_HEADER_LEN, b'"');
        let _ = parse_authorization(&long);
    }

    #[test]
    fn debug_redacts_secrets() {
        let text = header("");
        let c = parse_authorization(text.as_bytes()).expect("parses");
        let dbg = format!("{c:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains("6629fae49393a05397450978507c4ef1"));
        let key = NonceKey::from_bytes([0xab; 32]);
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("ab") && !dbg.contains("171"));
    }

    #[test]
    fn challenge_format() {
        assert_eq!(
            challenge("abc-_1", false),
            "Digest realm=\"MMS Public API\", domain=\"\", nonce=\"abc-_1\", algorithm=MD5, qop=\"auth\", stale=false"
        );
        assert_eq!(
            challenge("abc", true),
            "Digest realm=\"MMS Public API\", domain=\"\", nonce=\"abc\", algorithm=MD5, qop=\"auth\", stale=true"
        );
        assert_eq!(
            challenge("a\"b", false),
            "Digest realm=\"MMS Public API\", domain=\"\", nonce=\"a\\\"b\", algorithm=MD5, qop=\"auth\", stale=false"
        );
    }

    #[test]
    fn round_trip_with_issued_nonce() {
        let key = NonceKey::generate();
        let now = SystemTime::now();
        let nonce = key.issue(now);
        assert_eq!(nonce.len(), NONCE_LEN);
        let mut creds = rfc7616_creds(Algorithm::Sha256, "");
        creds.realm = REALM.into();
        creds.nonce = nonce.clone().into();
        creds.response = expected_response(&creds, "POST", "secret").into();
        let h = format!(
            "Digest username=\"{}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{}\", \
             response=\"{}\", algorithm=SHA-256, qop=auth, nc={}, cnonce=\"{}\"",
            creds.username, creds.uri, creds.response, creds.nc_raw, creds.cnonce
        );
        assert_eq!(
            parse_authorization(challenge(&nonce, false).as_bytes()).map(|_| ()),
            Err(ParseError::MissingParameter("username"))
        );
        let parsed = parse_authorization(h.as_bytes()).expect("parses");
        assert!(verify(&parsed, "POST", "secret"));
        assert!(!verify(&parsed, "GET", "secret"));
        assert!(!verify(&parsed, "POST", "secreT"));
        assert!(matches!(
            key.check(&parsed.nonce, now, Duration::from_secs(300)),
            NonceStatus::Valid { .. }
        ));
    }

    #[test]
    fn precomputed_ha1_verifies_exactly_like_the_password() {
        for algorithm in [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ] {
            let mut creds = rfc7616_creds(algorithm, "");
            creds.realm = REALM.into();
            creds.response = expected_response(&creds, "GET", "secret").into();
            let right = Ha1::new(&creds.username, "secret");
            let wrong = Ha1::new(&creds.username, "secreT");
            let other_user = Ha1::new("someone-else", "secret");
            assert!(verify_ha1(&creds, "GET", &right), "{algorithm:?}");
            assert!(!verify_ha1(&creds, "PUT", &right), "{algorithm:?}");
            assert!(!verify_ha1(&creds, "GET", &wrong), "{algorithm:?}");
            assert!(!verify_ha1(&creds, "GET", &other_user), "{algorithm:?}");
            assert_eq!(format!("{right:?}"), "Ha1(<redacted>)");
        }
    }

    #[test]
    fn nonce_valid_stale_invalid() {
        let key = NonceKey::from_bytes([7; 32]);
        let t0 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let max_age = Duration::from_secs(300);
        let nonce = key.issue(t0);
        let issued_at_ms = 1_700_000_000_123;
        assert_eq!(
            key.check(&nonce, t0, max_age),
            NonceStatus::Valid { issued_at_ms }
        );
        assert_eq!(
            key.check(&nonce, t0 + max_age, max_age),
            NonceStatus::Valid { issued_at_ms }
        );
        assert_eq!(
            key.check(&nonce, t0 + max_age + Duration::from_millis(1), max_age),
            NonceStatus::Stale { issued_at_ms }
        );
        // Issued in the future: tolerated up to the skew, stale beyond.
        assert_eq!(
            key.check(&nonce, t0 - Duration::from_secs(59), max_age),
            NonceStatus::Valid { issued_at_ms }
        );
        assert_eq!(
            key.check(&nonce, t0 - Duration::from_secs(61), max_age),
            NonceStatus::Stale { issued_at_ms }
        );
        // Two nonces issued at the same instant differ.
        assert_ne!(nonce, key.issue(t0));
        // Another key.
        let other = NonceKey::from_bytes([8; 32]);
        assert_eq!(other.check(&nonce, t0, max_age), NonceStatus::Invalid);
        assert_eq!(
            NonceKey::generate().check(&nonce, t0, max_age),
            NonceStatus::Invalid
        );
        // Tampering with any character.
        let alphabet: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .chars()
                .collect();
        for i in 0..nonce.len() {
            for &c in &alphabet {
                let mut chars: Vec<char> = nonce.chars().collect();
                if chars[i] == c {
                    continue;
                }
                chars[i] = c;
                let tampered: String = chars.into_iter().collect();
                assert_eq!(
                    key.check(&tampered, t0, max_age),
                    NonceStatus::Invalid,
                    "{tampered}"
                );
            }
        }
        // Tampering with any decoded byte, re-encoded canonically.
        let raw = URL_SAFE_NO_PAD.decode(&nonce).expect("decodes");
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut t = raw.clone();
                t[i] ^= 1 << bit;
                let tampered = URL_SAFE_NO_PAD.encode(&t);
                assert_eq!(key.check(&tampered, t0, max_age), NonceStatus::Invalid);
            }
        }
        // Malformed.
        for bad in [
            "",
            "abc",
            &nonce[1..],
            &format!("{nonce}A"),
            &format!("{nonce}="),
            &nonce.replace(|c: char| c == nonce.chars().next().unwrap_or('A'), "+"),
            &format!("é{}", "A".repeat(NONCE_LEN - 2)),
        ] {
            assert_eq!(key.check(bad, t0, max_age), NonceStatus::Invalid, "{bad}");
        }
    }

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn replay_same_triple_and_rising_nc() {
        let guard = ReplayGuard::new(Duration::from_secs(300), 1000);
        let now = at_ms(1_000_000);
        let issued = 999_000;
        assert_eq!(
            guard.check_and_record("n", "c", 1, issued, now),
            ReplayVerdict::Fresh
        );
        assert_eq!(
            guard.check_and_record("n", "c", 1, issued, now),
            ReplayVerdict::Replayed
        );
        for nc in 2..500 {
            assert_eq!(
                guard.check_and_record("n", "c", nc, issued, now),
                ReplayVerdict::Fresh
            );
            assert_eq!(
                guard.check_and_record("n", "c", nc, issued, now),
                ReplayVerdict::Replayed
            );
        }
        // Same nc with another cnonce, or another nonce, is a different triple.
        assert_eq!(
            guard.check_and_record("n", "c2", 1, issued, now),
            ReplayVerdict::Fresh
        );
        assert_eq!(
            guard.check_and_record("n2", "c", 1, issued, now),
            ReplayVerdict::Fresh
        );
        // The key is unambiguous: ("ab", "c") differs from ("a", "bc").
        assert_eq!(
            guard.check_and_record("ab", "c", 7, issued, now),
            ReplayVerdict::Fresh
        );
        assert_eq!(
            guard.check_and_record("a", "bc", 7, issued, now),
            ReplayVerdict::Fresh
        );
        assert_eq!(guard.len(), 5);
    }

    #[test]
    fn replay_out_of_order_window() {
        let guard = ReplayGuard::new(Duration::from_secs(300), 1000);
        let now = at_ms(1_000_000);
        let issued = 999_000;
        let check = |nc| guard.check_and_record("n", "c", nc, issued, now);
        assert_eq!(check(5), ReplayVerdict::Fresh);
        assert_eq!(check(3), ReplayVerdict::Fresh);
        assert_eq!(check(3), ReplayVerdict::Replayed);
        assert_eq!(check(4), ReplayVerdict::Fresh);
        assert_eq!(check(4), ReplayVerdict::Replayed);
        assert_eq!(check(5), ReplayVerdict::Replayed);
        assert_eq!(check(200), ReplayVerdict::Fresh);
        // 200 - 128 = 72 is the lowest count still in the window.
        assert_eq!(check(71), ReplayVerdict::Replayed);
        assert_eq!(check(72), ReplayVerdict::Fresh);
        assert_eq!(check(72), ReplayVerdict::Replayed);
        assert_eq!(check(199), ReplayVerdict::Fresh);
        assert_eq!(check(199), ReplayVerdict::Replayed);
        // A jump of exactly the window keeps the old maximum at the window's edge.
        assert_eq!(check(328), ReplayVerdict::Fresh);
        assert_eq!(check(200), ReplayVerdict::Replayed);
        assert_eq!(check(201), ReplayVerdict::Fresh);
        // A jump beyond the window forgets everything below it.
        assert_eq!(check(1000), ReplayVerdict::Fresh);
        assert_eq!(check(328), ReplayVerdict::Replayed);
        assert_eq!(check(999), ReplayVerdict::Fresh);
        assert_eq!(check(872), ReplayVerdict::Fresh);
        assert_eq!(check(871), ReplayVerdict::Replayed);
        assert_eq!(check(u32::MAX), ReplayVerdict::Fresh);
        assert_eq!(check(u32::MAX), ReplayVerdict::Replayed);
        assert_eq!(check(u32::MAX - 1), ReplayVerdict::Fresh);
    }

    #[test]
    fn replay_window_matches_model() {
        use rand::{Rng, SeedableRng};
        use std::collections::HashSet;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut entry = ReplayEntry {
            issued_at_ms: 0,
            max_nc: 0,
            seen_below: 0,
        };
        let mut seen = HashSet::from([0u32]);
        let mut max = 0u32;
        for _ in 0..100_000 {
            let nc = if rng.gen_bool(0.5) {
                max.saturating_add(rng.gen_range(0..140))
            } else {
                max.saturating_sub(rng.gen_range(0..140))
            };
            let model = !seen.contains(&nc) && nc + REPLAY_WINDOW >= max;
            assert_eq!(entry.record(nc), model, "nc={nc} max={max}");
            if model {
                seen.insert(nc);
                max = max.max(nc);
            }
        }
    }

    #[test]
    fn replay_expired_and_pruned() {
        let max_age = Duration::from_secs(10);
        let guard = ReplayGuard::new(max_age, 1_000_000);
        let now = at_ms(100_000);
        assert_eq!(
            guard.check_and_record("old", "c", 1, 89_999, now),
            ReplayVerdict::Stale
        );
        assert_eq!(
            guard.check_and_record("ok", "c", 1, 90_000, now),
            ReplayVerdict::Fresh
        );
        for i in 0..2_000 {
            let n = format!("n{i}");
            assert_eq!(
                guard.check_and_record(&n, "c", 1, 90_000 + i, now),
                ReplayVerdict::Fresh
            );
        }
        assert_eq!(guard.len(), 2_001);
        // Much later, inserting new entries prunes the expired ones.
        let later = at_ms(200_000);
        for i in 0..2_000 {
            let n = format!("m{i}");
            assert_eq!(
                guard.check_and_record(&n, "c", 1, 195_000, later),
                ReplayVerdict::Fresh
            );
        }
        assert!(guard.len() < 3_000, "len {}", guard.len());
    }

    #[test]
    fn replay_capacity_eviction() {
        let guard = ReplayGuard::new(Duration::from_secs(3600), 64);
        let now = at_ms(10_000_000);
        // Old nonces, issued at 9_000_000 + i.
        for i in 0..1_000u64 {
            let n = format!("old{i}");
            let v = guard.check_and_record(&n, "c", 1, 9_000_000 + i, now);
            assert_ne!(v, ReplayVerdict::Replayed);
        }
        assert!(guard.len() <= 64, "len {}", guard.len());
        // The oldest nonces were evicted: retrying them is stale, never fresh.
        for i in 0..100u64 {
            let n = format!("old{i}");
            assert_eq!(
                guard.check_and_record(&n, "c", 2, 9_000_000 + i, now),
                ReplayVerdict::Stale
            );
        }
        // Newer nonces are tracked normally.
        for i in 0..40u64 {
            let n = format!("new{i}");
            assert_eq!(
                guard.check_and_record(&n, "c", 1, 9_500_000 + i, now),
                ReplayVerdict::Fresh
            );
        }
        assert!(guard.len() <= 64 + REPLAY_SHARDS);
    }

    #[test]
    fn replay_extreme_settings_do_not_panic() {
        let now = at_ms(1_000);
        let guard = ReplayGuard::new(Duration::MAX, usize::MAX);
        assert_eq!(
            guard.check_and_record("n", "c", 0, 0, now),
            ReplayVerdict::Fresh
        );
        assert_eq!(
            guard.check_and_record("n", "c", u32::MAX, u64::MAX, now),
            ReplayVerdict::Fresh
        );
        let guard = ReplayGuard::new(Duration::ZERO, 0);
        assert_eq!(
            guard.check_and_record("n", "c", 1, 1_000, now),
            ReplayVerdict::Fresh
        );
        assert_eq!(
            guard.check_and_record("n", "c", 1, 999, now),
            ReplayVerdict::Stale
        );
        let key = NonceKey::generate();
        let nonce = key.issue(UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(
            key.check(&nonce, SystemTime::UNIX_EPOCH, Duration::MAX),
            NonceStatus::Valid { issued_at_ms: 0 }
        );
    }

    #[test]
    fn replay_guard_concurrent() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ReplayGuard>();
        assert_send_sync::<NonceKey>();
        let guard = std::sync::Arc::new(ReplayGuard::new(Duration::from_secs(300), 100_000));
        let now = at_ms(1_000_000);
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let guard = guard.clone();
                std::thread::spawn(move || {
                    let mut fresh = 0;
                    for nc in 1..=100u32 {
                        // All threads race on the same triples (all within the window).
                        if guard.check_and_record("shared", "c", nc, 999_000, now)
                            == ReplayVerdict::Fresh
                        {
                            fresh += 1;
                        }
                        let own = format!("own{t}");
                        assert_eq!(
                            guard.check_and_record(&own, "c", nc, 999_000, now),
                            ReplayVerdict::Fresh
                        );
                    }
                    fresh
                })
            })
            .collect();
        let total: u32 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert_eq!(total, 100);
    }
}
