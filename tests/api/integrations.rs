//! The integrations API against the contract (`shared/spec/integrations-api.md`): the five
//! operations for every type in v1.0 and v2 (§2, §3), masking (§4), errors and their
//! precedence (§3, §5), the common query parameters (§6), list order and concurrent creation.
//!
//! Every test starts its own server on a fresh database. Expected bodies are written out in
//! full and compared as JSON values (key order does not matter, everything else does). Where
//! many requests check one rule, they are the rows of a table run by one test, on its server:
//! refused requests must leave the project as it was (checked after each row), and rows that
//! need an empty project leave it empty again. A failing row prints its name (`failing case:
//! ...`) after the assertion message.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;

use atlas_integrations::domain::ids::ObjectId;
use atlas_integrations::domain::integration::{Config, IntegrationType};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    fresh_authorization, ok, path, read_reply, send_raw, spawn_app, spawn_app_with, Case,
    DigestClient, Options, Reply, TestApp, V2,
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
    /// The integrations path of this version in `group`: `suffix` names a type (empty for the
    /// list) and may end in `?query`.
    fn path_in(self, group: &str, suffix: &str) -> String {
        let version = match self {
            Self::V1 => "v1.0",
            Self::V2 => "v2",
        };
        match suffix.split_once('?') {
            Some((kind, query)) => format!("{}?{query}", path(version, group, kind)),
            None => path(version, group, suffix),
        }
    }

    /// The integrations path of this version in the app's project.
    fn path(self, app: &TestApp, suffix: &str) -> String {
        self.path_in(&app.group, suffix)
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

/// An Atlas error (contract §5), as a table row expects it.
#[derive(Debug, Clone, Copy)]
enum AtlasError<'a> {
    MissingAttribute(&'a str),
    InvalidAttribute(&'a str),
    InvalidJsonAttribute(&'a str),
    InvalidEnumValue(&'a str),
    MalformedJson,
    NotConfigured(&'a str),
    AlreadyConfigured(&'a str),
    InvalidQueryParameter(&'a str),
    TooLarge,
    InvalidVersionDate,
    InvalidGroupId(&'a str),
    NotInGroup,
    ResourceNotFound(&'a str),
    MethodNotAllowed(&'a str),
    HipChatNotSupported,
    FlowdockFlowName,
    /// `INVALID_INTEGRATION_SETTINGS` with a message the contract fixes: (type, message).
    Settings(&'a str, &'a str),
    /// `INVALID_INTEGRATION_SETTINGS` for a rule whose wording the contract leaves open: (type,
    /// the field its message must start with).
    SettingsAbout(&'a str, &'a str),
}

impl<'a> AtlasError<'a> {
    /// The HTTP status and the errorCode.
    fn code(self) -> (u16, &'static str) {
        match self {
            Self::MissingAttribute(_) => (400, "MISSING_ATTRIBUTE"),
            Self::InvalidAttribute(_) => (400, "INVALID_ATTRIBUTE"),
            Self::InvalidJsonAttribute(_) => (400, "INVALID_JSON_ATTRIBUTE"),
            Self::InvalidEnumValue(_) => (400, "INVALID_ENUM_VALUE"),
            Self::MalformedJson => (400, "MALFORMED_JSON"),
            Self::NotConfigured(_) => (404, "INTEGRATION_NOT_CONFIGURED"),
            Self::AlreadyConfigured(_) => (409, "INTEGRATION_ALREADY_CONFIGURED"),
            Self::InvalidQueryParameter(_) => (400, "INVALID_QUERY_PARAMETER"),
            Self::TooLarge => (413, "REQUEST_BODY_TOO_LARGE"),
            Self::InvalidVersionDate => (406, "INVALID_VERSION_DATE"),
            Self::InvalidGroupId(_) => (404, "INVALID_GROUP_ID"),
            Self::NotInGroup => (401, "NOT_IN_GROUP"),
            Self::ResourceNotFound(_) => (404, "RESOURCE_NOT_FOUND"),
            Self::MethodNotAllowed(_) => (405, "METHOD_NOT_ALLOWED"),
            Self::HipChatNotSupported => (400, "HIPCHAT_NOT_SUPPORTED"),
            Self::FlowdockFlowName => (400, "INVALID_FLOWDOCK_FLOW_NAME"),
            Self::Settings(..) | Self::SettingsAbout(..) => (400, "INVALID_INTEGRATION_SETTINGS"),
        }
    }

    /// The parameters.
    fn parameters(self) -> Vec<&'a str> {
        match self {
            Self::MissingAttribute(one)
            | Self::InvalidAttribute(one)
            | Self::InvalidJsonAttribute(one)
            | Self::InvalidEnumValue(one)
            | Self::NotConfigured(one)
            | Self::AlreadyConfigured(one)
            | Self::InvalidQueryParameter(one)
            | Self::InvalidGroupId(one)
            | Self::ResourceNotFound(one)
            | Self::MethodNotAllowed(one) => vec![one],
            Self::TooLarge => vec!["65536"],
            Self::Settings(kind, message) => vec![kind, message],
            Self::MalformedJson
            | Self::InvalidVersionDate
            | Self::NotInGroup
            | Self::HipChatNotSupported
            | Self::FlowdockFlowName => vec![],
            Self::SettingsAbout(..) => panic!("{self:?}: the contract leaves its wording open"),
        }
    }

    /// The detail, word for word.
    fn detail(self) -> String {
        match self {
            Self::MissingAttribute(field) => {
                format!("The required attribute {field} was not specified.")
            }
            Self::InvalidAttribute(field) => format!("Invalid attribute {field} specified."),
            Self::InvalidJsonAttribute(field) => {
                format!("Received JSON for the {field} attribute does not match expected format.")
            }
            Self::InvalidEnumValue(value) => {
                format!("An invalid enumeration value {value} was specified.")
            }
            Self::MalformedJson => "Received JSON is malformed.".into(),
            Self::NotConfigured(kind) => {
                format!("The integration of type '{kind}' is not configured for this group.")
            }
            Self::AlreadyConfigured(kind) => {
                format!("The integration of type '{kind}' is already configured for this group.")
            }
            Self::InvalidQueryParameter(name) => {
                format!("Invalid query parameter {name} specified.")
            }
            Self::TooLarge => "The request body exceeds the limit of 65536 bytes.".into(),
            Self::InvalidVersionDate => "Invalid accept header or version date.".into(),
            Self::InvalidGroupId(group) => format!("An invalid group ID {group} was specified."),
            Self::NotInGroup => {
                "The current user is not in the group, or the group does not exist.".into()
            }
            Self::ResourceNotFound(path) => format!("Cannot find resource {path}."),
            Self::MethodNotAllowed(method) => {
                format!("Method {method} is not allowed on this resource.")
            }
            Self::HipChatNotSupported => {
                "HipChat integration is only supported for Ops Manager projects.".into()
            }
            Self::FlowdockFlowName => "Flowdock flow name cannot contain spaces.".into(),
            Self::Settings(kind, message) => {
                format!("The provided settings for the {kind} integration were invalid: {message}.")
            }
            Self::SettingsAbout(..) => panic!("{self:?}: the contract leaves its wording open"),
        }
    }

    /// The exact error body.
    fn body(self) -> Value {
        let (status, code) = self.code();
        let reason = StatusCode::from_u16(status)
            .expect("a status")
            .canonical_reason()
            .expect("a reason phrase");
        json!({
            "detail": self.detail(),
            "error": status,
            "errorCode": code,
            "parameters": self.parameters(),
            "reason": reason,
        })
    }

    /// Asserts that `reply` is this error: status, the whole body, `Content-Type:
    /// application/json`.
    fn assert(self, reply: &Reply) {
        if let Self::SettingsAbout(kind, field) = self {
            assert_settings_about(reply, kind, field);
        } else {
            let (status, code) = self.code();
            reply.assert_error(status, code, &self.parameters());
            assert_eq!(reply.json(), self.body(), "error body");
        }
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json"),
            "errors are application/json; body: {}",
            reply.text
        );
    }
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

/// One request of a table. `{group}` in its path stands for the app's project.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    body: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
    signed: bool,
}

impl Call {
    fn new(method: Method, path: impl Into<String>, body: Option<String>) -> Self {
        Self {
            method,
            path: path.into(),
            body,
            headers: Vec::new(),
            signed: true,
        }
    }

    /// The same request with one more header.
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The same request without credentials.
    fn anonymous(mut self) -> Self {
        self.signed = false;
        self
    }

    /// The path in the app's project.
    fn path(&self, app: &TestApp) -> String {
        self.path.replace("{group}", &app.group)
    }

    async fn send(&self, app: &TestApp) -> Reply {
        let path = self.path(app);
        let body = self.body.as_deref();
        if self.signed {
            let method = self.method.clone();
            app.client.send(method, &path, body, &self.headers).await
        } else {
            let (http, method) = (app.client.raw(), self.method.clone());
            send_raw(http, &app.base, method, &path, body, &self.headers, None).await
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        for (name, value) in &self.headers {
            write!(f, " [{name}: {value}]")?;
        }
        if let Some(body) = &self.body {
            let preview: String = body.chars().take(100).collect();
            let more = if preview.len() < body.len() {
                "..."
            } else {
                ""
            };
            write!(f, " {preview}{more}")?;
        }
        Ok(())
    }
}

/// GET an integrations path of `version` (`suffix`: a type, empty for the list, `?query`).
fn get(version: Ver, suffix: &str) -> Call {
    Call::new(Method::GET, version.path_in("{group}", suffix), None)
}

/// DELETE an integrations path.
fn delete(version: Ver, suffix: &str) -> Call {
    Call::new(Method::DELETE, version.path_in("{group}", suffix), None)
}

/// POST `body` (JSON text or a JSON value) to an integrations path.
fn post(version: Ver, suffix: &str, body: impl ToString) -> Call {
    let path = version.path_in("{group}", suffix);
    Call::new(Method::POST, path, Some(body.to_string()))
}

/// PUT `body` to an integrations path.
fn put(version: Ver, suffix: &str, body: impl ToString) -> Call {
    let path = version.path_in("{group}", suffix);
    Call::new(Method::PUT, path, Some(body.to_string()))
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

/// The `results` of a list.
fn results(list: &Value) -> &Vec<Value> {
    list["results"]
        .as_array()
        .unwrap_or_else(|| panic!("a list with results: {list}"))
}

/// The `results` of a list, ids split off.
fn results_without_ids(version: Ver, list: &Value) -> Vec<Value> {
    results(list)
        .iter()
        .map(|object| split_id(version, object).0)
        .collect()
}

/// The `type` of each result, in order.
fn types(list: &Value) -> Vec<String> {
    results(list)
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

/// The type a body names.
fn kind_of(body: &Value) -> &str {
    body["type"]
        .as_str()
        .unwrap_or_else(|| panic!("a body that names its type: {body}"))
}

/// POSTs `body` to the path of its type and asserts 200; the answer.
async fn create(app: &TestApp, version: Ver, body: &Value) -> Value {
    let path = version.path(app, kind_of(body));
    ok(&app.client.post(&path, &body.to_string()).await)
}

/// PUTs `body` to the path of its type and asserts 200; the answer.
async fn replace(app: &TestApp, version: Ver, body: &Value) -> Value {
    let path = version.path(app, kind_of(body));
    ok(&app.client.put(&path, &body.to_string()).await)
}

/// DELETEs one integration and asserts 204 with an empty body.
async fn remove(app: &TestApp, version: Ver, kind: &str) {
    let reply = app.client.delete(&version.path(app, kind)).await;
    assert_eq!(reply.status.as_u16(), 204, "DELETE {kind}: {}", reply.text);
    assert_eq!(reply.text, "", "DELETE {kind} has no body");
}

/// GETs one integration and asserts 200.
async fn get_one(app: &TestApp, version: Ver, kind: &str) -> Value {
    ok(&app.client.get(&version.path(app, kind)).await)
}

/// GETs the list and asserts 200.
async fn get_list(app: &TestApp, version: Ver) -> Value {
    ok(&app.client.get(&version.path(app, "")).await)
}

/// What a refused write must leave as it was in the project of [`app_with_datadog`]: both
/// versions' lists and the stored Datadog configuration (its secret included).
async fn snapshot(app: &TestApp) -> (Value, Value, String) {
    let stored = stored_config(app, "DATADOG").await.to_json();
    let stored = String::from_utf8(stored).expect("stored JSON is UTF-8");
    (
        get_list(app, Ver::V1).await,
        get_list(app, Ver::V2).await,
        stored,
    )
}

async fn assert_unchanged(app: &TestApp, before: &(Value, Value, String)) {
    assert_eq!(
        &snapshot(app).await,
        before,
        "a refused write must leave the integrations as they were"
    );
}

/// A project with a Datadog integration (v1.0), and the snapshot of it.
async fn app_with_datadog() -> (TestApp, (Value, Value, String)) {
    let app = spawn_app().await;
    let datadog = json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": "EU"});
    create(&app, Ver::V1, &datadog).await;
    let before = snapshot(&app).await;
    (app, before)
}

/// Sends each request to the project of [`app_with_datadog`] and asserts the error it must be
/// refused with, and that it changed nothing. A row's name is printed with its request when it
/// fails.
async fn assert_refused(cases: &[(&str, Call, AtlasError<'_>)]) {
    let (app, before) = app_with_datadog().await;
    for (name, call, error) in cases {
        let _case = Case::new(format_args!("{name}: {call}"));
        error.assert(&call.send(&app).await);
        assert_unchanged(&app, &before).await;
    }
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
    atlas_integrations::http::integrations::open(&keyring, group, &row, |plain| {
        Config::from_json(kind, plain)
    })
    .expect("decrypt it")
}

/// Asserts the stored (clear) value of `kind`'s `field`.
async fn assert_stored(app: &TestApp, kind: &str, field: &str, expected: Option<&str>) {
    assert_eq!(
        stored_config(app, kind).await.str(field),
        expected,
        "the stored {kind}.{field}"
    );
}

/// Sends raw bytes as a body (for bodies that are not text), on a nonce of its own.
async fn send_bytes(app: &TestApp, method: Method, uri: &str, body: Vec<u8>) -> Reply {
    let authorization = fresh_authorization(app, method.as_str(), uri).await;
    let request = app
        .request(method, uri)
        .header("content-type", "application/json")
        .header("authorization", authorization)
        .body(body);
    read_reply(request).await
}

/// One HTTP/1.1 request written by hand (so that no header is added for us): the status, the
/// head in lowercase, and the body.
async fn raw_http(app: &TestApp, method: &str, uri: &str) -> (u16, String, String) {
    let authorization = fresh_authorization(app, method, uri).await;
    let request = format!(
        "{method} {uri} HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n",
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

// ---------------------------------------------------------------------------------------------
// §3: each type through the five operations
// ---------------------------------------------------------------------------------------------

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

/// Runs [`Lifecycle`] in an empty project, which it leaves empty again.
async fn assert_lifecycle(app: &TestApp, version: Ver, case: &Lifecycle) {
    let one = version.path(app, case.kind);
    let list = version.path(app, "");
    let what = format!("{} {version:?}", case.kind);

    let body = ok(&app.client.post(&one, &case.create.to_string()).await);
    assert_eq!(body["links"], self_links(app, &one), "{what}: POST links");
    assert_eq!(body["totalCount"], 1, "{what}: POST totalCount");
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(3),
        "{what}: POST list keys: {body}"
    );
    let (created, id) = only_result(version, &body, &what);
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
    let (replaced, put_id) = only_result(version, &body, &what);
    assert_eq!(replaced, case.replaced, "{what}: PUT answer");
    assert_eq!(put_id, id, "{what}: PUT keeps the id");

    let (got, got_id) = split_id(version, &get_one(app, version, case.kind).await);
    assert_eq!(got, case.replaced, "{what}: GET one after PUT");
    assert_eq!(got_id, id, "{what}: GET one id after PUT");

    remove(app, version, case.kind).await;
    AtlasError::NotConfigured(case.kind).assert(&app.client.get(&one).await);
    let body = get_list(app, version).await;
    assert_eq!(body["results"], json!([]), "{what}: list after DELETE");
    assert_eq!(body["totalCount"], 0, "{what}: totalCount after DELETE");
}

/// The one result of a list answer, its id split off.
fn only_result(version: Ver, list: &Value, what: &str) -> (Value, Option<String>) {
    let results = results(list);
    assert_eq!(results.len(), 1, "{what}: one result: {list}");
    split_id(version, &results[0])
}

#[tokio::test]
async fn every_type_is_created_read_replaced_and_deleted_in_each_of_its_versions() {
    use Ver::{V1, V2};
    // Arrange
    let app = spawn_app().await;
    let both: &[Ver] = &[V1, V2];
    let cases = [
        (
            "pager_duty_with_its_service_key_masked",
            both,
            Lifecycle {
                kind: "PAGER_DUTY",
                create: json!({"type": "PAGER_DUTY", "serviceKey": "0123456789", "region": "EU"}),
                created: json!({"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "EU"}),
                replace: json!({"type": "PAGER_DUTY", "serviceKey": "9876543210"}),
                replaced: json!({"type": "PAGER_DUTY", "serviceKey": "******3210", "region": "US"}),
            },
        ),
        (
            "slack_in_v1_with_an_empty_channel_name_when_unset",
            &[V1],
            Lifecycle {
                kind: "SLACK",
                create: json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "My Team", "channelName": "My Channel"}),
                created: json!({"type": "SLACK", "apiToken": "******2345", "teamName": "My Team", "channelName": "My Channel"}),
                replace: json!({"type": "SLACK", "apiToken": "xoxb-67890", "teamName": "Other Team"}),
                replaced: json!({"type": "SLACK", "apiToken": "******7890", "teamName": "Other Team", "channelName": ""}),
            },
        ),
        (
            "slack_in_v2_with_team_name_absent_when_unset",
            &[V2],
            Lifecycle {
                kind: "SLACK",
                create: json!({"type": "SLACK", "apiToken": "xoxb-12345", "channelName": "alerts"}),
                created: json!({"type": "SLACK", "apiToken": "******2345", "channelName": "alerts"}),
                replace: json!({"type": "SLACK", "apiToken": "xoxb-67890", "teamName": "Ops", "channelName": "ops"}),
                replaced: json!({"type": "SLACK", "apiToken": "******7890", "teamName": "Ops", "channelName": "ops"}),
            },
        ),
        (
            "datadog_in_v1_showing_only_true_metric_switches",
            &[V1],
            Lifecycle {
                kind: "DATADOG",
                create: json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": "EU", "sendDatabaseMetrics": true}),
                created: json!({"type": "DATADOG", "apiKey": "******0123", "region": "EU", "sendDatabaseMetrics": true}),
                replace: json!({"type": "DATADOG", "apiKey": "fedcba9876"}),
                replaced: json!({"type": "DATADOG", "apiKey": "******9876", "region": "US"}),
            },
        ),
        (
            "datadog_in_v2_showing_all_four_metric_switches",
            &[V2],
            Lifecycle {
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
            },
        ),
        (
            "new_relic_with_its_keys_in_clear",
            both,
            Lifecycle {
                kind: "NEW_RELIC",
                create: json!({"type": "NEW_RELIC", "licenseKey": "license-0001", "accountId": "123456", "writeToken": "write-0001", "readToken": "read-0001"}),
                created: json!({"type": "NEW_RELIC", "licenseKey": "license-0001", "accountId": "123456", "writeToken": "write-0001", "readToken": "read-0001"}),
                replace: json!({"type": "NEW_RELIC", "licenseKey": "license-0002", "accountId": "654321", "writeToken": "write-0002", "readToken": "read-0002"}),
                replaced: json!({"type": "NEW_RELIC", "licenseKey": "license-0002", "accountId": "654321", "writeToken": "write-0002", "readToken": "read-0002"}),
            },
        ),
        (
            "ops_genie_with_its_key_masked_and_region_defaulted",
            both,
            Lifecycle {
                kind: "OPS_GENIE",
                create: json!({"type": "OPS_GENIE", "apiKey": "opsgen4321", "region": "EU"}),
                created: json!({"type": "OPS_GENIE", "apiKey": "******4321", "region": "EU"}),
                replace: json!({"type": "OPS_GENIE", "apiKey": "opsgen8765"}),
                replaced: json!({"type": "OPS_GENIE", "apiKey": "******8765", "region": "US"}),
            },
        ),
        (
            "victor_ops_with_routing_key_absent_when_unset",
            both,
            Lifecycle {
                kind: "VICTOR_OPS",
                create: json!({"type": "VICTOR_OPS", "apiKey": "victor8765", "routingKey": "critical"}),
                created: json!({"type": "VICTOR_OPS", "apiKey": "******8765", "routingKey": "critical"}),
                replace: json!({"type": "VICTOR_OPS", "apiKey": "victor1111"}),
                replaced: json!({"type": "VICTOR_OPS", "apiKey": "******1111"}),
            },
        ),
        (
            "flowdock_in_v1_with_its_api_token_in_clear",
            &[V1],
            Lifecycle {
                kind: "FLOWDOCK",
                create: json!({"type": "FLOWDOCK", "flowName": "myFlowName", "apiToken": "1234567890", "orgName": "myOrg"}),
                created: json!({"type": "FLOWDOCK", "flowName": "myFlowName", "apiToken": "1234567890", "orgName": "myOrg"}),
                replace: json!({"type": "FLOWDOCK", "flowName": "newFlowName", "apiToken": "0987654321", "orgName": "newOrgName"}),
                replaced: json!({"type": "FLOWDOCK", "flowName": "newFlowName", "apiToken": "0987654321", "orgName": "newOrgName"}),
            },
        ),
        (
            "webhook_with_url_partially_and_secret_fully_masked",
            both,
            Lifecycle {
                kind: "WEBHOOK",
                create: json!({"type": "WEBHOOK", "url": "https://hooks.example.com/services/T000/B000/XXXX?x=1", "secret": "hook-secret-1"}),
                created: json!({"type": "WEBHOOK", "url": "https://hooks.example.com/****", "secret": "******"}),
                replace: json!({"type": "WEBHOOK", "url": "http://alerts.example.org:8080/in"}),
                replaced: json!({"type": "WEBHOOK", "url": "http://alerts.example.org:8080/****"}),
            },
        ),
        (
            "microsoft_teams_with_its_url_partially_masked",
            both,
            Lifecycle {
                kind: "MICROSOFT_TEAMS",
                create: json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://contoso.webhook.office.com/webhookb2/abc/IncomingWebhook/123/456"}),
                created: json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://contoso.webhook.office.com/****"}),
                replace: json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://outlook.office.com:8443/webhook/xyz"}),
                replaced: json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://outlook.office.com:8443/****"}),
            },
        ),
        (
            "prometheus_without_ever_returning_the_password",
            both,
            Lifecycle {
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
            },
        ),
    ];

    for (name, versions, case) in &cases {
        for version in *versions {
            // Act and assert
            let _case = Case::new(format_args!("{name} in {version:?}"));
            assert_lifecycle(&app, *version, case).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// §3: the rules of each type
// ---------------------------------------------------------------------------------------------

/// A Datadog object as v1.0 shows it, as v2 shows it: with the metric switches v1.0 leaves out
/// because they are false.
fn with_switches_off(v1: Value) -> Value {
    let mut v2 = v1;
    for switch in [
        "sendCollectionLatencyMetrics",
        "sendDatabaseMetrics",
        "sendQueryStatsMetrics",
        "sendUserProvidedResourceTags",
    ] {
        if v2.get(switch).is_none() {
            v2[switch] = json!(false);
        }
    }
    v2
}

#[tokio::test]
async fn accepted_bodies_are_answered_and_shown_in_both_versions_as_the_contract_says() {
    use Ver::{V1, V2};
    // Arrange: (name, version, body POSTed to the path of the type shown, what v1.0 shows,
    // what v2 shows without its id when that differs).
    let app = spawn_app().await;
    let pager_duty = json!({"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "US"});
    let ops_genie = json!({"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"});
    let datadog = json!({"type": "DATADOG", "apiKey": "******0123", "region": "US"});
    let slack_v1 = json!({"type": "SLACK", "apiToken": "******2345", "teamName": "My Team", "channelName": ""});
    let channel_80 = "é".repeat(80);
    let cases: Vec<(&str, Ver, Value, Value, Option<Value>)> = vec![
        (
            "optional_regions_default_to_us_and_are_echoed: PAGER_DUTY",
            V1,
            json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
            pager_duty.clone(),
            None,
        ),
        (
            "optional_regions_default_to_us_and_are_echoed: OPS_GENIE",
            V2,
            json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
            ops_genie.clone(),
            None,
        ),
        (
            "optional_regions_default_to_us_and_are_echoed: DATADOG; \
             datadog_created_in_v1_without_switches_shows_all_four_false_in_v2",
            V1,
            json!({"type": "DATADOG", "apiKey": "abcdef0123"}),
            datadog.clone(),
            Some(with_switches_off(datadog.clone())),
        ),
        (
            "an_explicit_null_region_takes_the_default",
            V1,
            json!({"type": "PAGER_DUTY", "serviceKey": "0123456789", "region": null}),
            pager_duty,
            None,
        ),
        (
            "datadog_in_v1_returns_every_metric_switch_that_is_true_and_none_that_is_false",
            V1,
            json!({
                "type": "DATADOG", "apiKey": "abcdef0123",
                "sendCollectionLatencyMetrics": true, "sendDatabaseMetrics": false,
                "sendQueryStatsMetrics": true, "sendUserProvidedResourceTags": true,
            }),
            json!({
                "type": "DATADOG", "apiKey": "******0123", "region": "US",
                "sendCollectionLatencyMetrics": true, "sendQueryStatsMetrics": true,
                "sendUserProvidedResourceTags": true,
            }),
            Some(json!({
                "type": "DATADOG", "apiKey": "******0123", "region": "US",
                "sendCollectionLatencyMetrics": true, "sendDatabaseMetrics": false,
                "sendQueryStatsMetrics": true, "sendUserProvidedResourceTags": true,
            })),
        ),
        (
            "datadog_switches_sent_false_in_v1_are_accepted_and_not_shown",
            V1,
            json!({"type": "DATADOG", "apiKey": "abcdef0123", "sendQueryStatsMetrics": false}),
            datadog.clone(),
            Some(with_switches_off(datadog)),
        ),
        (
            "datadog_api_key_accepts_upper_and_lower_case_hexadecimal",
            V1,
            json!({"type": "DATADOG", "apiKey": "ABCDEFabcdef0189"}),
            json!({"type": "DATADOG", "apiKey": "************0189", "region": "US"}),
            Some(with_switches_off(
                json!({"type": "DATADOG", "apiKey": "************0189", "region": "US"}),
            )),
        ),
        (
            "slack_channel_name_is_optional_in_v1_and_shown_as_an_empty_string",
            V1,
            json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "My Team"}),
            slack_v1,
            None,
        ),
        (
            "slack_team_name_is_optional_in_v2_and_absent_when_never_set",
            V2,
            json!({"type": "SLACK", "apiToken": "xoxb-12345", "channelName": "alerts"}),
            json!({"type": "SLACK", "apiToken": "******2345", "channelName": "alerts"}),
            None,
        ),
        (
            "slack_channel_name_may_have_80_characters",
            V2,
            json!({"type": "SLACK", "apiToken": "xoxb-12345", "channelName": channel_80}),
            json!({"type": "SLACK", "apiToken": "******2345", "channelName": channel_80}),
            None,
        ),
        (
            "victor_ops_routing_key_is_returned_in_clear_when_set",
            V2,
            json!({"type": "VICTOR_OPS", "apiKey": "victor8765", "routingKey": "routing-key-1"}),
            json!({"type": "VICTOR_OPS", "apiKey": "******8765", "routingKey": "routing-key-1"}),
            None,
        ),
        (
            "webhook_url_may_be_http",
            V1,
            json!({"type": "WEBHOOK", "url": "http://hooks.example.com/plain"}),
            json!({"type": "WEBHOOK", "url": "http://hooks.example.com/****"}),
            None,
        ),
        (
            "prometheus_scheme_is_read_only_accepted_and_ignored",
            V1,
            json!({"type": "PROMETHEUS", "username": "u", "password": "p", "serviceDiscovery": "file", "enabled": true, "scheme": "http"}),
            json!({
                "type": "PROMETHEUS", "username": "u", "serviceDiscovery": "file", "enabled": true,
                "sendUserProvidedResourceTagsEnabled": false, "scheme": "https",
            }),
            None,
        ),
        (
            "a_null_optional_field_counts_as_absent",
            V1,
            json!({"type": "WEBHOOK", "url": "https://h.example.com/x", "secret": null}),
            json!({"type": "WEBHOOK", "url": "https://h.example.com/****"}),
            None,
        ),
        (
            "a_null_type_counts_as_absent",
            V1,
            json!({"type": null, "apiKey": "opsgen4321"}),
            ops_genie.clone(),
            None,
        ),
        (
            "a_body_without_type_takes_the_path_type: v1.0",
            V1,
            json!({"apiKey": "opsgen4321"}),
            ops_genie,
            None,
        ),
        (
            "a_body_without_type_takes_the_path_type: v2",
            V2,
            json!({"apiKey": "victor8765"}),
            json!({"type": "VICTOR_OPS", "apiKey": "******8765"}),
            None,
        ),
        (
            "a_string_of_4096_bytes_is_accepted",
            V1,
            json!({"type": "OPS_GENIE", "apiKey": "k".repeat(4096)}),
            json!({"type": "OPS_GENIE", "apiKey": format!("{}kkkk", "*".repeat(4092)), "region": "US"}),
            None,
        ),
    ];

    for (name, version, body, v1, v2) in &cases {
        let _case = Case::new(name);
        let kind = kind_of(v1);
        let shown = |version| match (version, v2) {
            (V2, Some(v2)) => v2.clone(),
            _ => v1.clone(),
        };

        // Act
        let path = version.path(&app, kind);
        let answer = ok(&app.client.post(&path, &body.to_string()).await);

        // Assert
        let answered = results_without_ids(*version, &answer);
        assert_eq!(answered, vec![shown(*version)], "the POST answer");
        assert_eq!(get_one(&app, V1, kind).await, *v1, "GET in v1.0");
        let (got, _) = split_id(V2, &get_one(&app, V2, kind).await);
        assert_eq!(got, shown(V2), "GET in v2");
        remove(&app, *version, kind).await;
    }
}

#[tokio::test]
async fn datadog_accepts_every_documented_region() {
    // Arrange
    let app = spawn_app().await;

    for region in ["US", "US3", "US5", "EU", "AP1", "AP2", "US1_FED"] {
        // Act
        let body = json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": region});
        replace(&app, Ver::V1, &body).await;

        // Assert
        assert_eq!(
            get_one(&app, Ver::V1, "DATADOG").await,
            json!({"type": "DATADOG", "apiKey": "******0123", "region": region})
        );
    }
}

#[tokio::test]
async fn slack_put_in_v2_without_team_name_clears_it() {
    // Arrange
    let app = spawn_app().await;
    let first =
        json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "T", "channelName": "a"});
    create(&app, Ver::V2, &first).await;

    // Act
    let second = json!({"type": "SLACK", "apiToken": "xoxb-12345", "channelName": "b"});
    let list = replace(&app, Ver::V2, &second).await;

    // Assert
    assert_eq!(
        results_without_ids(Ver::V2, &list),
        vec![json!({"type": "SLACK", "apiToken": "******2345", "channelName": "b"})]
    );
}

#[tokio::test]
async fn invalid_settings_of_each_type_are_refused_and_change_nothing() {
    use AtlasError::*;
    use Ver::{V1, V2};
    let slack_81 = json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "T", "channelName": "c".repeat(81)});
    let prometheus =
        r#"{"type":"PROMETHEUS","username":"u","serviceDiscovery":"http","enabled":true}"#;
    let hex = "apiKey must be a hexadecimal string";
    let mut cases = vec![
        (
            "pager_duty_region_must_be_us_or_eu",
            post(
                V1,
                "PAGER_DUTY",
                r#"{"type":"PAGER_DUTY","serviceKey":"0123456789","region":"US3"}"#,
            ),
            InvalidEnumValue("US3"),
        ),
        (
            "ops_genie_region_must_be_us_or_eu",
            post(
                V2,
                "OPS_GENIE",
                r#"{"type":"OPS_GENIE","apiKey":"opsgen4321","region":"AP1"}"#,
            ),
            InvalidEnumValue("AP1"),
        ),
        (
            "datadog_region_outside_the_list_is_an_invalid_enum_value",
            put(
                V1,
                "DATADOG",
                r#"{"type":"DATADOG","apiKey":"abcdef0123","region":"XX"}"#,
            ),
            InvalidEnumValue("XX"),
        ),
        (
            "a_refused_put_leaves_the_stored_secret_as_it_was",
            put(
                V1,
                "DATADOG",
                r#"{"type":"DATADOG","apiKey":"fedcba9876","region":"XX"}"#,
            ),
            InvalidEnumValue("XX"),
        ),
        (
            "datadog_api_key_must_be_hexadecimal",
            put(
                V1,
                "DATADOG",
                r#"{"type":"DATADOG","apiKey":"not-hex-key"}"#,
            ),
            Settings("DATADOG", hex),
        ),
        (
            // Not the exact masked form (one star fewer), so a new key, and not hexadecimal.
            "datadog_put_with_another_mask_like_value_replaces_and_validates_it",
            put(
                V1,
                "DATADOG",
                r#"{"type":"DATADOG","apiKey":"*****0123","region":"EU"}"#,
            ),
            Settings("DATADOG", hex),
        ),
        (
            "datadog_metric_switches_must_be_json_booleans",
            put(
                V2,
                "DATADOG",
                r#"{"type":"DATADOG","apiKey":"abcdef0123","sendDatabaseMetrics":"true"}"#,
            ),
            InvalidJsonAttribute("sendDatabaseMetrics"),
        ),
        (
            "slack_team_name_is_required_in_v1",
            post(
                V1,
                "SLACK",
                r#"{"type":"SLACK","apiToken":"xoxb-12345","channelName":"alerts"}"#,
            ),
            MissingAttribute("teamName"),
        ),
        (
            "slack_channel_name_is_required_in_v2",
            post(
                V2,
                "SLACK",
                r#"{"type":"SLACK","apiToken":"xoxb-12345","teamName":"My Team"}"#,
            ),
            MissingAttribute("channelName"),
        ),
        (
            "slack_channel_name_over_80_characters_is_refused",
            post(V1, "SLACK", &slack_81),
            SettingsAbout("SLACK", "channelName"),
        ),
        (
            "slack_channel_name_over_80_characters_is_refused",
            post(V2, "SLACK", &slack_81),
            SettingsAbout("SLACK", "channelName"),
        ),
        (
            "slack_empty_channel_name_is_refused_in_v2_where_it_is_required",
            post(
                V2,
                "SLACK",
                r#"{"type":"SLACK","apiToken":"xoxb-12345","channelName":""}"#,
            ),
            Settings("SLACK", "channelName must not be empty"),
        ),
        (
            "flowdock_flow_name_with_a_space_is_refused",
            post(
                V1,
                "FLOWDOCK",
                r#"{"type":"FLOWDOCK","flowName":"my flow","apiToken":"1234567890","orgName":"myOrg"}"#,
            ),
            FlowdockFlowName,
        ),
        (
            "flowdock_requires_flow_name_api_token_and_org_name",
            post(
                V1,
                "FLOWDOCK",
                r#"{"type":"FLOWDOCK","flowName":"f","apiToken":"t"}"#,
            ),
            MissingAttribute("orgName"),
        ),
        (
            "webhook_url_is_required",
            post(V2, "WEBHOOK", r#"{"type":"WEBHOOK","secret":"s"}"#),
            MissingAttribute("url"),
        ),
        (
            "prometheus_password_is_required_on_create",
            post(V1, "PROMETHEUS", prometheus),
            MissingAttribute("password"),
        ),
        (
            "prometheus_put_that_creates_requires_the_password",
            put(V2, "PROMETHEUS", prometheus),
            MissingAttribute("password"),
        ),
        (
            "prometheus_enabled_must_be_a_json_boolean",
            post(
                V1,
                "PROMETHEUS",
                r#"{"type":"PROMETHEUS","username":"u","password":"p","serviceDiscovery":"http","enabled":"yes"}"#,
            ),
            InvalidJsonAttribute("enabled"),
        ),
        (
            "prometheus_service_discovery_must_be_http_or_file",
            post(
                V1,
                "PROMETHEUS",
                r#"{"type":"PROMETHEUS","username":"u","password":"p","serviceDiscovery":"dns","enabled":true}"#,
            ),
            InvalidEnumValue("dns"),
        ),
    ];
    let new_relic = json!({"type": "NEW_RELIC", "licenseKey": "l", "accountId": "a", "writeToken": "w", "readToken": "r"});
    for field in ["licenseKey", "accountId", "writeToken", "readToken"] {
        let mut body = new_relic.clone();
        body.as_object_mut().expect("object").remove(field);
        let call = post(V1, "NEW_RELIC", body);
        cases.push((
            "new_relic_requires_each_of_its_four_keys",
            call,
            MissingAttribute(field),
        ));
    }
    for url in [
        "ftp://hooks.example.com/x",
        "/relative/path",
        "hooks.example.com/x",
        "not a url",
    ] {
        let call = post(V1, "WEBHOOK", json!({"type": "WEBHOOK", "url": url}));
        let error = SettingsAbout("WEBHOOK", "url");
        cases.push((
            "webhook_url_must_be_an_absolute_http_or_https_url",
            call,
            error,
        ));
    }
    for url in [
        "http://outlook.office.com/webhook/x",
        "ftp://outlook.office.com/x",
        "outlook.office.com/webhook",
    ] {
        let body = json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": url});
        let error = SettingsAbout("MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl");
        cases.push((
            "microsoft_teams_url_must_be_https",
            post(V1, "MICROSOFT_TEAMS", body),
            error,
        ));
    }

    // Act and assert
    assert_refused(&cases).await;
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
async fn a_put_stores_the_values_it_is_sent_and_keeps_a_password_it_is_not_sent() {
    use Ver::{V1, V2};
    // Arrange: (name, created in v1.0, PUT in `version`, what the PUT answers without ids,
    // the stored values then).
    let app = spawn_app().await;
    let prometheus = json!({"type": "PROMETHEUS", "username": "u", "password": "first-pass", "serviceDiscovery": "http", "enabled": true});
    type Row<'a> = (&'a str, Value, Ver, Value, Value, &'a [(&'a str, &'a str)]);
    let cases: Vec<Row<'_>> = vec![
        (
            "a_new_key_with_the_same_last_four_characters_replaces_the_stored_one",
            json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": "EU"}),
            V1,
            json!({"type": "DATADOG", "apiKey": "ffffff0123"}),
            json!({"type": "DATADOG", "apiKey": "******0123", "region": "US"}),
            &[("apiKey", "ffffff0123")],
        ),
        (
            "pager_duty_put_with_a_different_masked_looking_value_stores_that_value",
            json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
            V1,
            json!({"type": "PAGER_DUTY", "serviceKey": "******9999"}),
            json!({"type": "PAGER_DUTY", "serviceKey": "******9999", "region": "US"}),
            &[("serviceKey", "******9999")],
        ),
        (
            "webhook_put_with_a_new_url_on_the_same_host_replaces_it",
            json!({"type": "WEBHOOK", "url": "https://hooks.example.com/old", "secret": "s1"}),
            V1,
            json!({"type": "WEBHOOK", "url": "https://hooks.example.com/new", "secret": "s2"}),
            json!({"type": "WEBHOOK", "url": "https://hooks.example.com/****", "secret": "******"}),
            &[("url", "https://hooks.example.com/new"), ("secret", "s2")],
        ),
        (
            "prometheus_put_without_password_keeps_the_stored_one",
            prometheus.clone(),
            V1,
            json!({"type": "PROMETHEUS", "username": "u2", "serviceDiscovery": "file", "enabled": false}),
            json!({
                "type": "PROMETHEUS", "username": "u2", "serviceDiscovery": "file", "enabled": false,
                "sendUserProvidedResourceTagsEnabled": false, "scheme": "https",
            }),
            &[("password", "first-pass")],
        ),
        (
            "prometheus_put_with_a_password_replaces_it",
            prometheus,
            V2,
            json!({"type": "PROMETHEUS", "username": "u", "password": "second-pass", "serviceDiscovery": "http", "enabled": true}),
            json!({
                "type": "PROMETHEUS", "username": "u", "serviceDiscovery": "http", "enabled": true,
                "sendUserProvidedResourceTagsEnabled": false, "scheme": "https",
            }),
            &[("password", "second-pass")],
        ),
    ];

    for (name, created, version, sent, answered, stored) in &cases {
        let _case = Case::new(name);
        let kind = kind_of(created);
        create(&app, V1, created).await;

        // Act
        let answer = replace(&app, *version, sent).await;

        // Assert
        assert_eq!(
            results_without_ids(*version, &answer),
            vec![answered.clone()]
        );
        for (field, value) in *stored {
            assert_stored(&app, kind, field, Some(value)).await;
        }
        remove(&app, V1, kind).await;
    }
}

#[tokio::test]
async fn put_creates_a_type_that_is_not_configured_yet_in_v1_and_v2() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let pager_duty = json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"});
    let v1 = replace(&app, Ver::V1, &pager_duty).await;
    let ops_genie = json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"});
    let v2 = replace(&app, Ver::V2, &ops_genie).await;

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
    let webhook = json!({"type": "WEBHOOK", "url": "https://hooks.example.com/x"});
    create(&app, Ver::V1, &webhook).await;

    // Act
    let reply = app.client.delete(&app.v1("WEBHOOK")).await;

    // Assert
    assert_eq!(reply.status.as_u16(), 204);
    assert_eq!(reply.text, "");
    let not_configured = AtlasError::NotConfigured("WEBHOOK");
    not_configured.assert(&app.client.get(&app.v1("WEBHOOK")).await);
    not_configured.assert(&app.client.get(&app.v2("WEBHOOK")).await);
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
    AtlasError::AlreadyConfigured("DATADOG").assert(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn operations_on_a_type_that_is_or_is_not_configured_are_refused_and_change_nothing() {
    use AtlasError::*;
    use Ver::{V1, V2};
    assert_refused(&[
        (
            "get_of_a_type_never_configured_is_404_integration_not_configured",
            get(V2, "MICROSOFT_TEAMS"),
            NotConfigured("MICROSOFT_TEAMS"),
        ),
        (
            "delete_of_a_type_not_configured_is_404_integration_not_configured",
            delete(V1, "WEBHOOK"),
            NotConfigured("WEBHOOK"),
        ),
        (
            "post_of_a_type_already_configured_through_the_other_version_is_409",
            post(V2, "DATADOG", r#"{"type":"DATADOG","apiKey":"fedcba9876"}"#),
            AlreadyConfigured("DATADOG"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn post_answers_the_list_of_all_the_projects_integrations_including_the_new_one() {
    // Arrange
    let app = spawn_app().await;
    let new_relic = json!({"type": "NEW_RELIC", "licenseKey": "l", "accountId": "a", "writeToken": "w", "readToken": "r"});
    create(&app, Ver::V1, &new_relic).await;

    let victor_ops = r#"{"type":"VICTOR_OPS","apiKey":"victor8765"}"#;

    // Act
    let reply = app.client.post(&app.v1("VICTOR_OPS"), victor_ops).await;

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
async fn keys_urls_and_webhook_secrets_are_masked_as_the_contract_says() {
    // Arrange: (body PUT in v1.0, the masked field, how it is shown).
    let app = spawn_app().await;
    let cases = [
        // keys_are_masked_to_stars_and_their_last_four_characters
        (
            json!({"type": "OPS_GENIE", "apiKey": "1234567890"}),
            "apiKey",
            "******7890".to_owned(),
        ),
        (
            json!({"type": "PAGER_DUTY", "serviceKey": "12345"}),
            "serviceKey",
            "*2345".to_owned(),
        ),
        (
            json!({"type": "VICTOR_OPS", "apiKey": "a-rather-long-victor-ops-key-XYZ9"}),
            "apiKey",
            format!("{}XYZ9", "*".repeat(29)),
        ),
        // keys_of_four_characters_or_fewer_are_all_stars_of_the_same_length
        (
            json!({"type": "OPS_GENIE", "apiKey": "abcd"}),
            "apiKey",
            "****".to_owned(),
        ),
        (
            json!({"type": "PAGER_DUTY", "serviceKey": "abc"}),
            "serviceKey",
            "***".to_owned(),
        ),
        (
            json!({"type": "VICTOR_OPS", "apiKey": "a"}),
            "apiKey",
            "*".to_owned(),
        ),
        (
            json!({"type": "SLACK", "apiToken": "xy", "teamName": "t"}),
            "apiToken",
            "**".to_owned(),
        ),
        // webhook_secret_is_six_stars_whatever_its_length
        (
            json!({"type": "WEBHOOK", "url": "https://h.example.com/p", "secret": "s"}),
            "secret",
            "******".to_owned(),
        ),
        (
            json!({"type": "WEBHOOK", "url": "https://h.example.com/p", "secret": "a-very-long-webhook-secret-of-many-characters"}),
            "secret",
            "******".to_owned(),
        ),
        // urls_keep_scheme_host_and_port_only
        (
            json!({"type": "WEBHOOK", "url": "https://user:pw@hooks.example.com:8443/services/T000/B000/XXXX?token=abc#frag"}),
            "url",
            "https://hooks.example.com:8443/****".to_owned(),
        ),
        (
            json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://outlook.office.com"}),
            "microsoftTeamsWebhookUrl",
            "https://outlook.office.com/****".to_owned(),
        ),
    ];

    for (body, field, masked) in &cases {
        let _case = Case::new(body);
        let kind = kind_of(body);

        // Act
        let answer = replace(&app, Ver::V1, body).await;

        // Assert
        let answered = results(&answer).iter().find(|o| o["type"] == kind);
        assert_eq!(
            answered.map(|o| &o[*field]),
            Some(&json!(masked)),
            "PUT answer"
        );
        assert_eq!(
            get_one(&app, Ver::V1, kind).await[*field],
            masked.as_str(),
            "GET"
        );
    }
    assert_eq!(
        types(&get_list(&app, Ver::V1).await),
        vec![
            "OPS_GENIE",
            "PAGER_DUTY",
            "VICTOR_OPS",
            "SLACK",
            "WEBHOOK",
            "MICROSOFT_TEAMS"
        ]
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
    for (_, _, body, _) in masked_cases() {
        if !body.is_null() {
            create(&app, Ver::V1, &body).await;
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

    let teams = r#"{"type":"MICROSOFT_TEAMS","microsoftTeamsWebhookUrl":"https://teams.example.com/teamssecretpath"}"#;
    let ops_genie = r#"{"type":"OPS_GENIE","apiKey":"ogsecret4321"}"#;

    // Act
    let post = app.client.post(&app.v1("MICROSOFT_TEAMS"), teams).await;
    let put = app.client.put(&app.v2("OPS_GENIE"), ops_genie).await;
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
        assert_masked(results(&body), what);
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

/// GETs `kind` in `version` and PUTs back what GET showed; asserts that the PUT answers the
/// project's list with the object as GET showed it, that a new GET shows it again, and that
/// the stored `secrets` are still the values of `sent`. Returns what GET showed.
async fn assert_put_back(app: &TestApp, version: Ver, sent: &Value, secrets: &[&str]) -> Value {
    let kind = kind_of(sent);
    let what = format!("{kind} {version:?}");
    let fetched = get_one(app, version, kind).await;

    let answer = replace(app, version, &fetched).await;

    let answered = results(&answer).iter().find(|o| o["type"] == kind);
    assert_eq!(answered, Some(&fetched), "{what}: the PUT answer");
    assert_eq!(
        answer["results"],
        get_list(app, version).await["results"],
        "{what}: the PUT answers the whole list"
    );
    assert_eq!(get_one(app, version, kind).await, fetched, "{what}");
    for field in secrets {
        let expected = sent[*field].as_str();
        assert_stored(app, kind, field, expected).await;
    }
    fetched
}

#[tokio::test]
async fn a_masked_value_sent_back_keeps_the_stored_secret_and_a_changed_field_is_stored() {
    use Ver::{V1, V2};
    // Arrange: (name, version, what is sent, what GET shows without the id, its secrets, a
    // visible field changed on the way back).
    let app = spawn_app().await;
    let teams_url = "https://contoso.webhook.office.com/webhookb2/abc/IncomingWebhook/123";
    type Row<'a> = (
        &'a str,
        Ver,
        Value,
        Value,
        &'a [&'a str],
        Option<(&'a str, &'a str)>,
    );
    let cases: Vec<Row<'_>> = vec![
        (
            "datadog_get_then_put_back_keeps_the_stored_api_key",
            V1,
            json!({"type": "DATADOG", "apiKey": "abcdef0123", "region": "EU"}),
            json!({"type": "DATADOG", "apiKey": "******0123", "region": "EU"}),
            &["apiKey"],
            Some(("region", "US3")),
        ),
        (
            "pager_duty_masked_round_trip_through_v2_keeps_the_key_and_the_id",
            V2,
            json!({"type": "PAGER_DUTY", "serviceKey": "0123456789", "region": "EU"}),
            json!({"type": "PAGER_DUTY", "serviceKey": "******6789", "region": "EU"}),
            &["serviceKey"],
            Some(("region", "US")),
        ),
        (
            "webhook_masked_round_trip_keeps_url_and_secret",
            V1,
            json!({"type": "WEBHOOK", "url": "https://hooks.example.com/services/T000/B000/XXXX", "secret": "hook-secret"}),
            json!({"type": "WEBHOOK", "url": "https://hooks.example.com/****", "secret": "******"}),
            &["url", "secret"],
            None,
        ),
        (
            "microsoft_teams_masked_round_trip_through_v2_keeps_the_url",
            V2,
            json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": teams_url}),
            json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://contoso.webhook.office.com/****"}),
            &["microsoftTeamsWebhookUrl"],
            None,
        ),
    ];

    for (name, version, sent, shown, secrets, change) in &cases {
        let _case = Case::new(name);
        create(&app, *version, sent).await;

        // Act
        let fetched = assert_put_back(&app, *version, sent, secrets).await;

        // Assert
        assert_eq!(split_id(*version, &fetched).0, *shown, "what GET shows");
        let list = get_list(&app, *version).await;
        assert_eq!(list["results"], json!([fetched]), "the PUT answer");
        if let Some((field, value)) = change {
            let mut changed = fetched.clone();
            changed[*field] = json!(value);
            let answer = replace(&app, *version, &changed).await;
            assert_eq!(answer["results"], json!([changed]), "the change is stored");
            for field in *secrets {
                assert_stored(&app, kind_of(sent), field, sent[*field].as_str()).await;
            }
        }
        remove(&app, *version, kind_of(sent)).await;
    }
}

#[tokio::test]
async fn every_secret_survives_a_get_then_put_round_trip_in_both_versions() {
    // Arrange
    let app = spawn_app().await;
    let cases: [(Value, &[&str]); 8] = [
        (
            json!({"type": "PAGER_DUTY", "serviceKey": "pd-service-key"}),
            &["serviceKey"],
        ),
        (
            json!({"type": "SLACK", "apiToken": "xoxb-slack-token", "teamName": "t", "channelName": "c"}),
            &["apiToken"],
        ),
        (
            json!({"type": "DATADOG", "apiKey": "0123456789abcdef"}),
            &["apiKey"],
        ),
        (
            json!({"type": "OPS_GENIE", "apiKey": "ops-genie-key"}),
            &["apiKey"],
        ),
        (
            json!({"type": "VICTOR_OPS", "apiKey": "victor-ops-key", "routingKey": "rk"}),
            &["apiKey", "routingKey"],
        ),
        (
            json!({"type": "WEBHOOK", "url": "https://h.example.com/a/b", "secret": "whs"}),
            &["url", "secret"],
        ),
        (
            json!({"type": "MICROSOFT_TEAMS", "microsoftTeamsWebhookUrl": "https://t.example.com/x"}),
            &["microsoftTeamsWebhookUrl"],
        ),
        (
            json!({"type": "PROMETHEUS", "username": "u", "password": "prom-pw", "serviceDiscovery": "http", "enabled": true}),
            &["password"],
        ),
    ];
    for (body, _) in &cases {
        create(&app, Ver::V1, body).await;
    }

    for version in [Ver::V1, Ver::V2] {
        for (body, secrets) in &cases {
            // Act and assert
            assert_put_back(&app, version, body, secrets).await;
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
    let (status, head, body) = raw_http(&app, "GET", &app.v2("")).await;

    // Assert
    assert_eq!(status, 406, "body: {body}");
    assert!(
        head.contains("content-type: application/json\r\n"),
        "head: {head}"
    );
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body, AtlasError::InvalidVersionDate.body());
}

#[tokio::test]
async fn bad_v2_versions_unknown_types_and_bad_group_ids_are_refused_and_change_nothing() {
    use AtlasError::*;
    use Ver::{V1, V2};
    let webhook = r#"{"type":"WEBHOOK","url":"https://h.example.com/x"}"#;
    let flowdock = r#"{"type":"FLOWDOCK","flowName":"f","apiToken":"t","orgName":"o"}"#;
    let datadog = r#"{"type":"DATADOG","apiKey":"ff"}"#;
    let hip_chat = r#"{"type":"HIP_CHAT","notificationToken":"t","roomName":"r"}"#;
    let old = "application/vnd.atlas.2022-12-31+json";
    let mut cases = vec![
        (
            "v2_with_a_version_date_before_2023_01_01_is_406",
            get(V2, "").header("accept", old),
            InvalidVersionDate,
        ),
        (
            "v2_with_a_version_date_before_2023_01_01_is_406",
            post(V2, "WEBHOOK", webhook).header("accept", old),
            InvalidVersionDate,
        ),
        (
            "v2_errors_are_application_json",
            get(V2, "SLACK"),
            NotConfigured("SLACK"),
        ),
        (
            "v2_errors_are_application_json",
            post(V2, "SLACK", "{"),
            MalformedJson,
        ),
        (
            "v2_errors_are_application_json",
            get(V2, "FOO"),
            InvalidEnumValue("FOO"),
        ),
        (
            "flowdock_is_an_unknown_type_in_v2_paths",
            get(V2, "FLOWDOCK"),
            InvalidEnumValue("FLOWDOCK"),
        ),
        (
            "flowdock_is_an_unknown_type_in_v2_paths",
            post(V2, "FLOWDOCK", flowdock),
            InvalidEnumValue("FLOWDOCK"),
        ),
        (
            "flowdock_is_an_unknown_type_in_v2_paths",
            put(V2, "FLOWDOCK", flowdock),
            InvalidEnumValue("FLOWDOCK"),
        ),
        (
            "flowdock_is_an_unknown_type_in_v2_paths",
            delete(V2, "FLOWDOCK"),
            InvalidEnumValue("FLOWDOCK"),
        ),
        (
            "an_unknown_type_in_the_path_is_400_invalid_enum_value",
            get(V1, "FOO"),
            InvalidEnumValue("FOO"),
        ),
        (
            "an_unknown_type_in_the_path_is_400_invalid_enum_value",
            post(V1, "FOO", r#"{"type":"FOO"}"#),
            InvalidEnumValue("FOO"),
        ),
        (
            "an_unknown_type_in_the_path_is_400_invalid_enum_value",
            delete(V2, "FOO"),
            InvalidEnumValue("FOO"),
        ),
        (
            "a_lowercase_type_in_the_path_is_an_unknown_type",
            get(V1, "datadog"),
            InvalidEnumValue("datadog"),
        ),
        (
            "a_lowercase_type_in_the_path_is_an_unknown_type",
            put(V1, "datadog", datadog),
            InvalidEnumValue("datadog"),
        ),
        (
            "hip_chat_is_400_hipchat_not_supported",
            post(V1, "HIP_CHAT", hip_chat),
            HipChatNotSupported,
        ),
        (
            "hip_chat_is_400_hipchat_not_supported",
            get(V2, "HIP_CHAT"),
            HipChatNotSupported,
        ),
        (
            "a_well_formed_group_id_that_does_not_exist_is_401_not_in_group",
            Call::new(
                Method::GET,
                path("v1.0", "000000000000000000000000", ""),
                None,
            ),
            NotInGroup,
        ),
    ];
    for accept in ["application/json", "*/*"] {
        let call = get(V2, "").header("accept", accept);
        cases.push((
            "v2_with_an_unversioned_accept_header_is_406",
            call,
            InvalidVersionDate,
        ));
    }
    for accept in [
        "application/vnd.atlas.2023-1-01+json",
        "application/vnd.atlas.2023-02-30+json",
        "application/vnd.atlas.20230101+json",
        "application/vnd.atlas.latest+json",
        "application/vnd.atlas.2023-01-01",
        "application/vnd.atlas.2023-01-01+xml",
    ] {
        let call = get(V2, "").header("accept", accept);
        cases.push((
            "v2_with_a_malformed_versioned_media_type_is_406",
            call,
            InvalidVersionDate,
        ));
    }
    for group in [
        "xyz",
        "5D791C84FF7A2522CC4F9AA1",
        "5d791c84ff7a2522cc4f9aa",
        "5d791c84ff7a2522cc4f9aa1f",
        "5d791c84ff7a2522cc4f9aag",
    ] {
        let call = Call::new(Method::GET, path("v1.0", group, ""), None);
        cases.push((
            "a_group_id_that_is_not_24_lowercase_hex_is_404_invalid_group_id",
            call,
            InvalidGroupId(group),
        ));
    }

    // Act and assert
    assert_refused(&cases).await;
}

#[tokio::test]
async fn success_responses_carry_the_content_type_of_their_version() {
    use Ver::{V1, V2};
    const V2_JSON: &str = "application/vnd.atlas.2023-01-01+json";
    // Arrange
    let app = spawn_app().await;
    let ops_genie = r#"{"type":"OPS_GENIE","apiKey":"opsgen4321"}"#;
    let victor_ops = r#"{"type":"VICTOR_OPS","apiKey":"victor8765"}"#;
    let mut cases = vec![
        (
            "v2_success_responses_carry_the_versioned_content_type",
            post(V2, "OPS_GENIE", ops_genie),
            V2_JSON,
        ),
        (
            "v2_success_responses_carry_the_versioned_content_type",
            put(V2, "OPS_GENIE", ops_genie),
            V2_JSON,
        ),
        (
            "v2_success_responses_carry_the_versioned_content_type",
            get(V2, "OPS_GENIE"),
            V2_JSON,
        ),
        (
            "v2_success_responses_carry_the_versioned_content_type",
            get(V2, ""),
            V2_JSON,
        ),
        (
            "v1_responses_are_application_json",
            post(V1, "VICTOR_OPS", victor_ops),
            "application/json",
        ),
        (
            "v1_responses_are_application_json",
            get(V1, "VICTOR_OPS"),
            "application/json",
        ),
    ];
    for accept in [
        "application/vnd.atlas.2023-01-01+json",
        "application/vnd.atlas.2024-08-05+json",
        "application/vnd.atlas.2025-02-19+json",
    ] {
        let call = get(V2, "").header("accept", accept);
        cases.push((
            "v2_with_a_later_version_date_resolves_to_2023_01_01",
            call,
            V2_JSON,
        ));
    }

    for (name, call, content_type) in &cases {
        let _case = Case::new(format_args!("{name}: {call}"));

        // Act
        let reply = call.send(&app).await;

        // Assert
        assert_eq!(reply.status.as_u16(), 200, "body: {}", reply.text);
        assert_eq!(reply.header("content-type").as_deref(), Some(*content_type));
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
    let pager_duty = json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"});
    let created = create(&app, Ver::V2, &pager_duty).await;
    let id = created["results"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert_object_id(&id);

    // Act
    let pager_duty = json!({"type": "PAGER_DUTY", "serviceKey": "9876543210"});
    let put_v2 = replace(&app, Ver::V2, &pager_duty).await;
    let pager_duty = json!({"type": "PAGER_DUTY", "serviceKey": "1111111111"});
    replace(&app, Ver::V1, &pager_duty).await;

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
    let pager_duty = json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"});
    create(&app, Ver::V2, &pager_duty).await;

    // Act
    let ops_genie = json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"});
    let list = replace(&app, Ver::V2, &ops_genie).await;

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
    let first = create(&app, Ver::V2, &body).await["results"][0]["id"].clone();
    let reply = app.client.delete(&app.v2("OPS_GENIE")).await;
    assert_eq!(reply.status.as_u16(), 204);

    // Act
    let second = create(&app, Ver::V2, &body).await["results"][0]["id"].clone();

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
    let ops_genie = json!({"id": sent, "type": "OPS_GENIE", "apiKey": "opsgen4321"});
    let v2 = create(&app, Ver::V2, &ops_genie).await;
    let pager_duty = json!({"id": sent, "type": "PAGER_DUTY", "serviceKey": "0123456789"});
    let v1 = create(&app, Ver::V1, &pager_duty).await;

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
    let victor_ops = json!({"type": "VICTOR_OPS", "apiKey": "victor8765"});

    // Act
    let ops_genie = json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"});
    let post = create(&app, Ver::V2, &ops_genie).await;
    let v1_post = create(&app, Ver::V1, &victor_ops).await;
    let v1_put = replace(&app, Ver::V1, &victor_ops).await;
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
async fn flowdock_created_in_v1_is_left_out_of_v2_lists_and_their_total_count() {
    // Arrange
    let app = spawn_app().await;
    let datadog = json!({"type": "DATADOG", "apiKey": "abcdef0123"});
    create(&app, Ver::V1, &datadog).await;
    let flowdock = json!({"type": "FLOWDOCK", "flowName": "f", "apiToken": "t", "orgName": "o"});
    create(&app, Ver::V1, &flowdock).await;

    // Act
    let ops_genie = json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"});
    let post = create(&app, Ver::V2, &ops_genie).await;
    let list = get_list(&app, Ver::V2).await;
    let page2 = ok(&app
        .client
        .get(&Ver::V2.path(&app, "?pageNum=2&itemsPerPage=1"))
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
    let new_relic = json!({"type": "NEW_RELIC", "licenseKey": "l", "accountId": "a", "writeToken": "w", "readToken": "r"});

    // Act
    let webhook = json!({"type": "WEBHOOK", "url": "https://h.example.com/x", "secret": "s"});
    create(&app, Ver::V2, &webhook).await;
    create(&app, Ver::V1, &new_relic).await;
    let webhook = json!({"type": "WEBHOOK", "url": "https://other.example.com/x"});
    replace(&app, Ver::V1, &webhook).await;
    let deleted = app.client.delete(&app.v2("NEW_RELIC")).await;
    let victor_ops = json!({"type": "VICTOR_OPS", "apiKey": "victor8765"});
    create(&app, Ver::V2, &victor_ops).await;

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
    AtlasError::NotConfigured("NEW_RELIC").assert(&app.client.get(&app.v1("NEW_RELIC")).await);
}

// ---------------------------------------------------------------------------------------------
// §3, §5: errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_path_is_404_resource_not_found_naming_the_path_without_its_query() {
    // Arrange: (request, the path the error names).
    let app = spawn_app().await;
    let alerts = format!("/api/atlas/v1.0/groups/{}/alerts", app.group);
    let cases = [
        (
            format!("/api/atlas/v1.0/groups/{}/clusters", app.group),
            true,
            None,
        ),
        (format!("{}/extra", app.v1("DATADOG")), true, None),
        (
            format!("/api/atlas/v3/groups/{}/integrations", app.group),
            true,
            None,
        ),
        ("/nothing/here".to_owned(), true, None),
        // an_unknown_path_names_the_path_without_its_query
        (
            format!("{alerts}?pretty=false&pageNum=2"),
            true,
            Some(alerts.as_str()),
        ),
        // an_unknown_path_is_404_even_without_credentials
        ("/nothing/here".to_owned(), false, None),
    ];

    for (path, signed, named) in &cases {
        let _case = Case::new(format_args!("GET {path} signed={signed}"));
        let call = Call::new(Method::GET, path.as_str(), None);
        let call = if *signed { call } else { call.anonymous() };

        // Act
        let reply = call.send(&app).await;

        // Assert
        AtlasError::ResourceNotFound(named.unwrap_or(path)).assert(&reply);
    }
}

#[tokio::test]
async fn a_wrong_method_is_405_with_an_allow_header_even_without_credentials() {
    // Arrange: (request, the methods its Allow header names).
    let one: &[&str] = &["DELETE", "GET", "POST", "PUT"];
    let datadog = r#"{"type":"DATADOG","apiKey":"ff"}"#;
    let patch = |version: Ver, body: Option<&str>| {
        let path = version.path_in("{group}", "DATADOG");
        Call::new(Method::PATCH, path, body.map(str::to_owned))
    };
    let mut cases = vec![
        // patch_on_an_integration_is_405_with_an_allow_header
        (patch(Ver::V1, Some(datadog)), one),
        // a_wrong_method_is_405_even_without_credentials
        (patch(Ver::V2, None).anonymous(), one),
    ];
    // writes_on_the_list_path_are_405_allowing_only_get
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let call = Call::new(
            method,
            Ver::V1.path_in("{group}", ""),
            Some(datadog.to_owned()),
        );
        cases.push((call, &["GET"]));
    }
    let (app, before) = app_with_datadog().await;

    for (call, allowed) in &cases {
        let _case = Case::new(call);

        // Act
        let reply = call.send(&app).await;

        // Assert
        AtlasError::MethodNotAllowed(call.method.as_str()).assert(&reply);
        let allow = reply.header("allow").expect("an Allow header");
        let mut methods: Vec<&str> = allow.split(',').map(str::trim).collect();
        methods.sort_unstable();
        assert_eq!(methods, *allowed, "Allow: {allow}");
        assert_unchanged(&app, &before).await;
    }
}

/// `{"a":{"a":...1...}}` with `depth` objects (the top-level object is level 1), inside a
/// valid Datadog body.
fn nested_body(depth: usize) -> String {
    let inner = format!("{}1{}", r#"{"a":"#.repeat(depth - 1), "}".repeat(depth - 1));
    format!(r#"{{"type":"DATADOG","apiKey":"abcdef","a":{inner}}}"#)
}

#[tokio::test]
async fn bodies_that_are_not_one_json_object_within_the_limits_are_refused() {
    use AtlasError::*;
    use Ver::V1;
    let head = r#"{"type":"DATADOG","apiKey":""#;
    let tail = r#""}"#;
    let at_limit = format!(
        "{head}{}{tail}",
        "a".repeat(65_536 - head.len() - tail.len())
    );
    assert_eq!(at_limit.len(), 65_536);
    let too_large = format!(r#"{{"type":"DATADOG","apiKey":"{}"}}"#, "a".repeat(70_000));
    let put_datadog = |body: &str| put(V1, "DATADOG", body);
    let mut cases = vec![
        (
            "an_empty_body_is_malformed_json",
            post(V1, "OPS_GENIE", ""),
            MalformedJson,
        ),
        (
            "an_empty_body_is_malformed_json",
            put_datadog(""),
            MalformedJson,
        ),
        (
            "a_put_without_any_body_is_malformed_json",
            Call::new(Method::PUT, V1.path_in("{group}", "DATADOG"), None),
            MalformedJson,
        ),
        (
            "a_json_array_body_is_malformed_json",
            put_datadog(r#"[{"type":"DATADOG","apiKey":"ff"}]"#),
            MalformedJson,
        ),
        (
            "a_truncated_json_body_is_malformed_json",
            put_datadog(r#"{"type":"DATADOG","apiKey":"ff""#),
            MalformedJson,
        ),
        (
            "trailing_data_after_the_json_object_is_malformed_json",
            put_datadog(r#"{"type":"DATADOG","apiKey":"ff"} {}"#),
            MalformedJson,
        ),
        (
            "a_body_nested_65_levels_deep_is_malformed_json",
            put_datadog(&nested_body(65)),
            MalformedJson,
        ),
        // It gets past the parser, to the unknown attribute `a`.
        (
            "a_body_nested_64_levels_deep_is_parsed",
            put_datadog(&nested_body(64)),
            InvalidAttribute("a"),
        ),
        (
            "a_body_over_65536_bytes_is_413_request_body_too_large",
            put_datadog(&too_large),
            TooLarge,
        ),
        (
            "a_body_of_exactly_65536_bytes_is_read",
            put_datadog(&at_limit),
            Settings("DATADOG", "apiKey must be at most 4096 bytes"),
        ),
        (
            "a_body_of_exactly_65536_bytes_is_read",
            put_datadog(&format!("{at_limit} ")),
            TooLarge,
        ),
    ];
    for body in [r#""x""#, "null", "42", "true"] {
        cases.push((
            "a_json_string_or_null_body_is_malformed_json",
            put_datadog(body),
            MalformedJson,
        ));
    }

    // Act and assert
    assert_refused(&cases).await;
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
    AtlasError::MalformedJson.assert(&reply);
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn attributes_that_break_the_contracts_rules_are_refused() {
    use AtlasError::*;
    use Ver::{V1, V2};
    let put_datadog = |body: &str| put(V1, "DATADOG", body);
    let bytes_4096 = "apiKey must be at most 4096 bytes";
    let mut cases = vec![
        (
            "an_unknown_field_is_invalid_attribute_naming_it",
            put_datadog(r#"{"type":"DATADOG","apiKey":"abcdef","colour":"red"}"#),
            InvalidAttribute("colour"),
        ),
        (
            "a_field_of_another_type_is_invalid_attribute",
            put_datadog(r#"{"type":"DATADOG","apiKey":"abcdef","serviceKey":"x"}"#),
            InvalidAttribute("serviceKey"),
        ),
        (
            "scheme_is_an_unknown_field_outside_prometheus",
            put_datadog(r#"{"type":"DATADOG","apiKey":"abcdef","scheme":"https"}"#),
            InvalidAttribute("scheme"),
        ),
        (
            "a_number_where_a_string_is_expected_is_invalid_json_attribute",
            put_datadog(r#"{"type":"DATADOG","apiKey":1234567890}"#),
            InvalidJsonAttribute("apiKey"),
        ),
        (
            "a_non_string_enum_value_is_invalid_json_attribute",
            put_datadog(r#"{"type":"DATADOG","apiKey":"abcdef","region":["US"]}"#),
            InvalidJsonAttribute("region"),
        ),
        (
            "a_missing_required_field_is_missing_attribute",
            put_datadog(r#"{"type":"DATADOG","region":"US"}"#),
            MissingAttribute("apiKey"),
        ),
        (
            "a_null_required_field_counts_as_missing",
            put_datadog(r#"{"type":"DATADOG","apiKey":null}"#),
            MissingAttribute("apiKey"),
        ),
        (
            "an_empty_required_string_breaks_the_type_rule",
            put_datadog(r#"{"type":"DATADOG","apiKey":""}"#),
            Settings("DATADOG", "apiKey must not be empty"),
        ),
        (
            "an_empty_required_string_breaks_the_type_rule",
            post(V2, "OPS_GENIE", r#"{"type":"OPS_GENIE","apiKey":""}"#),
            Settings("OPS_GENIE", "apiKey must not be empty"),
        ),
        (
            "a_string_over_4096_bytes_breaks_the_type_rule",
            put(
                V1,
                "DATADOG",
                json!({"type": "DATADOG", "apiKey": "a".repeat(4097)}),
            ),
            Settings("DATADOG", bytes_4096),
        ),
        (
            // 2049 two-byte characters: 4098 bytes, under 4096 characters.
            "a_string_over_4096_bytes_breaks_the_type_rule",
            post(
                V1,
                "OPS_GENIE",
                json!({"type": "OPS_GENIE", "apiKey": "é".repeat(2049)}),
            ),
            Settings("OPS_GENIE", bytes_4096),
        ),
    ];
    for kind in ["SLACK", "datadog", "FOO"] {
        let call = put(V1, "DATADOG", json!({"type": kind, "apiKey": "abcdef"}));
        let name = "a_type_in_the_body_that_differs_from_the_path_is_invalid_attribute_type";
        cases.push((name, call, InvalidAttribute("type")));
    }

    // Act and assert
    assert_refused(&cases).await;
}

// --- precedence (§3: the first applicable error in the contract's order wins) ---

#[tokio::test]
async fn the_first_applicable_error_in_the_contracts_order_wins() {
    use AtlasError::*;
    use Ver::V1;
    let put_datadog = |body: &str| put(V1, "DATADOG", body);
    let post_prometheus = |body: &str| post(V1, "PROMETHEUS", body);
    let too_large = format!(r#"{{"type":"DATADOG","apiKey":"{}"}}"#, "a".repeat(70_000));
    let hex = "apiKey must be a hexadecimal string";
    // Among fields, JSON order is the reverse of the table's.
    let order = "among_fields_the_first_in_the_contracts_table_order_wins";
    let cases = [
        (
            "an_unknown_field_wins_over_a_missing_field",
            put_datadog(r#"{"type":"DATADOG","colour":"red"}"#),
            InvalidAttribute("colour"),
        ),
        (
            "a_type_mismatch_wins_over_an_unknown_field",
            put_datadog(r#"{"colour":"red","type":"SLACK"}"#),
            InvalidAttribute("type"),
        ),
        (
            "a_wrong_json_type_wins_over_a_missing_field",
            post_prometheus(r#"{"type":"PROMETHEUS","enabled":"yes"}"#),
            InvalidJsonAttribute("enabled"),
        ),
        (
            "a_missing_field_wins_over_a_bad_enum_value",
            post(V1, "PAGER_DUTY", r#"{"type":"PAGER_DUTY","region":"XX"}"#),
            MissingAttribute("serviceKey"),
        ),
        (
            "a_bad_enum_value_wins_over_a_broken_type_rule",
            put_datadog(r#"{"type":"DATADOG","apiKey":"not-hex","region":"XX"}"#),
            InvalidEnumValue("XX"),
        ),
        (
            "a_broken_type_rule_wins_over_the_409_of_an_existing_type",
            post(V1, "DATADOG", r#"{"type":"DATADOG","apiKey":"not-hex"}"#),
            Settings("DATADOG", hex),
        ),
        (
            order,
            post_prometheus(r#"{"enabled":"yes","username":5}"#),
            InvalidJsonAttribute("username"),
        ),
        (
            order,
            post_prometheus(r#"{"enabled":true}"#),
            MissingAttribute("username"),
        ),
        (
            order,
            post_prometheus(
                r#"{"serviceDiscovery":"dns","username":"u","password":"p","enabled":true}"#,
            ),
            InvalidEnumValue("dns"),
        ),
        (
            order,
            post(V1, "NEW_RELIC", r#"{"readToken":"r","writeToken":"w"}"#),
            MissingAttribute("licenseKey"),
        ),
        (
            "a_bad_group_id_wins_over_an_unknown_type",
            Call::new(
                Method::GET,
                "/api/atlas/v1.0/groups/xyz/integrations/FOO",
                None,
            ),
            InvalidGroupId("xyz"),
        ),
        (
            "a_bad_v2_version_wins_over_a_bad_group_id",
            Call::new(Method::GET, "/api/atlas/v2/groups/xyz/integrations", None)
                .header("accept", "application/json"),
            InvalidVersionDate,
        ),
        (
            "project_access_wins_over_an_unknown_type",
            Call::new(
                Method::GET,
                path("v1.0", "000000000000000000000000", "FOO"),
                None,
            ),
            NotInGroup,
        ),
        (
            "an_unknown_type_wins_over_a_bad_query_and_a_bad_body",
            post(V1, "FOO?itemsPerPage=0", "{"),
            InvalidEnumValue("FOO"),
        ),
        (
            "a_bad_query_parameter_wins_over_a_bad_body",
            put(V1, "DATADOG?itemsPerPage=0", "{"),
            InvalidQueryParameter("itemsPerPage"),
        ),
        (
            "a_bad_query_parameter_wins_over_a_bad_body",
            post(V1, "OPS_GENIE?pageNum=0", r#"{"colour":"red"}"#),
            InvalidQueryParameter("pageNum"),
        ),
        (
            "a_bad_query_parameter_wins_over_an_oversized_body",
            put(V1, "DATADOG?pretty=1", &too_large),
            InvalidQueryParameter("pretty"),
        ),
        (
            "an_oversized_body_wins_over_malformed_json",
            put_datadog(&"{".repeat(70_000)),
            TooLarge,
        ),
        (
            "malformed_json_wins_over_a_type_mismatch",
            put_datadog(r#"{"type":"SLACK","apiKey":}"#),
            MalformedJson,
        ),
        (
            "the_409_comes_only_after_every_body_check",
            post(V1, "DATADOG", r#"{"type":"DATADOG"}"#),
            MissingAttribute("apiKey"),
        ),
        (
            "the_409_comes_only_after_every_body_check",
            post(V1, "DATADOG", r#"{"type":"DATADOG","apiKey":"ff","x":1}"#),
            InvalidAttribute("x"),
        ),
    ];

    // Act and assert
    assert_refused(&cases).await;
}

// ---------------------------------------------------------------------------------------------
// §6: query parameters
// ---------------------------------------------------------------------------------------------

/// Five integrations, created in this order.
const FIVE: [&str; 5] = ["WEBHOOK", "DATADOG", "SLACK", "OPS_GENIE", "PAGER_DUTY"];

/// A project with the [`FIVE`] integrations.
async fn app_with_five() -> TestApp {
    let app = spawn_app().await;
    for body in [
        json!({"type": "WEBHOOK", "url": "https://h.example.com/x"}),
        json!({"type": "DATADOG", "apiKey": "abcdef0123"}),
        json!({"type": "SLACK", "apiToken": "xoxb-12345", "teamName": "t"}),
        json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"}),
        json!({"type": "PAGER_DUTY", "serviceKey": "0123456789"}),
    ] {
        create(&app, Ver::V1, &body).await;
    }
    app
}

#[tokio::test]
async fn pages_list_the_right_types_with_exact_links_and_count() {
    use Ver::{V1, V2};
    // Arrange: (request, the types it lists, its links as (rel, pageNum, itemsPerPage), its
    // totalCount if it has one).
    let app = app_with_five().await;
    let victor_ops = r#"{"type":"VICTOR_OPS","apiKey":"victor8765"}"#;
    type Row<'a> = (Call, &'a [&'a str], &'a [(&'a str, u64, u64)], Option<u64>);
    let cases: Vec<Row<'_>> = vec![
        // pages_of_two_over_five_integrations_have_exact_links
        (
            get(V1, "?pageNum=1&itemsPerPage=2"),
            &["WEBHOOK", "DATADOG"],
            &[("self", 1, 2), ("next", 2, 2)],
            Some(5),
        ),
        (
            get(V1, "?pageNum=2&itemsPerPage=2"),
            &["SLACK", "OPS_GENIE"],
            &[("self", 2, 2), ("previous", 1, 2), ("next", 3, 2)],
            Some(5),
        ),
        (
            get(V1, "?pageNum=3&itemsPerPage=2"),
            &["PAGER_DUTY"],
            &[("self", 3, 2), ("previous", 2, 2)],
            Some(5),
        ),
        // a_page_past_the_last_is_200_with_no_results
        (
            get(V1, "?pageNum=4&itemsPerPage=2"),
            &[],
            &[("self", 4, 2), ("previous", 3, 2)],
            Some(5),
        ),
        (
            get(V1, "?pageNum=1000"),
            &[],
            &[("self", 1000, 100), ("previous", 999, 100)],
            Some(5),
        ),
        // an_exact_last_page_has_no_next_link
        (
            get(V1, "?itemsPerPage=5"),
            &FIVE,
            &[("self", 1, 5)],
            Some(5),
        ),
        // the_largest_page_size_is_500
        (
            get(V1, "?itemsPerPage=500"),
            &FIVE,
            &[("self", 1, 500)],
            Some(5),
        ),
        // unknown_query_parameters_are_ignored_and_left_out_of_links
        (
            get(V1, "?foo=bar&itemsPerPage=3&pretty=false&includeCount=true"),
            &["WEBHOOK", "DATADOG", "SLACK"],
            &[("self", 1, 3), ("next", 2, 3)],
            Some(5),
        ),
        // include_count_false_omits_total_count
        (
            get(V1, "?includeCount=false"),
            &FIVE,
            &[("self", 1, 100)],
            None,
        ),
        (
            get(V2, "?includeCount=true"),
            &FIVE,
            &[("self", 1, 100)],
            Some(5),
        ),
        // paging_applies_to_the_post_and_put_lists
        (
            post(V1, "VICTOR_OPS?pageNum=3&itemsPerPage=2", victor_ops),
            &["PAGER_DUTY", "VICTOR_OPS"],
            &[("self", 3, 2), ("previous", 2, 2)],
            Some(6),
        ),
        (
            put(
                V1,
                "VICTOR_OPS?itemsPerPage=4&includeCount=false",
                victor_ops,
            ),
            &["WEBHOOK", "DATADOG", "SLACK", "OPS_GENIE"],
            &[("self", 1, 4), ("next", 2, 4)],
            None,
        ),
    ];

    for (call, listed, link_pages, total) in &cases {
        let _case = Case::new(call);
        let path = call.path(&app);
        let path = path.split_once('?').map_or(path.as_str(), |(path, _)| path);

        // Act
        let body = ok(&call.send(&app).await);

        // Assert
        assert_eq!(types(&body), *listed, "types");
        let expected: BTreeMap<String, String> = link_pages
            .iter()
            .map(|(rel, page, per)| ((*rel).to_owned(), href(&app, path, *page, *per)))
            .collect();
        assert_eq!(links(&body), expected, "links");
        assert_eq!(
            body.get("totalCount"),
            total.map(Value::from).as_ref(),
            "totalCount"
        );
    }
    assert_eq!(
        href(&app, &app.v1(""), 2, 2),
        format!(
            "http://127.0.0.1:{}/api/atlas/v1.0/groups/{}/integrations?pageNum=2&itemsPerPage=2",
            app.addr.port(),
            app.group
        )
    );
}

#[tokio::test]
async fn an_empty_project_lists_no_results_with_a_self_link_and_a_zero_count() {
    // Arrange
    let app = spawn_app().await;

    for version in [Ver::V1, Ver::V2] {
        // Act
        let list = get_list(&app, version).await;

        // Assert
        let path = version.path(&app, "");
        assert_eq!(
            list,
            json!({"links": self_links(&app, &path), "results": [], "totalCount": 0})
        );
    }
}

#[tokio::test]
async fn pretty_true_indents_the_json() {
    // Arrange
    let app = app_with_five().await;

    // Act
    let plain = app.client.get(&app.v1("")).await;
    let pretty = app.client.get(&Ver::V1.path(&app, "?pretty=true")).await;
    let pretty_one = app
        .client
        .get(&Ver::V1.path(&app, "DATADOG?pretty=true"))
        .await;
    let pretty_error = app.client.get(&Ver::V1.path(&app, "FOO?pretty=true")).await;

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
    AtlasError::InvalidEnumValue("FOO").assert(&pretty_error);
}

#[tokio::test]
async fn envelope_true_wraps_bodies_and_errors_with_their_status_and_envelope_false_does_not() {
    use Ver::V1;
    // Arrange: (request, HTTP status, body; null for an empty one).
    let (app, before) = app_with_datadog().await;
    let ops_genie = r#"{"type":"OPS_GENIE","apiKey":"opsgen4321"}"#;
    let shown = json!({"type": "OPS_GENIE", "apiKey": "******4321", "region": "US"});
    let datadog = json!({"type": "DATADOG", "apiKey": "******0123", "region": "EU"});
    let both = json!([datadog, shown]);
    let cases = [
        (
            post(V1, "OPS_GENIE", ops_genie),
            200,
            json!({"links": self_links(&app, &app.v1("OPS_GENIE")), "results": both, "totalCount": 2}),
        ),
        // envelope_true_adds_the_status_to_a_list
        (
            get(V1, "?envelope=true"),
            200,
            json!({"links": self_links(&app, &app.v1("")), "results": both, "totalCount": 2, "status": 200}),
        ),
        // envelope_true_wraps_one_integration
        (
            get(V1, "OPS_GENIE?envelope=true"),
            200,
            json!({"status": 200, "content": shown}),
        ),
        // envelope_true_wraps_an_error_and_keeps_the_http_status
        (
            post(
                V1,
                "DATADOG?envelope=true",
                r#"{"type":"DATADOG","apiKey":"abcdef"}"#,
            ),
            409,
            json!({"status": 409, "content": AtlasError::AlreadyConfigured("DATADOG").body()}),
        ),
        // envelope_true_wraps_a_query_parameter_error
        (
            get(V1, "?envelope=true&itemsPerPage=0"),
            400,
            json!({"status": 400, "content": AtlasError::InvalidQueryParameter("itemsPerPage").body()}),
        ),
        // envelope_false_leaves_bodies_unwrapped
        (get(V1, "OPS_GENIE?envelope=false"), 200, shown.clone()),
        (delete(V1, "OPS_GENIE?envelope=false"), 204, Value::Null),
        (
            post(V1, "OPS_GENIE", ops_genie),
            200,
            json!({"links": self_links(&app, &app.v1("OPS_GENIE")), "results": both, "totalCount": 2}),
        ),
        // envelope_true_on_delete_answers_200_with_status_204
        (
            delete(V1, "OPS_GENIE?envelope=true"),
            200,
            json!({"status": 204, "content": {}}),
        ),
        (
            get(V1, "OPS_GENIE"),
            404,
            AtlasError::NotConfigured("OPS_GENIE").body(),
        ),
    ];

    for (call, status, expected) in &cases {
        let _case = Case::new(call);

        // Act
        let reply = call.send(&app).await;

        // Assert
        assert_eq!(reply.status.as_u16(), *status, "body: {}", reply.text);
        if expected.is_null() {
            assert_eq!(reply.text, "", "no body");
        } else {
            assert_eq!(reply.json(), *expected);
        }
    }
    assert_unchanged(&app, &before).await;
}

#[tokio::test]
async fn invalid_query_parameter_values_are_400_naming_the_parameter() {
    use Ver::{V1, V2};
    let mut cases = vec![
        (
            "query_parameters_are_checked_on_every_operation",
            get(V1, "DATADOG?pretty=1"),
            "pretty",
        ),
        (
            "query_parameters_are_checked_on_every_operation",
            delete(V2, "DATADOG?itemsPerPage=501"),
            "itemsPerPage",
        ),
    ];
    for (query, name) in [
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
    ] {
        cases.push((
            "invalid_query_parameter_values",
            get(V1, &format!("?{query}")),
            name,
        ));
    }
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(case, call, name)| (case, call, AtlasError::InvalidQueryParameter(name)))
        .collect();

    // Act and assert
    assert_refused(&cases).await;
}

#[tokio::test]
async fn links_use_the_requests_host_header() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app
        .client
        .get_with(&app.v1(""), &[("host", "atlas.internal:9443")])
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
    let ops_genie = json!({"type": "OPS_GENIE", "apiKey": "opsgen4321"});
    let post = create(&app, Ver::V2, &ops_genie).await;

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
    let flowdock = json!({"type": "FLOWDOCK", "flowName": "myFlowName", "apiToken": "1234567890", "orgName": "myOrg"});

    // Act
    let body = create(&app, Ver::V1, &flowdock).await;

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
async fn lists_keep_creation_order_through_replacements_deletions_and_pages() {
    use Ver::{V1, V2};
    // Arrange: (name, writes to the project of `app_with_five`, the order every list then
    // shows: the list answers of those writes, both versions' lists, and pages of one).
    let mut five_and_victor_ops = FIVE.to_vec();
    five_and_victor_ops.push("VICTOR_OPS");
    let cases = [
        ("lists_are_in_creation_order", vec![], FIVE.to_vec()),
        (
            "a_put_that_replaces_keeps_the_position",
            vec![
                put(
                    V1,
                    "DATADOG",
                    json!({"type": "DATADOG", "apiKey": "fedcba9876", "region": "EU"}),
                ),
                put(
                    V2,
                    "WEBHOOK",
                    json!({"type": "WEBHOOK", "url": "https://new.example.com/y"}),
                ),
            ],
            FIVE.to_vec(),
        ),
        (
            "a_put_that_creates_goes_to_the_end",
            vec![put(
                V1,
                "VICTOR_OPS",
                json!({"type": "VICTOR_OPS", "apiKey": "victor8765"}),
            )],
            five_and_victor_ops,
        ),
        (
            "delete_then_post_moves_the_type_to_the_end",
            vec![
                delete(V1, "DATADOG"),
                post(
                    V1,
                    "DATADOG",
                    json!({"type": "DATADOG", "apiKey": "abcdef0123"}),
                ),
            ],
            vec!["WEBHOOK", "SLACK", "OPS_GENIE", "PAGER_DUTY", "DATADOG"],
        ),
        (
            "the_order_is_stable_across_pages",
            vec![put(
                V1,
                "SLACK",
                json!({"type": "SLACK", "apiToken": "xoxb-67890", "teamName": "t2"}),
            )],
            FIVE.to_vec(),
        ),
    ];

    for (name, writes, order) in &cases {
        let _case = Case::new(name);
        let app = app_with_five().await;

        // Act
        for write in writes {
            let reply = write.send(&app).await;
            if write.method == Method::DELETE {
                assert_eq!(reply.status.as_u16(), 204, "{write}: {}", reply.text);
            } else {
                assert_eq!(types(&ok(&reply)), *order, "the answer to {write}");
            }
        }

        // Assert
        assert_eq!(types(&get_list(&app, V1).await), *order, "v1.0 list");
        assert_eq!(types(&get_list(&app, V2).await), *order, "v2 list");
        let mut seen = Vec::new();
        for n in 1..=order.len() {
            let page = V1.path(&app, &format!("?pageNum={n}&itemsPerPage=1"));
            seen.extend(types(&ok(&app.client.get(&page).await)));
        }
        assert_eq!(seen, *order, "pages of one");
    }
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
        AtlasError::AlreadyConfigured("DATADOG").assert(reply);
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
