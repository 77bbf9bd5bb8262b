//! The load generator's HTTP side: a minimal HTTP/1.1 keep-alive client over a tokio
//! `TcpStream` (write the request in one piece, read the head up to `\r\n\r\n`, then a
//! `Content-Length` or chunked body), and the client side of HTTP Digest as curl does it on a
//! reused connection: one challenge, then the same nonce with `nc` rising and a fixed
//! `cnonce` (MD5, `qop=auth`), and a fresh challenge when the server says `stale=true`.
//!
//! It is deliberately small: it shares the machine's cores with the server it measures.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use md5::Md5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The realm the server uses (and the default when a challenge names none).
pub const REALM: &str = "MMS Public API";

/// Heads longer than this are refused (a server gone wrong, not a real answer).
const MAX_HEAD: usize = 64 * 1024;

fn md5_hex(parts: &[&[u8]]) -> String {
    atlas_integrations::auth::digest::hash_hex::<Md5>(parts)
}

/// One connection's Digest state.
#[derive(Debug, Clone)]
pub struct DigestState {
    user: String,
    password: String,
    realm: String,
    ha1: String,
    nonce: String,
    nc: u32,
    cnonce: String,
}

impl DigestState {
    /// State for `user`/`password` with this connection's `cnonce`, before any challenge.
    pub fn new(user: &str, password: &str, cnonce: String) -> Self {
        let ha1 = md5_hex(&[user.as_bytes(), REALM.as_bytes(), password.as_bytes()]);
        Self {
            user: user.to_owned(),
            password: password.to_owned(),
            realm: REALM.to_owned(),
            ha1,
            nonce: String::new(),
            nc: 0,
            cnonce,
        }
    }

    /// Takes the nonce (and realm) of a `WWW-Authenticate: Digest ...` challenge, restarting
    /// `nc`. Returns whether it said `stale=true`, or `None` when it is not a Digest challenge
    /// with a nonce.
    pub fn take_challenge(&mut self, header: &str) -> Option<bool> {
        let rest = header.trim_start();
        if !rest
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("digest "))
        {
            return None;
        }
        let nonce = param(rest, "nonce")?;
        let realm = param(rest, "realm").unwrap_or_else(|| REALM.to_owned());
        if realm != self.realm {
            self.ha1 = md5_hex(&[
                self.user.as_bytes(),
                realm.as_bytes(),
                self.password.as_bytes(),
            ]);
            self.realm = realm;
        }
        self.nonce = nonce;
        self.nc = 0;
        Some(param(rest, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")))
    }

    /// Uses `nonce` without a challenge (for the ceiling, which never sends one).
    pub fn set_nonce(&mut self, nonce: &str) {
        self.nonce = nonce.to_owned();
        self.nc = 0;
    }

    /// Appends `Authorization: Digest ...\r\n` for the next request, `nc` one higher.
    fn write_header(&mut self, method: &str, uri: &str, out: &mut Vec<u8>) {
        self.nc = self.nc.wrapping_add(1);
        let nc = format!("{:08x}", self.nc);
        let ha2 = md5_hex(&[method.as_bytes(), uri.as_bytes()]);
        let response = md5_hex(&[
            self.ha1.as_bytes(),
            self.nonce.as_bytes(),
            nc.as_bytes(),
            self.cnonce.as_bytes(),
            b"auth",
            ha2.as_bytes(),
        ]);
        out.extend_from_slice(b"Authorization: Digest username=\"");
        out.extend_from_slice(self.user.as_bytes());
        out.extend_from_slice(b"\", realm=\"");
        out.extend_from_slice(self.realm.as_bytes());
        out.extend_from_slice(b"\", nonce=\"");
        out.extend_from_slice(self.nonce.as_bytes());
        out.extend_from_slice(b"\", uri=\"");
        out.extend_from_slice(uri.as_bytes());
        out.extend_from_slice(b"\", algorithm=MD5, response=\"");
        out.extend_from_slice(response.as_bytes());
        out.extend_from_slice(b"\", qop=auth, nc=");
        out.extend_from_slice(nc.as_bytes());
        out.extend_from_slice(b", cnonce=\"");
        out.extend_from_slice(self.cnonce.as_bytes());
        out.extend_from_slice(b"\"\r\n");
    }
}

/// A parameter of a challenge, quoted or not.
fn param(header: &str, name: &str) -> Option<String> {
    let mut rest = header;
    while let Some(at) = rest.find(name) {
        let before_ok = at == 0 || matches!(rest.as_bytes()[at - 1], b' ' | b',' | b'\t');
        let after = &rest[at + name.len()..];
        let after_trim = after.trim_start();
        if before_ok && after_trim.starts_with('=') {
            let value = after_trim[1..].trim_start();
            return Some(if let Some(quoted) = value.strip_prefix('"') {
                let end = quoted.find('"').unwrap_or(quoted.len());
                quoted[..end].to_owned()
            } else {
                let end = value.find([',', ' ']).unwrap_or(value.len());
                value[..end].to_owned()
            });
        }
        rest = after;
    }
    None
}

/// A response whose body is still in the connection's buffer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `WWW-Authenticate` header, when there is one.
    pub challenge: Option<String>,
    /// Whether the server said it will close the connection.
    pub close: bool,
    body: Range<usize>,
    chunked: bool,
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`.
    pos: usize,
    /// End of the bytes read into `buf`.
    len: usize,
    out: Vec<u8>,
    /// A chunked body, reassembled.
    dechunked: Vec<u8>,
}

impl Conn {
    /// Connects (Nagle off: a request goes out in one write anyway).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            buf: vec![0; 16 * 1024],
            pos: 0,
            len: 0,
            out: Vec::with_capacity(1024),
            dechunked: Vec::new(),
        })
    }

    /// Sends one request (with Digest credentials when `digest` is given) and reads the
    /// whole response.
    pub async fn send(
        &mut self,
        method: &str,
        uri: &str,
        digest: Option<&mut DigestState>,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        self.out.clear();
        let out = &mut self.out;
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(uri.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nAccept: application/json\r\n");
        if let Some(digest) = digest {
            digest.write_header(method, uri, out);
        }
        if let Some(body) = body {
            out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            out.extend_from_slice(body.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.out).await?;
        self.read_response(method == "HEAD").await
    }

    /// The body of the last response.
    pub fn body(&self, response: &Response) -> &[u8] {
        if response.chunked {
            &self.dechunked
        } else {
            self.buf.get(response.body.clone()).unwrap_or_default()
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.len == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            } else {
                let bigger = self.buf.len() * 2;
                self.buf.resize(bigger, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.len..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.len += n;
        Ok(())
    }

    /// Makes `n` unread bytes available from `pos`.
    async fn need(&mut self, n: usize) -> io::Result<()> {
        while self.len - self.pos < n {
            if self.buf.len() - self.pos < n {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
                if self.buf.len() < n {
                    self.buf.resize(n.next_power_of_two(), 0);
                }
            }
            self.fill().await?;
        }
        Ok(())
    }

    /// A line ending in CRLF from `pos` (without it); moves past it.
    async fn line(&mut self) -> io::Result<String> {
        let mut scanned = self.pos;
        loop {
            if let Some(at) = find(&self.buf[scanned..self.len], b"\r\n") {
                let end = scanned + at;
                let text = String::from_utf8_lossy(&self.buf[self.pos..end]).into_owned();
                self.pos = end + 2;
                return Ok(text);
            }
            scanned = self.len.saturating_sub(1).max(self.pos);
            if self.len - self.pos > MAX_HEAD {
                return Err(invalid("a chunk line is too long"));
            }
            let before = self.pos;
            self.fill().await?;
            scanned = scanned - before + self.pos;
        }
    }

    async fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        let mut scanned = 0;
        let head_end = loop {
            if let Some(at) = find(&self.buf[scanned..self.len], b"\r\n\r\n") {
                break scanned + at;
            }
            scanned = self.len.saturating_sub(3);
            if self.len > MAX_HEAD {
                return Err(invalid("the response head is too long"));
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| invalid("the response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad status line"))?;
        let mut content_length = None;
        let mut chunked = false;
        let mut close = status_line.starts_with("HTTP/1.0");
        let mut challenge = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| invalid("bad Content-Length"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("www-authenticate") {
                challenge = Some(value.to_owned());
            }
        }
        self.pos = head_end + 4;
        let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
        if no_body {
            return Ok(Response {
                status,
                challenge,
                close,
                body: self.pos..self.pos,
                chunked: false,
            });
        }
        if chunked {
            self.dechunked.clear();
            loop {
                let line = self.line().await?;
                let size_text = line.split(';').next().unwrap_or_default().trim();
                let size =
                    usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                self.need(size + 2).await?;
                self.dechunked
                    .extend_from_slice(&self.buf[self.pos..self.pos + size]);
                self.pos += size + 2;
            }
            return Ok(Response {
                status,
                challenge,
                close,
                body: 0..0,
                chunked: true,
            });
        }
        let Some(length) = content_length else {
            return Err(invalid(
                "a response without Content-Length or chunked encoding",
            ));
        };
        self.need(length).await?;
        let body = self.pos..self.pos + length;
        self.pos += length;
        Ok(Response {
            status,
            challenge,
            close,
            body,
            chunked: false,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters_are_read_quoted_or_not() {
        let header = "Digest realm=\"MMS Public API\", domain=\"\", nonce=\"abc\", \
                      algorithm=MD5, qop=\"auth\", stale=true";
        let mut state = DigestState::new("user", "pass", "c".to_owned());
        assert_eq!(state.take_challenge(header), Some(true));
        assert_eq!(state.nonce, "abc");
        assert_eq!(param(header, "algorithm").as_deref(), Some("MD5"));
        assert_eq!(state.take_challenge("Basic realm=\"x\""), None);
    }

    #[test]
    fn the_response_matches_rfc_2617s_example() {
        // RFC 2617 §3.5, with its GET and qop=auth values.
        let mut state = DigestState::new("Mufasa", "Circle Of Life", "0a4f113b".to_owned());
        state.take_challenge(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\"",
        );
        let mut out = Vec::new();
        state.write_header("GET", "/dir/index.html", &mut out);
        let text = String::from_utf8(out).expect("ASCII");
        assert!(
            text.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{text}"
        );
        assert!(text.contains("nc=00000001"), "{text}");
    }
}
