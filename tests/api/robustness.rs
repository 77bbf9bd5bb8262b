//! Robustness (contract §2, §3, §5, §6): no input may crash the server or lose stored data; bad
//! input always gets a clear Atlas-format error and changes nothing.
//!
//! Each test seeds a project with integrations of several types, then sends a few hundred
//! generated requests with valid Digest credentials, all drawn from a fixed xorshift seed so
//! that a failure replays exactly. The requests go through a small raw HTTP/1.1 client, so
//! that targets, headers and bodies reach the server byte for byte. Every answer must be a
//! success or an Atlas error body (never a 5xx, never a dropped connection), no seeded secret
//! may appear in it, and the stored list (GET list, v1.0 and v2, as the owner) must be
//! byte-identical to before unless the request was a valid write. Where the contract fixes the
//! answer (body syntax, field rules, query parameters, versions, routes), an oracle written
//! from the contract, not from the code, predicts the error code.
//!
//! Malformed HTTP (bad request lines, broken headers, absurd lengths) may be refused by hyper
//! itself with a bare 400 (or 431, or a closed connection) before the application sees it;
//! there the test only checks that the server survives and keeps serving the stored data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{challenge_param, digest_header, spawn_app, TestApp, V2};

// ---------------------------------------------------------------------------------------------
// A tiny deterministic random generator (xorshift64)
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap_or(0)
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// Letters and digits only (no `:`, no `*`, no whitespace).
    fn token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len).map(|_| *self.pick(ALPHABET) as char).collect()
    }

    fn hex(&mut self, len: usize) -> String {
        const HEX: &[u8] = b"0123456789abcdefABCDEF";
        (0..len).map(|_| *self.pick(HEX) as char).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// A parsed response.
#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What came back on one connection.
#[derive(Debug)]
enum Wire {
    /// A response (the first non-1xx one).
    Reply(Resp),
    /// The connection ended, or stayed silent, without a response.
    NoReply(String),
}

/// How long an answer may take before the server counts as hung.
const PATIENCE: Duration = Duration::from_secs(20);

/// Writes `request` and reads until the server closes (or stays silent for `patience`),
/// reading while writing so that an early answer is not lost.
async fn exchange(addr: SocketAddr, request: &[u8], patience: Duration, half_close: bool) -> Wire {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(err) => return Wire::NoReply(format!("connect failed: {err}")),
    };
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let result = tokio::time::timeout(patience, writer.write_all(request)).await;
        if half_close {
            let _ = writer.shutdown().await;
        }
        match result {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(format!("write: {err}")),
            Err(_) => Some("write: timed out".to_owned()),
        }
    };
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(patience, reader.read(&mut chunk)).await {
                Err(_) => return (buf, Some("read: silent until the timeout".to_owned())),
                Ok(Ok(0)) => return (buf, None),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(err)) => return (buf, Some(format!("read: {err}"))),
            }
        }
    };
    let (write_error, (buf, read_error)) = tokio::join!(write, read);
    match parse_response(&buf) {
        Some(resp) => Wire::Reply(resp),
        None => Wire::NoReply(format!(
            "{} bytes back; {}; {}",
            buf.len(),
            write_error.unwrap_or_else(|| "write: ok".to_owned()),
            read_error.unwrap_or_else(|| "read: closed".to_owned())
        )),
    }
}

/// At most `n` bytes of `text`, cut on a character boundary.
fn clip(text: &str, n: usize) -> &str {
    let mut end = n.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first final response in `buf` (1xx interim responses are skipped).
fn parse_response(buf: &[u8]) -> Option<Resp> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.splitn(3, ' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = words.next()?.parse().ok()?;
    let rest = &buf[end + 4..];
    if (100..200).contains(&status) {
        return parse_response(rest);
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Some(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// One request, as it goes on the wire (Host, Connection, Authorization and Content-Length
/// are added when it is sent).
#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Content-Length to declare instead of the body's length (`None`: the body's length).
    declared_length: Option<String>,
    /// Whether to send a Content-Length header at all.
    send_length: bool,
}

impl Request {
    /// A request; v2 targets get the v2 Accept header.
    fn new(method: &str, target: impl Into<Vec<u8>>) -> Self {
        let target = target.into();
        let mut headers = Vec::new();
        if target.starts_with(b"/api/atlas/v2/") {
            headers.push(("Accept".to_owned(), V2.as_bytes().to_vec()));
        }
        Self {
            method: method.to_owned(),
            target,
            headers,
            body: Vec::new(),
            declared_length: None,
            send_length: true,
        }
    }

    /// With a body sent as `application/json`.
    fn json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.set("Content-Type", b"application/json");
        self
    }

    /// Sets a header, replacing any of the same name.
    fn set(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_vec()));
    }

    /// Removes a header.
    fn unset(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn target_text(&self) -> String {
        String::from_utf8_lossy(&self.target).into_owned()
    }

    /// The path part of the target (before `?`).
    fn path(&self) -> String {
        let text = self.target_text();
        text.split(['?', '#']).next().unwrap_or("").to_owned()
    }

    fn is_v2(&self) -> bool {
        self.target.starts_with(b"/api/atlas/v2/")
    }

    fn bytes(&self, host: &str, authorization: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(auth) = authorization {
            out.extend_from_slice(format!("Authorization: {auth}\r\n").as_bytes());
        }
        if self.send_length {
            let length = self
                .declared_length
                .clone()
                .unwrap_or_else(|| self.body.len().to_string());
            out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// A short description for failure messages.
    fn describe(&self) -> String {
        let mut target = self.target_text();
        if target.len() > 200 {
            target = format!("{}...({} bytes)", clip(&target, 200), self.target.len());
        }
        let body = String::from_utf8_lossy(&self.body);
        let body = if body.len() > 300 {
            format!("{}...({} bytes)", clip(&body, 300), self.body.len())
        } else {
            body.into_owned()
        };
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v);
                let v = if v.len() > 80 {
                    format!("{}...", clip(&v, 80))
                } else {
                    v.into_owned()
                };
                format!("{n}: {v}")
            })
            .collect();
        format!("{} {target} {headers:?} body={body:?}", self.method)
    }
}

/// Digest credentials for the raw client: one nonce reused with a rising `nc`.
struct Credentials {
    addr: SocketAddr,
    host: String,
    user: String,
    password: String,
    nonce: String,
    nc: u32,
    cnonces: Rng,
}

impl Credentials {
    async fn new(app: &TestApp) -> Self {
        let mut creds = Self {
            addr: app.addr,
            host: app.addr.to_string(),
            user: app.public_key.clone(),
            password: app.private_key.clone(),
            nonce: String::new(),
            nc: 0,
            cnonces: Rng::new(0xc0ffee),
        };
        creds.renew(&app.v1("")).await;
        creds
    }

    /// Gets a fresh nonce from an unauthenticated request's challenge.
    async fn renew(&mut self, target: &str) {
        let request = Request::new("GET", target);
        let Wire::Reply(resp) =
            exchange(self.addr, &request.bytes(&self.host, None), PATIENCE, false).await
        else {
            panic!("no challenge for {target}");
        };
        let challenge = resp
            .header("www-authenticate")
            .expect("a challenge")
            .to_owned();
        self.nonce = challenge_param(&challenge, "nonce").expect("nonce");
        self.nc = 0;
    }

    fn authorization(&mut self, method: &str, uri: &str) -> String {
        self.nc += 1;
        let cnonce = format!("{:016x}", self.cnonces.next());
        digest_header(
            &self.user,
            &self.password,
            method,
            uri,
            &self.nonce,
            self.nc,
            &cnonce,
        )
    }

    /// Sends with Digest credentials for the target as sent; renews a stale nonce once.
    async fn send(&mut self, request: &Request) -> Wire {
        for _ in 0..2 {
            let uri = request.target_text();
            let auth = self.authorization(&request.method, &uri);
            let wire = exchange(
                self.addr,
                &request.bytes(&self.host, Some(&auth)),
                PATIENCE,
                false,
            )
            .await;
            if let Wire::Reply(resp) = &wire {
                let stale = resp.status == 401
                    && resp
                        .header("www-authenticate")
                        .is_some_and(|c| c.contains("stale=true"));
                if stale {
                    let challenge = resp.header("www-authenticate").unwrap_or("").to_owned();
                    self.nonce = challenge_param(&challenge, "nonce").expect("nonce");
                    self.nc = 0;
                    continue;
                }
            }
            return wire;
        }
        panic!("the nonce kept going stale");
    }
}

// ---------------------------------------------------------------------------------------------
// The seeded project and the checking harness
// ---------------------------------------------------------------------------------------------

/// Seeded configurations (v1.0 paths; FLOWDOCK is v1.0 only). NEW_RELIC, OPS_GENIE,
/// VICTOR_OPS and MICROSOFT_TEAMS are left free so that creates can succeed.
const SEEDS: &[(&str, &str)] = &[
    (
        "PAGER_DUTY",
        r#"{"type":"PAGER_DUTY","serviceKey":"SEEDpagerdutyKEY0001","region":"EU"}"#,
    ),
    (
        "SLACK",
        r#"{"type":"SLACK","apiToken":"SEEDslackTOKEN0001","teamName":"team","channelName":"alerts"}"#,
    ),
    (
        "DATADOG",
        r#"{"type":"DATADOG","apiKey":"5eedda7ad09a11ce0001","region":"US3","sendDatabaseMetrics":true}"#,
    ),
    (
        "WEBHOOK",
        r#"{"type":"WEBHOOK","url":"https://hooks.example.com/SEEDwebhookPATH0001?t=SEEDwebhookQUERY0001","secret":"SEEDwebhookSECRET0001"}"#,
    ),
    (
        "PROMETHEUS",
        r#"{"type":"PROMETHEUS","username":"prom","password":"SEEDpromPASSWORD0001","serviceDiscovery":"http","enabled":true}"#,
    ),
    (
        "FLOWDOCK",
        r#"{"type":"FLOWDOCK","flowName":"flow","apiToken":"1234567890","orgName":"org"}"#,
    ),
];

/// Seeded values that are masked or hidden in every response: none may ever appear.
const SEEDED_SECRETS: &[&str] = &[
    "SEEDpagerdutyKEY0001",
    "SEEDslackTOKEN0001",
    "5eedda7ad09a11ce0001",
    "SEEDwebhookPATH0001",
    "SEEDwebhookQUERY0001",
    "SEEDwebhookSECRET0001",
    "SEEDpromPASSWORD0001",
];

/// Every type, and the types each version knows.
const ALL_TYPES: &[&str] = &[
    "PAGER_DUTY",
    "SLACK",
    "DATADOG",
    "NEW_RELIC",
    "OPS_GENIE",
    "VICTOR_OPS",
    "FLOWDOCK",
    "WEBHOOK",
    "MICROSOFT_TEAMS",
    "PROMETHEUS",
];
const V2_TYPES: &[&str] = &[
    "PAGER_DUTY",
    "SLACK",
    "DATADOG",
    "NEW_RELIC",
    "OPS_GENIE",
    "VICTOR_OPS",
    "WEBHOOK",
    "MICROSOFT_TEAMS",
    "PROMETHEUS",
];

/// What one checked request came to.
#[derive(Debug)]
struct Checked {
    status: u16,
    /// The Atlas error code (errors only).
    code: Option<String>,
    /// The Atlas error parameters (errors only).
    params: Vec<String>,
    /// The response body as JSON, when it is JSON.
    body: Option<Value>,
    /// The error body had no Atlas shape because hyper refused the request itself.
    bare: bool,
    /// The raw body.
    text: String,
}

struct Harness {
    app: TestApp,
    creds: Credentials,
    /// The v1.0 and v2 lists as the owner sees them.
    baseline: (String, String),
    tally: BTreeMap<String, usize>,
    writes: usize,
    /// A few requests hyper refused itself, for the report.
    bare_examples: Vec<String>,
}

impl Harness {
    async fn start() -> Self {
        let app = spawn_app().await;
        for (kind, body) in SEEDS {
            let reply = app.client.post(&app.v1(kind), body).await;
            assert_eq!(reply.status.as_u16(), 200, "seeding {kind}: {}", reply.text);
        }
        let creds = Credentials::new(&app).await;
        let baseline = snapshot(&app).await;
        Self {
            app,
            creds,
            baseline,
            tally: BTreeMap::new(),
            writes: 0,
            bare_examples: Vec::new(),
        }
    }

    fn v1(&self, suffix: &str) -> String {
        self.app.v1(suffix)
    }

    fn v2(&self, suffix: &str) -> String {
        self.app.v2(suffix)
    }

    /// The path of `kind` (or of the list when empty) in `version` (`v1.0` or `v2`).
    fn path(&self, version: &str, suffix: &str) -> String {
        if version == "v2" {
            self.v2(suffix)
        } else {
            self.v1(suffix)
        }
    }

    /// Whether `kind` is configured now.
    fn exists(&self, kind: &str) -> bool {
        let list: Value = serde_json::from_str(&self.baseline.0).expect("baseline JSON");
        list["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|item| item["type"] == kind)
    }

    /// Sends with valid credentials and checks the answer against the invariants; `bare_ok`
    /// allows hyper's own bare 4xx for requests that are not valid HTTP.
    async fn run(&mut self, label: &str, request: &Request, bare_ok: bool) -> Checked {
        let wire = self.creds.send(request).await;
        self.check(label, request, wire, bare_ok).await
    }

    async fn check(
        &mut self,
        label: &str,
        request: &Request,
        wire: Wire,
        bare_ok: bool,
    ) -> Checked {
        let resp = match wire {
            Wire::Reply(resp) => resp,
            Wire::NoReply(why) => panic!("{label}: no answer ({why}) to {}", request.describe()),
        };
        let text = resp.text();
        let shown = if text.len() > 600 {
            format!("{}...", clip(&text, 600))
        } else {
            text.clone()
        };
        let ctx = format!("{label}: {} -> {} {shown}", request.describe(), resp.status);
        assert!(resp.status < 500, "{ctx}");
        for secret in SEEDED_SECRETS {
            assert!(
                !text.contains(secret),
                "{ctx}: the answer shows the secret {secret}"
            );
            for (_, value) in &resp.headers {
                assert!(
                    !value.contains(secret),
                    "{ctx}: a header shows the secret {secret}"
                );
            }
        }
        let head = request.method == "HEAD";
        let write = matches!(request.method.as_str(), "POST" | "PUT" | "DELETE");
        let checked = if (200..300).contains(&resp.status) {
            let body = if resp.status == 204 || head {
                assert!(resp.body.is_empty(), "{ctx}: body on a {}", resp.status);
                None
            } else {
                let media = resp.header("content-type").unwrap_or("");
                let expected = if request.is_v2() {
                    V2
                } else {
                    "application/json"
                };
                assert_eq!(media, expected, "{ctx}: success media type");
                Some(
                    serde_json::from_slice::<Value>(&resp.body)
                        .unwrap_or_else(|e| panic!("{ctx}: not JSON: {e}")),
                )
            };
            Checked {
                status: resp.status,
                code: None,
                params: Vec::new(),
                body,
                bare: false,
                text: text.clone(),
            }
        } else if resp.body.is_empty() && resp.header("content-type").is_none() && !head {
            assert!(bare_ok, "{ctx}: an error without an Atlas body");
            assert!(
                matches!(resp.status, 400 | 414 | 431),
                "{ctx}: unexpected bare status"
            );
            Checked {
                status: resp.status,
                code: None,
                params: Vec::new(),
                body: None,
                bare: true,
                text: String::new(),
            }
        } else if head {
            assert!(resp.body.is_empty(), "{ctx}: body on HEAD");
            Checked {
                status: resp.status,
                code: None,
                params: Vec::new(),
                body: None,
                bare: false,
                text: String::new(),
            }
        } else {
            let (code, params, body) = atlas_error(&ctx, &resp);
            Checked {
                status: resp.status,
                code: Some(code),
                params,
                body: Some(body),
                bare: false,
                text: text.clone(),
            }
        };
        let after = snapshot(&self.app).await;
        if write && (200..300).contains(&resp.status) {
            self.writes += 1;
            if request.method != "DELETE" && !request.target.contains(&b'?') {
                // A write answers the whole list, as GET list shows it right after.
                let listed = if request.is_v2() { &after.1 } else { &after.0 };
                let listed: Value = serde_json::from_str(listed).expect("list JSON");
                let answered = checked.body.as_ref().map(|b| &b["results"]);
                assert_eq!(
                    answered,
                    Some(&listed["results"]),
                    "{ctx}: the write's list differs from GET list"
                );
            }
            self.baseline = after;
        } else {
            assert_eq!(after.0, self.baseline.0, "{ctx}: the v1.0 list changed");
            assert_eq!(after.1, self.baseline.1, "{ctx}: the v2 list changed");
        }
        let key = format!(
            "{} {}",
            checked.status,
            checked
                .code
                .as_deref()
                .unwrap_or(if checked.bare { "(bare)" } else { "-" })
        );
        *self.tally.entry(key).or_default() += 1;
        if checked.bare && self.bare_examples.len() < 6 {
            let mut target = request.target_text();
            if target.len() > 60 {
                target = format!("{}...", clip(&target, 60));
            }
            self.bare_examples
                .push(format!("{} {} {target:?}", checked.status, request.method));
        }
        checked
    }

    /// Checks that the server still answers and still holds the stored data.
    async fn alive(&self, ctx: &str) {
        let health = self
            .app
            .client
            .raw()
            .get(format!("{}/health", self.app.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{ctx}: /health failed: {e}"));
        assert_eq!(health.status().as_u16(), 200, "{ctx}: /health");
        let now = snapshot(&self.app).await;
        assert_eq!(now.0, self.baseline.0, "{ctx}: the v1.0 list changed");
        assert_eq!(now.1, self.baseline.1, "{ctx}: the v2 list changed");
    }

    fn report(&self, name: &str) {
        let total: usize = self.tally.values().sum();
        eprintln!(
            "{name}: {total} requests, {} valid writes; answers: {:?}",
            self.writes, self.tally
        );
        if !self.bare_examples.is_empty() {
            eprintln!(
                "{name}: refused by hyper itself, e.g. {:?}",
                self.bare_examples
            );
        }
    }
}

/// The v1.0 and v2 lists, as the owner sees them.
async fn snapshot(app: &TestApp) -> (String, String) {
    let v1 = app.client.get(&app.v1("")).await;
    assert_eq!(v1.status.as_u16(), 200, "GET v1.0 list: {}", v1.text);
    let v2 = app.client.get(&app.v2("")).await;
    assert_eq!(v2.status.as_u16(), 200, "GET v2 list: {}", v2.text);
    (v1.text, v2.text)
}

/// Checks an Atlas error body (enveloped or not) and returns its code, parameters and body.
fn atlas_error(ctx: &str, resp: &Resp) -> (String, Vec<String>, Value) {
    let media = resp.header("content-type").unwrap_or("");
    assert_eq!(media, "application/json", "{ctx}: error media type");
    let body: Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{ctx}: error body is not JSON: {e}"));
    let error = if body.get("errorCode").is_none() && body.get("content").is_some() {
        assert_eq!(body["status"], resp.status, "{ctx}: envelope status");
        body["content"].clone()
    } else {
        body.clone()
    };
    let object = error
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: error is not an object"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["detail", "error", "errorCode", "parameters", "reason"],
        "{ctx}: error fields"
    );
    assert_eq!(error["error"], resp.status, "{ctx}: error field");
    let code = error["errorCode"]
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: errorCode"))
        .to_owned();
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
        "{ctx}: errorCode {code:?}"
    );
    let detail = error["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: detail"));
    assert!(
        !detail.is_empty() && !detail.contains("%s"),
        "{ctx}: detail {detail:?}"
    );
    assert!(
        error["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{ctx}: reason"
    );
    let params: Vec<String> = error["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: parameters"))
        .iter()
        .map(|p| {
            p.as_str()
                .unwrap_or_else(|| panic!("{ctx}: a parameter is not a string"))
                .to_owned()
        })
        .collect();
    match resp.status {
        401 if code == "USER_UNAUTHORIZED" => assert!(
            resp.header("www-authenticate")
                .is_some_and(|c| c.starts_with("Digest ")),
            "{ctx}: 401 without a Digest challenge"
        ),
        405 => assert!(resp.header("allow").is_some(), "{ctx}: 405 without Allow"),
        // (NOT_IN_GROUP is a 401 too, but the contract asks for the challenge only here.)
        429 => assert!(
            resp.header("retry-after").is_some(),
            "{ctx}: 429 without Retry-After"
        ),
        _ => {}
    }
    (code, params, body)
}

// ---------------------------------------------------------------------------------------------
// The contract's field rules (§3), as an oracle
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Bool,
    Enum(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Need {
    Always,
    InV1,
    InV2,
    OnCreate,
    No,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    None,
    Hex,
    NoSpaces,
    HttpUrl,
    HttpsUrl,
    Max80,
}

#[derive(Debug, Clone, Copy)]
struct F {
    name: &'static str,
    ty: Ty,
    need: Need,
    rule: Rule,
    /// Masked, fully masked or never returned (so a `*` in it may be a masked round trip).
    masked: bool,
}

const fn f(name: &'static str, ty: Ty, need: Need, rule: Rule, masked: bool) -> F {
    F {
        name,
        ty,
        need,
        rule,
        masked,
    }
}

const US_EU: Ty = Ty::Enum(&["US", "EU"]);
const DATADOG_REGIONS: Ty = Ty::Enum(&["US", "US3", "US5", "EU", "AP1", "AP2", "US1_FED"]);

/// The contract's table, in its order.
fn schema(kind: &str) -> &'static [F] {
    use Need::{Always, InV1, InV2, No, OnCreate};
    use Ty::{Bool, Str};
    match kind {
        "PAGER_DUTY" => {
            const S: &[F] = &[
                f("serviceKey", Str, Always, Rule::None, true),
                f("region", US_EU, No, Rule::None, false),
            ];
            S
        }
        "SLACK" => {
            const S: &[F] = &[
                f("apiToken", Str, Always, Rule::None, true),
                f("teamName", Str, InV1, Rule::None, false),
                f("channelName", Str, InV2, Rule::Max80, false),
            ];
            S
        }
        "DATADOG" => {
            const S: &[F] = &[
                f("apiKey", Str, Always, Rule::Hex, true),
                f("region", DATADOG_REGIONS, No, Rule::None, false),
                f("sendCollectionLatencyMetrics", Bool, No, Rule::None, false),
                f("sendDatabaseMetrics", Bool, No, Rule::None, false),
                f("sendQueryStatsMetrics", Bool, No, Rule::None, false),
                f("sendUserProvidedResourceTags", Bool, No, Rule::None, false),
            ];
            S
        }
        "NEW_RELIC" => {
            const S: &[F] = &[
                f("licenseKey", Str, Always, Rule::None, false),
                f("accountId", Str, Always, Rule::None, false),
                f("writeToken", Str, Always, Rule::None, false),
                f("readToken", Str, Always, Rule::None, false),
            ];
            S
        }
        "OPS_GENIE" => {
            const S: &[F] = &[
                f("apiKey", Str, Always, Rule::None, true),
                f("region", US_EU, No, Rule::None, false),
            ];
            S
        }
        "VICTOR_OPS" => {
            const S: &[F] = &[
                f("apiKey", Str, Always, Rule::None, true),
                f("routingKey", Str, No, Rule::None, false),
            ];
            S
        }
        "FLOWDOCK" => {
            const S: &[F] = &[
                f("flowName", Str, Always, Rule::NoSpaces, false),
                f("apiToken", Str, Always, Rule::None, false),
                f("orgName", Str, Always, Rule::None, false),
            ];
            S
        }
        "WEBHOOK" => {
            const S: &[F] = &[
                f("url", Str, Always, Rule::HttpUrl, true),
                f("secret", Str, No, Rule::None, true),
            ];
            S
        }
        "MICROSOFT_TEAMS" => {
            const S: &[F] = &[f(
                "microsoftTeamsWebhookUrl",
                Str,
                Always,
                Rule::HttpsUrl,
                true,
            )];
            S
        }
        "PROMETHEUS" => {
            const S: &[F] = &[
                f("username", Str, Always, Rule::None, false),
                f("password", Str, OnCreate, Rule::None, true),
                f(
                    "serviceDiscovery",
                    Ty::Enum(&["http", "file"]),
                    Always,
                    Rule::None,
                    false,
                ),
                f("enabled", Bool, Always, Rule::None, false),
                f(
                    "sendUserProvidedResourceTagsEnabled",
                    Bool,
                    No,
                    Rule::None,
                    false,
                ),
            ];
            S
        }
        other => panic!("no schema for {other}"),
    }
}

fn required(need: Need, version: &str, replacing: bool) -> bool {
    match need {
        Need::Always => true,
        Need::InV1 => version == "v1.0",
        Need::InV2 => version == "v2",
        Need::OnCreate => !replacing,
        Need::No => false,
    }
}

/// Fields a body may carry besides the type's own: `type`, `id`, and PROMETHEUS's `scheme`.
fn accepted_extra(kind: &str, name: &str) -> bool {
    name == "type" || name == "id" || (kind == "PROMETHEUS" && name == "scheme")
}

/// URLs whose standing the oracle knows: (text, valid for WEBHOOK, valid for MICROSOFT_TEAMS).
const URLS: &[(&str, bool, bool)] = &[
    (
        "https://hooks.example.com/services/T000/B000/XXXX",
        true,
        true,
    ),
    ("https://h.example.com:8443/p?q=1&r=%20#frag", true, true),
    ("HTTPS://H.EXAMPLE.COM/Upper", true, true),
    ("https://[::1]:9000/x", true, true),
    ("http://h.example.com/plain", true, false),
    ("http://127.0.0.1:9/x", true, false),
    ("ftp://h.example.com/x", false, false),
    ("https://", false, false),
    ("http://", false, false),
    ("javascript:alert(1)", false, false),
    ("mailto:ops@example.com", false, false),
    ("https://exa mple.com/x", false, false),
    ("https:// h.example.com/x", false, false),
];

/// Whether `text` passes a URL rule: `Some(valid)`, or `None` when the oracle cannot tell.
fn url_valid(text: &str, rule: Rule) -> Option<bool> {
    if let Some((_, http, https)) = URLS.iter().find(|(u, _, _)| *u == text) {
        return Some(if rule == Rule::HttpsUrl {
            *https
        } else {
            *http
        });
    }
    // Without a colon there is no scheme, so no absolute URL.
    if !text.contains(':') {
        return Some(false);
    }
    None
}

/// The oracle's prediction.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// 200 (POST, PUT).
    Success,
    /// This error code with exactly these parameters.
    Error(&'static str, Vec<String>),
    /// This error code with its first parameter (the type) fixed and a free message.
    ErrorFirst(&'static str, String),
    /// `INVALID_ATTRIBUTE` naming one of these fields.
    InvalidAttributeOneOf(Vec<String>),
    /// The oracle cannot tell (a masked round trip, a URL it does not know).
    Unsure,
}

const SETTINGS: &str = "INVALID_INTEGRATION_SETTINGS";

/// What the contract says a POST or PUT of `body` to `kind` answers.
fn expect_for(
    kind: &str,
    version: &str,
    method: &str,
    body: &Map<String, Value>,
    exists: bool,
) -> Expect {
    let fields = schema(kind);
    let present = |name: &str| body.get(name).filter(|v| !v.is_null());
    if let Some(sent) = present("type") {
        if sent.as_str() != Some(kind) {
            return Expect::Error("INVALID_ATTRIBUTE", vec!["type".to_owned()]);
        }
    }
    let unknown: Vec<String> = body
        .iter()
        .filter(|(name, value)| {
            !value.is_null()
                && !accepted_extra(kind, name)
                && !fields.iter().any(|f| f.name == name.as_str())
        })
        .map(|(name, _)| name.clone())
        .collect();
    if !unknown.is_empty() {
        return Expect::InvalidAttributeOneOf(unknown);
    }
    for field in fields {
        if let Some(value) = present(field.name) {
            let ok = match field.ty {
                Ty::Str | Ty::Enum(_) => value.is_string(),
                Ty::Bool => value.is_boolean(),
            };
            if !ok {
                return Expect::Error("INVALID_JSON_ATTRIBUTE", vec![field.name.to_owned()]);
            }
        }
    }
    let replacing = method == "PUT" && exists;
    for field in fields {
        if present(field.name).is_none() && required(field.need, version, replacing) {
            return Expect::Error("MISSING_ATTRIBUTE", vec![field.name.to_owned()]);
        }
    }
    for field in fields {
        if let (Ty::Enum(allowed), Some(Value::String(value))) = (field.ty, present(field.name)) {
            if !allowed.contains(&value.as_str()) {
                return Expect::Error("INVALID_ENUM_VALUE", vec![value.clone()]);
            }
        }
    }
    for field in fields {
        let Some(Value::String(text)) = present(field.name) else {
            continue;
        };
        if replacing && field.masked && text.contains('*') {
            return Expect::Unsure;
        }
        let name = field.name;
        if text.is_empty() {
            if required(field.need, version, false) {
                return Expect::Error(
                    SETTINGS,
                    vec![kind.to_owned(), format!("{name} must not be empty")],
                );
            }
            // An empty optional string counts as not given (the contract is silent).
            continue;
        }
        if text.len() > 4096 {
            return Expect::Error(
                SETTINGS,
                vec![
                    kind.to_owned(),
                    format!("{name} must be at most 4096 bytes"),
                ],
            );
        }
        match field.rule {
            Rule::Hex if !text.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Expect::Error(
                    SETTINGS,
                    vec![
                        kind.to_owned(),
                        format!("{name} must be a hexadecimal string"),
                    ],
                );
            }
            Rule::NoSpaces if text.chars().any(char::is_whitespace) => {
                return Expect::Error("INVALID_FLOWDOCK_FLOW_NAME", Vec::new());
            }
            Rule::HttpUrl | Rule::HttpsUrl => match url_valid(text, field.rule) {
                None => return Expect::Unsure,
                Some(false) => return Expect::ErrorFirst(SETTINGS, kind.to_owned()),
                Some(true) => {}
            },
            Rule::Max80 if text.chars().count() > 80 => {
                return Expect::ErrorFirst(SETTINGS, kind.to_owned());
            }
            _ => {}
        }
    }
    if method == "POST" && exists {
        return Expect::Error("INTEGRATION_ALREADY_CONFIGURED", vec![kind.to_owned()]);
    }
    Expect::Success
}

fn status_of(code: &str) -> u16 {
    match code {
        "INTEGRATION_ALREADY_CONFIGURED" => 409,
        "REQUEST_BODY_TOO_LARGE" => 413,
        "INVALID_VERSION_DATE" => 406,
        "RESOURCE_NOT_FOUND" | "INVALID_GROUP_ID" | "INTEGRATION_NOT_CONFIGURED" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "USER_UNAUTHORIZED" | "NOT_IN_GROUP" => 401,
        _ => 400,
    }
}

fn assert_expected(ctx: &str, expect: &Expect, got: &Checked) {
    let code = got.code.as_deref().unwrap_or("(success)");
    match expect {
        Expect::Unsure => {}
        Expect::Success => assert_eq!(
            got.status, 200,
            "{ctx}: expected success, got {code} {:?}",
            got.params
        ),
        Expect::Error(expected, params) => {
            assert_eq!(
                (got.status, code),
                (status_of(expected), *expected),
                "{ctx}: params {:?}",
                got.params
            );
            assert_eq!(&got.params, params, "{ctx}: parameters of {code}");
        }
        Expect::ErrorFirst(expected, first) => {
            assert_eq!(
                (got.status, code),
                (status_of(expected), *expected),
                "{ctx}: params {:?}",
                got.params
            );
            assert_eq!(
                got.params.first(),
                Some(first),
                "{ctx}: first parameter of {code}"
            );
            assert_eq!(got.params.len(), 2, "{ctx}: parameters of {code}");
        }
        Expect::InvalidAttributeOneOf(names) => {
            assert_eq!(
                (got.status, code),
                (400, "INVALID_ATTRIBUTE"),
                "{ctx}: params {:?}",
                got.params
            );
            assert!(
                got.params.len() == 1 && names.contains(&got.params[0]),
                "{ctx}: INVALID_ATTRIBUTE should name one of {names:?}, names {:?}",
                got.params
            );
        }
    }
}

/// Parses a body as the contract reads it: a JSON object at most 64 levels deep, or nothing
/// (`MALFORMED_JSON`).
fn parse_body(bytes: &[u8]) -> Option<Map<String, Value>> {
    fn depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value @ Value::Object(_)) if depth(&value) <= 64 => match value {
            Value::Object(map) => Some(map),
            _ => None,
        },
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// A secret-looking token: distinctive, letters and digits only.
fn secret_token(rng: &mut Rng) -> String {
    format!("S{}", rng.token(15))
}

/// A valid body for `kind` in `version`, with fresh values.
fn valid_body(rng: &mut Rng, kind: &str, _version: &str) -> Map<String, Value> {
    let mut body = Map::new();
    let mut put = |name: &str, value: Value| {
        body.insert(name.to_owned(), value);
    };
    match kind {
        "PAGER_DUTY" => {
            put("serviceKey", json!(secret_token(rng)));
            if rng.one_in(2) {
                put("region", json!(rng.pick(&["US", "EU"])));
            }
        }
        "SLACK" => {
            put("apiToken", json!(secret_token(rng)));
            put("teamName", json!(rng.token(6)));
            let len = 1 + rng.below(20);
            put("channelName", json!(rng.token(len)));
        }
        "DATADOG" => {
            put("apiKey", json!(rng.hex(32)));
            if rng.one_in(2) {
                put(
                    "region",
                    json!(rng.pick(&["US", "US3", "US5", "EU", "AP1", "AP2", "US1_FED"])),
                );
            }
            for name in [
                "sendCollectionLatencyMetrics",
                "sendDatabaseMetrics",
                "sendQueryStatsMetrics",
                "sendUserProvidedResourceTags",
            ] {
                if rng.one_in(3) {
                    put(name, json!(rng.one_in(2)));
                }
            }
        }
        "NEW_RELIC" => {
            for name in ["licenseKey", "accountId", "writeToken", "readToken"] {
                put(name, json!(secret_token(rng)));
            }
        }
        "OPS_GENIE" => {
            put("apiKey", json!(secret_token(rng)));
            if rng.one_in(2) {
                put("region", json!(rng.pick(&["US", "EU"])));
            }
        }
        "VICTOR_OPS" => {
            put("apiKey", json!(secret_token(rng)));
            if rng.one_in(2) {
                put("routingKey", json!(rng.token(8)));
            }
        }
        "FLOWDOCK" => {
            put("flowName", json!(rng.token(8)));
            put("apiToken", json!(secret_token(rng)));
            put("orgName", json!(rng.token(5)));
        }
        "WEBHOOK" => {
            let url = *rng.pick(&URLS[..6]);
            put("url", json!(url.0));
            if rng.one_in(2) {
                put("secret", json!(secret_token(rng)));
            }
        }
        "MICROSOFT_TEAMS" => {
            let url = *rng.pick(&URLS[..4]);
            put("microsoftTeamsWebhookUrl", json!(url.0));
        }
        "PROMETHEUS" => {
            put("username", json!(rng.token(6)));
            put("password", json!(secret_token(rng)));
            put("serviceDiscovery", json!(rng.pick(&["http", "file"])));
            put("enabled", json!(rng.one_in(2)));
            if rng.one_in(2) {
                put("sendUserProvidedResourceTagsEnabled", json!(rng.one_in(2)));
            }
        }
        other => panic!("no sample for {other}"),
    }
    if rng.one_in(2) {
        body.insert("type".to_owned(), json!(kind));
    }
    body
}

/// A string from a pool of troublesome ones (no `*`; a `:` only in the known URLs).
fn random_string(rng: &mut Rng) -> String {
    match rng.below(14) {
        0 => String::new(),
        1 => (*rng.pick(&[
            "US", "EU", "US3", "US5", "AP1", "AP2", "US1_FED", "XX", "us", "eu", "http", "file",
            "HTTP", "https",
        ]))
        .to_owned(),
        2 => {
            let len = 1 + rng.below(40);
            rng.hex(len)
        }
        3 | 4 => {
            let len = 1 + rng.below(24);
            rng.token(len)
        }
        5 => (*rng.pick(&[
            "abc def",
            "tab\there",
            "line\nbreak",
            "nbsp\u{a0}x",
            "é日本🙂",
            "\u{0}nul",
            "\u{feff}bom",
            "back\\slash",
            "quote\"d",
            "<script>",
            "' OR 1=1 --",
            "%s%n%x",
            "{{x}}",
        ]))
        .to_owned(),
        6 => "a".repeat(*rng.pick(&[4095, 4096, 4097])),
        7 => "é".repeat(2048) + *rng.pick(&["", "a"]),
        8 => "x".repeat(*rng.pick(&[79, 80, 81])),
        9 => "é".repeat(*rng.pick(&[80, 81])),
        _ => rng.pick(URLS).0.to_owned(),
    }
}

fn random_number(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(i64::MAX),
        3 => json!(u64::MAX),
        4 => json!(0.5),
        5 => json!(1e308),
        6 => json!(-0.0),
        _ => json!(9_007_199_254_740_993_u64),
    }
}

/// A random JSON value of a random type.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let choice = if depth > 2 {
        rng.below(8)
    } else {
        rng.below(10)
    };
    match choice {
        0 => Value::Null,
        1 => json!(rng.one_in(2)),
        2 => random_number(rng),
        3..=7 => json!(random_string(rng)),
        8 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(4) {
                map.insert(random_name(rng), random_value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// A field name: often a real one of some type, sometimes garbage.
fn random_name(rng: &mut Rng) -> String {
    if rng.one_in(2) {
        let kind = rng.pick(ALL_TYPES);
        return schema(kind)[rng.below(schema(kind).len())].name.to_owned();
    }
    (*rng.pick(&[
        "type",
        "id",
        "scheme",
        "TYPE",
        "Type",
        "apikey",
        "APIKEY",
        "",
        " ",
        "é",
        "__proto__",
        "constructor",
        "$where",
        "links",
        "results",
        "totalCount",
        "status",
        "content",
        "null",
        "api Key",
        "apiKey\u{0}",
        "region ",
    ]))
    .to_owned()
}

/// Applies `count` random mutations to a body.
fn mutate(rng: &mut Rng, kind: &str, body: &mut Map<String, Value>, count: usize) {
    for _ in 0..count {
        match rng.below(7) {
            0 | 1 => {
                let fields = schema(kind);
                let name = fields[rng.below(fields.len())].name;
                body.insert(name.to_owned(), random_value(rng, 0));
            }
            2 => {
                if !body.is_empty() {
                    let keys: Vec<String> = body.keys().cloned().collect();
                    let key = rng.pick(&keys).clone();
                    body.remove(&key);
                }
            }
            3 => {
                body.insert(random_name(rng), random_value(rng, 0));
            }
            4 => {
                let value = match rng.below(6) {
                    0 => json!(kind),
                    1 => json!(rng.pick(ALL_TYPES)),
                    2 => json!(kind.to_lowercase()),
                    3 => Value::Null,
                    4 => json!(5),
                    _ => json!(format!("{kind} ")),
                };
                body.insert("type".to_owned(), value);
            }
            5 => {
                let name = *rng.pick(&["id", "scheme"]);
                body.insert(name.to_owned(), random_value(rng, 0));
            }
            _ => {
                let fields = schema(kind);
                let name = fields[rng.below(fields.len())].name;
                body.insert(name.to_owned(), Value::Null);
            }
        }
    }
}

/// Nested arrays or objects around `leaf`, `levels` deep.
fn nest(levels: usize, objects: bool, leaf: &str) -> String {
    if objects {
        format!("{}{leaf}{}", "{\"n\":".repeat(levels), "}".repeat(levels))
    } else {
        format!("{}{leaf}{}", "[".repeat(levels), "]".repeat(levels))
    }
}

/// A byte-level body: garbage, broken JSON, or JSON at the edges of what parsers accept.
fn garbage_body(rng: &mut Rng, kind: &str, version: &str) -> Vec<u8> {
    let valid = serde_json::to_vec(&Value::Object(valid_body(rng, kind, version))).expect("json");
    let field = schema(kind)[0].name;
    match rng.below(12) {
        0 => {
            let len = rng.below(300);
            rng.bytes(len)
        }
        1 | 2 => {
            // A few byte-level mutations of a valid body.
            let mut bytes = valid;
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len().max(1));
                let special: &[&[u8]] = &[
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b"\"",
                    b"\\",
                    b",",
                    b":",
                    b"0",
                    b"\0",
                    b"\xff",
                    b"\xc3",
                    b"\xed\xa0\x80",
                    b"\xc0\xaf",
                    b"\\u",
                    b"\\ud800",
                ];
                match rng.below(4) {
                    0 if !bytes.is_empty() => {
                        let at = at.min(bytes.len() - 1);
                        bytes[at] = rng.byte();
                    }
                    1 => {
                        let piece = rng.pick(special).to_vec();
                        let at = at.min(bytes.len());
                        bytes.splice(at..at, piece);
                    }
                    2 if !bytes.is_empty() => {
                        bytes.remove(at.min(bytes.len() - 1));
                    }
                    _ => {
                        let end = (at + rng.below(20)).min(bytes.len());
                        let slice = bytes[at.min(end)..end].to_vec();
                        bytes.splice(end..end, slice);
                    }
                }
            }
            bytes
        }
        3 => {
            let levels = *rng.pick(&[1, 2, 62, 63, 64, 65, 100, 127, 128, 129, 200, 5000]);
            let name = if rng.one_in(2) { field } else { "bogus" };
            let inner = nest(levels, rng.one_in(2), "1");
            format!("{{\"{name}\":{inner}}}").into_bytes()
        }
        4 => {
            let number = *rng.pick(&[
                "1e999",
                "-1e999",
                "1e308",
                "123456789012345678901234567890",
                "-0",
                "0.1e-999",
                "1E+2",
                "01",
                ".5",
                "NaN",
                "Infinity",
                "0x10",
                "1.",
                "-",
                "18446744073709551616",
            ]);
            let name = if rng.one_in(2) { field } else { "bogus" };
            let mut text = String::from_utf8(valid).expect("utf8");
            text.insert_str(1, &format!("\"{name}\":{number},"));
            text.into_bytes()
        }
        5 => {
            // Duplicate keys: the field again, with another value.
            let mut text = String::from_utf8(valid).expect("utf8");
            let again = rng.pick(&["\"zz\"", "\"abc123\"", "\"\"", "null", "1", "true"]);
            text.insert_str(1, &format!("\"{field}\":{again},"));
            if rng.one_in(2) {
                text.truncate(text.len() - 1);
                text.push_str(&format!(",\"{field}\":{again}}}"));
            }
            text.into_bytes()
        }
        6 => {
            let len = *rng.pick(&[4095, 4096, 4097]);
            let fill = if rng.one_in(2) {
                "a".repeat(len)
            } else {
                "é".repeat(len / 2) + &"a".repeat(len % 2)
            };
            let mut body = valid_body(rng, kind, version);
            let fields = schema(kind);
            let target = fields[rng.below(fields.len())].name;
            body.insert(target.to_owned(), json!(fill));
            serde_json::to_vec(&Value::Object(body)).expect("json")
        }
        7 => {
            let escape = *rng.pick(&[
                "\\ud800",
                "\\udc00",
                "\\ud800\\u0041",
                "\\ud83d\\ude00",
                "\\u0000",
                "\\uZZZZ",
                "\\u12",
                "\\uDBFF\\uDFFF",
                "\\ud800\\ud800",
            ]);
            let mut text = String::from_utf8(valid).expect("utf8");
            if rng.one_in(3) {
                text.insert_str(1, &format!("\"k{escape}\":\"v\","));
            } else {
                text.insert_str(1, &format!("\"{field}\":\"ab{escape}cd\","));
            }
            text.into_bytes()
        }
        8 => {
            let mut bytes = valid;
            let at = rng.below(bytes.len());
            bytes.insert(at, 0);
            bytes
        }
        9 => (*rng.pick(&[
            &b""[..],
            b" ",
            b"\n\t ",
            b"[]",
            b"\"x\"",
            b"null",
            b"1",
            b"true",
            b"{}",
            b"{",
            b"}",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{,}",
            b"{\"a\":1,}",
            b"{'a':1}",
            b"{a:1}",
            b"/* c */{}",
            b"{} {}",
            b"{}x",
        ]))
        .to_vec(),
        10 => {
            let mut bytes = b"\xef\xbb\xbf".to_vec();
            bytes.extend_from_slice(&valid);
            bytes
        }
        _ => {
            let mut bytes = valid;
            let extra = *rng.pick(&[&b" "[..], b" x", b"{}", b"\0", b"\n\n"]);
            bytes.extend_from_slice(extra);
            bytes
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn random_byte_bodies_get_atlas_errors_and_change_nothing() {
    let mut h = Harness::start().await;
    let mut rng = Rng::new(0x0b0d_1e55_0001);
    for i in 0..300 {
        let version = *rng.pick(&["v1.0", "v2"]);
        let kind = *rng.pick(if version == "v2" { V2_TYPES } else { ALL_TYPES });
        let method = *rng.pick(&["POST", "PUT"]);
        let body = garbage_body(&mut rng, kind, version);
        let request = Request::new(method, h.path(version, kind)).json(body.clone());
        let exists = h.exists(kind);
        let got = h.run(&format!("byte body #{i}"), &request, false).await;
        let ctx = format!("byte body #{i}: {}", request.describe());
        match parse_body(&body) {
            None => assert_expected(&ctx, &Expect::Error("MALFORMED_JSON", Vec::new()), &got),
            Some(map) => {
                let expect = expect_for(kind, version, method, &map, exists);
                assert_expected(&ctx, &expect, &got);
            }
        }
    }
    h.report("random byte bodies");
}

#[tokio::test]
async fn random_json_objects_for_every_type_get_the_contract_s_answer() {
    let mut h = Harness::start().await;
    let mut rng = Rng::new(0x00b1_ec75_0002);
    let mut successes = 0;
    for i in 0..400 {
        let version = *rng.pick(&["v1.0", "v2"]);
        let kind = *rng.pick(if version == "v2" { V2_TYPES } else { ALL_TYPES });
        let method = if rng.one_in(3) { "POST" } else { "PUT" };
        let mut body = valid_body(&mut rng, kind, version);
        let mutations = rng.below(4);
        mutate(&mut rng, kind, &mut body, mutations);
        let text = serde_json::to_vec(&Value::Object(body.clone())).expect("json");
        let request = Request::new(method, h.path(version, kind)).json(text);
        let exists = h.exists(kind);
        let expect = expect_for(kind, version, method, &body, exists);
        let got = h.run(&format!("object #{i}"), &request, false).await;
        assert_expected(
            &format!("object #{i}: {}", request.describe()),
            &expect,
            &got,
        );
        if got.status == 200 {
            successes += 1;
            // What was stored is what a GET shows: type, and no masked secret in clear.
            let one = h.app.client.get(&h.path(version, kind)).await;
            assert_eq!(
                one.status.as_u16(),
                200,
                "object #{i}: GET one: {}",
                one.text
            );
            let shown = one.json();
            assert_eq!(shown["type"], kind, "object #{i}: {}", one.text);
            for field in schema(kind) {
                if let (true, Some(Value::String(secret))) = (field.masked, body.get(field.name)) {
                    if secret.len() >= 8 && secret.starts_with('S') {
                        assert!(
                            !one.text.contains(secret.as_str()),
                            "object #{i}: {} shown in clear: {}",
                            field.name,
                            one.text
                        );
                    }
                }
            }
        }
    }
    assert!(
        successes >= 40,
        "too few valid writes ({successes}) for the test to mean much"
    );
    h.report("random JSON objects");
}

/// A body of exactly `size` bytes: a valid DATADOG body padded with spaces.
fn padded_datadog(size: usize) -> Vec<u8> {
    let mut body = br#"{"apiKey":"abcdef0123"}"#.to_vec();
    let pad = size - body.len();
    body.splice(1..1, std::iter::repeat_n(b' ', pad));
    body
}

#[tokio::test]
async fn edge_case_bodies_get_the_contract_s_answers() {
    let mut h = Harness::start().await;
    let nested =
        |levels: usize, field: &str| format!("{{\"{field}\":{}}}", nest(levels - 1, false, "1"));
    let hex_4096 = "a".repeat(4096);
    let hex_4097 = "a".repeat(4097);
    let multibyte_4096 = "é".repeat(2048);
    let multibyte_4097 = "é".repeat(2048) + "a";
    let malformed = || Expect::Error("MALFORMED_JSON", Vec::new());
    let settings =
        |message: &str| Expect::Error(SETTINGS, vec!["DATADOG".to_owned(), message.to_owned()]);
    // (label, type, body, expected); every one is a PUT on v1.0 unless the type says otherwise.
    let cases: Vec<(&str, &str, Vec<u8>, Expect)> = vec![
        ("empty body", "DATADOG", b"".to_vec(), malformed()),
        (
            "whitespace only",
            "DATADOG",
            b" \r\n\t ".to_vec(),
            malformed(),
        ),
        (
            "invalid UTF-8 in a string",
            "DATADOG",
            b"{\"apiKey\":\"ab\xff\"}".to_vec(),
            malformed(),
        ),
        (
            "invalid UTF-8 outside strings",
            "DATADOG",
            b"\xff{}".to_vec(),
            malformed(),
        ),
        (
            "a raw NUL in a string",
            "DATADOG",
            b"{\"apiKey\":\"ab\0cd\"}".to_vec(),
            malformed(),
        ),
        (
            "a NUL after the object",
            "DATADOG",
            b"{\"apiKey\":\"abcd\"}\0".to_vec(),
            malformed(),
        ),
        (
            "an encoded surrogate (CESU-8)",
            "DATADOG",
            b"{\"apiKey\":\"\xed\xa0\x80\"}".to_vec(),
            malformed(),
        ),
        (
            "an overlong encoding",
            "DATADOG",
            b"{\"apiKey\":\"\xc0\xaf\"}".to_vec(),
            malformed(),
        ),
        (
            "a lone high surrogate escape",
            "DATADOG",
            br#"{"apiKey":"\ud800"}"#.to_vec(),
            malformed(),
        ),
        (
            "a lone low surrogate escape",
            "DATADOG",
            br#"{"apiKey":"\udc00"}"#.to_vec(),
            malformed(),
        ),
        (
            "a high surrogate then a letter",
            "DATADOG",
            br#"{"apiKey":"\ud800\u0041"}"#.to_vec(),
            malformed(),
        ),
        (
            "a lone surrogate in a key",
            "DATADOG",
            br#"{"\ud800":"x"}"#.to_vec(),
            malformed(),
        ),
        (
            "a surrogate pair (emoji) is not hex",
            "DATADOG",
            br#"{"apiKey":"\ud83d\ude00"}"#.to_vec(),
            settings("apiKey must be a hexadecimal string"),
        ),
        (
            "escaped hex letters are hex",
            "DATADOG",
            br#"{"apiKey":"\u0041BCD"}"#.to_vec(),
            Expect::Success,
        ),
        (
            "an escaped NUL is not hex",
            "DATADOG",
            br#"{"apiKey":"ab\u0000"}"#.to_vec(),
            settings("apiKey must be a hexadecimal string"),
        ),
        (
            "an escaped NUL is a valid key elsewhere",
            "OPS_GENIE",
            br#"{"apiKey":"\u0000abc\u0000"}"#.to_vec(),
            Expect::Success,
        ),
        (
            "a 30-digit integer for a string field",
            "DATADOG",
            br#"{"apiKey":123456789012345678901234567890}"#.to_vec(),
            Expect::Error("INVALID_JSON_ATTRIBUTE", vec!["apiKey".to_owned()]),
        ),
        (
            "1e308 for a string field",
            "DATADOG",
            br#"{"apiKey":1e308}"#.to_vec(),
            Expect::Error("INVALID_JSON_ATTRIBUTE", vec!["apiKey".to_owned()]),
        ),
        ("NaN", "DATADOG", br#"{"apiKey":NaN}"#.to_vec(), malformed()),
        (
            "Infinity",
            "DATADOG",
            br#"{"apiKey":Infinity}"#.to_vec(),
            malformed(),
        ),
        (
            "a hex number literal",
            "DATADOG",
            br#"{"apiKey":0x10}"#.to_vec(),
            malformed(),
        ),
        (
            "a leading zero",
            "DATADOG",
            br#"{"apiKey":01}"#.to_vec(),
            malformed(),
        ),
        (
            "a trailing comma",
            "DATADOG",
            br#"{"apiKey":"ab12",}"#.to_vec(),
            malformed(),
        ),
        (
            "single quotes",
            "DATADOG",
            br#"{'apiKey':'ab12'}"#.to_vec(),
            malformed(),
        ),
        (
            "a comment",
            "DATADOG",
            br#"/* c */ {"apiKey":"ab12"}"#.to_vec(),
            malformed(),
        ),
        (
            "two objects",
            "DATADOG",
            br#"{"apiKey":"ab12"} {}"#.to_vec(),
            malformed(),
        ),
        ("an array", "DATADOG", b"[]".to_vec(), malformed()),
        ("a string", "DATADOG", b"\"x\"".to_vec(), malformed()),
        ("null", "DATADOG", b"null".to_vec(), malformed()),
        ("a number", "DATADOG", b"1".to_vec(), malformed()),
        ("true", "DATADOG", b"true".to_vec(), malformed()),
        (
            "an empty object",
            "DATADOG",
            b"{}".to_vec(),
            Expect::Error("MISSING_ATTRIBUTE", vec!["apiKey".to_owned()]),
        ),
        (
            "an empty object on a create",
            "NEW_RELIC",
            b"{}".to_vec(),
            Expect::Error("MISSING_ATTRIBUTE", vec!["licenseKey".to_owned()]),
        ),
        (
            "64 levels in an unknown field",
            "DATADOG",
            nested(64, "bogus").into_bytes(),
            Expect::Error("INVALID_ATTRIBUTE", vec!["bogus".to_owned()]),
        ),
        (
            "64 levels in a string field",
            "DATADOG",
            nested(64, "apiKey").into_bytes(),
            Expect::Error("INVALID_JSON_ATTRIBUTE", vec!["apiKey".to_owned()]),
        ),
        (
            "65 levels",
            "DATADOG",
            nested(65, "apiKey").into_bytes(),
            malformed(),
        ),
        (
            "129 levels",
            "DATADOG",
            nested(129, "bogus").into_bytes(),
            malformed(),
        ),
        (
            "13000 levels of objects",
            "DATADOG",
            "{\"a\":".repeat(13_000).into_bytes(),
            malformed(),
        ),
        (
            "65536 opening brackets",
            "DATADOG",
            "[".repeat(65_536).into_bytes(),
            malformed(),
        ),
        (
            "deep nesting closed properly",
            "DATADOG",
            nest(10_000, false, "1").into_bytes(),
            malformed(),
        ),
        (
            "null type counts as absent",
            "DATADOG",
            br#"{"apiKey":"ab12","type":null}"#.to_vec(),
            Expect::Success,
        ),
        (
            "a null unknown field counts as absent",
            "DATADOG",
            br#"{"apiKey":"ab12","bogus":null}"#.to_vec(),
            Expect::Success,
        ),
        (
            "a type with a NUL",
            "DATADOG",
            br#"{"apiKey":"ab12","type":"DATADOG\u0000"}"#.to_vec(),
            Expect::Error("INVALID_ATTRIBUTE", vec!["type".to_owned()]),
        ),
        (
            "a 4096-byte key",
            "DATADOG",
            format!("{{\"apiKey\":\"{hex_4096}\"}}").into_bytes(),
            Expect::Success,
        ),
        (
            "a 4097-byte key",
            "DATADOG",
            format!("{{\"apiKey\":\"{hex_4097}\"}}").into_bytes(),
            settings("apiKey must be at most 4096 bytes"),
        ),
        (
            "a 4096-byte multibyte token",
            "SLACK",
            format!("{{\"apiToken\":\"{multibyte_4096}\",\"teamName\":\"t\"}}").into_bytes(),
            Expect::Success,
        ),
        (
            "a 4097-byte multibyte token",
            "SLACK",
            format!("{{\"apiToken\":\"{multibyte_4097}\",\"teamName\":\"t\"}}").into_bytes(),
            Expect::Error(
                SETTINGS,
                vec![
                    "SLACK".to_owned(),
                    "apiToken must be at most 4096 bytes".to_owned(),
                ],
            ),
        ),
        (
            "a body of exactly 64 KiB",
            "DATADOG",
            padded_datadog(65_536),
            Expect::Success,
        ),
    ];
    for (label, kind, body, expect) in &cases {
        let request = Request::new("PUT", h.v1(kind)).json(body.clone());
        let got = h.run(label, &request, false).await;
        assert_expected(&format!("{label}: {}", request.describe()), expect, &got);
    }

    // Numbers beyond f64: not representable, so either malformed or the wrong JSON type.
    for (label, body) in [
        ("1e999 for a string field", br#"{"apiKey":1e999}"#.to_vec()),
        (
            "-1e999 for an enum",
            br#"{"apiKey":"ab12","region":-1e999}"#.to_vec(),
        ),
        (
            "1e999 in an unknown field",
            br#"{"apiKey":"ab12","bogus":1e999}"#.to_vec(),
        ),
    ] {
        let request = Request::new("PUT", h.v1("DATADOG")).json(body);
        let got = h.run(label, &request, false).await;
        let code = got.code.as_deref().unwrap_or("(success)");
        assert!(
            matches!(
                code,
                "MALFORMED_JSON" | "INVALID_JSON_ATTRIBUTE" | "INVALID_ATTRIBUTE"
            ),
            "{label}: {code} {:?}",
            got.params
        );
    }

    // Duplicate keys: JSON leaves them undefined; whatever the server does, it stores one of
    // the values it was sent, or refuses the body.
    for (label, body, last) in [
        (
            "duplicate key, valid last",
            br#"{"apiKey":"zz","apiKey":"abcd1234"}"#.to_vec(),
            "abcd1234",
        ),
        (
            "duplicate key, valid first",
            br#"{"apiKey":"abcd5678","apiKey":"zz"}"#.to_vec(),
            "zz",
        ),
    ] {
        let request = Request::new("PUT", h.v1("DATADOG")).json(body);
        let got = h.run(label, &request, false).await;
        match got.code.as_deref() {
            None => {
                let one = h.app.client.get(&h.v1("DATADOG")).await.json();
                let shown = one["apiKey"].as_str().unwrap_or("").to_owned();
                assert!(
                    shown.ends_with("1234") || shown.ends_with("5678"),
                    "{label}: stored {shown}"
                );
            }
            Some("MALFORMED_JSON" | "INVALID_INTEGRATION_SETTINGS") => {
                if got.code.as_deref() == Some(SETTINGS) {
                    assert_eq!(last, "zz", "{label}: refused the valid value");
                }
            }
            Some(other) => panic!("{label}: {other}"),
        }
    }

    // A byte-order mark: either tolerated (then {} misses apiKey) or malformed.
    let request = Request::new("PUT", h.v1("DATADOG")).json(b"\xef\xbb\xbf{}".to_vec());
    let got = h.run("a byte-order mark", &request, false).await;
    assert!(
        matches!(
            got.code.as_deref(),
            Some("MALFORMED_JSON" | "MISSING_ATTRIBUTE")
        ),
        "BOM: {:?}",
        got.code
    );

    // Bodies over 64 KiB: 413, whether declared or streamed.
    let too_large = Expect::Error("REQUEST_BODY_TOO_LARGE", vec!["65536".to_owned()]);
    let request = Request::new("PUT", h.v1("DATADOG")).json(padded_datadog(65_537));
    let got = h.run("a body of 64 KiB + 1", &request, false).await;
    assert_expected("a body of 64 KiB + 1", &too_large, &got);
    for version in ["v1.0", "v2"] {
        let mut request = Request::new("POST", h.path(version, "NEW_RELIC")).json(Vec::new());
        request.declared_length = Some("1000000".to_owned());
        let got = h
            .run("a declared 1 MB body, not sent", &request, false)
            .await;
        assert_expected(&format!("declared 1 MB ({version})"), &too_large, &got);
    }
    // Streamed (chunked, no length): the limit is found while reading.
    let big = padded_datadog(70_000);
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut request = Request::new("PUT", h.v1("DATADOG")).json(chunked);
    request.send_length = false;
    request.set("Transfer-Encoding", b"chunked");
    let got = h.run("a chunked body over 64 KiB", &request, false).await;
    assert_expected("a chunked body over 64 KiB", &too_large, &got);
    // A small chunked body in several chunks is read whole.
    let mut request = Request::new("PUT", h.v1("DATADOG"))
        .json(b"5\r\n{\"api\r\n11\r\nKey\":\"abcdef0123\"\r\n1\r\n}\r\n0\r\n\r\n".to_vec());
    request.send_length = false;
    request.set("Transfer-Encoding", b"chunked");
    let got = h.run("a chunked body", &request, false).await;
    assert_expected("a chunked body", &Expect::Success, &got);
    h.report("edge-case bodies");
}

// ---------------------------------------------------------------------------------------------
// Paths and methods
// ---------------------------------------------------------------------------------------------

/// A random path: often a real route, often damaged a little, sometimes anything at all.
fn random_path(rng: &mut Rng, group: &str) -> Vec<u8> {
    if rng.one_in(8) {
        // Anything at all, printable or not.
        let mut bytes = b"/".to_vec();
        let len = rng.below(60);
        for _ in 0..len {
            bytes.push(match rng.below(4) {
                0 => rng.byte(),
                _ => *rng.pick(b"abcXYZ019-._~/%?&=;:@!$'()*+,[]"),
            });
        }
        return bytes;
    }
    let long = "a".repeat(8192);
    let version = *rng.pick(&["v1.0", "v2"]);
    let group_id = match rng.below(10) {
        0..=5 => group.to_owned(),
        6 => "5d791c84ff7a2522cc4f9aa1".to_owned(),
        7 => group.to_uppercase(),
        8 => format!("{group}0"),
        _ => (*rng.pick(&[
            "abc",
            "%00",
            "ｇｒｏｕｐ",
            "%ZZ",
            "-1",
            "000000000000000000000000",
        ]))
        .to_owned(),
    };
    let mut segments: Vec<String> = ["api", "atlas", version, "groups", &group_id, "integrations"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    match rng.below(8) {
        0 | 1 => {}
        2 => segments.push(
            (*rng.pick(&[
                "HIP_CHAT",
                "FOO",
                "DATA%44OG",
                "DATADOG%00",
                "%00",
                "ДАТАДОГ",
                "SLACK;x",
                "PAGER_DUTY%2F",
                "datadog",
                "Slack",
            ]))
            .to_owned(),
        ),
        _ => segments.push((*rng.pick(ALL_TYPES)).to_owned()),
    }
    if rng.one_in(2) {
        for _ in 0..1 + rng.below(2) {
            let at = rng.below(segments.len());
            match rng.below(8) {
                0 => {
                    segments[at] = (*rng.pick(&[
                        "",
                        ".",
                        "..",
                        "%2e%2e",
                        "x",
                        "%2F",
                        "groups",
                        "integrations",
                    ]))
                    .to_owned()
                }
                1 => {
                    let piece = (*rng.pick(&["", ".", "..", "%2e%2e", "x"])).to_owned();
                    segments.insert(at, piece);
                }
                2 => segments[at] = segments[at].to_uppercase(),
                3 => {
                    if let Some(first) = segments[at].bytes().next().filter(u8::is_ascii) {
                        segments[at] = format!("%{first:02X}{}", &segments[at][1..]);
                    }
                }
                4 => segments.push(String::new()),
                5 => {
                    segments.remove(at);
                }
                6 => segments[at] = long.clone(),
                _ => {
                    let copy = segments[at].clone();
                    segments.insert(at, copy);
                }
            }
        }
    }
    let mut path = format!("/{}", segments.join("/"));
    if rng.one_in(6) {
        let query = *rng.pick(&["?x=1", "?", "?pageNum=1&pageNum=2", "?%ZZ"]);
        path.push_str(query);
    }
    path.into_bytes()
}

/// What the contract says about a route, as far as the path alone decides it.
#[derive(Debug)]
enum RouteKind {
    Unknown,
    List {
        group: String,
    },
    One {
        version: String,
        group: String,
        kind: String,
    },
}

fn classify(path: &str) -> RouteKind {
    let Some(rest) = path.strip_prefix("/api/atlas/") else {
        return RouteKind::Unknown;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let version = parts[0];
    if !matches!(version, "v1.0" | "v2")
        || parts.len() < 4
        || parts[1] != "groups"
        || parts[2].is_empty()
        || parts[3] != "integrations"
    {
        return RouteKind::Unknown;
    }
    match parts.len() {
        4 => RouteKind::List {
            group: parts[2].to_owned(),
        },
        5 if !parts[4].is_empty() => RouteKind::One {
            version: version.to_owned(),
            group: parts[2].to_owned(),
            kind: parts[4].to_owned(),
        },
        _ => RouteKind::Unknown,
    }
}

/// Whether `target` is a valid origin-form request target made of RFC 3986 characters
/// (anything else may be refused by hyper before the application sees it).
fn plain_target(target: &[u8]) -> bool {
    target
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(b))
}

#[tokio::test]
async fn random_paths_and_methods_get_atlas_errors_and_change_nothing() {
    let mut h = Harness::start().await;
    let group = h.app.group.clone();
    let mut rng = Rng::new(0x9a7e_0003);
    let methods = [
        "GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "get",
        "Post", "FOO", "M-SEARCH", "PROPFIND",
    ];
    let mut long_targets_refused = 0;
    for i in 0..300 {
        let method = *rng.pick(&methods);
        let target = random_path(&mut rng, &group);
        let request = Request::new(method, target.clone());
        let bare_ok = !plain_target(&target);
        let path = request.path();
        let got = h.run(&format!("path #{i}"), &request, bare_ok).await;
        if got.bare || method == "HEAD" {
            continue;
        }
        let ctx = format!("path #{i}: {}", request.describe());
        let code = got.code.as_deref().unwrap_or("(success)");
        if code == "USER_UNAUTHORIZED" && request.target.len() > 3_000 {
            // The Authorization header repeats the target in `uri`, and the server refuses
            // Authorization headers over 4096 bytes: a long target cannot authenticate.
            long_targets_refused += 1;
            continue;
        }
        match classify(&path) {
            RouteKind::Unknown => {
                if path == "/health" {
                    continue;
                }
                assert_eq!((got.status, code), (404, "RESOURCE_NOT_FOUND"), "{ctx}");
                assert_eq!(
                    got.params,
                    std::slice::from_ref(&path),
                    "{ctx}: the path is the parameter"
                );
            }
            RouteKind::List { .. } if method != "GET" => {
                assert_eq!((got.status, code), (405, "METHOD_NOT_ALLOWED"), "{ctx}");
            }
            RouteKind::One { .. } if !matches!(method, "GET" | "POST" | "PUT" | "DELETE") => {
                assert_eq!((got.status, code), (405, "METHOD_NOT_ALLOWED"), "{ctx}");
                assert_eq!(got.params, [method.to_owned()], "{ctx}");
            }
            RouteKind::List { group: g, .. } | RouteKind::One { group: g, .. }
                if g.contains('%') =>
            {
                // Whether a percent-encoded id is decoded first is not the contract's call.
            }
            RouteKind::List { group: g, .. } | RouteKind::One { group: g, .. }
                if !is_object_id(&g) =>
            {
                assert_eq!((got.status, code), (404, "INVALID_GROUP_ID"), "{ctx}");
                assert_eq!(got.params, std::slice::from_ref(&g), "{ctx}");
            }
            RouteKind::List { group: g, .. } | RouteKind::One { group: g, .. } if g != group => {
                assert_eq!((got.status, code), (401, "NOT_IN_GROUP"), "{ctx}");
            }
            RouteKind::List { .. } => assert_eq!(got.status, 200, "{ctx}"),
            RouteKind::One { version, kind, .. } => {
                let known = if version == "v2" { V2_TYPES } else { ALL_TYPES };
                if kind.contains('%') {
                    continue;
                }
                if kind == "HIP_CHAT" {
                    assert_eq!((got.status, code), (400, "HIPCHAT_NOT_SUPPORTED"), "{ctx}");
                } else if !known.contains(&kind.as_str()) {
                    assert_eq!((got.status, code), (400, "INVALID_ENUM_VALUE"), "{ctx}");
                    assert_eq!(got.params, std::slice::from_ref(&kind), "{ctx}");
                } else {
                    match method {
                        // Empty bodies.
                        "POST" | "PUT" => {
                            assert_eq!((got.status, code), (400, "MALFORMED_JSON"), "{ctx}")
                        }
                        "GET" | "DELETE" => {
                            // Whether it existed is judged by the answer: 200/204 or 404.
                            assert!(
                                matches!(
                                    (got.status, code),
                                    (200 | 204, _) | (404, "INTEGRATION_NOT_CONFIGURED")
                                ),
                                "{ctx}"
                            );
                        }
                        _ => unreachable!(),
                    }
                }
            }
        }
    }
    eprintln!(
        "known routes with a target over 3 KB refused as USER_UNAUTHORIZED: {long_targets_refused}"
    );
    h.report("random paths and methods");
}

fn is_object_id(text: &str) -> bool {
    text.len() == 24
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---------------------------------------------------------------------------------------------
// Query strings
// ---------------------------------------------------------------------------------------------

const QUERY_NAMES: &[&str] = &[
    "pageNum",
    "itemsPerPage",
    "includeCount",
    "pretty",
    "envelope",
];

fn random_query(rng: &mut Rng) -> String {
    let names = [
        "pageNum",
        "itemsPerPage",
        "includeCount",
        "pretty",
        "envelope",
        "pageNum",
        "itemsPerPage",
        "foo",
        "",
        "PAGENUM",
        "page%4Eum",
        "pageNum%00",
        "%70retty",
        "items+PerPage",
    ];
    let integers = ["1", "2", "3", "4", "500", "%31", "1", "2"];
    let booleans = ["true", "false", "tr%75e"];
    let invalid = [
        "501",
        "0",
        "-1",
        "+1",
        "1.5",
        "",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
        "2147483648",
        "1e3",
        "TRUE",
        "True",
        "%ZZ",
        "%",
        "1%00",
        "%201",
        "1+",
        "%EF%BC%90",
        "%D9%A1",
    ];
    let mut parts = Vec::new();
    for _ in 0..1 + rng.below(5) {
        let name = *rng.pick(&names);
        parts.push(match rng.below(12) {
            0 => name.to_owned(),
            2..=11 => {
                let is_integer = name.to_ascii_lowercase().contains("page");
                let value = if is_integer {
                    rng.pick(&integers)
                } else {
                    rng.pick(&booleans)
                };
                format!("{name}={value}")
            }
            _ => format!("{name}={}", rng.pick(&invalid)),
        });
    }
    let separator = *rng.pick(&["&", "&", "&", "&&", ";"]);
    parts.join(separator)
}

/// What the contract says about a query: `Err(names)` when some known parameter is invalid
/// (the error names one of them), else the values that apply.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Query {
    page_num: u64,
    items_per_page: u64,
    include_count: bool,
    pretty: bool,
    envelope: bool,
}

/// The rule for one value: `Some(Ok)` valid, `Some(Err)` invalid, `None` when the contract
/// allows both (integers between 2^31 and 2^64, where "out of range" is not spelled out).
fn value_ok(name: &str, value: &str) -> Option<bool> {
    match name {
        "pageNum" | "itemsPerPage" => {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Some(false);
            }
            let Ok(n) = value.parse::<u128>() else {
                return Some(false);
            };
            if n > u128::from(u64::MAX) {
                return Some(false);
            }
            if name == "itemsPerPage" {
                return Some((1..=500).contains(&n));
            }
            if n < 1 {
                return Some(false);
            }
            if n > u128::from(u32::MAX >> 1) {
                return None;
            }
            Some(true)
        }
        _ => Some(matches!(value, "true" | "false")),
    }
}

/// The contract's reading of a query: each known name's occurrences in order.
fn occurrences(query: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if QUERY_NAMES.contains(&name.as_ref()) {
            out.entry(name.into_owned())
                .or_default()
                .push(value.into_owned());
        }
    }
    out
}

#[tokio::test]
async fn random_query_strings_are_validated_or_ignored() {
    let mut h = Harness::start().await;
    let mut rng = Rng::new(0x0071_e770_0004);
    let total_v1 = 6_u64; // the seeds
    for i in 0..300 {
        let version = *rng.pick(&["v1.0", "v2"]);
        let query = random_query(&mut rng);
        let (method, suffix, body) = match rng.below(6) {
            0 => ("GET", "DATADOG", None),
            1 => ("POST", "SLACK", Some(b"{}".to_vec())),
            _ => ("GET", "", None),
        };
        let target = format!("{}?{query}", h.path(version, suffix));
        let mut request = Request::new(method, target);
        if let Some(body) = body {
            request = request.json(body);
        }
        let got = h.run(&format!("query #{i}"), &request, false).await;
        let ctx = format!("query #{i}: {}", request.describe());
        let code = got.code.as_deref().unwrap_or("(success)");
        let seen = occurrences(&query);
        // Repeated parameters: the contract does not say which occurrence counts, so both
        // the first and the last are acceptable readings.
        let mut invalid_first = Vec::new();
        let mut invalid_last = Vec::new();
        let mut unsure = false;
        for (name, values) in &seen {
            match value_ok(name, &values[0]) {
                Some(false) => invalid_first.push(name.clone()),
                None => unsure = true,
                Some(true) => {}
            }
            match value_ok(name, values.last().expect("one")) {
                Some(false) => invalid_last.push(name.clone()),
                None => unsure = true,
                Some(true) => {}
            }
        }
        if unsure {
            continue;
        }
        if code == "INVALID_QUERY_PARAMETER" {
            assert_eq!(got.params.len(), 1, "{ctx}");
            let named = &got.params[0];
            assert!(
                invalid_first.contains(named) || invalid_last.contains(named),
                "{ctx}: names {named}, but the invalid ones are {invalid_first:?} / {invalid_last:?}"
            );
            continue;
        }
        assert!(
            invalid_first.is_empty() || invalid_last.is_empty(),
            "{ctx}: {code}, but {invalid_first:?} are invalid either way"
        );
        let value = |name: &str, first: bool| {
            seen.get(name).map(|v| {
                if first {
                    v[0].clone()
                } else {
                    v.last().expect("one").clone()
                }
            })
        };
        let reading = |first: bool| Query {
            page_num: value("pageNum", first).map_or(1, |v| v.parse().unwrap_or(1)),
            items_per_page: value("itemsPerPage", first).map_or(100, |v| v.parse().unwrap_or(100)),
            include_count: value("includeCount", first).is_none_or(|v| v == "true"),
            pretty: value("pretty", first).is_some_and(|v| v == "true"),
            envelope: value("envelope", first).is_some_and(|v| v == "true"),
        };
        let readings: Vec<Query> = [true, false]
            .into_iter()
            .filter(|first| {
                if *first {
                    invalid_first.is_empty()
                } else {
                    invalid_last.is_empty()
                }
            })
            .map(reading)
            .collect();
        match (method, suffix) {
            ("POST", _) => {
                // SLACK exists and `{}` misses apiToken: the body's error, after the query.
                assert_eq!(code, "MISSING_ATTRIBUTE", "{ctx}");
            }
            ("GET", "DATADOG") => {
                assert_eq!(got.status, 200, "{ctx}");
                let body = got.body.as_ref().expect("body");
                let wrapped = body.get("content").is_some() && body.get("status").is_some();
                assert!(
                    readings.iter().any(|q| q.envelope == wrapped),
                    "{ctx}: envelope"
                );
            }
            _ => {
                assert_eq!(got.status, 200, "{ctx}");
                let body = got.body.as_ref().expect("body");
                let total = if version == "v2" {
                    total_v1 - 1
                } else {
                    total_v1
                };
                let results = body["results"].as_array().expect("results").len() as u64;
                let fits = |q: &Query| {
                    let skip = q
                        .page_num
                        .saturating_sub(1)
                        .saturating_mul(q.items_per_page);
                    let expected = total.saturating_sub(skip).min(q.items_per_page);
                    results == expected
                        && body.get("totalCount").is_some() == q.include_count
                        && (body.get("status") == Some(&json!(200))) == q.envelope
                        && got.text.contains('\n') == q.pretty
                        && body["links"]
                            .as_array()
                            .and_then(|links| links.iter().find(|l| l["rel"] == "self"))
                            .and_then(|l| l["href"].as_str())
                            .is_some_and(|href| {
                                href.ends_with(&format!(
                                    "?pageNum={}&itemsPerPage={}",
                                    q.page_num, q.items_per_page
                                ))
                            })
                };
                assert!(
                    readings.iter().any(fits),
                    "{ctx}: paging does not match {readings:?}"
                );
            }
        }
    }
    h.report("random query strings");
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/// v2 Accept values and whether the contract accepts them.
fn accept_cases() -> Vec<(Vec<u8>, bool)> {
    let mut cases: Vec<(Vec<u8>, bool)> = [
        (V2, true),
        ("application/vnd.atlas.2024-08-05+json", true),
        ("application/vnd.atlas.2099-12-31+json", true),
        ("application/vnd.atlas.2024-02-29+json", true),
        (
            "application/json, application/vnd.atlas.2023-01-01+json",
            true,
        ),
        ("application/vnd.atlas.2023-01-01+json; charset=utf-8", true),
        ("application/vnd.atlas.2023-01-01+json;q=0.5", true),
        ("", false),
        ("*/*", false),
        ("application/json", false),
        ("application/vnd.atlas.2022-12-31+json", false),
        ("application/vnd.atlas.2023-02-29+json", false),
        ("application/vnd.atlas.2023-13-01+json", false),
        ("application/vnd.atlas.2023-00-10+json", false),
        ("application/vnd.atlas.20230101+json", false),
        ("application/vnd.atlas.2023-01-01", false),
        ("application/vnd.atlas.2023-01-01+xml", false),
        ("application/vnd.atlas.latest+json", false),
        ("application/vnd.atlas.+json", false),
        ("application/vnd.atlas.9999-99-99+json", false),
        ("application/vnd.atlas.2023-01-01-+json", false),
        ("text/html", false),
    ]
    .iter()
    .map(|(v, ok)| (v.as_bytes().to_vec(), *ok))
    .collect();
    cases.push((b"\x80\xff\xfe application/vnd.atlas".to_vec(), false));
    cases.push((vec![b'a'; 8192], false));
    cases
}

/// Content types: JSON ones (the body is read as JSON) and others (whatever the server does
/// with them, the answer is Atlas's).
const JSON_TYPES: &[&str] = &["application/json", "application/json; charset=utf-8", V2];
const OTHER_TYPES: &[&str] = &[
    "",
    "text/plain",
    "application/xml",
    "application/json; charset=latin1",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    ";;;",
    "application/vnd.atlas.1999-01-01+json",
];

#[tokio::test]
async fn random_headers_get_atlas_errors_and_change_nothing() {
    let mut h = Harness::start().await;
    let mut rng = Rng::new(0x00e4_de75_0005);
    let accepts = accept_cases();
    for i in 0..250 {
        let version = *rng.pick(&["v1.0", "v2"]);
        let kind = *rng.pick(if version == "v2" { V2_TYPES } else { ALL_TYPES });
        let (method, target, body) = match rng.below(4) {
            0 => ("GET", h.path(version, ""), None),
            1 => ("GET", h.path(version, kind), None),
            _ => {
                let method = *rng.pick(&["POST", "PUT"]);
                let mut body = valid_body(&mut rng, kind, version);
                let mutations = rng.below(2);
                mutate(&mut rng, kind, &mut body, mutations);
                (method, h.path(version, kind), Some(body))
            }
        };
        let mut request = Request::new(method, target);
        let mut json_content = true;
        if let Some(body) = &body {
            request = request.json(serde_json::to_vec(&Value::Object(body.clone())).expect("json"));
            if rng.one_in(2) {
                let (content_type, is_json) = if rng.one_in(3) {
                    (rng.pick(JSON_TYPES).as_bytes().to_vec(), true)
                } else if rng.one_in(4) {
                    let len = rng.below(40);
                    let mut garbage = rng.bytes(len);
                    garbage.retain(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f));
                    (garbage, false)
                } else {
                    (rng.pick(OTHER_TYPES).as_bytes().to_vec(), false)
                };
                request.set("Content-Type", &content_type);
                json_content = is_json;
            }
        }
        let mut accept_ok = true;
        if rng.one_in(2) {
            let (accept, ok) = rng.pick(&accepts).clone();
            if accept.is_empty() && rng.one_in(2) {
                request.unset("Accept");
            } else {
                request.set("Accept", &accept);
            }
            accept_ok = ok;
            if rng.one_in(4) {
                // A second Accept header with a valid version: some Accept asks for it.
                request
                    .headers
                    .push(("Accept".to_owned(), V2.as_bytes().to_vec()));
                accept_ok = true;
            }
        }
        // Other headers that must not matter.
        for _ in 0..rng.below(3) {
            let (name, value): (&str, Vec<u8>) = match rng.below(8) {
                0 => (
                    "X-Forwarded-For",
                    (*rng.pick(&["garbage", "1.2.3.4", "::1, 10.0.0.1", "999.1.1.1", ""]))
                        .as_bytes()
                        .to_vec(),
                ),
                1 => (
                    "Host",
                    (*rng.pick(&[
                        "evil.example",
                        "a b",
                        "evil.example/x?y#z",
                        "[::1]:1",
                        "xn--e1afmkfd.example",
                        "",
                    ]))
                    .as_bytes()
                    .to_vec(),
                ),
                2 => (
                    "X-Request-Id",
                    (*rng.pick(&["", "x".repeat(2000).as_str(), "id with spaces"]))
                        .as_bytes()
                        .to_vec(),
                ),
                3 => ("Cookie", b"a=b; c".to_vec()),
                4 => ("Expect", b"100-continue".to_vec()),
                5 => ("Accept-Encoding", b"gzip, br, *;q=0".to_vec()),
                6 => ("X-Obs-Text", vec![0x80, 0xff, b'a']),
                _ => ("X-Long", vec![b'v'; 16 * 1024]),
            };
            request.headers.push((name.to_owned(), value));
        }
        let exists = h.exists(kind);
        let got = h.run(&format!("headers #{i}"), &request, false).await;
        let ctx = format!("headers #{i}: {}", request.describe());
        let code = got.code.as_deref().unwrap_or("(success)");
        if version == "v2" && !accept_ok {
            assert_eq!((got.status, code), (406, "INVALID_VERSION_DATE"), "{ctx}");
            continue;
        }
        assert_ne!(
            code, "INVALID_VERSION_DATE",
            "{ctx}: the version was acceptable"
        );
        match body {
            None => assert!(
                got.status == 200 || code == "INTEGRATION_NOT_CONFIGURED",
                "{ctx}: {code}"
            ),
            Some(body) => {
                let expect = expect_for(kind, version, method, &body, exists);
                // A JSON body is judged as JSON; any other content type may also be
                // refused, but never accepted when the body is invalid.
                if json_content || got.status == 200 {
                    assert_expected(&ctx, &expect, &got);
                }
            }
        }
    }

    // Content-Length against the body actually sent, on an authenticated create.
    let body = br#"{"licenseKey":"k1","accountId":"a1","writeToken":"w1","readToken":"r1"}"#;
    // (label, declared, body sent, the answer when the application gets the request; None:
    // hyper may refuse it first).
    for (label, declared, send_body, expected) in [
        ("shorter than the body", "10", true, Some("MALFORMED_JSON")),
        ("zero with a body", "0", true, Some("MALFORMED_JSON")),
        (
            "one past 64 KiB, body not sent",
            "65537",
            false,
            Some("REQUEST_BODY_TOO_LARGE"),
        ),
        (
            "1e12, body not sent",
            "1000000000000",
            false,
            Some("REQUEST_BODY_TOO_LARGE"),
        ),
        (
            "u64::MAX - 2, body not sent",
            "18446744073709551613",
            false,
            None,
        ),
        (
            "u64::MAX, body not sent",
            "18446744073709551615",
            false,
            None,
        ),
        ("beyond u64", "18446744073709551616", false, None),
        ("negative", "-1", true, None),
        ("not a number", "abc", true, None),
        ("a list of two", "1, 2", true, None),
        ("a plus sign", "+70", true, None),
    ] {
        let mut request = Request::new("POST", h.v1("NEW_RELIC")).json(if send_body {
            body.to_vec()
        } else {
            Vec::new()
        });
        request.declared_length = Some(declared.to_owned());
        let got = h
            .run(
                &format!("Content-Length {label}"),
                &request,
                expected.is_none(),
            )
            .await;
        if let Some(expected) = expected {
            assert_eq!(
                got.code.as_deref(),
                Some(expected),
                "Content-Length {label}: {got:?}"
            );
        } else if !got.bare {
            assert!(
                got.status < 500 && got.code.is_some(),
                "Content-Length {label}: {got:?}"
            );
        }
        eprintln!(
            "Content-Length {label} ({declared}): {} {}",
            got.status,
            got.code
                .as_deref()
                .unwrap_or(if got.bare { "(bare hyper answer)" } else { "-" })
        );
    }
    // Two Content-Length headers that disagree, and Content-Length with chunked.
    for (label, extra) in [
        (
            "two differing Content-Lengths",
            ("Content-Length", b"5".to_vec()),
        ),
        (
            "Content-Length and chunked",
            ("Transfer-Encoding", b"chunked".to_vec()),
        ),
        (
            "an unknown transfer coding",
            ("Transfer-Encoding", b"gzip".to_vec()),
        ),
    ] {
        let mut request = Request::new("POST", h.v1("NEW_RELIC")).json(body.to_vec());
        request.headers.push((extra.0.to_owned(), extra.1));
        let creds_wire = h.creds.send(&request).await;
        match creds_wire {
            Wire::Reply(resp) => {
                let status = resp.status;
                let got = h.check(label, &request, Wire::Reply(resp), true).await;
                eprintln!(
                    "{label}: {status} {}",
                    got.code.as_deref().unwrap_or(if got.bare {
                        "(bare hyper answer)"
                    } else {
                        "-"
                    })
                );
            }
            Wire::NoReply(why) => {
                eprintln!("{label}: connection closed without an answer ({why})");
                h.alive(label).await;
            }
        }
    }
    // Broken chunked bodies on an authenticated create: the application reads them, so
    // either the body error is MALFORMED_JSON or hyper ends the connection.
    for (label, chunked) in [
        (
            "chunked with a bad size",
            b"zz\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunked with a huge size",
            b"ffffffffffffffffff\r\nabc\r\n".to_vec(),
        ),
        (
            "chunked with a size bigger than the data",
            b"ff\r\n{}\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunked with a bad extension",
            b"2;\0\r\n{}\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunked with garbage trailers",
            b"2\r\n{}\r\n0\r\nX Bad Trailer\r\n\r\n".to_vec(),
        ),
    ] {
        let mut request = Request::new("POST", h.v1("NEW_RELIC")).json(chunked);
        request.send_length = false;
        request.set("Transfer-Encoding", b"chunked");
        let auth = h.creds.authorization("POST", &request.target_text());
        // Half-closed, so that a server waiting for the rest of a chunk sees the end.
        let wire = exchange(
            h.app.addr,
            &request.bytes(&h.creds.host, Some(&auth)),
            PATIENCE,
            true,
        )
        .await;
        match wire {
            Wire::Reply(resp) => {
                let status = resp.status;
                let got = h.check(label, &request, Wire::Reply(resp), true).await;
                // hyper ignores chunk extensions and trailers; then `{}` is read whole.
                assert!(
                    got.bare
                        || matches!(
                            got.code.as_deref(),
                            Some("MALFORMED_JSON" | "MISSING_ATTRIBUTE")
                        ),
                    "{label}: {got:?}"
                );
                eprintln!(
                    "{label}: {status} {}",
                    got.code.as_deref().unwrap_or(if got.bare {
                        "(bare hyper answer)"
                    } else {
                        "-"
                    })
                );
            }
            Wire::NoReply(why) => {
                eprintln!("{label}: connection closed without an answer ({why})");
                h.alive(label).await;
            }
        }
    }
    // Declared longer than sent, then the client half-closes: the server must not wait
    // forever nor fall over.
    let mut request = Request::new("POST", h.v1("NEW_RELIC")).json(body.to_vec());
    request.declared_length = Some("5000".to_owned());
    let auth = h.creds.authorization("POST", &request.target_text());
    let wire = exchange(
        h.app.addr,
        &request.bytes(&h.creds.host, Some(&auth)),
        PATIENCE,
        true,
    )
    .await;
    match &wire {
        Wire::Reply(resp) => eprintln!(
            "Content-Length longer than the body, half-closed: {} {}",
            resp.status,
            resp.text()
        ),
        Wire::NoReply(why) => eprintln!(
            "Content-Length longer than the body, half-closed: closed without an answer ({why})"
        ),
    }
    if let Wire::Reply(resp) = wire {
        if !resp.body.is_empty() {
            let _ = atlas_error("Content-Length longer than the body", &resp);
        }
    }
    h.alive("after Content-Length longer than the body").await;
    h.report("random headers");
}

// ---------------------------------------------------------------------------------------------
// Malformed HTTP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_http_is_refused_and_the_server_keeps_serving() {
    let h = Harness::start().await;
    let group_path = h.v1("");
    let host = h.app.addr.to_string();
    let ok_head = |extra: &str| {
        format!("GET {group_path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
    };
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("garbage request line".into(), b"GARBAGE\r\n\r\n".to_vec()),
        ("empty lines only".into(), b"\r\n\r\n\r\n\r\n".to_vec()),
        ("method only".into(), b"GET\r\n\r\n".to_vec()),
        ("HTTP/0.9 style".into(), b"GET /health\r\n\r\n".to_vec()),
        ("HTTP/9.9".into(), b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("HTTP/1.1 with a fourth word".into(), b"GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n".to_vec()),
        ("two spaces after the method".into(), b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bare LF line ends".into(), b"GET /health HTTP/1.1\nHost: x\n\n".to_vec()),
        ("NUL in the target".into(), b"GET /he\0alth HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("space in the target".into(), b"GET /api/atlas/v1.0/groups/a b/integrations HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("fragment in the target".into(), format!("GET {group_path}#frag HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
        ("absolute-form target".into(), format!("GET http://{host}{group_path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
        ("asterisk target".into(), b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("CONNECT".into(), format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()),
        ("non-token method".into(), b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a 100 KB request line".into(), format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)).into_bytes()),
        ("a 1 MB request line".into(), format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1_000_000)).into_bytes()),
        ("header without a colon".into(), ok_head("Host x\r\n")),
        ("space before the colon".into(), ok_head("X-Test : x\r\n")),
        ("invalid header name".into(), ok_head("X(T): x\r\n")),
        ("empty header name".into(), ok_head(": x\r\n")),
        ("NUL in a header value".into(), ok_head("X-Test: a\0b\r\n")),
        ("obsolete line folding".into(), ok_head("X-Test: a\r\n b\r\n")),
        ("200 headers".into(), ok_head(&"X-A: b\r\n".repeat(200))),
        ("10 000 headers".into(), ok_head(&"X-A: b\r\n".repeat(10_000))),
        ("a 200 KB header value".into(), ok_head(&format!("X-Big: {}\r\n", "v".repeat(200_000)))),
        ("Content-Length not a number".into(), ok_head("Content-Length: abc\r\n")),
        ("Content-Length negative".into(), ok_head("Content-Length: -1\r\n")),
        ("Content-Length beyond 64 bits".into(), ok_head("Content-Length: 99999999999999999999999\r\n")),
        ("two differing Content-Lengths".into(), ok_head("Content-Length: 1\r\nContent-Length: 2\r\n")),
        ("Content-Length and chunked".into(), ok_head("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n")),
        ("chunked with a bad size".into(), format!("POST {group_path}/DATADOG HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").into_bytes()),
        ("chunked with a huge size".into(), format!("POST {group_path}/DATADOG HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n").into_bytes()),
        ("chunked, never finished".into(), format!("POST {group_path}/DATADOG HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"a\":").into_bytes()),
        ("HTTP/2 preface".into(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("TLS ClientHello".into(), b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec()),
        ("a request cut in the headers".into(), b"GET /health HTTP/1.1\r\nHost: x\r\nX-Cut: ".to_vec()),
        ("a pipelined garbage request after a good one".into(), b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n".to_vec()),
    ];
    let mut rng = Rng::new(0x0bad_0006);
    for n in 0..12 {
        let len = 1 + rng.below(2000);
        let mut bytes = rng.bytes(len);
        if n % 2 == 0 {
            // Random bytes after a plausible start.
            let mut start = b"POST /api/atlas/v1.0/groups/".to_vec();
            start.append(&mut bytes);
            bytes = start;
        }
        cases.push((format!("random bytes #{n}"), bytes));
    }
    let mut seen = Vec::new();
    for (label, bytes) in &cases {
        let wire = exchange(h.app.addr, bytes, Duration::from_secs(1), false).await;
        let outcome = match &wire {
            Wire::Reply(resp) => {
                assert!(
                    resp.status < 500,
                    "{label}: {} {}",
                    resp.status,
                    resp.text()
                );
                if !resp.body.is_empty() {
                    // Whatever got through to the application is answered the Atlas way.
                    let media = resp.header("content-type").unwrap_or("");
                    if media.starts_with("application/json") && resp.status >= 400 {
                        let _ = atlas_error(label, resp);
                    }
                }
                let kind = if resp.body.is_empty() {
                    "bare"
                } else {
                    "with a body"
                };
                format!("{} ({kind})", resp.status)
            }
            Wire::NoReply(why) => format!("no answer: {why}"),
        };
        h.alive(label).await;
        seen.push(format!("{label}: {outcome}"));
    }
    eprintln!("malformed HTTP outcomes:\n  {}", seen.join("\n  "));
}
