//! The seed document (`shared/spec/000_ff8cef54c4ea0c46.txt`, "Create a Configuration for a
//! Third-Party Service Integration") and the v1.0 reference examples
//! (`shared/spec/reference/v1-docs-json-examples.md`) replayed against the server: same requests,
//! and the answers compared with the documented responses field by field. Only the origin
//! (`https://cloud.mongodb.com`) and the project id differ, as they must.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{ok, spawn_app, TestApp};

/// The project id of the documentation's examples.
const DOC_GROUP: &str = "5d791c84ff7a2522cc4f9aa1";
/// The origin of the documentation's examples.
const DOC_ORIGIN: &str = "https://cloud.mongodb.com";

/// The seed's example request body, byte for byte.
const SEED_FLOWDOCK_BODY: &str = r#"{ "type": "FLOWDOCK", "flowName": "myFlowName", "apiToken": "1234567890", "orgName": "myOrg" }"#;

/// The seed's example response, verbatim.
const SEED_RESPONSE: &str = r#"{
"links": [
{
"href": "https://cloud.mongodb.com/api/atlas/v1.0/groups/5d791c84ff7a2522cc4f9aa1/integrations/FLOWDOCK?pageNum=1&itemsPerPage=100",
"rel": "self"
}
],
"results": [
{
"apiKey": "******7890",
"region": "US",
"type": "DATADOG"
},
{
"apiToken": "******7890",
"channelName": "My Channel",
"teamName": "My Team",
"type": "SLACK"
},
{
"apiToken": "1234567890",
"flowName": "myFlowName",
"orgName": "myOrg",
"type": "FLOWDOCK"
}
],
"totalCount": 3
}"#;

/// A documented example with its origin and project id replaced by the test server's.
fn documented(app: &TestApp, text: &str) -> Value {
    let text = text
        .replace(DOC_ORIGIN, &app.base)
        .replace(DOC_GROUP, &app.group);
    serde_json::from_str(&text).expect("a documented example is JSON")
}

/// The seed's project: DATADOG and SLACK configured, in that order.
async fn seed_project() -> TestApp {
    let app = spawn_app().await;
    for (kind, body) in [
        (
            "DATADOG",
            r#"{"type":"DATADOG","apiKey":"1234567890","region":"US"}"#,
        ),
        (
            "SLACK",
            r#"{"type":"SLACK","apiToken":"1234567890","teamName":"My Team","channelName":"My Channel"}"#,
        ),
    ] {
        let reply = app.client.post(&app.v1(kind), body).await;
        assert_eq!(reply.status.as_u16(), 200, "{kind}: {}", reply.text);
    }
    app
}

/// Compares an answer with a documented list response, field by field, then whole.
fn assert_documented_list(got: &Value, expected: &Value) {
    assert_eq!(got["links"], expected["links"], "links");
    let got_results = got["results"].as_array().expect("results");
    let expected_results = expected["results"].as_array().expect("documented results");
    assert_eq!(
        got_results.len(),
        expected_results.len(),
        "number of results: {got}"
    );
    for (i, (g, e)) in got_results.iter().zip(expected_results).enumerate() {
        assert_eq!(g, e, "results[{i}]");
    }
    assert_eq!(got["totalCount"], expected["totalCount"], "totalCount");
    assert_eq!(got, expected, "the whole response");
}

#[tokio::test]
async fn the_seed_example_post_answers_the_seed_example_response() {
    // Arrange
    let app = seed_project().await;

    // Act
    let reply = app
        .client
        .post(&app.v1("FLOWDOCK"), SEED_FLOWDOCK_BODY)
        .await;

    // Assert
    assert_documented_list(&ok(&reply), &documented(&app, SEED_RESPONSE));
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
}

/// Runs curl exactly as the seed's example line, plus `-sS` (quiet) and `-w` (to read the
/// status); `--noproxy` keeps any proxy setting of the environment out of the way. Asserts the
/// status and returns the body as JSON.
async fn curl(app: &TestApp, method: &str, path: &str, body: Option<&str>, status: u16) -> Value {
    let mut command = tokio::process::Command::new("curl");
    command
        .arg("-X")
        .arg(method)
        .arg("-u")
        .arg(format!("{}:{}", app.public_key, app.private_key))
        .arg("--digest")
        .arg(format!("{}{path}", app.base));
    if let Some(body) = body {
        command
            .arg("-H")
            .arg("Content-Type: application/json")
            .arg("-d")
            .arg(body);
    }
    command.args(["-sS", "--noproxy", "*", "-w", "\n%{http_code}"]);
    let output = command
        .output()
        .await
        .expect("curl runs (is it installed?)");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert!(
        output.status.success(),
        "curl failed: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (text, got) = stdout.rsplit_once('\n').expect("the status line of -w");
    assert_eq!(
        got,
        status.to_string(),
        "{method} {path}: status; body: {text}"
    );
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// The seed's example curl command (a POST of [`SEED_FLOWDOCK_BODY`]), asserted to answer 200.
async fn curl_seed_example(app: &TestApp) -> Value {
    let path = app.v1("FLOWDOCK");
    curl(app, "POST", &path, Some(SEED_FLOWDOCK_BODY), 200).await
}

#[tokio::test]
async fn the_seed_example_curl_command_answers_the_seed_example_response() {
    // Arrange
    let app = seed_project().await;

    // Act
    let got = curl_seed_example(&app).await;

    // Assert
    assert_documented_list(&got, &documented(&app, SEED_RESPONSE));
}

#[tokio::test]
async fn the_seed_example_curl_command_run_twice_is_409() {
    // Arrange
    let app = seed_project().await;
    curl_seed_example(&app).await;

    let other = SEED_FLOWDOCK_BODY.replace("myFlowName", "otherFlow");

    // Act
    let got = curl(&app, "POST", &app.v1("FLOWDOCK"), Some(&other), 409).await;

    // Assert
    assert_eq!(
        got,
        json!({"detail": "The integration of type 'FLOWDOCK' is already configured for this group.",
               "error": 409, "errorCode": "INTEGRATION_ALREADY_CONFIGURED", "parameters": ["FLOWDOCK"], "reason": "Conflict"})
    );
    let list = ok(&app.client.get(&app.v1("")).await);
    assert_eq!(
        list["results"],
        documented(&app, SEED_RESPONSE)["results"],
        "the first FLOWDOCK is kept"
    );
}

#[tokio::test]
async fn the_reference_get_all_example_lists_the_seed_project() {
    // Arrange
    let app = seed_project().await;
    // The reference's get-all example, with its trailing comma removed and its Datadog region
    // "US1" read as "US": the reference notes both as slips of the hand-written docs (the
    // request enum and the get-one example use "US").
    let expected = r#"{
     "links": [{"href": "https://cloud.mongodb.com/api/atlas/v1.0/groups/5d791c84ff7a2522cc4f9aa1/integrations?pageNum=1&itemsPerPage=100", "rel": "self"}],
     "results": [
         {"apiKey": "******7890", "region": "US", "type": "DATADOG"},
         {"apiToken": "******7890", "channelName": "My Channel", "teamName": "My Team", "type": "SLACK"}
     ],
     "totalCount": 2
 }"#;

    // Act
    let got = curl(&app, "GET", &app.v1(""), None, 200).await;

    // Assert
    assert_documented_list(&got, &documented(&app, expected));
}

#[tokio::test]
async fn the_reference_get_one_example_shows_the_datadog_object() {
    // Arrange
    let app = seed_project().await;

    // Act
    let reply = app.client.get(&app.v1("DATADOG")).await;

    // Assert
    assert_eq!(
        ok(&reply),
        json!({"apiKey": "******7890", "region": "US", "type": "DATADOG"})
    );
}

#[tokio::test]
async fn the_reference_put_example_replaces_flowdock_in_place() {
    // Arrange
    let app = seed_project().await;
    ok(&app
        .client
        .post(&app.v1("FLOWDOCK"), SEED_FLOWDOCK_BODY)
        .await);
    let expected = r#"{
     "links": [{"href": "https://cloud.mongodb.com/api/atlas/v1.0/groups/5d791c84ff7a2522cc4f9aa1/integrations/FLOWDOCK?pageNum=1&itemsPerPage=100", "rel": "self"}],
     "results": [
         {"apiKey": "******7890", "region": "US", "type": "DATADOG"},
         {"apiToken": "******7890", "channelName": "My Channel", "teamName": "My Team", "type": "SLACK"},
         {"apiToken": "1234567890", "flowName": "newFlowName", "orgName": "newOrgName", "type": "FLOWDOCK"}
     ],
     "totalCount": 3
 }"#;

    // Act
    let reply = app
        .client
        .put(
            &app.v1("FLOWDOCK"),
            r#"{ "type": "FLOWDOCK", "flowName": "newFlowName", "apiToken": "1234567890", "orgName": "newOrgName" }"#,
        )
        .await;

    // Assert
    assert_documented_list(&ok(&reply), &documented(&app, expected));
}

#[tokio::test]
async fn the_reference_delete_example_answers_no_body() {
    // Arrange
    let app = seed_project().await;

    // Act
    let reply = app
        .client
        .send(Method::DELETE, &app.v1("DATADOG"), None, &[])
        .await;

    // Assert
    assert_eq!(reply.status.as_u16(), 204);
    assert_eq!(reply.text, "");
    let list = ok(&app.client.get(&app.v1("")).await);
    assert_eq!(
        list["results"],
        json!([{"apiToken": "******7890", "channelName": "My Channel", "teamName": "My Team", "type": "SLACK"}])
    );
}
