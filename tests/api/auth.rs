//! Authentication and authorization (contract §1, §5, §7): roles on own and foreign projects,
//! the Digest challenge, access lists (with trusted proxies), nonce expiry, replay, malformed
//! headers, algorithms, the failure throttle, real clients (curl, Python `requests`) and the
//! per-project rate limit.
//!
//! Keys, organizations and projects are made with the admin CLI's functions in-process, on the
//! test app's database; the server sees them through its auth cache, polled for at most one
//! second.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use atlas_integrations::admin;
use atlas_integrations::config::{AccessListCommand, ApiKeysCommand, OrgsCommand, ProjectsCommand};
use atlas_integrations::domain::ids::ObjectId;
use md5::Md5;
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::{
    self, challenge_param, digest_header, fresh_nonce, path, read_reply, send_raw, spawn_app,
    spawn_app_with, DigestClient, Options, Reply, TestApp, PROPAGATION, V2,
};

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

const DATADOG: &str =
    r#"{"type":"DATADOG","apiKey":"0123456789abcdef0123456789abcdef","region":"US"}"#;
const DATADOG_EU: &str =
    r#"{"type":"DATADOG","apiKey":"fedcba9876543210fedcba9876543210","region":"EU"}"#;
const OPS_GENIE: &str = r#"{"type":"OPS_GENIE","apiKey":"opsgenie-key-1234","region":"US"}"#;

/// An API key as the CLI prints it at creation.
#[derive(Debug, Clone)]
struct Key {
    public: String,
    private: String,
}

async fn create_org(app: &TestApp, name: &str) -> String {
    let out = admin::orgs(
        &app.global,
        OrgsCommand::Create {
            name: name.to_owned(),
        },
    )
    .await
    .expect("orgs create");
    out["id"].as_str().expect("org id").to_owned()
}

async fn create_project(app: &TestApp, org: &str, name: &str) -> String {
    let out = admin::projects(
        &app.global,
        ProjectsCommand::Create {
            org: org.to_owned(),
            name: name.to_owned(),
        },
    )
    .await
    .expect("projects create");
    out["id"].as_str().expect("project id").to_owned()
}

async fn create_key(app: &TestApp, org: &str, role: &str) -> Key {
    let out = admin::api_keys(
        &app.global,
        ApiKeysCommand::Create {
            org: org.to_owned(),
            role: role.to_owned(),
            description: format!("test {role}"),
        },
    )
    .await
    .expect("api-keys create");
    Key {
        public: out["publicKey"].as_str().expect("publicKey").to_owned(),
        private: out["privateKey"].as_str().expect("privateKey").to_owned(),
    }
}

async fn assign(app: &TestApp, public_key: &str, project: &str, role: &str) {
    admin::api_keys(
        &app.global,
        ApiKeysCommand::Assign {
            public_key: public_key.to_owned(),
            project: project.to_owned(),
            role: role.to_owned(),
        },
    )
    .await
    .expect("api-keys assign");
}

async fn access_add(app: &TestApp, public_key: &str, cidr: &str) {
    let (public_key, cidr) = (public_key.to_owned(), cidr.to_owned());
    access_list(app, AccessListCommand::Add { public_key, cidr }).await;
}

async fn access_remove(app: &TestApp, public_key: &str, cidr: &str) {
    let (public_key, cidr) = (public_key.to_owned(), cidr.to_owned());
    access_list(app, AccessListCommand::Remove { public_key, cidr }).await;
}

async fn access_list(app: &TestApp, command: AccessListCommand) {
    let what = format!("access-list {command:?}");
    admin::api_keys(&app.global, ApiKeysCommand::AccessList(command))
        .await
        .expect(&what);
}

/// Repeats a GET of `path` (with `headers`) until it answers `expected` (and, when given, the
/// error code `code`), for at most [`PROPAGATION`] after `since`.
async fn poll_get(
    client: &DigestClient,
    path: &str,
    headers: &[(&str, &str)],
    (expected, code): (u16, Option<&str>),
    since: Instant,
    what: &str,
) -> Reply {
    helpers::poll_until(client, path, headers, since, what, |reply| {
        reply.status.as_u16() == expected
            && code.is_none_or(|code| {
                serde_json::from_str::<Value>(&reply.text).is_ok_and(|b| b["errorCode"] == code)
            })
    })
    .await
}

/// Asserts a 403 `IP_ADDRESS_NOT_ON_ACCESS_LIST` that names `address`.
fn assert_not_on_access_list(reply: &Reply, address: &str) {
    reply.assert_error(403, "IP_ADDRESS_NOT_ON_ACCESS_LIST", &[address]);
    assert_eq!(
        reply.json()["detail"],
        format!("IP address {address} is not allowed to access this resource."),
        "detail"
    );
}

/// Polls a GET of the owner's list (with `headers`) until the access list refuses it, naming
/// `address`; `what` names the change that should make it so.
async fn await_access_refused(app: &TestApp, headers: &[(&str, &str)], address: &str, what: &str) {
    let expected = (403, Some("IP_ADDRESS_NOT_ON_ACCESS_LIST"));
    let path = app.v1("");
    let reply = poll_get(&app.client, &path, headers, expected, Instant::now(), what).await;
    assert_not_on_access_list(&reply, address);
}

/// Asserts an Atlas error body with `status` and `code`, naming `ctx` on failure.
fn expect_error(reply: &Reply, status: u16, code: &str, ctx: &str) {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "{ctx}: status; body: {}",
        reply.text
    );
    let body: Value = serde_json::from_str(&reply.text)
        .unwrap_or_else(|e| panic!("{ctx}: error body is not JSON ({e}): {:?}", reply.text));
    assert_eq!(
        body["errorCode"], code,
        "{ctx}: errorCode; body: {}",
        reply.text
    );
    assert_eq!(
        body["error"], status,
        "{ctx}: error field; body: {}",
        reply.text
    );
    assert!(
        body["detail"].is_string(),
        "{ctx}: detail; body: {}",
        reply.text
    );
    assert!(
        body["reason"].is_string(),
        "{ctx}: reason; body: {}",
        reply.text
    );
    assert!(
        body["parameters"].is_array(),
        "{ctx}: parameters; body: {}",
        reply.text
    );
}

/// Asserts a 401 `USER_UNAUTHORIZED` with a fresh challenge whose `stale` is `stale`.
fn expect_unauthorized(reply: &Reply, stale: bool, ctx: &str) {
    expect_error(reply, 401, "USER_UNAUTHORIZED", ctx);
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{ctx}: 401 without WWW-Authenticate"));
    assert_challenge(&challenge, stale, ctx);
}

/// Asserts the exact challenge format of contract §7.
fn assert_challenge(challenge: &str, stale: bool, ctx: &str) {
    let prefix = "Digest realm=\"MMS Public API\", domain=\"\", nonce=\"";
    let suffix = format!("\", algorithm=MD5, qop=\"auth\", stale={stale}");
    assert!(
        challenge.starts_with(prefix) && challenge.ends_with(&suffix),
        "{ctx}: challenge {challenge:?} is not `{prefix}...{suffix}`"
    );
    let nonce = &challenge[prefix.len()..challenge.len() - suffix.len()];
    assert!(
        !nonce.is_empty() && !nonce.contains('"') && !nonce.contains(' '),
        "{ctx}: nonce {nonce:?}"
    );
}

/// Asserts a success status, naming `ctx` on failure.
fn expect_status(reply: &Reply, status: u16, ctx: &str) {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "{ctx}: status; body: {}",
        reply.text
    );
}

/// Sends one request with `authorization` as raw header bytes (possibly not UTF-8).
async fn send_with_auth(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<HeaderValue>,
) -> Reply {
    let mut request = app.request(method, path);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    read_reply(request).await
}

fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|e| panic!("header {text:?}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(algorithm: &str, text: &str) -> String {
    if algorithm.to_ascii_uppercase().starts_with("SHA-256") {
        hex(&Sha256::digest(text.as_bytes()))
    } else {
        hex(&Md5::digest(text.as_bytes()))
    }
}

/// The digest response RFC 7616 defines for `qop=auth` (MD5, MD5-sess, SHA-256, SHA-256-sess).
#[expect(clippy::too_many_arguments, reason = "one argument per Digest input")]
fn response_for(
    algorithm: &str,
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    let mut ha1 = hash(algorithm, &format!("{user}:{realm}:{password}"));
    if algorithm.to_ascii_lowercase().ends_with("-sess") {
        ha1 = hash(algorithm, &format!("{ha1}:{nonce}:{cnonce}"));
    }
    let ha2 = hash(algorithm, &format!("{method}:{uri}"));
    hash(
        algorithm,
        &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"),
    )
}

/// The parameters of an `Authorization: Digest` header, in order, each quoted or not, so that
/// single parameters can be dropped or changed.
#[derive(Debug, Clone)]
struct Fields(Vec<(&'static str, String, bool)>);

impl Fields {
    /// A correct header for these credentials (algorithm named explicitly unless `None`).
    #[expect(clippy::too_many_arguments, reason = "one argument per Digest input")]
    fn valid(
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
        nonce: &str,
        algorithm: Option<&str>,
        nc: u32,
        cnonce: &str,
    ) -> Self {
        let nc = format!("{nc:08x}");
        let response = response_for(
            algorithm.unwrap_or("MD5"),
            user,
            "MMS Public API",
            password,
            method,
            uri,
            nonce,
            &nc,
            cnonce,
        );
        let mut fields = vec![
            ("username", user.to_owned(), true),
            ("realm", "MMS Public API".to_owned(), true),
            ("nonce", nonce.to_owned(), true),
            ("uri", uri.to_owned(), true),
        ];
        if let Some(algorithm) = algorithm {
            fields.push(("algorithm", algorithm.to_owned(), false));
        }
        fields.extend([
            ("response", response, true),
            ("qop", "auth".to_owned(), false),
            ("nc", nc, false),
            ("cnonce", cnonce.to_owned(), true),
        ]);
        Self(fields)
    }

    fn without(mut self, name: &str) -> Self {
        self.0.retain(|(n, _, _)| *n != name);
        self
    }

    fn set(mut self, name: &'static str, value: &str, quoted: bool) -> Self {
        match self.0.iter_mut().find(|(n, _, _)| *n == name) {
            Some(field) => {
                field.1 = value.to_owned();
                field.2 = quoted;
            }
            None => self.0.push((name, value.to_owned(), quoted)),
        }
        self
    }

    fn get(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, v, _)| v.clone())
            .unwrap_or_default()
    }

    /// `Digest a="b", c=d` with `separator` between parameters.
    fn render_with(&self, separator: &str) -> String {
        let params: Vec<String> = self
            .0
            .iter()
            .map(|(name, value, quoted)| {
                if *quoted {
                    format!("{name}=\"{value}\"")
                } else {
                    format!("{name}={value}")
                }
            })
            .collect();
        format!("Digest {}", params.join(separator))
    }

    fn render(&self) -> String {
        self.render_with(", ")
    }
}

fn cnonce() -> String {
    use rand::Rng;
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// An id that no project has.
fn ghost_group() -> String {
    ObjectId::generate().to_string()
}

fn result_types(reply: &Reply) -> Vec<String> {
    let body = reply.json();
    let mut types: Vec<String> = body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results array: {}", reply.text))
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("?").to_owned())
        .collect();
    types.sort();
    types
}

// ---------------------------------------------------------------------------------------------
// 1. Roles × methods on own and foreign projects
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Reads and writes succeed.
    Write,
    /// Reads succeed, writes are 403 `ACCESS_FORBIDDEN`.
    Read,
    /// Everything is 401 `NOT_IN_GROUP`.
    NotInGroup,
}

/// What a project holds, seen by a key that owns it (the integrations, full objects).
async fn snapshot(owner: &DigestClient, group: &str) -> Value {
    let reply = owner.get(&path("v1.0", group, "")).await;
    expect_status(&reply, 200, &format!("snapshot of {group}"));
    reply.json()["results"].clone()
}

/// Runs GET list, GET one, POST, PUT and DELETE as `who` on `group`, which holds a DATADOG
/// integration and no OPS_GENIE one; `owner` (an owner of `group`, or `None` for a project that
/// does not exist) checks that refused writes changed nothing.
async fn check_access(
    who: &str,
    client: &DigestClient,
    group: &str,
    owner: Option<&DigestClient>,
    expect: Expect,
) {
    let ctx = |op: &str| format!("{who} {op} on group {group} (expected {expect:?})");
    let list = path("v1.0", group, "");
    let datadog = path("v1.0", group, "DATADOG");
    let ops_genie = path("v1.0", group, "OPS_GENIE");

    // Reads.
    let reply = client.get(&list).await;
    match expect {
        Expect::Write | Expect::Read => {
            expect_status(&reply, 200, &ctx("GET list"));
            assert!(
                result_types(&reply).contains(&"DATADOG".to_owned()),
                "{}: {}",
                ctx("GET list"),
                reply.text
            );
        }
        Expect::NotInGroup => expect_error(&reply, 401, "NOT_IN_GROUP", &ctx("GET list")),
    }
    let reply = client.get(&datadog).await;
    match expect {
        Expect::Write | Expect::Read => {
            expect_status(&reply, 200, &ctx("GET one"));
            assert_eq!(reply.json()["type"], "DATADOG", "{}", ctx("GET one"));
        }
        Expect::NotInGroup => expect_error(&reply, 401, "NOT_IN_GROUP", &ctx("GET one")),
    }

    // Writes.
    let refused = match expect {
        Expect::Write => None,
        Expect::Read => Some((403, "ACCESS_FORBIDDEN")),
        Expect::NotInGroup => Some((401, "NOT_IN_GROUP")),
    };
    match refused {
        None => {
            let reply = client.post(&ops_genie, OPS_GENIE).await;
            expect_status(&reply, 200, &ctx("POST"));
            assert!(
                result_types(&reply).contains(&"OPS_GENIE".to_owned()),
                "{}: {}",
                ctx("POST"),
                reply.text
            );
            let reply = client.put(&datadog, DATADOG_EU).await;
            expect_status(&reply, 200, &ctx("PUT"));
            let reply = client.get(&datadog).await;
            assert_eq!(reply.json()["region"], "EU", "{}: PUT stored", ctx("PUT"));
            let reply = client.delete(&ops_genie).await;
            expect_status(&reply, 204, &ctx("DELETE"));
            let reply = client.get(&list).await;
            assert_eq!(
                result_types(&reply),
                vec!["DATADOG".to_owned()],
                "{}: DELETE removed OPS_GENIE",
                ctx("DELETE")
            );
            // Back to the seed, so that every key sees the same project.
            let reply = client.put(&datadog, DATADOG).await;
            expect_status(&reply, 200, &ctx("PUT back"));
        }
        Some((status, code)) => {
            let before = match owner {
                Some(owner) => Some(snapshot(owner, group).await),
                None => None,
            };
            let attempts = [
                ("POST", client.post(&ops_genie, OPS_GENIE).await),
                ("POST existing", client.post(&datadog, DATADOG_EU).await),
                ("PUT", client.put(&datadog, DATADOG_EU).await),
                ("PUT new", client.put(&ops_genie, OPS_GENIE).await),
                ("DELETE", client.delete(&datadog).await),
            ];
            for (op, reply) in &attempts {
                expect_error(reply, status, code, &ctx(op));
            }
            if let (Some(owner), Some(before)) = (owner, before) {
                let after = snapshot(owner, group).await;
                assert_eq!(
                    before,
                    after,
                    "{}: refused writes changed the project",
                    ctx("writes")
                );
            }
        }
    }
}

#[tokio::test]
async fn every_role_gets_exactly_its_rights_on_own_and_foreign_projects() {
    // Arrange: org A (first start: project g_a, owner key) with a second project g_a2; org B
    // with project g_b and its own owner; org C without projects, holding the project-role keys.
    let app = spawn_app().await;
    let org_a = app.org.clone();
    let g_a = app.group.clone();
    let g_a2 = create_project(&app, &org_a, "second").await;
    let org_b = create_org(&app, "org b").await;
    let g_b = create_project(&app, &org_b, "b project").await;
    let org_c = create_org(&app, "org c").await;
    let owner_b = create_key(&app, &org_b, "ORG_OWNER").await;
    let org_ro = create_key(&app, &org_a, "ORG_READ_ONLY").await;
    let group_owner = create_key(&app, &org_c, "ORG_READ_ONLY").await;
    let group_ro = create_key(&app, &org_c, "ORG_READ_ONLY").await;
    // ORG_READ_ONLY of org A plus GROUP_OWNER on g_a2: the higher role wins on g_a2 only.
    let mixed = create_key(&app, &org_a, "ORG_READ_ONLY").await;
    assign(&app, &mixed.public, &g_a2, "GROUP_OWNER").await;
    assign(&app, &group_owner.public, &g_a2, "GROUP_OWNER").await;
    // The last change: once the server sees it, it sees all of the above.
    assign(&app, &group_ro.public, &g_a2, "GROUP_READ_ONLY").await;
    let since = Instant::now();

    let owner_a = app.client_for(&app.public_key, &app.private_key);
    let owner_b = app.client_for(&owner_b.public, &owner_b.private);
    let org_ro = app.client_for(&org_ro.public, &org_ro.private);
    let group_owner = app.client_for(&group_owner.public, &group_owner.private);
    let group_ro = app.client_for(&group_ro.public, &group_ro.private);
    let mixed = app.client_for(&mixed.public, &mixed.private);

    poll_get(
        &group_ro,
        &path("v1.0", &g_a2, ""),
        &[],
        (200, None),
        since,
        "new GROUP_READ_ONLY key",
    )
    .await;
    for (owner, group) in [(&owner_a, &g_a), (&owner_a, &g_a2), (&owner_b, &g_b)] {
        let reply = owner.post(&path("v1.0", group, "DATADOG"), DATADOG).await;
        expect_status(&reply, 200, &format!("seed DATADOG in {group}"));
    }
    let ghost = ghost_group();

    // Act + assert.
    let cases: Vec<(&str, &DigestClient, &str, Option<&DigestClient>, Expect)> = vec![
        (
            "ORG_OWNER(A)",
            &owner_a,
            &g_a,
            Some(&owner_a),
            Expect::Write,
        ),
        (
            "ORG_OWNER(A)",
            &owner_a,
            &g_a2,
            Some(&owner_a),
            Expect::Write,
        ),
        (
            "ORG_OWNER(A)",
            &owner_a,
            &g_b,
            Some(&owner_b),
            Expect::NotInGroup,
        ),
        (
            "ORG_OWNER(B)",
            &owner_b,
            &g_b,
            Some(&owner_b),
            Expect::Write,
        ),
        (
            "ORG_OWNER(B)",
            &owner_b,
            &g_a,
            Some(&owner_a),
            Expect::NotInGroup,
        ),
        (
            "ORG_READ_ONLY(A)",
            &org_ro,
            &g_a,
            Some(&owner_a),
            Expect::Read,
        ),
        (
            "ORG_READ_ONLY(A)",
            &org_ro,
            &g_a2,
            Some(&owner_a),
            Expect::Read,
        ),
        (
            "ORG_READ_ONLY(A)",
            &org_ro,
            &g_b,
            Some(&owner_b),
            Expect::NotInGroup,
        ),
        (
            "GROUP_OWNER(g_a2)",
            &group_owner,
            &g_a2,
            Some(&owner_a),
            Expect::Write,
        ),
        (
            "GROUP_OWNER(g_a2)",
            &group_owner,
            &g_a,
            Some(&owner_a),
            Expect::NotInGroup,
        ),
        (
            "GROUP_OWNER(g_a2)",
            &group_owner,
            &g_b,
            Some(&owner_b),
            Expect::NotInGroup,
        ),
        (
            "GROUP_READ_ONLY(g_a2)",
            &group_ro,
            &g_a2,
            Some(&owner_a),
            Expect::Read,
        ),
        (
            "GROUP_READ_ONLY(g_a2)",
            &group_ro,
            &g_a,
            Some(&owner_a),
            Expect::NotInGroup,
        ),
        (
            "GROUP_READ_ONLY(g_a2)",
            &group_ro,
            &g_b,
            Some(&owner_b),
            Expect::NotInGroup,
        ),
        (
            "ORG_READ_ONLY(A)+GROUP_OWNER(g_a2)",
            &mixed,
            &g_a2,
            Some(&owner_a),
            Expect::Write,
        ),
        (
            "ORG_READ_ONLY(A)+GROUP_OWNER(g_a2)",
            &mixed,
            &g_a,
            Some(&owner_a),
            Expect::Read,
        ),
        ("ORG_OWNER(A)", &owner_a, &ghost, None, Expect::NotInGroup),
        ("ORG_OWNER(B)", &owner_b, &ghost, None, Expect::NotInGroup),
        (
            "ORG_READ_ONLY(A)",
            &org_ro,
            &ghost,
            None,
            Expect::NotInGroup,
        ),
        (
            "GROUP_OWNER(g_a2)",
            &group_owner,
            &ghost,
            None,
            Expect::NotInGroup,
        ),
        (
            "GROUP_READ_ONLY(g_a2)",
            &group_ro,
            &ghost,
            None,
            Expect::NotInGroup,
        ),
    ];
    for (who, client, group, owner, expect) in cases {
        check_access(who, client, group, owner, expect).await;
    }

    // Existence is not leaked: a foreign project and a missing one answer the same bytes.
    let foreign = owner_a.get(&path("v1.0", &g_b, "")).await;
    let missing = owner_a.get(&path("v1.0", &ghost, "")).await;
    assert_eq!(
        (foreign.status, foreign.json()),
        (missing.status, missing.json()),
        "foreign and missing projects must answer alike"
    );
    // The refused POST on the missing project did not create it.
    let reply = owner_a.get(&path("v1.0", &ghost, "")).await;
    expect_error(
        &reply,
        401,
        "NOT_IN_GROUP",
        "missing project after refused writes",
    );
}

#[tokio::test]
async fn roles_apply_to_v2_as_to_v1() {
    let app = spawn_app().await;
    let ro = create_key(&app, &app.org, "ORG_READ_ONLY").await;
    let since = Instant::now();
    let ro = app.client_for(&ro.public, &ro.private);
    poll_get(
        &ro,
        &app.v2(""),
        &[],
        (200, None),
        since,
        "new ORG_READ_ONLY key",
    )
    .await;
    let reply = app.client.post(&app.v2("DATADOG"), DATADOG).await;
    expect_status(&reply, 200, "owner POST v2");

    expect_status(
        &ro.get(&app.v2("DATADOG")).await,
        200,
        "read-only GET one v2",
    );
    let reply = ro.post(&app.v2("OPS_GENIE"), OPS_GENIE).await;
    expect_error(&reply, 403, "ACCESS_FORBIDDEN", "read-only POST v2");
    let reply = ro.delete(&app.v2("DATADOG")).await;
    expect_error(&reply, 403, "ACCESS_FORBIDDEN", "read-only DELETE v2");
    let reply = ro.get(&path("v2", &ghost_group(), "")).await;
    expect_error(
        &reply,
        401,
        "NOT_IN_GROUP",
        "read-only GET missing project v2",
    );
    expect_status(
        &app.client.get(&app.v2("DATADOG")).await,
        200,
        "DATADOG kept",
    );
}

#[tokio::test]
async fn a_role_change_through_the_cli_is_enforced_within_a_second() {
    let app = spawn_app().await;
    let org_b = create_org(&app, "other").await;
    let key = create_key(&app, &org_b, "ORG_READ_ONLY").await;
    let client = app.client_for(&key.public, &key.private);
    let since = Instant::now();
    let reply = poll_get(
        &client,
        &app.v1(""),
        &[],
        (401, Some("NOT_IN_GROUP")),
        since,
        "no role yet",
    )
    .await;
    expect_error(
        &reply,
        401,
        "NOT_IN_GROUP",
        "key without a role on the project",
    );

    assign(&app, &key.public, &app.group, "GROUP_READ_ONLY").await;
    poll_get(
        &client,
        &app.v1(""),
        &[],
        (200, None),
        Instant::now(),
        "GROUP_READ_ONLY assigned",
    )
    .await;
    let reply = client.post(&app.v1("OPS_GENIE"), OPS_GENIE).await;
    expect_error(&reply, 403, "ACCESS_FORBIDDEN", "GROUP_READ_ONLY writes");

    assign(&app, &key.public, &app.group, "GROUP_OWNER").await;
    let since = Instant::now();
    loop {
        let reply = client.post(&app.v1("OPS_GENIE"), OPS_GENIE).await;
        if reply.status == StatusCode::OK {
            break;
        }
        expect_error(
            &reply,
            403,
            "ACCESS_FORBIDDEN",
            "before the re-role is seen",
        );
        assert!(
            since.elapsed() <= PROPAGATION,
            "GROUP_OWNER not in force after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    admin::api_keys(
        &app.global,
        ApiKeysCommand::Unassign {
            public_key: key.public.clone(),
            project: app.group.clone(),
        },
    )
    .await
    .expect("unassign");
    let reply = poll_get(
        &client,
        &app.v1(""),
        &[],
        (401, Some("NOT_IN_GROUP")),
        Instant::now(),
        "unassigned",
    )
    .await;
    expect_error(&reply, 401, "NOT_IN_GROUP", "after unassign");
}

// ---------------------------------------------------------------------------------------------
// 2. The challenge
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_without_authorization_gets_the_digest_challenge() {
    let app = spawn_app().await;
    let mut nonces = Vec::new();
    for (method, path, body) in [
        (Method::GET, app.v1(""), None),
        (Method::GET, app.v1("DATADOG"), None),
        (Method::POST, app.v1("DATADOG"), Some(DATADOG)),
        (Method::PUT, app.v1("DATADOG"), Some(DATADOG)),
        (Method::DELETE, app.v1("DATADOG"), None),
        (Method::GET, app.v2(""), None),
        (Method::POST, app.v2("DATADOG"), Some(DATADOG)),
    ] {
        let ctx = format!("{method} {path} without Authorization");
        let reply = app.send_with_authorization(method, &path, body, None).await;
        reply.assert_error(401, "USER_UNAUTHORIZED", &[]);
        assert_eq!(
            reply.json()["detail"],
            "Current user is not authorized to perform this action.",
            "{ctx}"
        );
        assert_eq!(reply.json()["reason"], "Unauthorized", "{ctx}");
        let content_type = reply.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "{ctx}: content-type {content_type:?}"
        );
        let challenge = reply
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("{ctx}: no WWW-Authenticate"));
        assert_challenge(&challenge, false, &ctx);
        assert_eq!(
            reply.headers.get_all("www-authenticate").iter().count(),
            1,
            "{ctx}: one challenge"
        );
        nonces.push(challenge_param(&challenge, "nonce").expect("nonce"));
    }
    let mut unique = nonces.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        nonces.len(),
        "every challenge has a fresh nonce"
    );
}

#[tokio::test]
async fn the_challenge_comes_before_the_body_is_read_or_validated() {
    let app = spawn_app().await;
    let http = app.client.raw();

    // Invalid JSON: 401, not 400.
    for path in [app.v1("DATADOG"), app.v2("DATADOG")] {
        let reply = app
            .send_with_authorization(Method::POST, &path, Some("{not json"), None)
            .await;
        expect_unauthorized(&reply, false, &format!("POST {path} invalid JSON, no auth"));
        let reply = app
            .send_with_authorization(Method::PUT, &path, Some("[1,2"), None)
            .await;
        expect_unauthorized(&reply, false, &format!("PUT {path} invalid JSON, no auth"));
    }
    // Over the 64 KiB limit: 401, not 413.
    let big = format!(
        "{{\"type\":\"DATADOG\",\"apiKey\":\"{}\"}}",
        "a".repeat(200 * 1024)
    );
    let reply = app
        .send_with_authorization(Method::POST, &app.v1("DATADOG"), Some(&big), None)
        .await;
    expect_unauthorized(&reply, false, "POST 200 KB body, no auth");
    // Curl's first leg: an empty POST.
    let reply = app
        .send_with_authorization(Method::POST, &app.v1("DATADOG"), Some(""), None)
        .await;
    expect_unauthorized(&reply, false, "POST empty body, no auth");
    // v2 without the versioned Accept: authentication comes first (401, not 406).
    let reply = send_raw(
        http,
        &app.base,
        Method::GET,
        &app.v2(""),
        None,
        &[("accept", "application/json")],
        None,
    )
    .await;
    expect_unauthorized(&reply, false, "v2 GET without versioned Accept, no auth");

    // A huge declared body that never comes: the answer must not wait for it.
    let addr = app.addr;
    let path = app.v1("DATADOG");
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000000000\r\n\r\n{{\"type\":"
        );
        stream.write_all(head.as_bytes()).expect("write");
        let mut buf = vec![0u8; 16 * 1024];
        let mut got = Vec::new();
        let started = Instant::now();
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "no answer to a POST whose body never arrives after {:?} ({e}): the body \
                     is read before the challenge",
                    started.elapsed()
                ),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .expect("raw request");
    let status_line = raw.lines().next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 401"),
        "POST with a 1 GB declared body and no auth: {raw:?}"
    );
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: digest realm=\"mms public api\""),
        "challenge in {raw:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Access lists
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_access_list_admits_listed_addresses_only() {
    let app = spawn_app().await;
    let client = &app.client;
    expect_status(&client.get(&app.v1("")).await, 200, "no access list");

    // 127.0.0.1/32 listed: allowed.
    access_add(&app, &app.public_key, "127.0.0.1/32").await;
    expect_status(&client.get(&app.v1("")).await, 200, "127.0.0.1/32 listed");

    // Only 10.0.0.0/8: refused, naming the caller.
    access_add(&app, &app.public_key, "10.0.0.0/8").await;
    access_remove(&app, &app.public_key, "127.0.0.1/32").await;
    await_access_refused(&app, &[], "127.0.0.1", "only 10.0.0.0/8").await;
    // Writes are refused too, and change nothing.
    let reply = client.post(&app.v1("DATADOG"), DATADOG).await;
    assert_not_on_access_list(&reply, "127.0.0.1");
    // The access list comes before the v2 version (406) and the group id (404).
    let reply = client
        .get_with(&app.v2(""), &[("accept", "application/json")])
        .await;
    assert_not_on_access_list(&reply, "127.0.0.1");
    let reply = client.get(&path("v1.0", "not-an-id", "")).await;
    assert_not_on_access_list(&reply, "127.0.0.1");
    // X-Forwarded-For from an untrusted peer is ignored.
    let reply = client
        .get_with(&app.v1(""), &[("x-forwarded-for", "10.1.2.3")])
        .await;
    assert_not_on_access_list(&reply, "127.0.0.1");

    // Listed again (a bare address): allowed within a second; the refused POST stored nothing.
    access_add(&app, &app.public_key, "127.0.0.1").await;
    poll_get(
        client,
        &app.v1(""),
        &[],
        (200, None),
        Instant::now(),
        "127.0.0.1 listed again",
    )
    .await;
    let reply = client.get(&app.v1("DATADOG")).await;
    expect_error(
        &reply,
        404,
        "INTEGRATION_NOT_CONFIGURED",
        "refused POST stored nothing",
    );
}

#[tokio::test]
async fn an_untrusted_peer_cannot_claim_an_address_with_x_forwarded_for() {
    let app = spawn_app().await;
    access_add(&app, &app.public_key, "2001:db8::/32").await;
    await_access_refused(&app, &[], "127.0.0.1", "IPv6 only").await;
    let reply = app
        .client
        .get_with(&app.v1(""), &[("x-forwarded-for", "2001:db8::5")])
        .await;
    assert_not_on_access_list(&reply, "127.0.0.1");
}

#[tokio::test]
async fn ipv6_clients_behind_a_trusted_proxy_are_checked_against_the_access_list() {
    let app = spawn_app_with(Options {
        trusted_proxies: vec!["127.0.0.1".into()],
        ..Options::default()
    })
    .await;
    let xff = [("x-forwarded-for", "2001:db8::5")];
    access_add(&app, &app.public_key, "2001:db8::/32").await;
    // Once the list is in force, the proxy itself (no X-Forwarded-For) is refused...
    await_access_refused(&app, &[], "127.0.0.1", "2001:db8::/32 only").await;
    // ...and the client it forwards for is admitted.
    let reply = app.client.get_with(&app.v1(""), &xff).await;
    expect_status(&reply, 200, "2001:db8::5 forwarded by a trusted proxy");
    let reply = app
        .client
        .get_with(
            &app.v1(""),
            &[("x-forwarded-for", "203.0.113.7, 2001:db8::5")],
        )
        .await;
    expect_status(&reply, 200, "right-most X-Forwarded-For entry decides");
    // The forwarded address decides, not the proxy: another IPv6 network only.
    access_add(&app, &app.public_key, "2001:db9::/32").await;
    access_remove(&app, &app.public_key, "2001:db8::/32").await;
    await_access_refused(&app, &xff, "2001:db8::5", "2001:db8::/32 removed").await;
    let other = [("x-forwarded-for", "2001:db9::1:2")];
    expect_status(
        &app.client.get_with(&app.v1(""), &other).await,
        200,
        "2001:db9::1:2 listed",
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Nonce expiry, 5. replay
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_nonce_gets_stale_true_and_is_not_counted_as_a_failure() {
    let app = spawn_app_with(Options {
        nonce_ttl_secs: 1,
        auth_failure_limit: 3,
        auth_cooldown_secs: 60,
        ..Options::default()
    })
    .await;
    let (user, password) = (app.public_key.clone(), app.private_key.clone());
    let uri = app.v1("");
    let nonce = fresh_nonce(&app).await;
    let fresh = digest_header(&user, &password, "GET", &uri, &nonce, 1, &cnonce());
    let reply = app.get_with_authorization(&uri, Some(&fresh)).await;
    expect_status(&reply, 200, "fresh nonce");

    tokio::time::sleep(Duration::from_millis(1600)).await;

    let cn = cnonce();
    let mut new_nonces = Vec::new();
    for nc in 2..=7 {
        let auth = digest_header(&user, &password, "GET", &uri, &nonce, nc, &cn);
        let reply = app.get_with_authorization(&uri, Some(&auth)).await;
        expect_unauthorized(
            &reply,
            true,
            &format!("correct credentials, expired nonce, nc={nc}"),
        );
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        new_nonces.push(challenge_param(&challenge, "nonce").expect("nonce"));
    }
    assert!(
        !new_nonces.contains(&nonce),
        "a stale answer must carry a new nonce"
    );
    // The new nonce works.
    let auth = digest_header(&user, &password, "GET", &uri, &new_nonces[0], 1, &cnonce());
    let reply = app.get_with_authorization(&uri, Some(&auth)).await;
    expect_status(&reply, 200, "the nonce of the stale challenge");

    // Wrong credentials on the expired nonce: stale=false, and this one counts (failure 1).
    let auth = digest_header(&user, "wrong-password", "GET", &uri, &nonce, 9, &cnonce());
    let reply = app.get_with_authorization(&uri, Some(&auth)).await;
    expect_unauthorized(
        &reply,
        false,
        "wrong credentials on an expired nonce (the six stale answers before it must not have \
         been counted by the throttle, limit 3)",
    );
    // Failures 2 and 3 are still 401; the 4th is throttled: the throttle is on, and the six
    // stale answers were not counted.
    let fresh = fresh_nonce(&app).await;
    for nc in 1..=2 {
        let auth = digest_header(&user, "wrong-password", "GET", &uri, &fresh, nc, &cnonce());
        let reply = app.get_with_authorization(&uri, Some(&auth)).await;
        expect_unauthorized(&reply, false, &format!("failure {}", nc + 1));
    }
    let auth = digest_header(&user, "wrong-password", "GET", &uri, &fresh, 3, &cnonce());
    let reply = app.get_with_authorization(&uri, Some(&auth)).await;
    expect_error(&reply, 429, "RATE_LIMITED", "failure 4 with limit 3");

    // A client like curl recovers from stale nonces on its own.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    expect_status(
        &app.client.get(&uri).await,
        200,
        "DigestClient after expiry",
    );
}

#[tokio::test]
async fn a_replayed_authorization_is_refused_and_rising_nc_keeps_working() {
    let app = spawn_app().await;
    let (user, password) = (app.public_key.clone(), app.private_key.clone());
    let uri = app.v1("");
    let nonce = fresh_nonce(&app).await;
    let cn = cnonce();

    let first = digest_header(&user, &password, "GET", &uri, &nonce, 1, &cn);
    let reply = app.get_with_authorization(&uri, Some(&first)).await;
    expect_status(&reply, 200, "first use");
    let reply = app.get_with_authorization(&uri, Some(&first)).await;
    expect_unauthorized(&reply, false, "the same header again");

    for nc in 2..=60 {
        let auth = digest_header(&user, &password, "GET", &uri, &nonce, nc, &cn);
        let reply = app.get_with_authorization(&uri, Some(&auth)).await;
        expect_status(&reply, 200, &format!("nc={nc} on the same nonce"));
    }
    // A replay of an older count is refused too.
    let old = digest_header(&user, &password, "GET", &uri, &nonce, 30, &cn);
    let reply = app.get_with_authorization(&uri, Some(&old)).await;
    expect_unauthorized(&reply, false, "replay of nc=30");
    // A write replayed: the second one is refused and does nothing.
    let post_uri = app.v1("OPS_GENIE");
    let post = digest_header(&user, &password, "POST", &post_uri, &nonce, 61, &cn);
    let reply = app
        .send_with_authorization(Method::POST, &post_uri, Some(OPS_GENIE), Some(&post))
        .await;
    expect_status(&reply, 200, "POST");
    let delete = digest_header(&user, &password, "DELETE", &post_uri, &nonce, 62, &cn);
    let reply = app
        .send_with_authorization(Method::DELETE, &post_uri, None, Some(&delete))
        .await;
    expect_status(&reply, 204, "DELETE");
    let reply = app
        .send_with_authorization(Method::POST, &post_uri, Some(OPS_GENIE), Some(&post))
        .await;
    expect_unauthorized(&reply, false, "replayed POST");
    let reply = app.client.get(&post_uri).await;
    expect_error(
        &reply,
        404,
        "INTEGRATION_NOT_CONFIGURED",
        "the replayed POST created nothing",
    );
    // Another cnonce on the same nonce starts its own count.
    let auth = digest_header(&user, &password, "GET", &uri, &nonce, 1, &cnonce());
    let reply = app.get_with_authorization(&uri, Some(&auth)).await;
    expect_status(&reply, 200, "new cnonce, nc=1");
    // The helper client keeps one nonce for many requests.
    for i in 0..20 {
        expect_status(
            &app.client.get(&uri).await,
            200,
            &format!("DigestClient request {i}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Malformed headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_authorization_headers_get_401_never_500() {
    let app = spawn_app().await;
    let uri = app.v1("");
    let other_uri = app.v1("DATADOG");
    let (user, password) = (app.public_key.as_str(), app.private_key.as_str());
    let nonce = fresh_nonce(&app).await;
    let valid = |cn: &str| Fields::valid(user, password, "GET", &uri, &nonce, Some("MD5"), 1, cn);
    let md5 = |user: &str, password: &str, method: &str, uri: &str, nonce: &str| {
        Fields::valid(
            user,
            password,
            method,
            uri,
            nonce,
            Some("MD5"),
            1,
            &cnonce(),
        )
    };

    // The builder itself is right: its header passes.
    let reply = send_with_auth(
        &app,
        Method::GET,
        &uri,
        Some(header(&valid(&cnonce()).render())),
    )
    .await;
    expect_status(&reply, 200, "the baseline header");

    let mut tampered = nonce.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let forged = format!("AAAAAYk9lT4{}", "x".repeat(32));
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    };
    let full = valid(&cnonce()).render();
    let other = create_key(&app, &app.org, "ORG_OWNER").await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    let mut cases: Vec<(String, HeaderValue)> = Vec::new();
    let mut add = |name: &str, value: HeaderValue| cases.push((name.to_owned(), value));
    add("empty", HeaderValue::from_static(""));
    add("Digest alone", header("Digest"));
    add("Digest and a space", header("Digest  "));
    add(
        "Basic with the right credentials",
        header(&format!("Basic {basic}")),
    );
    add("Bearer", header("Bearer abcdef"));
    add("truncated at half", header(&full[..full.len() / 2]));
    add(
        "truncated inside a quoted string",
        header(&full[..full.find("response=\"").expect("response") + 15]),
    );
    for field in [
        "username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce",
    ] {
        add(
            &format!("missing {field}"),
            header(&valid(&cnonce()).without(field).render()),
        );
    }
    for field in ["username", "realm", "nonce", "uri", "response", "cnonce"] {
        add(
            &format!("empty {field}"),
            header(&valid(&cnonce()).set(field, "", true).render()),
        );
    }
    {
        let cn = cnonce();
        let realm = "Other Realm";
        let response = response_for(
            "MD5", user, realm, password, "GET", &uri, &nonce, "00000001", &cn,
        );
        add(
            "wrong realm (digest computed with it)",
            header(
                &valid(&cn)
                    .set("realm", realm, true)
                    .set("response", &response, true)
                    .render(),
            ),
        );
    }
    add(
        "uri of another path (digest computed for it)",
        header(&md5(user, password, "GET", &other_uri, &nonce).render()),
    );
    {
        let cn = cnonce();
        let response = response_for(
            "MD5",
            user,
            "MMS Public API",
            password,
            "GET",
            &other_uri,
            &nonce,
            "00000001",
            &cn,
        );
        add(
            "digest computed for another path",
            header(&valid(&cn).set("response", &response, true).render()),
        );
    }
    add(
        "digest computed for another method",
        header(&md5(user, password, "POST", &uri, &nonce).render()),
    );
    add(
        "unknown algorithm SHA-512",
        header(&valid(&cnonce()).set("algorithm", "SHA-512", false).render()),
    );
    add(
        "unknown algorithm MD6 (quoted)",
        header(&valid(&cnonce()).set("algorithm", "MD6", true).render()),
    );
    add(
        "SHA-256 named, MD5 digest",
        header(&valid(&cnonce()).set("algorithm", "SHA-256", false).render()),
    );
    add(
        "qop=auth-int",
        header(&valid(&cnonce()).set("qop", "auth-int", false).render()),
    );
    add(
        "huge (100 KB)",
        header(
            &valid(&cnonce())
                .set("padding", &"x".repeat(100 * 1024), true)
                .render(),
        ),
    );
    {
        let mut bytes = valid(&cnonce()).render().into_bytes();
        let at = bytes.len() - 3;
        bytes.splice(at..at, [0xff, 0xfe, 0xc3]);
        add(
            "non-UTF-8 bytes",
            HeaderValue::from_bytes(&bytes).expect("obs-text is a valid header value"),
        );
        let mut bytes = valid(&cnonce()).render().into_bytes();
        let at = bytes.iter().position(|b| *b == b'"').expect("quote") + 1;
        bytes.splice(at..at, [0x80, 0x81]);
        add(
            "non-UTF-8 username",
            HeaderValue::from_bytes(&bytes).expect("obs-text is a valid header value"),
        );
    }
    for nc in ["1", "zzzzzzzz", "000000001", "-0000001", "0x000001"] {
        add(
            &format!("bad nc {nc:?}"),
            header(&valid(&cnonce()).set("nc", nc, false).render()),
        );
    }
    {
        let good = valid(&cnonce());
        let response = good.get("response");
        add(
            "response not hex",
            header(
                &good
                    .clone()
                    .set("response", &"zz".repeat(16), true)
                    .render(),
            ),
        );
        add(
            "response too short",
            header(&good.clone().set("response", &response[..31], true).render()),
        );
        add(
            "response too long",
            header(
                &good
                    .clone()
                    .set("response", &format!("{response}00"), true)
                    .render(),
            ),
        );
        let mut flipped = response.into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("hex");
        add(
            "response off by one digit",
            header(&good.set("response", &flipped, true).render()),
        );
    }
    add(
        "nonce tampered (digest computed with it)",
        header(&md5(user, password, "GET", &uri, &tampered).render()),
    );
    add(
        "nonce forged (digest computed with it)",
        header(&md5(user, password, "GET", &uri, &forged).render()),
    );
    add(
        "nonce too short",
        header(&md5(user, password, "GET", &uri, "abc").render()),
    );
    add(
        "unknown user",
        header(&md5("zzzzzzzz", password, "GET", &uri, &nonce).render()),
    );
    add(
        "wrong password",
        header(
            &md5(
                user,
                "00000000-0000-4000-8000-000000000000",
                "GET",
                &uri,
                &nonce,
            )
            .render(),
        ),
    );
    add(
        "another key's user name with this key's password",
        header(&md5(&other.public, password, "GET", &uri, &nonce).render()),
    );
    add(
        "duplicate username",
        header(&format!(
            "{}, username=\"{}\"",
            valid(&cnonce()).render(),
            other.public
        )),
    );
    add(
        "userhash=true",
        header(&valid(&cnonce()).set("userhash", "true", false).render()),
    );
    add("garbage parameters", header("Digest ,,,=,,,"));
    add("a parameter without value", header("Digest username"));
    add(
        "unquoted value with a space",
        header(&valid(&cnonce()).set("username", "ab cd", false).render()),
    );
    add(
        "scheme glued to parameters",
        header(&full.replacen("Digest ", "Digest", 1)),
    );

    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, value) in cases {
        let reply = send_with_auth(&app, Method::GET, &uri, Some(value)).await;
        let ok = reply.status == StatusCode::UNAUTHORIZED
            && serde_json::from_str::<Value>(&reply.text)
                .is_ok_and(|b| b["errorCode"] == "USER_UNAUTHORIZED" && b["error"] == 401)
            && reply.header("www-authenticate").is_some_and(|c| {
                c.starts_with("Digest realm=\"MMS Public API\"") && c.ends_with("stale=false")
            });
        if !ok {
            failures.push(format!(
                "{name}: {} {:?} www-authenticate={:?}",
                reply.status,
                reply.text,
                reply.header("www-authenticate")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "malformed Authorization headers not answered 401 USER_UNAUTHORIZED with a challenge:\n{}",
        failures.join("\n")
    );
    // The server is still well.
    expect_status(
        &app.client.get(&uri).await,
        200,
        "after the malformed headers",
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Algorithms and syntax variants
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_supported_algorithm_and_syntax_variant_is_accepted() {
    let app = spawn_app().await;
    let uri = app.v1("");
    let (user, password) = (app.public_key.as_str(), app.private_key.as_str());
    let nonce = fresh_nonce(&app).await;
    let mut nc = 0;
    let mut digest = |method: &str, uri: &str, algorithm: Option<&str>| {
        nc += 1;
        Fields::valid(
            user,
            password,
            method,
            uri,
            &nonce,
            algorithm,
            nc,
            &cnonce(),
        )
    };

    let mut cases: Vec<(String, String)> = Vec::new();
    for algorithm in ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess"] {
        for (alg_quoted, qop_quoted) in [(false, false), (true, false), (false, true), (true, true)]
        {
            let fields = digest("GET", &uri, Some(algorithm))
                .set("algorithm", algorithm, alg_quoted)
                .set("qop", "auth", qop_quoted);
            cases.push((
                format!("{algorithm}, algorithm quoted={alg_quoted}, qop quoted={qop_quoted}"),
                fields.render(),
            ));
        }
        let fields = digest("GET", &uri, Some(algorithm));
        cases.push((
            format!("{algorithm}, no spaces after commas"),
            fields.render_with(","),
        ));
        cases.push((
            format!("{algorithm}, spaces around '=' and ','"),
            digest("GET", &uri, Some(algorithm))
                .render_with(" ,  ")
                .replace('=', " = "),
        ));
    }
    cases.push((
        "no algorithm (MD5)".to_owned(),
        digest("GET", &uri, None).render(),
    ));
    cases.push((
        "no algorithm, no spaces".to_owned(),
        digest("GET", &uri, None).render_with(","),
    ));
    cases.push((
        "an empty opaque and an unknown parameter".to_owned(),
        digest("GET", &uri, Some("MD5"))
            .set("opaque", "", true)
            .set("charset", "UTF-8", false)
            .render(),
    ));
    cases.push((
        "curl's parameter order".to_owned(),
        {
            let f = digest("GET", &uri, Some("MD5"));
            format!(
                "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", cnonce=\"{}\", nc={}, qop=auth, response=\"{}\", algorithm=MD5",
                f.get("username"), f.get("realm"), f.get("nonce"), f.get("uri"), f.get("cnonce"), f.get("nc"), f.get("response")
            )
        },
    ));
    let mut failures = Vec::new();
    for (name, value) in &cases {
        let reply = send_with_auth(&app, Method::GET, &uri, Some(header(value))).await;
        if reply.status != StatusCode::OK {
            failures.push(format!(
                "{name}: {} {} (header {value})",
                reply.status, reply.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "valid Digest variants refused:\n{}",
        failures.join("\n")
    );

    // A write with SHA-256-sess: the method and the body's path are covered by the digest.
    let post_uri = app.v1("OPS_GENIE");
    let fields = digest("POST", &post_uri, Some("SHA-256-sess"));
    let reply = app
        .send_with_authorization(
            Method::POST,
            &post_uri,
            Some(OPS_GENIE),
            Some(&fields.render()),
        )
        .await;
    expect_status(&reply, 200, "POST with SHA-256-sess");
    // A query string is part of the digest uri.
    let query_uri = format!("{uri}?pageNum=1&itemsPerPage=5");
    let fields = digest("GET", &query_uri, Some("SHA-256"));
    let reply = app
        .send_with_authorization(Method::GET, &query_uri, None, Some(&fields.render()))
        .await;
    expect_status(&reply, 200, "GET with a query string, SHA-256");
    let fields = digest("GET", &uri, Some("SHA-256"));
    let reply = app
        .send_with_authorization(Method::GET, &query_uri, None, Some(&fields.render()))
        .await;
    expect_unauthorized(
        &reply,
        false,
        "digest uri without the request's query string",
    );
}

// ---------------------------------------------------------------------------------------------
// 8. The failure throttle
// ---------------------------------------------------------------------------------------------

/// A server with `--auth-failure-limit limit --auth-cooldown-secs cooldown_secs`.
async fn app_with_throttle(limit: u32, cooldown_secs: u64) -> TestApp {
    spawn_app_with(Options {
        auth_failure_limit: limit,
        auth_cooldown_secs: cooldown_secs,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn failures_are_throttled_but_valid_requests_never_are() {
    let app = app_with_throttle(3, 2).await;
    let uri = app.v1("");

    // The unauthenticated first leg does not count.
    for i in 0..8 {
        let reply = app.get_with_authorization(&uri, None).await;
        expect_unauthorized(&reply, false, &format!("unauthenticated request {i}"));
    }
    let wrong = app.client_for(&app.public_key, "00000000-0000-4000-8000-000000000000");
    for i in 1..=3 {
        let reply = wrong.get(&uri).await;
        expect_unauthorized(&reply, false, &format!("failure {i} of 3"));
    }
    let reply = wrong.get(&uri).await;
    expect_error(&reply, 429, "RATE_LIMITED", "failure 4 with limit 3");
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After is a number of seconds");
    assert!(
        (1..=2).contains(&retry_after),
        "Retry-After {retry_after} with a 2 s cool-down"
    );
    let locked_at = Instant::now();
    // Other failing requests from this address are throttled too (malformed, unknown key).
    let reply = app
        .get_with_authorization(&uri, Some("Basic Zm9vOmJhcg=="))
        .await;
    expect_error(&reply, 429, "RATE_LIMITED", "malformed header while locked");

    // Success never pays for it.
    for i in 0..5 {
        let reply = app.client.get(&uri).await;
        expect_status(
            &reply,
            200,
            &format!("valid request {i} during the cool-down"),
        );
    }
    let reply = app.client.post(&app.v1("OPS_GENIE"), OPS_GENIE).await;
    expect_status(&reply, 200, "valid write during the cool-down");

    // After the cool-down, failures are plain 401s again.
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(locked_at.elapsed())).await;
    let reply = wrong.get(&uri).await;
    expect_unauthorized(&reply, false, "failure after the cool-down");
    expect_status(
        &app.client.get(&uri).await,
        200,
        "valid request after the cool-down",
    );
}

#[tokio::test]
async fn malformed_headers_and_unknown_keys_count_as_failures() {
    let app = app_with_throttle(3, 60).await;
    let uri = app.v1("");
    for (i, auth) in ["Basic Zm9vOmJhcg==", "Digest", "Digest username=\"x\""]
        .iter()
        .enumerate()
    {
        let reply = app.get_with_authorization(&uri, Some(auth)).await;
        expect_unauthorized(&reply, false, &format!("malformed failure {}", i + 1));
    }
    let unknown = app.client_for("zzzzzzzz", &app.private_key);
    let reply = unknown.get(&uri).await;
    expect_error(
        &reply,
        429,
        "RATE_LIMITED",
        "unknown key after 3 malformed headers",
    );
    assert!(reply.header("retry-after").is_some(), "Retry-After");
    expect_status(
        &app.client.get(&uri).await,
        200,
        "a valid key is not locked out",
    );
}

#[tokio::test]
async fn a_failure_limit_of_zero_never_throttles() {
    let app = app_with_throttle(0, 60).await;
    let wrong = app.client_for(&app.public_key, "00000000-0000-4000-8000-000000000000");
    for i in 0..40 {
        let reply = wrong.get(&app.v1("")).await;
        expect_unauthorized(&reply, false, &format!("failure {i} with the throttle off"));
    }
    let reply = app
        .get_with_authorization(&app.v1(""), Some("Basic Zm9vOmJhcg=="))
        .await;
    expect_unauthorized(&reply, false, "malformed header with the throttle off");
    expect_status(&app.client.get(&app.v1("")).await, 200, "valid request");
}

// ---------------------------------------------------------------------------------------------
// 9. Real clients
// ---------------------------------------------------------------------------------------------

/// Runs a command in a blocking task; a missing program fails the test with `missing`.
async fn run_command(program: &'static str, args: Vec<String>, missing: &'static str) -> Output {
    tokio::task::spawn_blocking(move || match Command::new(program).args(&args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{missing}"),
        Err(e) => panic!("cannot run {program}: {e}"),
    })
    .await
    .expect("blocking task")
}

/// One curl call with `--digest -u`; returns (status, body).
async fn curl(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<&str>,
    accept: Option<&str>,
) -> (u16, String) {
    let mut args: Vec<String> = [
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        "--digest",
        "--user",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(format!("{}:{}", app.public_key, app.private_key));
    args.extend(["--request".to_owned(), method.to_owned()]);
    if let Some(accept) = accept {
        args.extend(["--header".to_owned(), format!("Accept: {accept}")]);
    }
    if let Some(body) = body {
        args.extend([
            "--header".to_owned(),
            "Content-Type: application/json".to_owned(),
            "--data".to_owned(),
            body.to_owned(),
        ]);
    }
    args.extend([
        "--write-out".to_owned(),
        "\n%{http_code}".to_owned(),
        format!("{}{path}", app.base),
    ]);
    let output = run_command(
        "curl",
        args,
        "curl is not installed: the real-client tests need the `curl` binary (CI installs it)",
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {method} {path} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl status in {stdout:?}"));
    (code, body.to_owned())
}

#[tokio::test]
async fn curl_digest_works_unchanged() {
    let app = spawn_app().await;
    let (status, body) = curl(&app, "GET", &app.v1(""), None, None).await;
    assert_eq!(status, 200, "curl GET list: {body}");
    let (status, body) = curl(&app, "POST", &app.v1("OPS_GENIE"), Some(OPS_GENIE), None).await;
    assert_eq!(status, 200, "curl POST: {body}");
    assert!(body.contains("OPS_GENIE"), "curl POST: {body}");
    let (status, body) = curl(
        &app,
        "PUT",
        &app.v1("OPS_GENIE"),
        Some(r#"{"type":"OPS_GENIE","apiKey":"opsgenie-key-5678","region":"EU"}"#),
        None,
    )
    .await;
    assert_eq!(status, 200, "curl PUT: {body}");
    let (status, body) = curl(&app, "GET", &app.v1("OPS_GENIE"), None, None).await;
    assert_eq!(status, 200, "curl GET one: {body}");
    assert!(body.contains("\"EU\""), "curl GET after PUT: {body}");
    let (status, body) = curl(&app, "DELETE", &app.v1("OPS_GENIE"), None, None).await;
    assert_eq!(status, 204, "curl DELETE: {body}");
    // v2 with the versioned Accept header.
    let (status, body) = curl(&app, "POST", &app.v2("DATADOG"), Some(DATADOG), Some(V2)).await;
    assert_eq!(status, 200, "curl v2 POST: {body}");
    let (status, body) = curl(&app, "GET", &app.v2(""), None, Some(V2)).await;
    assert_eq!(status, 200, "curl v2 GET list: {body}");
    assert!(body.contains("DATADOG"), "curl v2 GET list: {body}");
    let (status, body) = curl(&app, "PUT", &app.v2("DATADOG"), Some(DATADOG_EU), Some(V2)).await;
    assert_eq!(status, 200, "curl v2 PUT: {body}");
    let (status, body) = curl(&app, "DELETE", &app.v2("DATADOG"), None, Some(V2)).await;
    assert_eq!(status, 204, "curl v2 DELETE: {body}");
    // Wrong credentials: curl gets the 401 body.
    let args = vec![
        "--silent".to_owned(),
        "--digest".to_owned(),
        "--user".to_owned(),
        format!("{}:wrong", app.public_key),
        "--write-out".to_owned(),
        "\n%{http_code}".to_owned(),
        format!("{}{}", app.base, app.v1("")),
    ];
    let output = run_command("curl", args, "curl is not installed (CI installs it)").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.ends_with("\n401"), "curl with a wrong key: {stdout}");
    assert!(
        stdout.contains("USER_UNAUTHORIZED"),
        "curl with a wrong key: {stdout}"
    );
}

#[tokio::test]
async fn python_requests_http_digest_auth_works_unchanged() {
    let app = spawn_app().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/requests_digest.py"
    );
    let output = run_command(
        "python3",
        vec![
            script.to_owned(),
            app.base.clone(),
            app.group.clone(),
            app.public_key.clone(),
            app.private_key.clone(),
        ],
        "python3 is not installed: the real-client tests need Python 3 with `requests` (CI installs them)",
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python requests client failed (exit {:?}):\n{stderr}\n{stdout}",
        output.status.code()
    );
    let steps: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("script output is not JSON ({e}): {stdout}\n{stderr}"));
    let expected = [
        ("v1 GET list", 200),
        ("v1 POST", 200),
        ("v1 PUT", 200),
        ("v1 GET one", 200),
        ("v1 DELETE", 204),
        ("v2 POST", 200),
        ("v2 GET list", 200),
        ("v2 PUT", 200),
        ("v2 DELETE", 204),
        ("wrong key", 401),
    ];
    let steps = steps.as_array().expect("array of steps");
    assert_eq!(steps.len(), expected.len(), "steps: {stdout}");
    for (step, (name, status)) in steps.iter().zip(expected) {
        assert_eq!(step["step"], name, "steps: {stdout}");
        assert_eq!(step["status"], status, "python requests {name}: {step}");
    }
    assert!(
        steps[1]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("OPS_GENIE"),
        "POST answer: {}",
        steps[1]
    );
    assert!(
        steps[3]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("\"EU\""),
        "GET after PUT: {}",
        steps[3]
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Per-project rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_per_project_rate_limit_answers_429_and_spares_other_projects() {
    let app = spawn_app_with(Options {
        project_rate_limit: Some(3),
        ..Options::default()
    })
    .await;
    let other = create_project(&app, &app.org, "other").await;

    for remaining in [2, 1, 0] {
        let reply = app.client.get(&app.v1("")).await;
        expect_status(&reply, 200, &format!("request with {remaining} left"));
        assert_eq!(
            reply.header("ratelimit-limit").as_deref(),
            Some("3"),
            "RateLimit-Limit"
        );
        assert_eq!(
            reply.header("ratelimit-remaining"),
            Some(remaining.to_string()),
            "RateLimit-Remaining"
        );
    }
    let reply = app.client.post(&app.v1("OPS_GENIE"), OPS_GENIE).await;
    expect_error(&reply, 429, "RATE_LIMITED", "4th request in the minute");
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After is a number of seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let reply = app.client.get(&app.v1("OPS_GENIE")).await;
    expect_error(&reply, 429, "RATE_LIMITED", "5th request in the minute");

    // Another project has its own budget.
    let reply = app.client.get(&path("v1.0", &other, "")).await;
    expect_status(&reply, 200, "another project");
    assert_eq!(
        reply.header("ratelimit-remaining").as_deref(),
        Some("2"),
        "other project's budget"
    );

    // The refused POST stored nothing.
    let store = atlas_integrations::store::open(&app.global.database_url(), false, 1)
        .await
        .expect("open the store");
    let group = ObjectId::parse(&app.group).expect("group id");
    let stored = store.list_integrations(group).await.expect("list");
    assert!(stored.is_empty(), "the rate-limited POST stored {stored:?}");
}
