//! The test harness: [`spawn_app`] starts the server in-process on a fresh database and returns
//! a [`TestApp`] with the first-start credentials and a Digest-authenticating client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use atlas_integrations::config::{Global, Serve};
use atlas_integrations::startup::Application;
use md5::{Digest, Md5};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::pg::TestDb;

/// Options for [`spawn_app_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// `--auth-failure-limit` (0 = no throttle, the default in tests).
    pub auth_failure_limit: u32,
    /// `--auth-cooldown-secs`.
    pub auth_cooldown_secs: u64,
    /// `--nonce-ttl-secs`.
    pub nonce_ttl_secs: u64,
    /// `--public-url`.
    pub public_url: Option<String>,
    /// `--trusted-proxy`.
    pub trusted_proxies: Vec<String>,
    /// `--project-rate-limit`.
    pub project_rate_limit: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth_failure_limit: 0,
            auth_cooldown_secs: 60,
            nonce_ttl_secs: 300,
            public_url: None,
            trusted_proxies: Vec::new(),
            project_rate_limit: None,
        }
    }
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The first-start project.
    pub group: String,
    /// The first-start organization.
    pub org: String,
    /// The first-start ORG_OWNER key.
    pub public_key: String,
    /// Its private key.
    pub private_key: String,
    /// Options shared with the CLI (same database, data dir, master key).
    pub global: Global,
    /// A Digest client logged in with the owner key.
    pub client: DigestClient,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    _db: Option<TestDb>,
}

/// Which backend the suite runs on: `ATLAS_TEST_BACKEND=postgres` or SQLite.
pub fn backend_is_postgres() -> bool {
    std::env::var("ATLAS_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// The `serve` options for a test server: port 0, a fast key-cache refresh.
pub fn serve_options(options: &Options) -> Serve {
    Serve {
        listen: "127.0.0.1:0".parse().expect("addr"),
        public_url: options.public_url.clone(),
        no_migrate: false,
        auth_failure_limit: options.auth_failure_limit,
        auth_cooldown_secs: options.auth_cooldown_secs,
        nonce_ttl_secs: options.nonce_ttl_secs,
        trusted_proxies: options.trusted_proxies.clone(),
        project_rate_limit: options.project_rate_limit,
        auth_refresh_ms: 100,
    }
}

/// Starts the server with default test options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// Starts the server with `options` on a fresh database.
pub async fn spawn_app_with(options: Options) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = if backend_is_postgres() {
        Some(
            TestDb::create()
                .await
                .expect("ATLAS_TEST_BACKEND=postgres but PostgreSQL is not reachable"),
        )
    } else {
        None
    };
    let global = Global {
        database_url: Some(match &db {
            Some(db) => db.url().to_owned(),
            None => atlas_integrations::store::sqlite::url_for_path(&dir.path().join("test.db")),
        }),
        data_dir: dir.path().join("data"),
        master_key_file: None,
        pool_size: 4,
    };
    let app = Application::build(&global, &serve_options(&options))
        .await
        .expect("build app");
    let addr = app.local_addr().expect("addr");
    let first = app.first_start().expect("first start on a fresh database");
    let group = first.group_id.to_string();
    let org = first.org_id.to_string();
    let public_key = first.public_key.clone();
    let private_key = secrecy::ExposeSecret::expose_secret(&first.private_key).to_owned();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
        .expect("server");
    });
    let base = format!("http://{addr}");
    TestApp {
        addr,
        client: DigestClient::new(&base, &public_key, &private_key),
        base,
        group,
        org,
        public_key,
        private_key,
        global,
        shutdown: Some(tx),
        server: Some(server),
        _dir: dir,
        _db: db,
    }
}

impl TestApp {
    /// `/api/atlas/v1.0/groups/{group}/integrations` (+ `/{suffix}` when not empty).
    pub fn v1(&self, suffix: &str) -> String {
        path("v1.0", &self.group, suffix)
    }

    /// `/api/atlas/v2/groups/{group}/integrations` (+ `/{suffix}`).
    pub fn v2(&self, suffix: &str) -> String {
        path("v2", &self.group, suffix)
    }

    /// A Digest client for another key.
    pub fn client_for(&self, public_key: &str, private_key: &str) -> DigestClient {
        DigestClient::new(&self.base, public_key, private_key)
    }

    /// Stops the server gracefully.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An API path.
pub fn path(version: &str, group: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        format!("/api/atlas/{version}/groups/{group}/integrations")
    } else {
        format!("/api/atlas/{version}/groups/{group}/integrations/{suffix}")
    }
}

/// The v2 Accept header value.
pub const V2: &str = "application/vnd.atlas.2023-01-01+json";

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub text: String,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<binary>").to_owned())
    }

    /// Asserts an Atlas error: status, errorCode and parameters.
    pub fn assert_error(&self, status: u16, code: &str, parameters: &[&str]) {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.text);
        let body = self.json();
        assert_eq!(body["errorCode"], code, "errorCode; body: {}", self.text);
        assert_eq!(body["error"], status, "error field; body: {}", self.text);
        assert!(body["detail"].is_string(), "detail; body: {}", self.text);
        assert!(body["reason"].is_string(), "reason; body: {}", self.text);
        let expected: Vec<Value> = parameters
            .iter()
            .map(|p| Value::String((*p).to_owned()))
            .collect();
        assert_eq!(
            body["parameters"],
            Value::Array(expected),
            "parameters; body: {}",
            self.text
        );
    }
}

/// An HTTP client that answers Digest challenges like curl does (MD5, qop=auth), reusing the
/// nonce with a rising `nc` until the server says it is stale.
pub struct DigestClient {
    base: String,
    http: reqwest::Client,
    user: String,
    password: String,
    nonce: Mutex<Option<(String, u32)>>,
}

impl DigestClient {
    /// A client for `base` with these credentials.
    pub fn new(base: &str, user: &str, password: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::new(),
            user: user.to_owned(),
            password: password.to_owned(),
            nonce: Mutex::new(None),
        }
    }

    /// The raw reqwest client (no authentication).
    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// GET `path` (v2 paths get the v2 Accept header).
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, &[]).await
    }

    /// POST a JSON text.
    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.send(Method::POST, path, Some(body), &[]).await
    }

    /// PUT a JSON text.
    pub async fn put(&self, path: &str, body: &str) -> Reply {
        self.send(Method::PUT, path, Some(body), &[]).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// Any request. A path under `/api/atlas/v2/` gets `Accept: application/vnd.atlas.2023-01-01+json`
    /// unless `headers` sets Accept; bodies are sent as `application/json`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        for _ in 0..3 {
            let auth = self.authorization(method.as_str(), path);
            let reply = send_raw(
                &self.http,
                &self.base,
                method.clone(),
                path,
                body,
                headers,
                auth.as_deref(),
            )
            .await;
            if reply.status == StatusCode::UNAUTHORIZED {
                if let Some(challenge) = reply.header("www-authenticate") {
                    let stale = challenge.contains("stale=true");
                    let had_nonce = auth.is_some();
                    if let Some(nonce) = challenge_param(&challenge, "nonce") {
                        *self.nonce.lock().expect("lock") = Some((nonce, 0));
                        if !had_nonce || stale {
                            continue;
                        }
                    }
                }
            }
            return reply;
        }
        panic!("the server kept challenging {method} {path}");
    }

    fn authorization(&self, method: &str, uri: &str) -> Option<String> {
        let mut guard = self.nonce.lock().expect("lock");
        let (nonce, nc) = guard.as_mut()?;
        *nc += 1;
        Some(digest_header(
            &self.user,
            &self.password,
            method,
            uri,
            nonce,
            *nc,
            &format!("{:016x}", rand_u64()),
        ))
    }
}

/// Sends one request without answering challenges; `authorization` is sent as is.
pub async fn send_raw(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    authorization: Option<&str>,
) -> Reply {
    let mut request = http.request(method, format!("{base}{path}"));
    if path.starts_with("/api/atlas/v2/")
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("accept"))
    {
        request = request.header("accept", V2);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    if let Some(body) = body {
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        request = request.body(body.to_owned());
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    Reply {
        status,
        headers,
        text,
    }
}

/// Builds a Digest `Authorization` header value (MD5, qop=auth).
pub fn digest_header(
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let ha1 = md5_hex(&format!("{user}:MMS Public API:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let nc = format!("{nc:08x}");
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"MMS Public API\", nonce=\"{nonce}\", uri=\"{uri}\", \
         algorithm=MD5, response=\"{response}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
    )
}

/// Lowercase hex MD5.
pub fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A parameter of a `WWW-Authenticate` challenge.
pub fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let end = challenge[start..].find('"')? + start;
    Some(challenge[start..end].to_owned())
}

fn rand_u64() -> u64 {
    use rand::Rng;
    rand::thread_rng().gen()
}

/// The path of the server binary built for the tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_atlas-integrations"))
}

/// Another server instance on the same database as `app` (for multi-instance tests).
pub struct Instance {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts one more server on `global`'s database.
pub async fn spawn_instance(global: &Global) -> Instance {
    let app = Application::build(global, &serve_options(&Options::default()))
        .await
        .expect("build instance");
    assert!(
        app.first_start().is_none(),
        "a second instance must not bootstrap again"
    );
    let addr = app.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = app
            .run_until_stopped(async {
                let _ = rx.await;
            })
            .await;
    });
    Instance {
        base: format!("http://{addr}"),
        shutdown: Some(tx),
    }
}

/// A server run as a child process of the real binary, with its first-start credentials.
pub struct Process {
    /// The child.
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Everything it wrote on stderr so far is appended here by a reader thread.
    pub stderr: std::sync::Arc<Mutex<String>>,
    /// stdout (the first-start text, when there was one).
    pub stdout: std::sync::Arc<Mutex<String>>,
}

impl Process {
    /// Starts `atlas-integrations serve --listen 127.0.0.1:0` with `args` and waits until it
    /// listens.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--auth-failure-limit", "0"])
            .args(args)
            .env("ATLAS_INTEGRATIONS_LOG_FORMAT", "json")
            .env_remove("ATLAS_INTEGRATIONS_MASTER_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn server");
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let stdout = std::sync::Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let err_pipe = child.stderr.take().expect("stderr");
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"listening\"") {
                    let _ = tx.send(line.clone());
                }
                let mut all = sink.lock().expect("lock");
                all.push_str(&line);
                all.push('\n');
            }
        });
        let out_pipe = child.stdout.take().expect("stdout");
        let sink = std::sync::Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().expect("lock");
                all.push_str(&line);
                all.push('\n');
            }
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("server did not start: {}", stderr.lock().expect("lock")));
        let value: Value = serde_json::from_str(&line).expect("json log line");
        let addr = value["fields"]["addr"]
            .as_str()
            .expect("addr field")
            .to_owned();
        Self {
            child,
            base: format!("http://{addr}"),
            stderr,
            stdout,
        }
    }

    /// A value of the first-start text (`group id`, `public key`, `private key`). The text
    /// comes on stdout, read by a thread of its own, which may not have caught up with the
    /// `listening` line on stderr yet: it waits up to 10 s for the label to appear.
    pub fn credential(&self, label: &str) -> String {
        let prefix = format!("{label}:");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = self.stdout.lock().expect("lock").clone();
            let found = out
                .lines()
                .find_map(|l| l.trim().strip_prefix(&prefix).map(|v| v.trim().to_owned()));
            match found {
                Some(value) => return value,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                None => panic!("no {label:?} in: {out}"),
            }
        }
    }

    /// Sends SIGKILL and waits.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body as JSON after asserting a 200 status.
pub fn ok(reply: &Reply) -> Value {
    assert_eq!(reply.status.as_u16(), 200, "status; body: {}", reply.text);
    reply.json()
}

/// Names the case of a table-driven test while it runs: when the test panics with a `Case`
/// alive, the case's name is printed after the panic message, in the failed test's output.
///
/// ```ignore
/// for (name, input, expected) in cases {
///     let _case = Case::new(name);
///     assert_eq!(run(input), expected);
/// }
/// ```
pub struct Case(String);

impl Case {
    /// Starts the case `name`.
    pub fn new(name: impl std::fmt::Display) -> Self {
        Self(name.to_string())
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failing case: {}", self.0);
        }
    }
}

/// A fresh nonce, from the challenge that answers an unauthenticated request (asserted to be a
/// 401).
pub async fn fresh_nonce(app: &TestApp) -> String {
    let reply = app.get_with_authorization(&app.v1(""), None).await;
    assert_eq!(
        reply.status.as_u16(),
        401,
        "challenge; body: {}",
        reply.text
    );
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no challenge: {} {}", reply.status, reply.text));
    challenge_param(&challenge, "nonce").expect("nonce in the challenge")
}

/// An `Authorization` header for one request by the app's owner key, on a nonce of its own.
pub async fn fresh_authorization(app: &TestApp, method: &str, uri: &str) -> String {
    let nonce = fresh_nonce(app).await;
    let cnonce = format!("{:016x}", rand_u64());
    digest_header(
        &app.public_key,
        &app.private_key,
        method,
        uri,
        &nonce,
        1,
        &cnonce,
    )
}

impl TestApp {
    /// GET `path` with `authorization` sent as is, or none; a challenge is not answered.
    pub async fn get_with_authorization(&self, path: &str, authorization: Option<&str>) -> Reply {
        self.send_with_authorization(Method::GET, path, None, authorization)
            .await
    }

    /// Any request with `authorization` sent as is, or none (see [`send_raw`]).
    pub async fn send_with_authorization(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        authorization: Option<&str>,
    ) -> Reply {
        let http = self.client.raw();
        send_raw(http, &self.base, method, path, body, &[], authorization).await
    }

    /// A request to this server that sets only what the caller adds, but for
    /// `Accept: application/vnd.atlas.2023-01-01+json` on `/api/atlas/v2/` paths (for headers
    /// or bodies that [`DigestClient::send`] cannot send: raw bytes, no authentication); send it
    /// with [`read_reply`].
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .client
            .raw()
            .request(method, format!("{}{path}", self.base));
        if path.starts_with("/api/atlas/v2/") {
            request.header("accept", V2)
        } else {
            request
        }
    }
}

/// Sends `request` and reads the response whole.
pub async fn read_reply(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("request");
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        text: response.text().await.expect("body"),
    }
}

impl DigestClient {
    /// GET `path` with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, None, headers).await
    }
}

/// How long a change made with the CLI (or through another instance) may take to reach a
/// running server.
pub const PROPAGATION: std::time::Duration = std::time::Duration::from_secs(1);

/// Repeats a GET of `path` (with `headers`) until `done` holds, for at most [`PROPAGATION`]
/// after `since`; panics with the last answer otherwise.
pub async fn poll_until(
    client: &DigestClient,
    path: &str,
    headers: &[(&str, &str)],
    since: std::time::Instant,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    loop {
        let reply = client.get_with(path, headers).await;
        if done(&reply) {
            return reply;
        }
        assert!(
            since.elapsed() <= PROPAGATION,
            "{what}: GET {path} not as expected {:?} after the change; last answer {} {}",
            since.elapsed(),
            reply.status,
            reply.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
