//! The integrations API against the contract (`shared/spec/integrations-api.md`): the five
//! operations for every type in v1.0 and v2 (§2, §3), masking (§4), errors and their
//! precedence (§3, §5), the common query parameters (§6), list order and concurrent creation.
//!
//! Every test starts its own server on a fresh database. Expected bodies are written out in
//! full and compared as JSON values (key order does not matter, everything else does).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use atlas_integrations::domain::ids::ObjectId;
use atlas_integrations::domain::integration::{Config, IntegrationType};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    challenge_param, digest_header, send_raw, spawn_app, spawn_app_with, DigestClient, Options,
    Reply, TestApp, V2,
};

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

/// An API version, as it appears in paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ver {
    V1,
    V2,
}

impl Ver {
    /// The integrations path of this version (`suffix` empty for the list).
    fn path(self, app: &TestApp, suffix: &str) -> String {
        match self {
            Self::V1 => app.v1(suffix),
            Self::V2 => app.v2(suffix),
        }
    }
}

/// `http://127.0.0.1:PORT{path}?pageNum=..&itemsPerPage=..`
fn href(app: &TestApp, path: &str, page: u64, per_page: u64) -> String {
    format!("{}{path}?pageNum={page}&itemsPerPage={per_page}", app.base)
}

/// The `links` of page 1 with the default page size.
fn self_links(app: &TestApp, path: &str) -> Value {
    json!([{"href": href(app, path, 1, 100), "rel": "self"}])
}

/// The body as JSON after asserting 200.
fn ok(reply: &Reply) -> Value {
    assert_eq!(reply.status.as_u16(), 200, "status; body: {}", reply.text);
    reply.json()
}

/// The exact Atlas error body of contract §5.
fn error_body(status: u16, code: &str, parameters: &[&str], detail: &str) -> Value {
    let reason = StatusCode::from_u16(status)
        .expect("a status")
        .canonical_reason()
        .expect("a reason phrase");
    json!({
        "detail": detail,
        "error": status,
        "errorCode": code,
        "parameters": parameters,
        "reason": reason,
    })
}

/// Asserts status, the whole error body, and `Content-Type: application/json`.
fn assert_atlas_error(reply: &Reply, status: u16, code: &str, parameters: &[&str], detail: &str) {
    reply.assert_error(status, code, parameters);
    assert_eq!(
        reply.json(),
        error_body(status, code, parameters, detail),
        "error body"
    );
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json"),
        "errors are application/json; body: {}",
        reply.text
    );
}

/// `INVALID_INTEGRATION_SETTINGS` with a message the contract fixes.
fn assert_settings(reply: &Reply, kind: &str, message: &str) {
    let detail =
        format!("The provided settings for the {kind} integration were invalid: {message}.");
    assert_atlas_error(
        reply,
        400,
        "INVALID_INTEGRATION_SETTINGS",
        &[kind, message],
        &detail,
    );
}

/// `INVALID_INTEGRATION_SETTINGS` for a rule whose wording the contract leaves open: the type,
/// then a message about `field`.
fn assert_settings_about(reply: &Reply, kind: &str, field: &str) {
    assert_eq!(reply.status.as_u16(), 400, "status; body: {}", reply.text);
    let body = reply.json();
    assert_eq!(
        body["errorCode"], "INVALID_INTEGRATION_SETTINGS",
        "body: {}",
        reply.text
    );
    let parameters = body["parameters"].as_array().expect("parameters");
    assert_eq!(parameters.len(), 2, "body: {}", reply.text);
    assert_eq!(parameters[0], kind, "body: {}", reply.text);
    let message = parameters[1].as_str().expect("a message");
    assert!(
        message.starts_with(&format!("{field} ")),
        "the message names {field}: {message}"
    );
    assert_eq!(
        body["detail"],
        format!("The provided settings for the {kind} integration were invalid: {message}."),
    );
}

fn assert_missing(reply: &Reply, field: &str) {
    let detail = format!("The required attribute {field} was not specified.");
    assert_atlas_error(reply, 400, "MISSING_ATTRIBUTE", &[field], &detail);
}

fn assert_invalid_attribute(reply: &Reply, field: &str) {
    let detail = format!("Invalid attribute {field} specified.");
    assert_atlas_error(reply, 400, "INVALID_ATTRIBUTE", &[field], &detail);
}

fn assert_invalid_json_attribute(reply: &Reply, field: &str) {
    let detail = format!("Received JSON for the {field} attribute does not match expected format.");
    assert_atlas_error(reply, 400, "INVALID_JSON_ATTRIBUTE", &[field], &detail);
}

fn assert_invalid_enum(reply: &Reply, value: &str) {
    let detail = format!("An invalid enumeration value {value} was specified.");
    assert_atlas_error(reply, 400, "INVALID_ENUM_VALUE", &[value], &detail);
}

fn assert_malformed(reply: &Reply) {
    assert_atlas_error(
        reply,
        400,
        "MALFORMED_JSON",
        &[],
        "Received JSON is malformed.",
    );
}

fn assert_not_configured(reply: &Reply, kind: &str) {
    let detail = format!("The integration of type '{kind}' is not configured for this group.");
    assert_atlas_error(reply, 404, "INTEGRATION_NOT_CONFIGURED", &[kind], &detail);
}

fn assert_already_configured(reply: &Reply, kind: &str) {
    let detail = format!("The integration of type '{kind}' is already configured for this group.");
    assert_atlas_error(
        reply,
        409,
        "INTEGRATION_ALREADY_CONFIGURED",
        &[kind],
        &detail,
    );
}

fn assert_invalid_query(reply: &Reply, name: &str) {
    let detail = format!("Invalid query parameter {name} specified.");
    assert_atlas_error(reply, 400, "INVALID_QUERY_PARAMETER", &[name], &detail);
}

fn assert_too_large(reply: &Reply) {
    assert_atlas_error(
        reply,
        413,
        "REQUEST_BODY_TOO_LARGE",
        &["65536"],
        "The request body exceeds the limit of 65536 bytes.",
    );
}

fn assert_version_date(reply: &Reply) {
    assert_atlas_error(
        reply,
        406,
        "INVALID_VERSION_DATE",
        &[],
        "Invalid accept header or version date.",
    );
}

/// Asserts a 24-char lowercase hex ObjectId.
fn assert_object_id(id: &str) {
    assert!(
        id.len() == 24
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "not a 24-hex ObjectId: {id:?}"
    );
}

/// Splits the `id` off an integration object: v2 objects must carry a valid one, v1.0 objects
/// none.
fn split_id(version: Ver, object: &Value) -> (Value, Option<String>) {
    let mut rest = object.clone();
    let id = rest
        .as_object_mut()
        .expect("an integration object")
        .remove("id");
    match version {
        Ver::V1 => {
            assert!(id.is_none(), "v1.0 objects have no id: {object}");
            (rest, None)
        }
        Ver::V2 => {
            let id = id.unwrap_or_else(|| panic!("v2 objects carry an id: {object}"));
            let id = id.as_str().expect("the id is a string").to_owned();
            assert_object_id(&id);
            (rest, Some(id))
        }
    }
}

/// The `results` of a list, ids split off.
fn results_without_ids(version: Ver, list: &Value) -> Vec<Value> {
    list["results"]
        .as_array()
        .unwrap_or_else(|| panic!("a list with results: {list}"))
        .iter()
        .map(|object| split_id(version, object).0)
        .collect()
}

/// The `type` of each result, in order.
fn types(list: &Value) -> Vec<String> {
    list["results"]
        .as_array()
        .unwrap_or_else(|| panic!("a list with results: {list}"))
        .iter()
        .map(|o| o["type"].as_str().expect("a type").to_owned())
        .collect()
}

/// `links` as rel → href, asserting no rel appears twice.
fn links(list: &Value) -> BTreeMap<String, String> {
    let array = list["links"]
        .as_array()
        .unwrap_or_else(|| panic!("links: {list}"));
    let map: BTreeMap<String, String> = array
        .iter()
        .map(|l| {
            (
                l["rel"].as_str().expect("rel").to_owned(),
                l["href"].as_str().expect("href").to_owned(),
            )
        })
        .collect();
    assert_eq!(map.len(), array.len(), "each rel once: {list}");
    map
}

fn link_map(entries: &[(&str, String)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(rel, href)| ((*rel).to_owned(), href.clone()))
        .collect()
}

/// POSTs `body` to `/integrations/{kind}` and asserts 200.
async fn create(app: &TestApp, version: Ver, kind: &str, body: &Value) -> Value {
    ok(&app
        .client
        .post(&version.path(app, kind), &body.to_string())
        .await)
}

/// PUTs `body` to `/integrations/{kind}` and asserts 200.
async fn replace(app: &TestApp, version: Ver, kind: &str, body: &Value) -> Value {
    ok(&app
        .client
        .put(&version.path(app, kind), &body.to_string())
        .await)
}

/// GETs one integration and asserts 200.
async fn get_one(app: &TestApp, version: Ver, kind: &str) -> Value {
    ok(&app.client.get(&version.path(app, kind)).await)
}

/// GETs the list and asserts 200.
async fn get_list(app: &TestApp, version: Ver) -> Value {
    ok(&app.client.get(&version.path(app, "")).await)
}

/// Both versions' lists: what "the stored data is unchanged" is checked against.
async fn snapshot(app: &TestApp) -> (Value, Value) {
    (get_list(app, Ver::V1).await, get_list(app, Ver::V2).await)
}

async fn assert_unchanged(app: &TestApp, before: &(Value, Value)) {
    assert_eq!(
        &snapshot(app).await,
        before,
        "a refused write must leave the integrations as they were"
    );
}

/// A project with a Datadog integration (v1.0), and the snapshot of it.
async fn app_with_datadog() -> (TestApp, (Value, Value)) {
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": "EU"}),
    )
    .await;
    let before = snapshot(&app).await;
    (app, before)
}

/// The configuration as stored (decrypted straight from the database), to see secrets that
/// responses mask or never return.
async fn stored_config(app: &TestApp, kind: &str) -> Config {
    let (store, keyring) = atlas_integrations::startup::open_database(&app.global, false)
        .await
        .expect("open the test database");
    let group = ObjectId::parse(&app.group).expect("group id");
    let kind = IntegrationType::parse(kind).expect("a type");
    let row = store
        .get_integration(group, kind)
        .await
        .expect("read the integration")
        .expect("the integration is stored");
    atlas_integrations::http::integrations::open(&keyring, group, &row).expect("decrypt it")
}

async fn stored_secret(app: &TestApp, kind: &str, field: &str) -> Option<String> {
    stored_config(app, kind).await.str(field).map(str::to_owned)
}

/// An `Authorization` header for one request, on a nonce of its own.
async fn fresh_authorization(app: &TestApp, method: &str, uri: &str) -> String {
    let challenge = send_raw(
        app.client.raw(),
        &app.base,
        Method::GET,
        &app.v1(""),
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(
        challenge.status.as_u16(),
        401,
        "challenge; body: {}",
        challenge.text
    );
    let header = challenge
        .header("www-authenticate")
        .expect("a Digest challenge");
    let nonce = challenge_param(&header, "nonce").expect("a nonce");
    let cnonce = format!("{:016x}", rand::random::<u64>());
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

/// Sends raw bytes as a body (for bodies that are not text).
async fn send_bytes(app: &TestApp, method: Method, uri: &str, body: Vec<u8>) -> Reply {
    let authorization = fresh_authorization(app, method.as_str(), uri).await;
    let mut request = app
        .client
        .raw()
        .request(method, format!("{}{uri}", app.base))
        .header("content-type", "application/json")
        .header("authorization", authorization)
        .body(body);
    if uri.starts_with("/api/atlas/v2/") {
        request = request.header("accept", V2);
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

/// One HTTP/1.1 request written by hand (so that no header is added for us): the status, the
/// head in lowercase, and the body.
async fn raw_http(
    app: &TestApp,
    method: &str,
    uri: &str,
    extra_headers: &str,
) -> (u16, String, String) {
    let authorization = fresh_authorization(app, method, uri).await;
    let request = format!(
        "{method} {uri} HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\n{extra_headers}Connection: close\r\n\r\n",
        app.addr
    );
    let addr = app.addr;
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read");
        raw
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// What the five operations answer for one type: POST, GET one, GET list, PUT (replace),
/// DELETE, then GET is 404. Expected objects are without `id`; v2 ids are checked to be
/// ObjectIds and kept by PUT, and v1.0 objects must have none.
struct Lifecycle {
    kind: &'static str,
    create: Value,
    created: Value,
    replace: Value,
    replaced: Value,
}

async fn assert_lifecycle(app: &TestApp, version: Ver, case: &Lifecycle) {
    let one = version.path(app, case.kind);
    let list = version.path(app, "");
    let what = format!("{} {version:?}", case.kind);

    let reply = app.client.post(&one, &case.create.to_string()).await;
    let body = ok(&reply);
    assert_eq!(body["links"], self_links(app, &one), "{what}: POST links");
    assert_eq!(body["totalCount"], 1, "{what}: POST totalCount");
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(3),
        "{what}: POST list keys: {body}"
    );
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{what}: POST results: {body}");
    let (created, id) = split_id(version, &results[0]);
    assert_eq!(created, case.created, "{what}: POST answer");

    let (got, got_id) = split_id(version, &get_one(app, version, case.kind).await);
    assert_eq!(got, case.created, "{what}: GET one");
    assert_eq!(got_id, id, "{what}: GET one id");

    let body = get_list(app, version).await;
    assert_eq!(
        body["links"],
        self_links(app, &list),
        "{what}: GET list links"
    );
    assert_eq!(body["totalCount"], 1, "{what}: GET list totalCount");
    assert_eq!(
        results_without_ids(version, &body),
        vec![case.created.clone()],
        "{what}: GET list"
    );

    let body = ok(&app.client.put(&one, &case.replace.to_string()).await);
    assert_eq!(body["links"], self_links(app, &one), "{what}: PUT links");
    assert_eq!(body["totalCount"], 1, "{what}: PUT totalCount");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{what}: PUT results: {body}");
    let (replaced, put_id) = split_id(version, &results[0]);
    assert_eq!(replaced, case.replaced, "{what}: PUT answer");
    assert_eq!(put_id, id, "{what}: PUT keeps the id");

    let (got, got_id) = split_id(version, &get_one(app, version, case.kind).await);
    assert_eq!(got, case.replaced, "{what}: GET one after PUT");
    assert_eq!(got_id, id, "{what}: GET one id after PUT");

    let reply = app.client.delete(&one).await;
    assert_eq!(
        reply.status.as_u16(),
        204,
        "{what}: DELETE; body: {}",
        reply.text
    );
    assert_eq!(reply.text, "", "{what}: DELETE has no body");

    assert_not_configured(&app.client.get(&one).await, case.kind);
    let body = get_list(app, version).await;
    assert_eq!(body["results"], json!([]), "{what}: list after DELETE");
    assert_eq!(body["totalCount"], 0, "{what}: totalCount after DELETE");
}

// ---------------------------------------------------------------------------------------------
// §3: each type through the five operations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pager_duty_is_created_read_replaced_and_deleted_with_its_service_key_masked() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "PAGER_DUTY",
        create: json!({"type": "PAGER_DUTY", "serviceKey": "0123456789", "region": "EU"}),
        created: json!({"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "EU"}),
        replace: json!({"type": "PAGER_DUTY", "serviceKey": "9876543210"}),
        replaced: json!({"type": "PAGER_DUTY", "serviceKey": "******3210", "region": "US"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn slack_in_v1_is_created_read_replaced_and_deleted_with_an_empty_channel_name_when_unset() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "SLACK",
        create: json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "My Team", "channelName": "My Channel"}),
        created: json!({"type": "SLACK", "apiToken": "******2345", "teamName": "My Team", "channelName": "My Channel"}),
        replace: json!({"type": "SLACK", "apiToken": "xoxb-67890", "teamName": "Other Team"}),
        replaced: json!({"type": "SLACK", "apiToken": "******7890", "teamName": "Other Team", "channelName": ""}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
}

#[tokio::test]
async fn slack_in_v2_is_created_read_replaced_and_deleted_with_team_name_absent_when_unset() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "SLACK",
        create: json!({"type": "SLACK", "apiToken": "xoxb-12345", "channelName": "alerts"}),
        created: json!({"type": "SLACK", "apiToken": "******2345", "channelName": "alerts"}),
        replace: json!({"type": "SLACK", "apiToken": "xoxb-67890", "teamName": "Ops", "channelName": "ops"}),
        replaced: json!({"type": "SLACK", "apiToken": "******7890", "teamName": "Ops", "channelName": "ops"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn datadog_in_v1_is_created_read_replaced_and_deleted_showing_only_true_metric_switches() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "DATADOG",
        create: json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": "EU", "sendDatabaseMetrics": true}),
        created: json!({"type": "DATADOG", "apiKey": "******0123", "region": "EU", "sendDatabaseMetrics": true}),
        replace: json!({"type": "DATADOG", "apiKey": "fedcba9876"}),
        replaced: json!({"type": "DATADOG", "apiKey": "******9876", "region": "US"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
}

#[tokio::test]
async fn datadog_in_v2_is_created_read_replaced_and_deleted_showing_all_four_metric_switches() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "DATADOG",
        create: json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": "EU", "sendDatabaseMetrics": true}),
        created: json!({
            "type": "DATADOG", "apiKey": "******0123", "region": "EU",
            "sendCollectionLatencyMetrics": false, "sendDatabaseMetrics": true,
            "sendQueryStatsMetrics": false, "sendUserProvidedResourceTags": false,
        }),
        replace: json!({"type": "DATADOG", "apiKey": "fedcba9876", "region": "AP1", "sendQueryStatsMetrics": true}),
        replaced: json!({
            "type": "DATADOG", "apiKey": "******9876", "region": "AP1",
            "sendCollectionLatencyMetrics": false, "sendDatabaseMetrics": false,
            "sendQueryStatsMetrics": true, "sendUserProvidedResourceTags": false,
        }),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn new_relic_is_created_read_replaced_and_deleted_with_its_keys_in_clear() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "NEW_RELIC",
        create: json!({"type": "NEW_RELIC", "licenseKey": "license-0001", "accountId": "123456", "writeToken": "write-0001", "readToken": "read-0001"}),
        created: json!({"type": "NEW_RELIC", "licenseKey": "license-0001", "accountId": "123456", "writeToken": "write-0001", "readToken": "read-0001"}),
        replace: json!({"type": "NEW_RELIC", "licenseKey": "license-0002", "accountId": "654321", "writeToken": "write-0002", "readToken": "read-0002"}),
        replaced: json!({"type": "NEW_RELIC", "licenseKey": "license-0002", "accountId": "654321", "writeToken": "write-0002", "readToken": "read-0002"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn ops_genie_is_created_read_replaced_and_deleted_with_its_key_masked_and_region_defaulted() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "OPS_GENIE",
        create: json!({"type": "OPS_GENIE", "apiKey": "opsgen4321", "region": "EU"}),
        created: json!({"type": "OPS_GENIE", "apiKey": "******4321", "region": "EU"}),
        replace: json!({"type": "OPS_GENIE", "apiKey": "opsgen8765"}),
        replaced: json!({"type": "OPS_GENIE", "apiKey": "******8765", "region": "US"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn victor_ops_is_created_read_replaced_and_deleted_with_routing_key_absent_when_unset() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "VICTOR_OPS",
        create: json!({"type": "VICTOR_OPS", "apiKey": "victor8765", "routingKey": "critical"}),
        created: json!({"type": "VICTOR_OPS", "apiKey": "******8765", "routingKey": "critical"}),
        replace: json!({"type": "VICTOR_OPS", "apiKey": "victor1111"}),
        replaced: json!({"type": "VICTOR_OPS", "apiKey": "******1111"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn flowdock_in_v1_is_created_read_replaced_and_deleted_with_its_api_token_in_clear() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "FLOWDOCK",
        create: json!({"type": "FLOWDOCK", "flowName": "myFlowName", "apiToken": "1234567890", "orgName": "myOrg"}),
        created: json!({"type": "FLOWDOCK", "flowName": "myFlowName", "apiToken": "1234567890", "orgName": "myOrg"}),
        replace: json!({"type": "FLOWDOCK", "flowName": "newFlowName", "apiToken": "0987654321", "orgName": "newOrgName"}),
        replaced: json!({"type": "FLOWDOCK", "flowName": "newFlowName", "apiToken": "0987654321", "orgName": "newOrgName"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
}

#[tokio::test]
async fn webhook_is_created_read_replaced_and_deleted_with_url_partially_and_secret_fully_masked() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "WEBHOOK",
        create: json!({"type": "WEBHOOK", "url": "https://hooks.example.com/services/T000/B000/XXXX?x=1", "secret": "hook-secret-1"}),
        created: json!({"type": "WEBHOOK", "url": "https://hooks.example.com/****", "secret": "******"}),
        replace: json!({"type": "WEBHOOK", "url": "http://alerts.example.org:8080/in"}),
        replaced: json!({"type": "WEBHOOK", "url": "http://alerts.example.org:8080/****"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn microsoft_teams_is_created_read_replaced_and_deleted_with_its_url_partially_masked() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "MICROSOFT_TEAMS",
        create: json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://contoso.webhook.office.com/webhookb2/abc/IncomingWebhook/123/456"}),
        created: json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://contoso.webhook.office.com/****"}),
        replace: json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://outlook.office.com:8443/webhook/xyz"}),
        replaced: json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://outlook.office.com:8443/****"}),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn prometheus_is_created_read_replaced_and_deleted_without_ever_returning_the_password() {
    // Arrange
    let app = spawn_app().await;
    let case = Lifecycle {
        kind: "PROMETHEUS",
        create: json!({"type": "PROMETHEUS", "username": "prom_user", "password": "prom-pass-1", "serviceDiscovery": "http", "enabled": true}),
        created: json!({
            "type": "PROMETHEUS", "username": "prom_user", "serviceDiscovery": "http", "enabled": true,
            "sendUserProvidedResourceTagsEnabled": false, "scheme": "https",
        }),
        replace: json!({"type": "PROMETHEUS", "username": "prom_user2", "serviceDiscovery": "file", "enabled": false, "sendUserProvidedResourceTagsEnabled": true}),
        replaced: json!({
            "type": "PROMETHEUS", "username": "prom_user2", "serviceDiscovery": "file", "enabled": false,
            "sendUserProvidedResourceTagsEnabled": true, "scheme": "https",
        }),
    };

    // Act and assert
    assert_lifecycle(&app, Ver::V1, &case).await;
    assert_lifecycle(&app, Ver::V2, &case).await;
}

#[tokio::test]
async fn optional_regions_default_to_us_and_are_echoed() {
    // Arrange
    let app = spawn_app().await;

    // Act
    create(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
    )
    .await;
    create(
        &app,
        Ver::V2,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;
    let list = create(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "abcdef0123"}),
    )
    .await;

    // Assert
    assert_eq!(
        list["results"],
        json!([
            {"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "US"},
            {"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"},
            {"type": "DATADOG", "apiKey": "******0123", "region": "US"},
        ])
    );
}

#[tokio::test]
async fn an_explicit_null_region_takes_the_default() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "0123456789", "region": null}),
    )
    .await;

    // Assert
    assert_eq!(
        list["results"],
        json!([{"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "US"}])
    );
}

#[tokio::test]
async fn pager_duty_region_must_be_us_or_eu() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("PAGER_DUTY"),
            r#"{"type":"PAGER_DUTY","serviceKey":"0123456789","region":"US3"}"#,
        )
        .await;

    // Assert
    assert_invalid_enum(&reply, "US3");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn ops_genie_region_must_be_us_or_eu() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v2("OPS_GENIE"),
            r#"{"type":"OPS_GENIE","apiKey":"opsgen4321","region":"AP1"}"#,
        )
        .await;

    // Assert
    assert_invalid_enum(&reply, "AP1");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn datadog_accepts_every_documented_region() {
    // Arrange
    let app = spawn_app().await;

    for region in ["US", "US3", "US5", "EU", "AP1", "AP2", "US1_FED"] {
        // Act
        let body = json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": region});
        replace(&app, Ver::V1, "DATADOG", &body).await;

        // Assert
        assert_eq!(
            get_one(&app, Ver::V1, "DATADOG").await,
            json!({"type": "DATADOG", "apiKey": "******0123", "region": region})
        );
    }
}

#[tokio::test]
async fn datadog_region_outside_the_list_is_an_invalid_enum_value() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"abcdef0123","region":"XX"}"#,
        )
        .await;

    // Assert
    assert_invalid_enum(&reply, "XX");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn datadog_in_v1_returns_every_metric_switch_that_is_true_and_none_that_is_false() {
    // Arrange
    let app = spawn_app().await;
    let body = json!({
        "type": "DATADOG", "apiKey": "abcdef0123",
        "sendCollectionLatencyMetrics": true, "sendDatabaseMetrics": false,
        "sendQueryStatsMetrics": true, "sendUserProvidedResourceTags": true,
    });

    // Act
    create(&app, Ver::V1, "DATADOG", &body).await;

    // Assert
    assert_eq!(
        get_one(&app, Ver::V1, "DATADOG").await,
        json!({
            "type": "DATADOG", "apiKey": "******0123", "region": "US",
            "sendCollectionLatencyMetrics": true, "sendQueryStatsMetrics": true,
            "sendUserProvidedResourceTags": true,
        })
    );
    let (v2, _) = split_id(Ver::V2, &get_one(&app, Ver::V2, "DATADOG").await);
    assert_eq!(
        v2,
        json!({
            "type": "DATADOG", "apiKey": "******0123", "region": "US",
            "sendCollectionLatencyMetrics": true, "sendDatabaseMetrics": false,
            "sendQueryStatsMetrics": true, "sendUserProvidedResourceTags": true,
        })
    );
}

#[tokio::test]
async fn datadog_created_in_v1_without_switches_shows_all_four_false_in_v2() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "abcdef0123"}),
    )
    .await;

    // Act
    let (v2, _) = split_id(Ver::V2, &get_one(&app, Ver::V2, "DATADOG").await);

    // Assert
    assert_eq!(
        v2,
        json!({
            "type": "DATADOG", "apiKey": "******0123", "region": "US",
            "sendCollectionLatencyMetrics": false, "sendDatabaseMetrics": false,
            "sendQueryStatsMetrics": false, "sendUserProvidedResourceTags": false,
        })
    );
}

#[tokio::test]
async fn datadog_api_key_must_be_hexadecimal() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"not-hex-key"}"#,
        )
        .await;

    // Assert
    assert_settings(&reply, "DATADOG", "apiKey must be a hexadecimal string");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn datadog_api_key_accepts_upper_and_lower_case_hexadecimal() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "ABCDEFabcdef0189"}),
    )
    .await;

    // Assert
    assert_eq!(list["results"][0]["apiKey"], "************0189");
}

#[tokio::test]
async fn datadog_metric_switches_must_be_json_booleans() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v2("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"abcdef0123","sendDatabaseMetrics":"true"}"#,
        )
        .await;

    // Assert
    assert_invalid_json_attribute(&reply, "sendDatabaseMetrics");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn slack_team_name_is_required_in_v1() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("SLACK"),
            r#"{"type":"SLACK","apiToken":"xoxb-12345","channelName":"alerts"}"#,
        )
        .await;

    // Assert
    assert_missing(&reply, "teamName");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn slack_channel_name_is_required_in_v2() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v2("SLACK"),
            r#"{"type":"SLACK","apiToken":"xoxb-12345","teamName":"My Team"}"#,
        )
        .await;

    // Assert
    assert_missing(&reply, "channelName");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn slack_channel_name_is_optional_in_v1_and_shown_as_an_empty_string() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "SLACK",
        &json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "My Team"}),
    )
    .await;

    // Assert
    let expected = json!({"type": "SLACK", "apiToken": "******2345", "teamName": "My Team", "channelName": ""});
    assert_eq!(list["results"], json!([expected]));
    assert_eq!(get_one(&app, Ver::V1, "SLACK").await, expected);
    let (v2, _) = split_id(Ver::V2, &get_one(&app, Ver::V2, "SLACK").await);
    assert_eq!(v2, expected);
}

#[tokio::test]
async fn slack_team_name_is_optional_in_v2_and_absent_when_never_set() {
    // Arrange
    let app = spawn_app().await;

    // Act
    create(
        &app,
        Ver::V2,
        "SLACK",
        &json!({"type": "SLACK", "apiToken": "xoxb-12345", "channelName": "alerts"}),
    )
    .await;

    // Assert
    let expected = json!({"type": "SLACK", "apiToken": "******2345", "channelName": "alerts"});
    assert_eq!(get_one(&app, Ver::V1, "SLACK").await, expected);
    let (v2, _) = split_id(Ver::V2, &get_one(&app, Ver::V2, "SLACK").await);
    assert_eq!(v2, expected);
}

#[tokio::test]
async fn slack_put_in_v2_without_team_name_clears_it() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V2,
        "SLACK",
        &json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "T", "channelName": "a"}),
    )
    .await;

    // Act
    let list = replace(
        &app,
        Ver::V2,
        "SLACK",
        &json!({"type": "SLACK", "apiToken": "xoxb-12345", "channelName": "b"}),
    )
    .await;

    // Assert
    assert_eq!(
        results_without_ids(Ver::V2, &list),
        vec![json!({"type": "SLACK", "apiToken": "******2345", "channelName": "b"})]
    );
}

#[tokio::test]
async fn slack_channel_name_may_have_80_characters() {
    // Arrange
    let app = spawn_app().await;
    let name = "é".repeat(80);

    // Act
    let list = create(
        &app,
        Ver::V2,
        "SLACK",
        &json!({"type": "SLACK", "apiToken": "xoxb-12345", "channelName": name}),
    )
    .await;

    // Assert
    assert_eq!(list["results"][0]["channelName"], name.as_str());
}

#[tokio::test]
async fn slack_channel_name_over_80_characters_is_refused() {
    // Arrange
    let (app, before) = app_with_datadog().await;
    let body = json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "T", "channelName": "c".repeat(81)});

    // Act
    let v1 = app.client.post(&app.v1("SLACK"), &body.to_string()).await;
    let v2 = app.client.post(&app.v2("SLACK"), &body.to_string()).await;

    // Assert
    assert_settings_about(&v1, "SLACK", "channelName");
    assert_settings_about(&v2, "SLACK", "channelName");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn slack_empty_channel_name_is_refused_in_v2_where_it_is_required() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v2("SLACK"),
            r#"{"type":"SLACK","apiToken":"xoxb-12345","channelName":""}"#,
        )
        .await;

    // Assert
    assert_settings(&reply, "SLACK", "channelName must not be empty");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn new_relic_requires_each_of_its_four_keys() {
    // Arrange
    let (app, before) = app_with_datadog().await;
    let full = json!({"type": "NEW_RELIC", "licenseKey": "l", "accountId": "a", "writeToken": "w", "readToken": "r"});

    for field in ["licenseKey", "accountId", "writeToken", "readToken"] {
        let mut body = full.clone();
        body.as_object_mut().expect("object").remove(field);

        // Act
        let reply = app
            .client
            .post(&app.v1("NEW_RELIC"), &body.to_string())
            .await;

        // Assert
        assert_missing(&reply, field);
    }
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn victor_ops_routing_key_is_returned_in_clear_when_set() {
    // Arrange
    let app = spawn_app().await;

    // Act
    create(
        &app,
        Ver::V2,
        "VICTOR_OPS",
        &json!({"type": "VICTOR_OPS", "apiKey": "victor8765", "routingKey": "routing-key-1"}),
    )
    .await;

    // Assert
    assert_eq!(
        get_one(&app, Ver::V1, "VICTOR_OPS").await,
        json!({"type": "VICTOR_OPS", "apiKey": "******8765", "routingKey": "routing-key-1"})
    );
}

#[tokio::test]
async fn flowdock_flow_name_with_a_space_is_refused() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("FLOWDOCK"),
            r#"{"type":"FLOWDOCK","flowName":"my flow","apiToken":"1234567890","orgName":"myOrg"}"#,
        )
        .await;

    // Assert
    assert_atlas_error(
        &reply,
        400,
        "INVALID_FLOWDOCK_FLOW_NAME",
        &[],
        "Flowdock flow name cannot contain spaces.",
    );
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn flowdock_requires_flow_name_api_token_and_org_name() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("FLOWDOCK"),
            r#"{"type":"FLOWDOCK","flowName":"f","apiToken":"t"}"#,
        )
        .await;

    // Assert
    assert_missing(&reply, "orgName");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn webhook_url_may_be_http() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": "http://hooks.example.com/plain"}),
    )
    .await;

    // Assert
    assert_eq!(
        list["results"],
        json!([{"type": "WEBHOOK", "url": "http://hooks.example.com/****"}])
    );
}

#[tokio::test]
async fn webhook_url_must_be_an_absolute_http_or_https_url() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    for url in [
        "ftp://hooks.example.com/x",
        "/relative/path",
        "hooks.example.com/x",
        "not a url",
    ] {
        // Act
        let reply = app
            .client
            .post(
                &app.v1("WEBHOOK"),
                &json!({"type": "WEBHOOK", "url": url}).to_string(),
            )
            .await;

        // Assert
        assert_settings_about(&reply, "WEBHOOK", "url");
    }
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn webhook_url_is_required() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(&app.v2("WEBHOOK"), r#"{"type":"WEBHOOK","secret":"s"}"#)
        .await;

    // Assert
    assert_missing(&reply, "url");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn microsoft_teams_url_must_be_https() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    for url in [
        "http://outlook.office.com/webhook/x",
        "ftp://outlook.office.com/x",
        "outlook.office.com/webhook",
    ] {
        // Act
        let body = json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": url});
        let reply = app
            .client
            .post(&app.v1("MICROSOFT_TEAMS"), &body.to_string())
            .await;

        // Assert
        assert_settings_about(&reply, "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl");
    }
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn prometheus_password_is_required_on_create() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("PROMETHEUS"),
            r#"{"type":"PROMETHEUS","username":"u","serviceDiscovery":"http","enabled":true}"#,
        )
        .await;

    // Assert
    assert_missing(&reply, "password");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn prometheus_put_that_creates_requires_the_password() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v2("PROMETHEUS"),
            r#"{"type":"PROMETHEUS","username":"u","serviceDiscovery":"http","enabled":true}"#,
        )
        .await;

    // Assert
    assert_missing(&reply, "password");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn prometheus_put_without_password_keeps_the_stored_one() {
    // Arrange
    let app = spawn_app().await;
    create(&app, Ver::V1, "PROMETHEUS", &json!({"type": "PROMETHEUS", "username": "u", "password": "first-pass", "serviceDiscovery": "http", "enabled": true})).await;

    // Act
    let list = replace(&app, Ver::V1, "PROMETHEUS", &json!({"type": "PROMETHEUS", "username": "u2", "serviceDiscovery": "file", "enabled": false})).await;

    // Assert
    assert_eq!(list["results"][0]["username"], "u2");
    assert_eq!(
        stored_secret(&app, "PROMETHEUS", "password")
            .await
            .as_deref(),
        Some("first-pass")
    );
}

#[tokio::test]
async fn prometheus_put_with_a_password_replaces_it() {
    // Arrange
    let app = spawn_app().await;
    create(&app, Ver::V1, "PROMETHEUS", &json!({"type": "PROMETHEUS", "username": "u", "password": "first-pass", "serviceDiscovery": "http", "enabled": true})).await;

    // Act
    replace(&app, Ver::V2, "PROMETHEUS", &json!({"type": "PROMETHEUS", "username": "u", "password": "second-pass", "serviceDiscovery": "http", "enabled": true})).await;

    // Assert
    assert_eq!(
        stored_secret(&app, "PROMETHEUS", "password")
            .await
            .as_deref(),
        Some("second-pass")
    );
}

#[tokio::test]
async fn prometheus_password_appears_in_no_response() {
    // Arrange
    let app = spawn_app().await;
    let body = json!({"type": "PROMETHEUS", "username": "u", "password": "pw-7f3a9c", "serviceDiscovery": "http", "enabled": true});

    // Act
    let replies = [
        app.client
            .post(&app.v1("PROMETHEUS"), &body.to_string())
            .await,
        app.client
            .put(&app.v2("PROMETHEUS"), &body.to_string())
            .await,
        app.client.get(&app.v1("PROMETHEUS")).await,
        app.client.get(&app.v2("PROMETHEUS")).await,
        app.client.get(&app.v1("")).await,
        app.client.get(&app.v2("")).await,
    ];

    // Assert
    for reply in &replies {
        assert_eq!(reply.status.as_u16(), 200, "body: {}", reply.text);
        assert!(
            !reply.text.contains("pw-7f3a9c"),
            "the password leaked: {}",
            reply.text
        );
        assert!(
            !reply.text.contains("password"),
            "no password field: {}",
            reply.text
        );
    }
}

#[tokio::test]
async fn prometheus_scheme_is_read_only_accepted_and_ignored() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "PROMETHEUS",
        &json!({"type": "PROMETHEUS", "username": "u", "password": "p", "serviceDiscovery": "file", "enabled": true, "scheme": "http"}),
    )
    .await;

    // Assert
    assert_eq!(list["results"][0]["scheme"], "https");
}

#[tokio::test]
async fn prometheus_enabled_must_be_a_json_boolean() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(&app.v1("PROMETHEUS"), r#"{"type":"PROMETHEUS","username":"u","password":"p","serviceDiscovery":"http","enabled":"yes"}"#)
        .await;

    // Assert
    assert_invalid_json_attribute(&reply, "enabled");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn prometheus_service_discovery_must_be_http_or_file() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(&app.v1("PROMETHEUS"), r#"{"type":"PROMETHEUS","username":"u","password":"p","serviceDiscovery":"dns","enabled":true}"#)
        .await;

    // Assert
    assert_invalid_enum(&reply, "dns");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn put_creates_a_type_that_is_not_configured_yet_in_v1_and_v2() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let v1 = replace(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
    )
    .await;
    let v2 = replace(
        &app,
        Ver::V2,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;

    // Assert
    assert_eq!(
        v1["results"],
        json!([{"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "US"}])
    );
    assert_eq!(v1["totalCount"], 1);
    assert_eq!(
        results_without_ids(Ver::V2, &v2),
        vec![
            json!({"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "US"}),
            json!({"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"}),
        ]
    );
    assert_eq!(v2["totalCount"], 2);
    assert_eq!(v2["links"], self_links(&app, &app.v2("OPS_GENIE")));
}

#[tokio::test]
async fn delete_answers_204_with_an_empty_body_and_the_type_is_then_not_configured() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": "https://hooks.example.com/x"}),
    )
    .await;

    // Act
    let reply = app.client.delete(&app.v1("WEBHOOK")).await;

    // Assert
    assert_eq!(reply.status.as_u16(), 204);
    assert_eq!(reply.text, "");
    assert_not_configured(&app.client.get(&app.v1("WEBHOOK")).await, "WEBHOOK");
    assert_not_configured(&app.client.get(&app.v2("WEBHOOK")).await, "WEBHOOK");
}

#[tokio::test]
async fn get_of_a_type_never_configured_is_404_integration_not_configured() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app.client.get(&app.v2("MICROSOFT_TEAMS")).await;

    // Assert
    assert_not_configured(&reply, "MICROSOFT_TEAMS");
}

#[tokio::test]
async fn delete_of_a_type_not_configured_is_404_integration_not_configured() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app.client.delete(&app.v1("WEBHOOK")).await;

    // Assert
    assert_not_configured(&reply, "WEBHOOK");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn post_of_a_type_already_configured_is_409_and_keeps_the_stored_one() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"fedcba9876","region":"US"}"#,
        )
        .await;

    // Assert
    assert_eq!(
        reply.json(),
        json!({"detail": "The integration of type 'DATADOG' is already configured for this group.",
               "error": 409, "errorCode": "INTEGRATION_ALREADY_CONFIGURED", "parameters": ["DATADOG"], "reason": "Conflict"})
    );
    assert_already_configured(&reply, "DATADOG");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn post_of_a_type_already_configured_through_the_other_version_is_409() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v2("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"fedcba9876"}"#,
        )
        .await;

    // Assert
    assert_already_configured(&reply, "DATADOG");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn post_answers_the_list_of_all_the_projects_integrations_including_the_new_one() {
    // Arrange
    let app = spawn_app().await;
    create(&app, Ver::V1, "NEW_RELIC", &json!({"type": "NEW_RELIC", "licenseKey": "l", "accountId": "a", "writeToken": "w", "readToken": "r"})).await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("VICTOR_OPS"),
            r#"{"type":"VICTOR_OPS","apiKey":"victor8765"}"#,
        )
        .await;

    // Assert
    assert_eq!(reply.status.as_u16(), 200, "POST answers 200, not 201");
    assert_eq!(
        reply.json(),
        json!({
            "links": self_links(&app, &app.v1("VICTOR_OPS")),
            "results": [
                {"type": "NEW_RELIC", "licenseKey": "l", "accountId": "a", "writeToken": "w", "readToken": "r"},
                {"type": "VICTOR_OPS", "apiKey": "******8765"},
            ],
            "totalCount": 2,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// §4: masking
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn keys_are_masked_to_stars_and_their_last_four_characters() {
    // Arrange
    let app = spawn_app().await;

    // Act
    create(
        &app,
        Ver::V1,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "1234567890"}),
    )
    .await;
    create(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "12345"}),
    )
    .await;
    create(
        &app,
        Ver::V1,
        "VICTOR_OPS",
        &json!({"type": "VICTOR_OPS", "apiKey": "a-rather-long-victor-ops-key-XYZ9"}),
    )
    .await;

    // Assert
    assert_eq!(
        get_one(&app, Ver::V1, "OPS_GENIE").await["apiKey"],
        "******7890"
    );
    assert_eq!(
        get_one(&app, Ver::V1, "PAGER_DUTY").await["serviceKey"],
        "*2345"
    );
    assert_eq!(
        get_one(&app, Ver::V1, "VICTOR_OPS").await["apiKey"],
        format!("{}XYZ9", "*".repeat(29))
    );
}

#[tokio::test]
async fn keys_of_four_characters_or_fewer_are_all_stars_of_the_same_length() {
    // Arrange
    let app = spawn_app().await;

    // Act
    create(
        &app,
        Ver::V1,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "abcd"}),
    )
    .await;
    create(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "abc"}),
    )
    .await;
    create(
        &app,
        Ver::V1,
        "VICTOR_OPS",
        &json!({"type": "VICTOR_OPS", "apiKey": "a"}),
    )
    .await;
    create(
        &app,
        Ver::V1,
        "SLACK",
        &json!({"type": "SLACK", "apiToken": "xy", "teamName": "t"}),
    )
    .await;

    // Assert
    let list = get_list(&app, Ver::V1).await;
    assert_eq!(
        types(&list),
        vec!["OPS_GENIE", "PAGER_DUTY", "VICTOR_OPS", "SLACK"]
    );
    assert_eq!(list["results"][0]["apiKey"], "****");
    assert_eq!(list["results"][1]["serviceKey"], "***");
    assert_eq!(list["results"][2]["apiKey"], "*");
    assert_eq!(list["results"][3]["apiToken"], "**");
}

#[tokio::test]
async fn webhook_secret_is_six_stars_whatever_its_length() {
    // Arrange
    let app = spawn_app().await;

    for secret in ["s", "a-very-long-webhook-secret-of-many-characters"] {
        // Act
        replace(
            &app,
            Ver::V1,
            "WEBHOOK",
            &json!({"type": "WEBHOOK", "url": "https://h.example.com/p", "secret": secret}),
        )
        .await;

        // Assert
        assert_eq!(get_one(&app, Ver::V1, "WEBHOOK").await["secret"], "******");
    }
}

#[tokio::test]
async fn urls_keep_scheme_host_and_port_only() {
    // Arrange
    let app = spawn_app().await;

    // Act
    create(&app, Ver::V1, "WEBHOOK", &json!({"type": "WEBHOOK", "url": "https://user:pw@hooks.example.com:8443/services/T000/B000/XXXX?token=abc#frag"})).await;
    create(&app, Ver::V1, "MICROSOFT_TEAMS", &json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://outlook.office.com"})).await;

    // Assert
    assert_eq!(
        get_one(&app, Ver::V1, "WEBHOOK").await["url"],
        "https://hooks.example.com:8443/****"
    );
    assert_eq!(
        get_one(&app, Ver::V1, "MICROSOFT_TEAMS").await["microsoftTeamsWebhookUrl"],
        "https://outlook.office.com/****"
    );
}

/// One integration of each masked type: (type, secret field, clear value, masked value).
fn masked_cases() -> Vec<(&'static str, &'static str, Value, String)> {
    vec![
        (
            "PAGER_DUTY",
            "serviceKey",
            json!({"type": "PAGER_DUTY", "serviceKey": "pdsecret6789"}),
            format!("{}6789", "*".repeat(8)),
        ),
        (
            "SLACK",
            "apiToken",
            json!({"type": "SLACK", "apiToken": "slacksecret2345", "teamName": "t", "channelName": "c"}),
            format!("{}2345", "*".repeat(11)),
        ),
        (
            "DATADOG",
            "apiKey",
            json!({"type": "DATADOG", "apiKey": "abcdef0123456789"}),
            format!("{}6789", "*".repeat(12)),
        ),
        (
            "OPS_GENIE",
            "apiKey",
            json!({"type": "OPS_GENIE", "apiKey": "ogsecret4321"}),
            format!("{}4321", "*".repeat(8)),
        ),
        (
            "VICTOR_OPS",
            "apiKey",
            json!({"type": "VICTOR_OPS", "apiKey": "vosecret8765"}),
            format!("{}8765", "*".repeat(8)),
        ),
        (
            "WEBHOOK",
            "url",
            json!({"type": "WEBHOOK", "url": "https://hooks.example.com/hooksecretpath", "secret": "whsecretvalue"}),
            "https://hooks.example.com/****".to_owned(),
        ),
        ("WEBHOOK", "secret", json!(null), "******".to_owned()),
        (
            "MICROSOFT_TEAMS",
            "microsoftTeamsWebhookUrl",
            json!(null),
            "https://teams.example.com/****".to_owned(),
        ),
    ]
}

/// The clear secrets of [`masked_cases`] (and of the Teams URL), none of which may appear in
/// a response.
const CLEAR_SECRETS: [&str; 8] = [
    "pdsecret",
    "slacksecret",
    "abcdef012345",
    "ogsecret",
    "vosecret",
    "hooksecretpath",
    "whsecretvalue",
    "teamssecretpath",
];

/// Asserts every masked field of `objects` that is present.
fn assert_masked(objects: &[Value], what: &str) {
    let cases = masked_cases();
    let mut checked = 0;
    for object in objects {
        for (kind, field, _, masked) in &cases {
            if object["type"] == *kind {
                assert_eq!(object[*field], masked.as_str(), "{what}: {kind}.{field}");
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "{what}: nothing checked");
}

#[tokio::test]
async fn secrets_are_masked_in_get_one_get_list_and_the_post_and_put_lists() {
    // Arrange
    let app = spawn_app().await;
    for (kind, _, body, _) in masked_cases() {
        if !body.is_null() {
            create(&app, Ver::V1, kind, &body).await;
        }
    }
    let kinds = [
        "PAGER_DUTY",
        "SLACK",
        "DATADOG",
        "OPS_GENIE",
        "VICTOR_OPS",
        "WEBHOOK",
        "MICROSOFT_TEAMS",
    ];

    // Act
    let post = app
        .client
        .post(&app.v1("MICROSOFT_TEAMS"), r#"{"type":"MICROSOFT_TEAMS","microsoftTeamsWebhookUrl":"https://teams.example.com/teamssecretpath"}"#)
        .await;
    let put = app
        .client
        .put(
            &app.v2("OPS_GENIE"),
            r#"{"type":"OPS_GENIE","apiKey":"ogsecret4321"}"#,
        )
        .await;
    let list_v1 = app.client.get(&app.v1("")).await;
    let list_v2 = app.client.get(&app.v2("")).await;
    let mut ones = Vec::new();
    for kind in kinds {
        ones.push(app.client.get(&app.v1(kind)).await);
        ones.push(app.client.get(&app.v2(kind)).await);
    }

    // Assert
    for (reply, what) in [
        (&post, "POST list"),
        (&put, "PUT list"),
        (&list_v1, "GET list v1"),
        (&list_v2, "GET list v2"),
    ] {
        let body = ok(reply);
        assert_eq!(types(&body), kinds.to_vec(), "{what}");
        assert_masked(body["results"].as_array().expect("results"), what);
    }
    for reply in &ones {
        assert_masked(&[ok(reply)], "GET one");
    }
    for reply in [&post, &put, &list_v1, &list_v2].into_iter().chain(&ones) {
        for secret in CLEAR_SECRETS {
            assert!(
                !reply.text.contains(secret),
                "{secret} in clear: {}",
                reply.text
            );
        }
    }
}

#[tokio::test]
async fn datadog_get_then_put_back_keeps_the_stored_api_key() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": "EU"}),
    )
    .await;
    let fetched = get_one(&app, Ver::V1, "DATADOG").await;
    assert_eq!(
        fetched,
        json!({"type": "DATADOG", "apiKey": "******0123", "region": "EU"})
    );

    // Act
    let same = app
        .client
        .put(&app.v1("DATADOG"), &fetched.to_string())
        .await;
    let mut changed = fetched.clone();
    changed["region"] = json!("US3");
    let visible = app
        .client
        .put(&app.v1("DATADOG"), &changed.to_string())
        .await;

    // Assert
    assert_eq!(
        ok(&same)["results"],
        json!([fetched]),
        "the masked key is not validated as a new key"
    );
    assert_eq!(
        ok(&visible)["results"],
        json!([{"type": "DATADOG", "apiKey": "******0123", "region": "US3"}])
    );
    assert_eq!(
        stored_secret(&app, "DATADOG", "apiKey").await.as_deref(),
        Some("abcdef0123")
    );
}

#[tokio::test]
async fn datadog_put_with_another_mask_like_value_replaces_and_validates_it() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act: not the exact masked form (one star fewer), so a new key, and not hexadecimal.
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"*****0123","region":"EU"}"#,
        )
        .await;

    // Assert
    assert_settings(&reply, "DATADOG", "apiKey must be a hexadecimal string");
    assert_unchanged(&app, &before).await;
    assert_eq!(
        stored_secret(&app, "DATADOG", "apiKey").await.as_deref(),
        Some("abcdef0123")
    );
}

#[tokio::test]
async fn a_new_key_with_the_same_last_four_characters_replaces_the_stored_one() {
    // Arrange
    let (app, _) = app_with_datadog().await;

    // Act
    let list = replace(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "ffffff0123"}),
    )
    .await;

    // Assert
    assert_eq!(list["results"][0]["apiKey"], "******0123");
    assert_eq!(
        stored_secret(&app, "DATADOG", "apiKey").await.as_deref(),
        Some("ffffff0123")
    );
}

#[tokio::test]
async fn pager_duty_masked_round_trip_through_v2_keeps_the_key_and_the_id() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V2,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "0123456789", "region": "EU"}),
    )
    .await;
    let fetched = get_one(&app, Ver::V2, "PAGER_DUTY").await;

    // Act
    let list = replace(&app, Ver::V2, "PAGER_DUTY", &fetched).await;
    let mut changed = fetched.clone();
    changed["region"] = json!("US");
    let visible = replace(&app, Ver::V2, "PAGER_DUTY", &changed).await;

    // Assert
    assert_eq!(list["results"], json!([fetched]));
    assert_eq!(visible["results"][0]["serviceKey"], "******6789");
    assert_eq!(visible["results"][0]["region"], "US");
    assert_eq!(visible["results"][0]["id"], fetched["id"]);
    assert_eq!(
        stored_secret(&app, "PAGER_DUTY", "serviceKey")
            .await
            .as_deref(),
        Some("0123456789")
    );
}

#[tokio::test]
async fn pager_duty_put_with_a_different_masked_looking_value_stores_that_value() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
    )
    .await;

    // Act
    let list = replace(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "******9999"}),
    )
    .await;

    // Assert
    assert_eq!(list["results"][0]["serviceKey"], "******9999");
    assert_eq!(
        stored_secret(&app, "PAGER_DUTY", "serviceKey")
            .await
            .as_deref(),
        Some("******9999")
    );
}

#[tokio::test]
async fn webhook_masked_round_trip_keeps_url_and_secret() {
    // Arrange
    let app = spawn_app().await;
    let url = "https://hooks.example.com/services/T000/B000/XXXX";
    create(
        &app,
        Ver::V1,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": url, "secret": "hook-secret"}),
    )
    .await;
    let fetched = get_one(&app, Ver::V1, "WEBHOOK").await;
    assert_eq!(
        fetched,
        json!({"type": "WEBHOOK", "url": "https://hooks.example.com/****", "secret": "******"})
    );

    // Act
    let list = replace(&app, Ver::V1, "WEBHOOK", &fetched).await;

    // Assert
    assert_eq!(list["results"], json!([fetched]));
    assert_eq!(
        stored_secret(&app, "WEBHOOK", "url").await.as_deref(),
        Some(url)
    );
    assert_eq!(
        stored_secret(&app, "WEBHOOK", "secret").await.as_deref(),
        Some("hook-secret")
    );
}

#[tokio::test]
async fn webhook_put_with_a_new_url_on_the_same_host_replaces_it() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": "https://hooks.example.com/old", "secret": "s1"}),
    )
    .await;

    // Act
    let list = replace(
        &app,
        Ver::V1,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": "https://hooks.example.com/new", "secret": "s2"}),
    )
    .await;

    // Assert
    assert_eq!(
        list["results"],
        json!([{"type": "WEBHOOK", "url": "https://hooks.example.com/****", "secret": "******"}])
    );
    assert_eq!(
        stored_secret(&app, "WEBHOOK", "url").await.as_deref(),
        Some("https://hooks.example.com/new")
    );
    assert_eq!(
        stored_secret(&app, "WEBHOOK", "secret").await.as_deref(),
        Some("s2")
    );
}

#[tokio::test]
async fn microsoft_teams_masked_round_trip_through_v2_keeps_the_url() {
    // Arrange
    let app = spawn_app().await;
    let url = "https://contoso.webhook.office.com/webhookb2/abc/IncomingWebhook/123";
    create(
        &app,
        Ver::V2,
        "MICROSOFT_TEAMS",
        &json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": url}),
    )
    .await;
    let fetched = get_one(&app, Ver::V2, "MICROSOFT_TEAMS").await;

    // Act
    let list = replace(&app, Ver::V2, "MICROSOFT_TEAMS", &fetched).await;

    // Assert
    assert_eq!(list["results"], json!([fetched]));
    assert_eq!(
        stored_secret(&app, "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl")
            .await
            .as_deref(),
        Some(url)
    );
}

#[tokio::test]
async fn every_secret_survives_a_get_then_put_round_trip_in_both_versions() {
    // Arrange
    let app = spawn_app().await;
    let cases = [
        (
            "PAGER_DUTY",
            json!({"type": "PAGER_DUTY", "serviceKey": "pd-service-key"}),
            vec!["serviceKey"],
        ),
        (
            "SLACK",
            json!({"type": "SLACK", "apiToken": "xoxb-slack-token", "teamName": "t", "channelName": "c"}),
            vec!["apiToken"],
        ),
        (
            "DATADOG",
            json!({"type": "DATADOG", "apiKey": "0123456789abcdef"}),
            vec!["apiKey"],
        ),
        (
            "OPS_GENIE",
            json!({"type": "OPS_GENIE", "apiKey": "ops-genie-key"}),
            vec!["apiKey"],
        ),
        (
            "VICTOR_OPS",
            json!({"type": "VICTOR_OPS", "apiKey": "victor-ops-key", "routingKey": "rk"}),
            vec!["apiKey", "routingKey"],
        ),
        (
            "WEBHOOK",
            json!({"type": "WEBHOOK", "url": "https://h.example.com/a/b", "secret": "whs"}),
            vec!["url", "secret"],
        ),
        (
            "MICROSOFT_TEAMS",
            json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://t.example.com/x"}),
            vec!["microsoftTeamsWebhookUrl"],
        ),
        (
            "PROMETHEUS",
            json!({"type": "PROMETHEUS", "username": "u", "password": "prom-pw", "serviceDiscovery": "http", "enabled": true}),
            vec!["password"],
        ),
    ];
    for (kind, body, _) in &cases {
        create(&app, Ver::V1, kind, body).await;
    }

    for version in [Ver::V1, Ver::V2] {
        for (kind, body, secrets) in &cases {
            let fetched = get_one(&app, version, kind).await;

            // Act
            let reply = app
                .client
                .put(&version.path(&app, kind), &fetched.to_string())
                .await;

            // Assert
            assert_eq!(
                reply.status.as_u16(),
                200,
                "{kind} {version:?}: {}",
                reply.text
            );
            assert_eq!(
                get_one(&app, version, kind).await,
                fetched,
                "{kind} {version:?}"
            );
            for field in secrets {
                assert_eq!(
                    stored_secret(&app, kind, field).await.as_deref(),
                    body[*field].as_str(),
                    "{kind}.{field} after a {version:?} round trip"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// §2: v2 versioning, ids, FLOWDOCK, shared data
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn v2_without_an_accept_header_is_406_invalid_version_date() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let (status, head, body) = raw_http(&app, "GET", &app.v2(""), "").await;

    // Assert
    assert_eq!(status, 406, "body: {body}");
    assert!(
        head.contains("content-type: application/json\r\n"),
        "head: {head}"
    );
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        body,
        error_body(
            406,
            "INVALID_VERSION_DATE",
            &[],
            "Invalid accept header or version date."
        )
    );
}

#[tokio::test]
async fn v2_with_an_unversioned_accept_header_is_406() {
    // Arrange
    let app = spawn_app().await;

    for accept in ["application/json", "*/*"] {
        // Act
        let reply = app
            .client
            .send(Method::GET, &app.v2(""), None, &[("accept", accept)])
            .await;

        // Assert
        assert_version_date(&reply);
    }
}

#[tokio::test]
async fn v2_with_a_version_date_before_2023_01_01_is_406() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let get = app
        .client
        .send(
            Method::GET,
            &app.v2(""),
            None,
            &[("accept", "application/vnd.atlas.2022-12-31+json")],
        )
        .await;
    let post = app
        .client
        .send(
            Method::POST,
            &app.v2("WEBHOOK"),
            Some(r#"{"type":"WEBHOOK","url":"https://h.example.com/x"}"#),
            &[("accept", "application/vnd.atlas.2022-12-31+json")],
        )
        .await;

    // Assert
    assert_version_date(&get);
    assert_version_date(&post);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn v2_with_a_malformed_versioned_media_type_is_406() {
    // Arrange
    let app = spawn_app().await;

    for accept in [
        "application/vnd.atlas.2023-1-01+json",
        "application/vnd.atlas.2023-02-30+json",
        "application/vnd.atlas.20230101+json",
        "application/vnd.atlas.latest+json",
        "application/vnd.atlas.2023-01-01",
        "application/vnd.atlas.2023-01-01+xml",
    ] {
        // Act
        let reply = app
            .client
            .send(Method::GET, &app.v2(""), None, &[("accept", accept)])
            .await;

        // Assert
        assert_eq!(reply.status.as_u16(), 406, "{accept}: {}", reply.text);
        assert_version_date(&reply);
    }
}

#[tokio::test]
async fn v2_with_a_later_version_date_resolves_to_2023_01_01() {
    // Arrange
    let app = spawn_app().await;

    for accept in [
        "application/vnd.atlas.2023-01-01+json",
        "application/vnd.atlas.2024-08-05+json",
        "application/vnd.atlas.2025-02-19+json",
    ] {
        // Act
        let reply = app
            .client
            .send(Method::GET, &app.v2(""), None, &[("accept", accept)])
            .await;

        // Assert
        assert_eq!(reply.status.as_u16(), 200, "{accept}: {}", reply.text);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some(V2),
            "{accept}"
        );
    }
}

#[tokio::test]
async fn v2_success_responses_carry_the_versioned_content_type() {
    // Arrange
    let app = spawn_app().await;
    let body = r#"{"type":"OPS_GENIE","apiKey":"opsgen4321"}"#;

    // Act
    let replies = [
        app.client.post(&app.v2("OPS_GENIE"), body).await,
        app.client.put(&app.v2("OPS_GENIE"), body).await,
        app.client.get(&app.v2("OPS_GENIE")).await,
        app.client.get(&app.v2("")).await,
    ];

    // Assert
    for reply in &replies {
        assert_eq!(reply.status.as_u16(), 200, "body: {}", reply.text);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/vnd.atlas.2023-01-01+json")
        );
    }
}

#[tokio::test]
async fn v2_errors_are_application_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let not_configured = app.client.get(&app.v2("SLACK")).await;
    let bad_body = app.client.post(&app.v2("SLACK"), "{").await;
    let bad_type = app.client.get(&app.v2("FOO")).await;

    // Assert
    assert_not_configured(&not_configured, "SLACK");
    assert_malformed(&bad_body);
    assert_invalid_enum(&bad_type, "FOO");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn v1_responses_are_application_json() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let post = app
        .client
        .post(
            &app.v1("OPS_GENIE"),
            r#"{"type":"OPS_GENIE","apiKey":"opsgen4321"}"#,
        )
        .await;
    let get = app.client.get(&app.v1("OPS_GENIE")).await;

    // Assert
    for reply in [&post, &get] {
        assert_eq!(reply.status.as_u16(), 200, "body: {}", reply.text);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json")
        );
    }
}

#[tokio::test]
async fn v2_request_bodies_may_use_the_versioned_media_type() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app
        .client
        .send(
            Method::POST,
            &app.v2("OPS_GENIE"),
            Some(r#"{"type":"OPS_GENIE","apiKey":"opsgen4321"}"#),
            &[("content-type", V2)],
        )
        .await;

    // Assert
    assert_eq!(
        results_without_ids(Ver::V2, &ok(&reply)),
        vec![json!({"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"})]
    );
}

#[tokio::test]
async fn v2_objects_carry_an_object_id_that_put_keeps() {
    // Arrange
    let app = spawn_app().await;
    let created = create(
        &app,
        Ver::V2,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
    )
    .await;
    let id = created["results"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert_object_id(&id);

    // Act
    let put_v2 = replace(
        &app,
        Ver::V2,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "9876543210"}),
    )
    .await;
    replace(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "1111111111"}),
    )
    .await;

    // Assert
    assert_eq!(put_v2["results"][0]["id"], id.as_str());
    assert_eq!(
        get_one(&app, Ver::V2, "PAGER_DUTY").await["id"],
        id.as_str()
    );
    assert_eq!(
        get_list(&app, Ver::V2).await["results"][0]["id"],
        id.as_str()
    );
}

#[tokio::test]
async fn v2_objects_of_different_types_have_different_ids() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V2,
        "PAGER_DUTY",
        &json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
    )
    .await;

    // Act
    let list = replace(
        &app,
        Ver::V2,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;

    // Assert
    let a = list["results"][0]["id"].as_str().expect("id");
    let b = list["results"][1]["id"].as_str().expect("id");
    assert_object_id(a);
    assert_object_id(b);
    assert_ne!(a, b);
}

#[tokio::test]
async fn v2_id_is_new_after_delete_and_post() {
    // Arrange
    let app = spawn_app().await;
    let body = json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"});
    let first = create(&app, Ver::V2, "OPS_GENIE", &body).await["results"][0]["id"].clone();
    let reply = app.client.delete(&app.v2("OPS_GENIE")).await;
    assert_eq!(reply.status.as_u16(), 204);

    // Act
    let second = create(&app, Ver::V2, "OPS_GENIE", &body).await["results"][0]["id"].clone();

    // Assert
    assert_object_id(second.as_str().expect("id"));
    assert_ne!(first, second);
}

#[tokio::test]
async fn an_id_sent_in_a_body_is_accepted_and_ignored() {
    // Arrange
    let app = spawn_app().await;
    let sent = "5d791c84ff7a2522cc4f9aa1";

    // Act
    let v2 = create(
        &app,
        Ver::V2,
        "OPS_GENIE",
        &json!({"id": sent, "type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;
    let v1 = create(
        &app,
        Ver::V1,
        "PAGER_DUTY",
        &json!({"id": sent, "type": "PAGER_DUTY", "serviceKey": "0123456789"}),
    )
    .await;

    // Assert
    let id = v2["results"][0]["id"].as_str().expect("id");
    assert_object_id(id);
    assert_ne!(id, sent);
    assert_eq!(
        v1["results"],
        json!([
            {"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"},
            {"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "US"},
        ])
    );
}

#[tokio::test]
async fn v1_objects_have_no_id_anywhere() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let post = create(
        &app,
        Ver::V2,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;
    let v1_post = create(
        &app,
        Ver::V1,
        "VICTOR_OPS",
        &json!({"type": "VICTOR_OPS", "apiKey": "victor8765"}),
    )
    .await;
    let v1_put = replace(
        &app,
        Ver::V1,
        "VICTOR_OPS",
        &json!({"type": "VICTOR_OPS", "apiKey": "victor8765"}),
    )
    .await;
    let v1_list = get_list(&app, Ver::V1).await;
    let v1_one = get_one(&app, Ver::V1, "OPS_GENIE").await;

    // Assert
    assert_object_id(post["results"][0]["id"].as_str().expect("v2 id"));
    for list in [&v1_post, &v1_put, &v1_list] {
        results_without_ids(Ver::V1, list);
    }
    split_id(Ver::V1, &v1_one);
}

#[tokio::test]
async fn flowdock_is_an_unknown_type_in_v2_paths() {
    // Arrange
    let (app, before) = app_with_datadog().await;
    let body = r#"{"type":"FLOWDOCK","flowName":"f","apiToken":"t","orgName":"o"}"#;

    // Act
    let replies = [
        app.client.get(&app.v2("FLOWDOCK")).await,
        app.client.post(&app.v2("FLOWDOCK"), body).await,
        app.client.put(&app.v2("FLOWDOCK"), body).await,
        app.client.delete(&app.v2("FLOWDOCK")).await,
    ];

    // Assert
    for reply in &replies {
        assert_invalid_enum(reply, "FLOWDOCK");
    }
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn flowdock_created_in_v1_is_left_out_of_v2_lists_and_their_total_count() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "abcdef0123"}),
    )
    .await;
    create(
        &app,
        Ver::V1,
        "FLOWDOCK",
        &json!({"type": "FLOWDOCK", "flowName": "f", "apiToken": "t", "orgName": "o"}),
    )
    .await;

    // Act
    let post = create(
        &app,
        Ver::V2,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;
    let list = get_list(&app, Ver::V2).await;
    let page2 = ok(&app
        .client
        .get(&format!("{}?pageNum=2&itemsPerPage=1", app.v2("")))
        .await);
    let v1 = get_list(&app, Ver::V1).await;

    // Assert
    assert_eq!(types(&post), vec!["DATADOG", "OPS_GENIE"]);
    assert_eq!(post["totalCount"], 2);
    assert_eq!(types(&list), vec!["DATADOG", "OPS_GENIE"]);
    assert_eq!(list["totalCount"], 2);
    assert_eq!(types(&page2), vec!["OPS_GENIE"]);
    assert_eq!(page2["totalCount"], 2);
    assert_eq!(
        links(&page2).get("next"),
        None,
        "no page after the last v2 item"
    );
    assert_eq!(types(&v1), vec!["DATADOG", "FLOWDOCK", "OPS_GENIE"]);
    assert_eq!(v1["totalCount"], 3);
}

#[tokio::test]
async fn both_versions_see_the_same_data() {
    // Arrange
    let app = spawn_app().await;

    // Act
    create(
        &app,
        Ver::V2,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": "https://h.example.com/x", "secret": "s"}),
    )
    .await;
    create(&app, Ver::V1, "NEW_RELIC", &json!({"type": "NEW_RELIC", "licenseKey": "l", "accountId": "a", "writeToken": "w", "readToken": "r"})).await;
    replace(
        &app,
        Ver::V1,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": "https://other.example.com/x"}),
    )
    .await;
    let deleted = app.client.delete(&app.v2("NEW_RELIC")).await;
    create(
        &app,
        Ver::V2,
        "VICTOR_OPS",
        &json!({"type": "VICTOR_OPS", "apiKey": "victor8765"}),
    )
    .await;

    // Assert
    assert_eq!(deleted.status.as_u16(), 204);
    let expected = vec![
        json!({"type": "WEBHOOK", "url": "https://other.example.com/****"}),
        json!({"type": "VICTOR_OPS", "apiKey": "******8765"}),
    ];
    assert_eq!(
        results_without_ids(Ver::V1, &get_list(&app, Ver::V1).await),
        expected
    );
    assert_eq!(
        results_without_ids(Ver::V2, &get_list(&app, Ver::V2).await),
        expected
    );
    assert_not_configured(&app.client.get(&app.v1("NEW_RELIC")).await, "NEW_RELIC");
}

// ---------------------------------------------------------------------------------------------
// §3, §5: errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_path_is_404_resource_not_found_naming_the_path() {
    // Arrange
    let app = spawn_app().await;

    for path in [
        format!("/api/atlas/v1.0/groups/{}/clusters", app.group),
        format!("{}/extra", app.v1("DATADOG")),
        format!("/api/atlas/v3/groups/{}/integrations", app.group),
        "/nothing/here".to_owned(),
    ] {
        // Act
        let reply = app.client.get(&path).await;

        // Assert
        assert_atlas_error(
            &reply,
            404,
            "RESOURCE_NOT_FOUND",
            &[&path],
            &format!("Cannot find resource {path}."),
        );
    }
}

#[tokio::test]
async fn an_unknown_path_names_the_path_without_its_query() {
    // Arrange
    let app = spawn_app().await;
    let path = format!("/api/atlas/v1.0/groups/{}/alerts", app.group);

    // Act
    let reply = app
        .client
        .get(&format!("{path}?pretty=false&pageNum=2"))
        .await;

    // Assert
    assert_atlas_error(
        &reply,
        404,
        "RESOURCE_NOT_FOUND",
        &[&path],
        &format!("Cannot find resource {path}."),
    );
}

#[tokio::test]
async fn an_unknown_path_is_404_even_without_credentials() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = send_raw(
        app.client.raw(),
        &app.base,
        Method::GET,
        "/nothing/here",
        None,
        &[],
        None,
    )
    .await;

    // Assert
    assert_atlas_error(
        &reply,
        404,
        "RESOURCE_NOT_FOUND",
        &["/nothing/here"],
        "Cannot find resource /nothing/here.",
    );
}

#[tokio::test]
async fn patch_on_an_integration_is_405_with_an_allow_header() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .send(
            Method::PATCH,
            &app.v1("DATADOG"),
            Some(r#"{"type":"DATADOG","apiKey":"ff"}"#),
            &[],
        )
        .await;

    // Assert
    assert_atlas_error(
        &reply,
        405,
        "METHOD_NOT_ALLOWED",
        &["PATCH"],
        "Method PATCH is not allowed on this resource.",
    );
    let allow = reply.header("allow").expect("an Allow header");
    let mut methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    methods.sort_unstable();
    assert_eq!(methods, vec!["DELETE", "GET", "POST", "PUT"]);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn writes_on_the_list_path_are_405_allowing_only_get() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    for method in [Method::POST, Method::PUT, Method::DELETE] {
        // Act
        let reply = app
            .client
            .send(
                method.clone(),
                &app.v1(""),
                Some(r#"{"type":"DATADOG","apiKey":"ff"}"#),
                &[],
            )
            .await;

        // Assert
        let detail = format!("Method {method} is not allowed on this resource.");
        assert_atlas_error(
            &reply,
            405,
            "METHOD_NOT_ALLOWED",
            &[method.as_str()],
            &detail,
        );
        assert_eq!(reply.header("allow").as_deref(), Some("GET"));
    }
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_wrong_method_is_405_even_without_credentials() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = send_raw(
        app.client.raw(),
        &app.base,
        Method::PATCH,
        &app.v2("DATADOG"),
        None,
        &[],
        None,
    )
    .await;

    // Assert
    assert_atlas_error(
        &reply,
        405,
        "METHOD_NOT_ALLOWED",
        &["PATCH"],
        "Method PATCH is not allowed on this resource.",
    );
    assert!(reply.header("allow").is_some());
}

#[tokio::test]
async fn a_group_id_that_is_not_24_lowercase_hex_is_404_invalid_group_id() {
    // Arrange
    let app = spawn_app().await;

    for group in [
        "xyz",
        "5D791C84FF7A2522CC4F9AA1",
        "5d791c84ff7a2522cc4f9aa",
        "5d791c84ff7a2522cc4f9aa1f",
        "5d791c84ff7a2522cc4f9aag",
    ] {
        // Act
        let reply = app
            .client
            .get(&format!("/api/atlas/v1.0/groups/{group}/integrations"))
            .await;

        // Assert
        assert_atlas_error(
            &reply,
            404,
            "INVALID_GROUP_ID",
            &[group],
            &format!("An invalid group ID {group} was specified."),
        );
    }
}

#[tokio::test]
async fn a_well_formed_group_id_that_does_not_exist_is_401_not_in_group() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app
        .client
        .get("/api/atlas/v1.0/groups/000000000000000000000000/integrations")
        .await;

    // Assert
    assert_atlas_error(
        &reply,
        401,
        "NOT_IN_GROUP",
        &[],
        "The current user is not in the group, or the group does not exist.",
    );
}

#[tokio::test]
async fn an_unknown_type_in_the_path_is_400_invalid_enum_value() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let get = app.client.get(&app.v1("FOO")).await;
    let post = app.client.post(&app.v1("FOO"), r#"{"type":"FOO"}"#).await;
    let delete = app.client.delete(&app.v2("FOO")).await;

    // Assert
    assert_invalid_enum(&get, "FOO");
    assert_invalid_enum(&post, "FOO");
    assert_invalid_enum(&delete, "FOO");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_lowercase_type_in_the_path_is_an_unknown_type() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let get = app.client.get(&app.v1("datadog")).await;
    let put = app
        .client
        .put(&app.v1("datadog"), r#"{"type":"DATADOG","apiKey":"ff"}"#)
        .await;

    // Assert
    assert_invalid_enum(&get, "datadog");
    assert_invalid_enum(&put, "datadog");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn hip_chat_is_400_hipchat_not_supported() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let post = app
        .client
        .post(
            &app.v1("HIP_CHAT"),
            r#"{"type":"HIP_CHAT","notificationToken":"t","roomName":"r"}"#,
        )
        .await;
    let get = app.client.get(&app.v2("HIP_CHAT")).await;

    // Assert
    let detail = "HipChat integration is only supported for Ops Manager projects.";
    assert_atlas_error(&post, 400, "HIPCHAT_NOT_SUPPORTED", &[], detail);
    assert_atlas_error(&get, 400, "HIPCHAT_NOT_SUPPORTED", &[], detail);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn an_empty_body_is_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let post = app.client.post(&app.v1("OPS_GENIE"), "").await;
    let put = app.client.put(&app.v1("DATADOG"), "").await;

    // Assert
    assert_malformed(&post);
    assert_malformed(&put);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_put_without_any_body_is_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .send(Method::PUT, &app.v1("DATADOG"), None, &[])
        .await;

    // Assert
    assert_malformed(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_json_array_body_is_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(&app.v1("DATADOG"), r#"[{"type":"DATADOG","apiKey":"ff"}]"#)
        .await;

    // Assert
    assert_malformed(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_json_string_or_null_body_is_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    for body in [r#""x""#, "null", "42", "true"] {
        // Act
        let reply = app.client.put(&app.v1("DATADOG"), body).await;

        // Assert
        assert_malformed(&reply);
    }
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_truncated_json_body_is_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(&app.v1("DATADOG"), r#"{"type":"DATADOG","apiKey":"ff""#)
        .await;

    // Assert
    assert_malformed(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn trailing_data_after_the_json_object_is_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(&app.v1("DATADOG"), r#"{"type":"DATADOG","apiKey":"ff"} {}"#)
        .await;

    // Assert
    assert_malformed(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;
    let mut body = br#"{"type":"OPS_GENIE","apiKey":"ab"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#"cd"}"#);

    // Act
    let reply = send_bytes(&app, Method::POST, &app.v1("OPS_GENIE"), body).await;

    // Assert
    assert_malformed(&reply);
    assert_unchanged(&app, &before).await;
}

/// `{"a":{"a":...1...}}` with `depth` objects (the top-level object is level 1), inside a
/// valid Datadog body.
fn nested_body(depth: usize) -> String {
    let inner = format!("{}1{}", r#"{"a":"#.repeat(depth - 1), "}".repeat(depth - 1));
    format!(r#"{{"type":"DATADOG","apiKey":"abcdef","a":{inner}}}"#)
}

#[tokio::test]
async fn a_body_nested_65_levels_deep_is_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app.client.put(&app.v1("DATADOG"), &nested_body(65)).await;

    // Assert
    assert_malformed(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_body_nested_64_levels_deep_is_parsed() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app.client.put(&app.v1("DATADOG"), &nested_body(64)).await;

    // Assert: it got past the parser, to the unknown attribute `a`.
    assert_invalid_attribute(&reply, "a");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_body_over_65536_bytes_is_413_request_body_too_large() {
    // Arrange
    let (app, before) = app_with_datadog().await;
    let body = format!(r#"{{"type":"DATADOG","apiKey":"{}"}}"#, "a".repeat(70_000));

    // Act
    let reply = app.client.put(&app.v1("DATADOG"), &body).await;

    // Assert
    assert_too_large(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_body_of_exactly_65536_bytes_is_read() {
    // Arrange
    let (app, before) = app_with_datadog().await;
    let head = r#"{"type":"DATADOG","apiKey":""#;
    let tail = r#""}"#;
    let body = format!(
        "{head}{}{tail}",
        "a".repeat(65_536 - head.len() - tail.len())
    );
    assert_eq!(body.len(), 65_536);

    // Act
    let at_limit = app.client.put(&app.v1("DATADOG"), &body).await;
    let over = app
        .client
        .put(&app.v1("DATADOG"), &format!("{body} "))
        .await;

    // Assert
    assert_settings(&at_limit, "DATADOG", "apiKey must be at most 4096 bytes");
    assert_too_large(&over);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_type_in_the_body_that_differs_from_the_path_is_invalid_attribute_type() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    for kind in ["SLACK", "datadog", "FOO"] {
        // Act
        let body = json!({"type": kind, "apiKey": "abcdef"});
        let reply = app.client.put(&app.v1("DATADOG"), &body.to_string()).await;

        // Assert
        assert_invalid_attribute(&reply, "type");
    }
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_body_without_type_takes_the_path_type() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let v1 = create(&app, Ver::V1, "OPS_GENIE", &json!({"apiKey": "opsgen4321"})).await;
    let v2 = create(
        &app,
        Ver::V2,
        "VICTOR_OPS",
        &json!({"apiKey": "victor8765"}),
    )
    .await;

    // Assert
    assert_eq!(
        v1["results"],
        json!([{"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"}])
    );
    assert_eq!(
        results_without_ids(Ver::V2, &v2),
        vec![
            json!({"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"}),
            json!({"type": "VICTOR_OPS", "apiKey": "******8765"}),
        ]
    );
}

#[tokio::test]
async fn an_unknown_field_is_invalid_attribute_naming_it() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"abcdef","colour":"red"}"#,
        )
        .await;

    // Assert
    assert_invalid_attribute(&reply, "colour");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_field_of_another_type_is_invalid_attribute() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"abcdef","serviceKey":"x"}"#,
        )
        .await;

    // Assert
    assert_invalid_attribute(&reply, "serviceKey");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn scheme_is_an_unknown_field_outside_prometheus() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"abcdef","scheme":"https"}"#,
        )
        .await;

    // Assert
    assert_invalid_attribute(&reply, "scheme");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn datadog_switches_sent_false_in_v1_are_accepted_and_not_shown() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "abcdef0123", "sendQueryStatsMetrics": false}),
    )
    .await;

    // Assert
    assert_eq!(
        list["results"],
        json!([{"type": "DATADOG", "apiKey": "******0123", "region": "US"}])
    );
}

#[tokio::test]
async fn a_number_where_a_string_is_expected_is_invalid_json_attribute() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":1234567890}"#,
        )
        .await;

    // Assert
    assert_invalid_json_attribute(&reply, "apiKey");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_non_string_enum_value_is_invalid_json_attribute() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"abcdef","region":["US"]}"#,
        )
        .await;

    // Assert
    assert_invalid_json_attribute(&reply, "region");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_missing_required_field_is_missing_attribute() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(&app.v1("DATADOG"), r#"{"type":"DATADOG","region":"US"}"#)
        .await;

    // Assert
    assert_atlas_error(
        &reply,
        400,
        "MISSING_ATTRIBUTE",
        &["apiKey"],
        "The required attribute apiKey was not specified.",
    );
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_null_required_field_counts_as_missing() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(&app.v1("DATADOG"), r#"{"type":"DATADOG","apiKey":null}"#)
        .await;

    // Assert
    assert_missing(&reply, "apiKey");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_null_optional_field_counts_as_absent() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": "https://h.example.com/x", "secret": null}),
    )
    .await;

    // Assert
    assert_eq!(
        list["results"],
        json!([{"type": "WEBHOOK", "url": "https://h.example.com/****"}])
    );
}

#[tokio::test]
async fn a_null_type_counts_as_absent() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "OPS_GENIE",
        &json!({"type": null, "apiKey": "opsgen4321"}),
    )
    .await;

    // Assert
    assert_eq!(
        list["results"],
        json!([{"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"}])
    );
}

#[tokio::test]
async fn an_empty_required_string_breaks_the_type_rule() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let datadog = app
        .client
        .put(&app.v1("DATADOG"), r#"{"type":"DATADOG","apiKey":""}"#)
        .await;
    let ops_genie = app
        .client
        .post(&app.v2("OPS_GENIE"), r#"{"type":"OPS_GENIE","apiKey":""}"#)
        .await;

    // Assert
    assert_settings(&datadog, "DATADOG", "apiKey must not be empty");
    assert_settings(&ops_genie, "OPS_GENIE", "apiKey must not be empty");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_string_of_4096_bytes_is_accepted() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let list = create(
        &app,
        Ver::V1,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "k".repeat(4096)}),
    )
    .await;

    // Assert
    assert_eq!(
        list["results"][0]["apiKey"],
        format!("{}kkkk", "*".repeat(4092))
    );
}

#[tokio::test]
async fn a_string_over_4096_bytes_breaks_the_type_rule() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let datadog = app
        .client
        .put(
            &app.v1("DATADOG"),
            &json!({"type": "DATADOG", "apiKey": "a".repeat(4097)}).to_string(),
        )
        .await;
    // 2049 two-byte characters: 4098 bytes, under 4096 characters.
    let ops_genie = app
        .client
        .post(
            &app.v1("OPS_GENIE"),
            &json!({"type": "OPS_GENIE", "apiKey": "é".repeat(2049)}).to_string(),
        )
        .await;

    // Assert
    assert_settings(&datadog, "DATADOG", "apiKey must be at most 4096 bytes");
    assert_settings(&ops_genie, "OPS_GENIE", "apiKey must be at most 4096 bytes");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_refused_put_leaves_the_stored_secret_as_it_was() {
    // Arrange
    let (app, _) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"fedcba9876","region":"XX"}"#,
        )
        .await;

    // Assert
    assert_invalid_enum(&reply, "XX");
    assert_eq!(
        stored_secret(&app, "DATADOG", "apiKey").await.as_deref(),
        Some("abcdef0123")
    );
    assert_eq!(
        stored_config(&app, "DATADOG").await.str("region"),
        Some("EU")
    );
}

// --- precedence (§3: the first applicable error in the contract's order wins) ---

#[tokio::test]
async fn an_unknown_field_wins_over_a_missing_field() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(&app.v1("DATADOG"), r#"{"type":"DATADOG","colour":"red"}"#)
        .await;

    // Assert
    assert_invalid_attribute(&reply, "colour");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_type_mismatch_wins_over_an_unknown_field() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(&app.v1("DATADOG"), r#"{"colour":"red","type":"SLACK"}"#)
        .await;

    // Assert
    assert_invalid_attribute(&reply, "type");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_wrong_json_type_wins_over_a_missing_field() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("PROMETHEUS"),
            r#"{"type":"PROMETHEUS","enabled":"yes"}"#,
        )
        .await;

    // Assert
    assert_invalid_json_attribute(&reply, "enabled");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_missing_field_wins_over_a_bad_enum_value() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("PAGER_DUTY"),
            r#"{"type":"PAGER_DUTY","region":"XX"}"#,
        )
        .await;

    // Assert
    assert_missing(&reply, "serviceKey");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_bad_enum_value_wins_over_a_broken_type_rule() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"not-hex","region":"XX"}"#,
        )
        .await;

    // Assert
    assert_invalid_enum(&reply, "XX");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_broken_type_rule_wins_over_the_409_of_an_existing_type() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"not-hex"}"#,
        )
        .await;

    // Assert
    assert_settings(&reply, "DATADOG", "apiKey must be a hexadecimal string");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn among_fields_the_first_in_the_contracts_table_order_wins() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act: JSON order is the reverse of the table's.
    let wrong_types = app
        .client
        .post(&app.v1("PROMETHEUS"), r#"{"enabled":"yes","username":5}"#)
        .await;
    let missing = app
        .client
        .post(&app.v1("PROMETHEUS"), r#"{"enabled":true}"#)
        .await;
    let enums = app
        .client
        .post(
            &app.v1("PROMETHEUS"),
            r#"{"serviceDiscovery":"dns","username":"u","password":"p","enabled":true}"#,
        )
        .await;
    let new_relic = app
        .client
        .post(
            &app.v1("NEW_RELIC"),
            r#"{"readToken":"r","writeToken":"w"}"#,
        )
        .await;

    // Assert
    assert_invalid_json_attribute(&wrong_types, "username");
    assert_missing(&missing, "username");
    assert_invalid_enum(&enums, "dns");
    assert_missing(&new_relic, "licenseKey");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_bad_group_id_wins_over_an_unknown_type() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app
        .client
        .get("/api/atlas/v1.0/groups/xyz/integrations/FOO")
        .await;

    // Assert
    assert_atlas_error(
        &reply,
        404,
        "INVALID_GROUP_ID",
        &["xyz"],
        "An invalid group ID xyz was specified.",
    );
}

#[tokio::test]
async fn a_bad_v2_version_wins_over_a_bad_group_id() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app
        .client
        .send(
            Method::GET,
            "/api/atlas/v2/groups/xyz/integrations",
            None,
            &[("accept", "application/json")],
        )
        .await;

    // Assert
    assert_version_date(&reply);
}

#[tokio::test]
async fn project_access_wins_over_an_unknown_type() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app
        .client
        .get("/api/atlas/v1.0/groups/000000000000000000000000/integrations/FOO")
        .await;

    // Assert
    assert_eq!(reply.status.as_u16(), 401, "body: {}", reply.text);
    reply.assert_error(401, "NOT_IN_GROUP", &[]);
}

#[tokio::test]
async fn an_unknown_type_wins_over_a_bad_query_and_a_bad_body() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(&format!("{}?itemsPerPage=0", app.v1("FOO")), "{")
        .await;

    // Assert
    assert_invalid_enum(&reply, "FOO");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_bad_query_parameter_wins_over_a_bad_body() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let malformed = app
        .client
        .put(&format!("{}?itemsPerPage=0", app.v1("DATADOG")), "{")
        .await;
    let unknown_field = app
        .client
        .post(
            &format!("{}?pageNum=0", app.v1("OPS_GENIE")),
            r#"{"colour":"red"}"#,
        )
        .await;

    // Assert
    assert_invalid_query(&malformed, "itemsPerPage");
    assert_invalid_query(&unknown_field, "pageNum");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn a_bad_query_parameter_wins_over_an_oversized_body() {
    // Arrange
    let (app, before) = app_with_datadog().await;
    let body = format!(r#"{{"type":"DATADOG","apiKey":"{}"}}"#, "a".repeat(70_000));

    // Act
    let reply = app
        .client
        .put(&format!("{}?pretty=1", app.v1("DATADOG")), &body)
        .await;

    // Assert
    assert_invalid_query(&reply, "pretty");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn an_oversized_body_wins_over_malformed_json() {
    // Arrange
    let (app, before) = app_with_datadog().await;
    let body = "{".repeat(70_000);

    // Act
    let reply = app.client.put(&app.v1("DATADOG"), &body).await;

    // Assert
    assert_too_large(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn malformed_json_wins_over_a_type_mismatch() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .put(&app.v1("DATADOG"), r#"{"type":"SLACK","apiKey":}"#)
        .await;

    // Assert
    assert_malformed(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn the_409_comes_only_after_every_body_check() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let missing = app
        .client
        .post(&app.v1("DATADOG"), r#"{"type":"DATADOG"}"#)
        .await;
    let unknown = app
        .client
        .post(
            &app.v1("DATADOG"),
            r#"{"type":"DATADOG","apiKey":"ff","x":1}"#,
        )
        .await;

    // Assert
    assert_missing(&missing, "apiKey");
    assert_invalid_attribute(&unknown, "x");
    assert_unchanged(&app, &before).await;
}

// ---------------------------------------------------------------------------------------------
// §6: query parameters
// ---------------------------------------------------------------------------------------------

/// Five integrations, created in this order.
const FIVE: [&str; 5] = ["WEBHOOK", "DATADOG", "SLACK", "OPS_GENIE", "PAGER_DUTY"];

async fn create_five(app: &TestApp) {
    let bodies = [
        json!({"type": "WEBHOOK", "url": "https://h.example.com/x"}),
        json!({"type": "DATADOG", "apiKey": "abcdef0123"}),
        json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "t"}),
        json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
        json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
    ];
    for (kind, body) in FIVE.iter().zip(&bodies) {
        create(app, Ver::V1, kind, body).await;
    }
}

#[tokio::test]
async fn pages_of_two_over_five_integrations_have_exact_links() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;
    let list = app.v1("");
    let page = |n: u64| href(&app, &list, n, 2);

    // Act
    let mut pages = Vec::new();
    for n in 1..=3 {
        pages.push(ok(&app
            .client
            .get(&format!("{list}?pageNum={n}&itemsPerPage=2"))
            .await));
    }

    // Assert
    assert_eq!(types(&pages[0]), vec!["WEBHOOK", "DATADOG"]);
    assert_eq!(
        links(&pages[0]),
        link_map(&[("self", page(1)), ("next", page(2))])
    );
    assert_eq!(types(&pages[1]), vec!["SLACK", "OPS_GENIE"]);
    assert_eq!(
        links(&pages[1]),
        link_map(&[("self", page(2)), ("previous", page(1)), ("next", page(3))])
    );
    assert_eq!(types(&pages[2]), vec!["PAGER_DUTY"]);
    assert_eq!(
        links(&pages[2]),
        link_map(&[("self", page(3)), ("previous", page(2))])
    );
    for body in &pages {
        assert_eq!(body["totalCount"], 5);
    }
    assert_eq!(
        page(2),
        format!(
            "http://127.0.0.1:{}/api/atlas/v1.0/groups/{}/integrations?pageNum=2&itemsPerPage=2",
            app.addr.port(),
            app.group
        )
    );
}

#[tokio::test]
async fn a_page_past_the_last_is_200_with_no_results() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;
    let list = app.v1("");

    // Act
    let body = ok(&app
        .client
        .get(&format!("{list}?pageNum=4&itemsPerPage=2"))
        .await);
    let far = ok(&app.client.get(&format!("{list}?pageNum=1000")).await);

    // Assert
    assert_eq!(body["results"], json!([]));
    assert_eq!(body["totalCount"], 5);
    assert_eq!(
        links(&body),
        link_map(&[
            ("self", href(&app, &list, 4, 2)),
            ("previous", href(&app, &list, 3, 2))
        ])
    );
    assert_eq!(far["results"], json!([]));
    assert_eq!(far["totalCount"], 5);
}

#[tokio::test]
async fn an_exact_last_page_has_no_next_link() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;

    // Act
    let body = ok(&app
        .client
        .get(&format!("{}?itemsPerPage=5", app.v1("")))
        .await);

    // Assert
    assert_eq!(types(&body), FIVE.to_vec());
    assert_eq!(
        links(&body),
        link_map(&[("self", href(&app, &app.v1(""), 1, 5))])
    );
}

#[tokio::test]
async fn an_empty_project_lists_no_results_with_a_self_link_and_a_zero_count() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let v1 = get_list(&app, Ver::V1).await;
    let v2 = get_list(&app, Ver::V2).await;

    // Assert
    assert_eq!(
        v1,
        json!({"links": self_links(&app, &app.v1("")), "results": [], "totalCount": 0})
    );
    assert_eq!(
        v2,
        json!({"links": self_links(&app, &app.v2("")), "results": [], "totalCount": 0})
    );
}

#[tokio::test]
async fn paging_applies_to_the_post_and_put_lists() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;
    let one = app.v1("VICTOR_OPS");

    // Act
    let post = ok(&app
        .client
        .post(
            &format!("{one}?pageNum=3&itemsPerPage=2"),
            r#"{"type":"VICTOR_OPS","apiKey":"victor8765"}"#,
        )
        .await);
    let put = ok(&app
        .client
        .put(
            &format!("{one}?itemsPerPage=4&includeCount=false"),
            r#"{"type":"VICTOR_OPS","apiKey":"victor8765"}"#,
        )
        .await);

    // Assert
    assert_eq!(types(&post), vec!["PAGER_DUTY", "VICTOR_OPS"]);
    assert_eq!(post["totalCount"], 6);
    assert_eq!(
        links(&post),
        link_map(&[
            ("self", href(&app, &one, 3, 2)),
            ("previous", href(&app, &one, 2, 2))
        ])
    );
    assert_eq!(
        types(&put),
        vec!["WEBHOOK", "DATADOG", "SLACK", "OPS_GENIE"]
    );
    assert_eq!(put.get("totalCount"), None);
    assert_eq!(
        links(&put),
        link_map(&[
            ("self", href(&app, &one, 1, 4)),
            ("next", href(&app, &one, 2, 4))
        ])
    );
}

#[tokio::test]
async fn include_count_false_omits_total_count() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;

    // Act
    let without = ok(&app
        .client
        .get(&format!("{}?includeCount=false", app.v1("")))
        .await);
    let with = ok(&app
        .client
        .get(&format!("{}?includeCount=true", app.v2("")))
        .await);

    // Assert
    assert_eq!(without.get("totalCount"), None, "{without}");
    assert_eq!(types(&without), FIVE.to_vec());
    assert_eq!(with["totalCount"], 5);
}

#[tokio::test]
async fn pretty_true_indents_the_json() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;

    // Act
    let plain = app.client.get(&app.v1("")).await;
    let pretty = app.client.get(&format!("{}?pretty=true", app.v1(""))).await;
    let pretty_one = app
        .client
        .get(&format!("{}?pretty=true", app.v1("DATADOG")))
        .await;
    let pretty_error = app
        .client
        .get(&format!("{}?pretty=true", app.v1("FOO")))
        .await;

    // Assert
    assert!(
        !plain.text.contains('\n'),
        "not indented by default: {}",
        plain.text
    );
    assert!(
        pretty.text.contains("\n  \"links\""),
        "indented: {}",
        pretty.text
    );
    assert_eq!(pretty.json(), plain.json(), "the same JSON");
    assert!(
        pretty_one.text.contains("\n  \"apiKey\""),
        "indented: {}",
        pretty_one.text
    );
    assert!(
        pretty_error.text.contains("\n  \"errorCode\""),
        "indented: {}",
        pretty_error.text
    );
    assert_invalid_enum(&pretty_error, "FOO");
}

#[tokio::test]
async fn envelope_true_adds_the_status_to_a_list() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;

    // Act
    let reply = app
        .client
        .get(&format!("{}?envelope=true", app.v1("")))
        .await;

    // Assert
    assert_eq!(
        ok(&reply),
        json!({
            "links": self_links(&app, &app.v1("")),
            "results": [{"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"}],
            "totalCount": 1,
            "status": 200,
        })
    );
}

#[tokio::test]
async fn envelope_true_wraps_one_integration() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;

    // Act
    let reply = app
        .client
        .get(&format!("{}?envelope=true", app.v1("OPS_GENIE")))
        .await;

    // Assert
    assert_eq!(
        ok(&reply),
        json!({"status": 200, "content": {"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"}})
    );
}

#[tokio::test]
async fn envelope_true_wraps_an_error_and_keeps_the_http_status() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let reply = app
        .client
        .post(
            &format!("{}?envelope=true", app.v1("DATADOG")),
            r#"{"type":"DATADOG","apiKey":"abcdef"}"#,
        )
        .await;

    // Assert
    assert_eq!(reply.status.as_u16(), 409, "body: {}", reply.text);
    assert_eq!(
        reply.json(),
        json!({"status": 409, "content": error_body(409, "INTEGRATION_ALREADY_CONFIGURED", &["DATADOG"], "The integration of type 'DATADOG' is already configured for this group.")})
    );
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn envelope_true_wraps_a_query_parameter_error() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app
        .client
        .get(&format!("{}?envelope=true&itemsPerPage=0", app.v1("")))
        .await;

    // Assert
    assert_eq!(reply.status.as_u16(), 400, "body: {}", reply.text);
    assert_eq!(
        reply.json(),
        json!({"status": 400, "content": error_body(400, "INVALID_QUERY_PARAMETER", &["itemsPerPage"], "Invalid query parameter itemsPerPage specified.")})
    );
}

#[tokio::test]
async fn envelope_true_on_delete_answers_200_with_status_204() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;

    // Act
    let reply = app
        .client
        .delete(&format!("{}?envelope=true", app.v1("OPS_GENIE")))
        .await;

    // Assert
    assert_eq!(ok(&reply), json!({"status": 204, "content": {}}));
    assert_not_configured(&app.client.get(&app.v1("OPS_GENIE")).await, "OPS_GENIE");
}

#[tokio::test]
async fn envelope_false_leaves_bodies_unwrapped() {
    // Arrange
    let app = spawn_app().await;
    create(
        &app,
        Ver::V1,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;

    // Act
    let one = ok(&app
        .client
        .get(&format!("{}?envelope=false", app.v1("OPS_GENIE")))
        .await);
    let delete = app
        .client
        .delete(&format!("{}?envelope=false", app.v1("OPS_GENIE")))
        .await;

    // Assert
    assert_eq!(
        one,
        json!({"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"})
    );
    assert_eq!(delete.status.as_u16(), 204);
    assert_eq!(delete.text, "");
}

#[tokio::test]
async fn invalid_query_parameter_values_are_400_naming_the_parameter() {
    // Arrange
    let app = spawn_app().await;
    let cases = [
        ("itemsPerPage=0", "itemsPerPage"),
        ("itemsPerPage=501", "itemsPerPage"),
        ("itemsPerPage=-1", "itemsPerPage"),
        ("itemsPerPage=abc", "itemsPerPage"),
        ("itemsPerPage=", "itemsPerPage"),
        ("itemsPerPage=1.5", "itemsPerPage"),
        ("pageNum=0", "pageNum"),
        ("pageNum=-3", "pageNum"),
        ("pageNum=99999999999999999999", "pageNum"),
        ("includeCount=TRUE", "includeCount"),
        ("includeCount=1", "includeCount"),
        ("pretty=1", "pretty"),
        ("pretty=True", "pretty"),
        ("envelope=yes", "envelope"),
    ];

    for (query, name) in cases {
        // Act
        let reply = app.client.get(&format!("{}?{query}", app.v1(""))).await;

        // Assert
        assert_eq!(reply.status.as_u16(), 400, "{query}: {}", reply.text);
        assert_invalid_query(&reply, name);
    }
}

#[tokio::test]
async fn query_parameters_are_checked_on_every_operation() {
    // Arrange
    let (app, before) = app_with_datadog().await;

    // Act
    let get = app
        .client
        .get(&format!("{}?pretty=1", app.v1("DATADOG")))
        .await;
    let delete = app
        .client
        .delete(&format!("{}?itemsPerPage=501", app.v2("DATADOG")))
        .await;

    // Assert
    assert_invalid_query(&get, "pretty");
    assert_invalid_query(&delete, "itemsPerPage");
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn the_largest_page_size_is_500() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;

    // Act
    let body = ok(&app
        .client
        .get(&format!("{}?itemsPerPage=500", app.v1("")))
        .await);

    // Assert
    assert_eq!(types(&body), FIVE.to_vec());
    assert_eq!(
        links(&body),
        link_map(&[("self", href(&app, &app.v1(""), 1, 500))])
    );
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored_and_left_out_of_links() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;

    // Act
    let body = ok(&app
        .client
        .get(&format!(
            "{}?foo=bar&itemsPerPage=3&pretty=false&includeCount=true",
            app.v1("")
        ))
        .await);

    // Assert
    assert_eq!(types(&body), vec!["WEBHOOK", "DATADOG", "SLACK"]);
    let list = app.v1("");
    assert_eq!(
        links(&body),
        link_map(&[
            ("self", href(&app, &list, 1, 3)),
            ("next", href(&app, &list, 2, 3))
        ])
    );
}

#[tokio::test]
async fn links_use_the_requests_host_header() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app
        .client
        .send(
            Method::GET,
            &app.v1(""),
            None,
            &[("host", "atlas.internal:9443")],
        )
        .await;

    // Assert
    assert_eq!(
        ok(&reply)["links"],
        json!([{"href": format!("http://atlas.internal:9443{}?pageNum=1&itemsPerPage=100", app.v1("")), "rel": "self"}])
    );
}

#[tokio::test]
async fn links_use_the_configured_public_url() {
    // Arrange
    let app = spawn_app_with(Options {
        public_url: Some("https://atlas.example.com".into()),
        ..Options::default()
    })
    .await;

    // Act
    let list = get_list(&app, Ver::V1).await;
    let post = create(
        &app,
        Ver::V2,
        "OPS_GENIE",
        &json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
    )
    .await;

    // Assert
    assert_eq!(
        list["links"],
        json!([{"href": format!("https://atlas.example.com{}?pageNum=1&itemsPerPage=100", app.v1("")), "rel": "self"}])
    );
    assert_eq!(
        post["links"],
        json!([{"href": format!("https://atlas.example.com{}?pageNum=1&itemsPerPage=100", app.v2("OPS_GENIE")), "rel": "self"}])
    );
}

#[tokio::test]
async fn the_post_self_link_is_the_type_path() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let body = create(&app, Ver::V1, "FLOWDOCK", &json!({"type": "FLOWDOCK", "flowName": "myFlowName", "apiToken": "1234567890", "orgName": "myOrg"})).await;

    // Assert
    assert_eq!(
        body["links"],
        json!([{
            "href": format!("http://127.0.0.1:{}/api/atlas/v1.0/groups/{}/integrations/FLOWDOCK?pageNum=1&itemsPerPage=100", app.addr.port(), app.group),
            "rel": "self",
        }])
    );
}

// ---------------------------------------------------------------------------------------------
// §2: list order
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lists_are_in_creation_order() {
    // Arrange
    let app = spawn_app().await;

    // Act
    create_five(&app).await;

    // Assert
    assert_eq!(types(&get_list(&app, Ver::V1).await), FIVE.to_vec());
    assert_eq!(types(&get_list(&app, Ver::V2).await), FIVE.to_vec());
}

#[tokio::test]
async fn a_put_that_replaces_keeps_the_position() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;

    // Act
    let put = replace(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "fedcba9876", "region": "EU"}),
    )
    .await;
    replace(
        &app,
        Ver::V2,
        "WEBHOOK",
        &json!({"type": "WEBHOOK", "url": "https://new.example.com/y"}),
    )
    .await;

    // Assert
    assert_eq!(types(&put), FIVE.to_vec());
    assert_eq!(types(&get_list(&app, Ver::V1).await), FIVE.to_vec());
}

#[tokio::test]
async fn a_put_that_creates_goes_to_the_end() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;

    // Act
    let put = replace(
        &app,
        Ver::V1,
        "VICTOR_OPS",
        &json!({"type": "VICTOR_OPS", "apiKey": "victor8765"}),
    )
    .await;

    // Assert
    let mut expected = FIVE.to_vec();
    expected.push("VICTOR_OPS");
    assert_eq!(types(&put), expected);
}

#[tokio::test]
async fn delete_then_post_moves_the_type_to_the_end() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;
    assert_eq!(
        app.client.delete(&app.v1("DATADOG")).await.status.as_u16(),
        204
    );

    // Act
    let post = create(
        &app,
        Ver::V1,
        "DATADOG",
        &json!({"type": "DATADOG", "apiKey": "abcdef0123"}),
    )
    .await;

    // Assert
    let expected = vec!["WEBHOOK", "SLACK", "OPS_GENIE", "PAGER_DUTY", "DATADOG"];
    assert_eq!(types(&post), expected);
    assert_eq!(types(&get_list(&app, Ver::V2).await), expected);
}

#[tokio::test]
async fn the_order_is_stable_across_pages() {
    // Arrange
    let app = spawn_app().await;
    create_five(&app).await;
    replace(
        &app,
        Ver::V1,
        "SLACK",
        &json!({"type": "SLACK", "apiToken": "xoxb-67890", "teamName": "t2"}),
    )
    .await;

    // Act
    let mut seen = Vec::new();
    for n in 1..=5 {
        seen.extend(types(&ok(&app
            .client
            .get(&format!("{}?pageNum={n}&itemsPerPage=1", app.v1("")))
            .await)));
    }

    // Assert
    assert_eq!(seen, FIVE.to_vec());
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_posts_of_one_type_create_it_exactly_once() {
    // Arrange
    let app = spawn_app().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let path = app.v1("DATADOG");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client: DigestClient = app.client_for(&app.public_key, &app.private_key);
        let barrier = Arc::clone(&barrier);
        let path = path.clone();
        let list = app.v1("");
        tasks.push(tokio::spawn(async move {
            // Prime the Digest nonce, so that the POSTs themselves race.
            assert_eq!(client.get(&list).await.status.as_u16(), 200);
            barrier.wait().await;
            let body = json!({"type": "DATADOG", "apiKey": format!("abcdef{i:04}")});
            client.post(&path, &body.to_string()).await
        }));
    }

    // Act
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }

    // Assert
    let created: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status.as_u16() == 200)
        .collect();
    let conflicts: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status.as_u16() == 409)
        .collect();
    assert_eq!(
        created.len(),
        1,
        "exactly one POST creates: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        conflicts.len(),
        19,
        "the others are 409: {:?}",
        replies.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for reply in conflicts {
        assert_already_configured(reply, "DATADOG");
    }
    let list = get_list(&app, Ver::V1).await;
    assert_eq!(types(&list), vec!["DATADOG"]);
    assert_eq!(list["totalCount"], 1);
    assert_eq!(
        created[0].json()["results"],
        list["results"],
        "the winner's answer is what is stored"
    );
}
