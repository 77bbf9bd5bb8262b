//! The admin CLI, run as the real binary on a test app's database and data directory: each
//! command's round trip, its refusal of bad input (non-zero exit, one `error:` line on stderr,
//! nothing on stdout), and changes reaching the running server within one second.

use std::process::Stdio;
use std::time::{Duration, Instant};

use atlas_integrations::domain::ids::ObjectId;
use serde_json::{json, Value};

use crate::helpers::{self, binary, path, spawn_app, DigestClient, Reply, TestApp, PROPAGATION};

const OPS_GENIE: &str = r#"{"type":"OPS_GENIE","apiKey":"opsgenie-key-1234","region":"US"}"#;

/// One run of the binary.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns stdout as JSON.
    fn json(&self) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "`{}` failed:\nstdout: {}\nstderr: {}",
            self.args.join(" "),
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` did not print JSON ({e}): {:?}",
                self.args.join(" "),
                self.stdout
            )
        })
    }

    /// Asserts a clean failure (non-zero exit, nothing on stdout, one `error: ...` line on
    /// stderr that contains every one of `mentions`) and returns that line.
    fn error(&self, mentions: &[&str]) -> String {
        self.check_error(mentions)
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    /// What is wrong with this run as a clean failure, if anything.
    fn check_error(&self, mentions: &[&str]) -> Result<String, String> {
        let cmd = self.args.join(" ");
        if self.code.is_none_or(|c| c == 0) {
            return Err(format!(
                "`{cmd}` must fail, exit {:?}; stdout: {}",
                self.code, self.stdout
            ));
        }
        if !self.stdout.trim().is_empty() {
            return Err(format!("`{cmd}` printed on stdout: {:?}", self.stdout));
        }
        if self.stderr.contains("panicked") {
            return Err(format!("`{cmd}` panicked: {}", self.stderr));
        }
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if lines.len() != 1 {
            return Err(format!(
                "`{cmd}` must print exactly one line on stderr, got {}: {:?}",
                lines.len(),
                self.stderr
            ));
        }
        let line = lines[0];
        if !(line.starts_with("error: ") && line.len() > "error: ".len() + 5) {
            return Err(format!("`{cmd}`: unclear error line {line:?}"));
        }
        for mention in mentions {
            if !line.contains(mention) {
                return Err(format!(
                    "`{cmd}`: the error line {line:?} does not mention {mention:?}"
                ));
            }
        }
        Ok(line.to_owned())
    }
}

/// Runs `atlas-integrations --database-url ... --data-dir ... ARGS` on `app`'s database.
async fn cli(app: &TestApp, args: &[&str]) -> Run {
    let url = app.global.database_url();
    let data_dir = app.global.data_dir.display().to_string();
    let output = tokio::process::Command::new(binary())
        .args(["--database-url", &url, "--data-dir", &data_dir])
        .args(args)
        .env_remove("ATLAS_INTEGRATIONS_MASTER_KEY")
        .env_remove("ATLAS_INTEGRATIONS_MASTER_KEY_FILE")
        .env_remove("ATLAS_INTEGRATIONS_DATABASE_URL")
        .env_remove("ATLAS_INTEGRATIONS_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the atlas-integrations binary");
    Run {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `orgs create --name NAME`, asserted to succeed: the new org's id.
async fn create_org(app: &TestApp, name: &str) -> String {
    let created = cli(app, &["orgs", "create", "--name", name]).await.json();
    created["id"].as_str().expect("org id").to_owned()
}

/// The arguments of `api-keys create --org ORG --role ROLE`.
fn key_create<'a>(org: &'a str, role: &'a str) -> Vec<&'a str> {
    vec!["api-keys", "create", "--org", org, "--role", role]
}

/// The arguments of `api-keys assign PUBLIC_KEY --project PROJECT --role ROLE`.
fn key_assign<'a>(public_key: &'a str, project: &'a str, role: &'a str) -> Vec<&'a str> {
    vec![
        "api-keys",
        "assign",
        public_key,
        "--project",
        project,
        "--role",
        role,
    ]
}

/// [`key_create`], asserted to succeed: what it prints.
async fn create_key(app: &TestApp, org: &str, role: &str) -> Value {
    cli(app, &key_create(org, role)).await.json()
}

/// [`key_assign`], asserted to succeed: what it prints.
async fn assign(app: &TestApp, public_key: &str, project: &str, role: &str) -> Value {
    cli(app, &key_assign(public_key, project, role))
        .await
        .json()
}

fn is_object_id(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| ObjectId::parse(s).is_some_and(|id| id.to_string() == s))
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {list}"))
        .iter()
        .map(|item| item[field].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// A well-formed id that nothing has.
fn ghost() -> String {
    ObjectId::generate().to_string()
}

/// Repeats a GET until `done` holds, for at most [`PROPAGATION`] after `since`.
async fn poll(
    client: &DigestClient,
    path: &str,
    since: Instant,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    helpers::poll_until(client, path, &[], since, what, done).await
}

fn error_code(reply: &Reply) -> String {
    serde_json::from_str::<Value>(&reply.text)
        .ok()
        .and_then(|b| b["errorCode"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// orgs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn orgs_create_and_list_round_trip() {
    let app = spawn_app().await;
    let created = cli(&app, &["orgs", "create", "--name", "Acme Corp"])
        .await
        .json();
    assert!(is_object_id(&created["id"]), "org id: {created}");
    assert_eq!(created["name"], "Acme Corp", "{created}");

    let list = cli(&app, &["orgs", "list"]).await.json();
    let orgs = ids(&list, "id");
    assert_eq!(orgs.len(), 2, "the first-start org and the new one: {list}");
    assert!(orgs.contains(&app.org), "first-start org listed: {list}");
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|o| o["id"] == created["id"]))
        .unwrap_or_else(|| panic!("new org not listed: {list}"));
    assert_eq!(entry, &created, "listed as created");
}

#[tokio::test]
async fn orgs_refuse_bad_input() {
    let app = spawn_app().await;
    cli(&app, &["orgs", "create", "--name", ""])
        .await
        .error(&["--name"]);
    cli(&app, &["orgs", "create", "--name", "   "])
        .await
        .error(&["--name"]);
    let list = cli(&app, &["orgs", "list"]).await.json();
    assert_eq!(
        ids(&list, "id"),
        vec![app.org.clone()],
        "nothing created: {list}"
    );
}

// ---------------------------------------------------------------------------------------------
// projects
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn projects_create_list_and_delete_round_trip() {
    let app = spawn_app().await;
    let other_org = create_org(&app, "other").await;

    let created = cli(
        &app,
        &["projects", "create", "--org", &app.org, "--name", "prod"],
    )
    .await
    .json();
    assert!(is_object_id(&created["id"]), "project id: {created}");
    assert_eq!(created["orgId"], app.org.as_str(), "{created}");
    assert_eq!(created["name"], "prod", "{created}");
    let project = created["id"].as_str().expect("id").to_owned();
    let foreign = cli(
        &app,
        &["projects", "create", "--org", &other_org, "--name", "x"],
    )
    .await
    .json()["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let all = cli(&app, &["projects", "list"]).await.json();
    let all_ids = ids(&all, "id");
    for id in [&app.group, &project, &foreign] {
        assert!(all_ids.contains(id), "{id} in projects list: {all}");
    }
    assert_eq!(all_ids.len(), 3, "{all}");
    let mine = cli(&app, &["projects", "list", "--org", &app.org])
        .await
        .json();
    let mut mine_ids = ids(&mine, "id");
    mine_ids.sort();
    let mut expected = vec![app.group.clone(), project.clone()];
    expected.sort();
    assert_eq!(mine_ids, expected, "list --org {}: {mine}", app.org);
    let theirs = cli(&app, &["projects", "list", "--org", &other_org])
        .await
        .json();
    assert_eq!(ids(&theirs, "id"), vec![foreign.clone()], "{theirs}");
    let none = cli(&app, &["projects", "list", "--org", &ghost()])
        .await
        .json();
    assert_eq!(none, json!([]), "list --org of an org without projects");

    // The running server sees the new project (the owner key is ORG_OWNER of its org), and
    // an integration created through the API goes with the project.
    let since = Instant::now();
    let reply = poll(
        &app.client,
        &path("v1.0", &project, ""),
        since,
        "new project",
        |r| r.status == 200,
    )
    .await;
    assert_eq!(reply.json()["totalCount"], 0, "{}", reply.text);
    let reply = app
        .client
        .post(&path("v1.0", &project, "OPS_GENIE"), OPS_GENIE)
        .await;
    assert_eq!(reply.status, 200, "create an integration: {}", reply.text);
    let store = atlas_integrations::store::open(&app.global.database_url(), false, 1)
        .await
        .expect("open the store");
    let group = ObjectId::parse(&project).expect("id");
    assert_eq!(
        store.list_integrations(group).await.expect("list").len(),
        1,
        "the integration is stored"
    );

    let deleted = cli(&app, &["projects", "delete", &project]).await.json();
    assert_eq!(deleted, json!({"deleted": project}), "delete output");
    assert!(
        store
            .list_integrations(group)
            .await
            .expect("list")
            .is_empty(),
        "projects delete must remove the project's integrations"
    );
    let mine = cli(&app, &["projects", "list", "--org", &app.org])
        .await
        .json();
    assert_eq!(
        ids(&mine, "id"),
        vec![app.group.clone()],
        "after delete: {mine}"
    );
    let since = Instant::now();
    let reply = poll(
        &app.client,
        &path("v1.0", &project, ""),
        since,
        "deleted project",
        |r| r.status == 401,
    )
    .await;
    reply.assert_error(401, "NOT_IN_GROUP", &[]);
    // The other projects are untouched.
    let reply = app.client.get(&app.v1("")).await;
    assert_eq!(reply.status, 200, "first-start project: {}", reply.text);
}

#[tokio::test]
async fn projects_refuse_bad_input() {
    let app = spawn_app().await;
    let unknown = ghost();
    cli(
        &app,
        &["projects", "create", "--org", &unknown, "--name", "p"],
    )
    .await
    .error(&[&unknown]);
    cli(
        &app,
        &["projects", "create", "--org", "not-an-id", "--name", "p"],
    )
    .await
    .error(&["not-an-id"]);
    cli(
        &app,
        &[
            "projects",
            "create",
            "--org",
            &app.org.to_uppercase(),
            "--name",
            "p",
        ],
    )
    .await
    .error(&[&app.org.to_uppercase()]);
    cli(
        &app,
        &["projects", "create", "--org", &app.org, "--name", ""],
    )
    .await
    .error(&["--name"]);
    cli(&app, &["projects", "list", "--org", "xyz"])
        .await
        .error(&["xyz"]);
    cli(&app, &["projects", "delete", &unknown])
        .await
        .error(&[&unknown]);
    cli(&app, &["projects", "delete", "1234"])
        .await
        .error(&["1234"]);

    let list = cli(&app, &["projects", "list"]).await.json();
    assert_eq!(
        ids(&list, "id"),
        vec![app.group.clone()],
        "nothing changed: {list}"
    );
}

// ---------------------------------------------------------------------------------------------
// api-keys
// ---------------------------------------------------------------------------------------------

fn find_key<'a>(list: &'a Value, public_key: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|k| k["publicKey"] == public_key)
}

#[tokio::test]
async fn api_keys_create_assign_access_list_and_delete_round_trip() {
    let app = spawn_app().await;
    let other_org = create_org(&app, "other").await;

    // create
    let run = cli(
        &app,
        &[
            "api-keys",
            "create",
            "--org",
            &other_org,
            "--role",
            "ORG_READ_ONLY",
            "--description",
            "ci key",
        ],
    )
    .await;
    let key = run.json();
    let public = key["publicKey"].as_str().expect("publicKey").to_owned();
    let private = key["privateKey"].as_str().expect("privateKey").to_owned();
    assert!(
        public.len() == 8 && public.bytes().all(|b| b.is_ascii_lowercase()),
        "publicKey must be 8 lowercase letters: {public:?}"
    );
    let uuid = uuid::Uuid::parse_str(&private)
        .unwrap_or_else(|e| panic!("privateKey {private:?} is not a UUID: {e}"));
    assert_eq!(
        uuid.get_version_num(),
        4,
        "privateKey must be a UUID v4: {private}"
    );
    assert_eq!(
        uuid.hyphenated().to_string(),
        private,
        "privateKey in lowercase hyphenated form"
    );
    assert!(is_object_id(&key["id"]), "key id: {key}");
    assert_eq!(key["orgId"], other_org.as_str(), "{key}");
    assert_eq!(key["description"], "ci key", "{key}");
    assert_eq!(
        key["roles"],
        json!([{"orgId": other_org, "roleName": "ORG_READ_ONLY"}]),
        "{key}"
    );
    assert_eq!(key["accessList"], json!([]), "{key}");

    // list never shows a private key
    let run = cli(&app, &["api-keys", "list"]).await;
    assert!(
        !run.stdout.contains(&private) && !run.stdout.contains(&app.private_key),
        "api-keys list shows a private key: {}",
        run.stdout
    );
    assert!(
        !run.stdout.to_ascii_lowercase().contains("privatekey"),
        "api-keys list has a private key field: {}",
        run.stdout
    );
    let list = run.json();
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(2),
        "first-start key and new key: {list}"
    );
    let listed = find_key(&list, &public).unwrap_or_else(|| panic!("{public} not listed: {list}"));
    let mut expected = key.clone();
    expected
        .as_object_mut()
        .expect("object")
        .remove("privateKey");
    assert_eq!(
        listed, &expected,
        "listed as created, without the private key"
    );

    // assign / unassign
    let assigned = assign(&app, &public, &app.group, "GROUP_OWNER").await;
    assert_eq!(
        assigned,
        json!({"publicKey": public, "groupId": app.group, "roleName": "GROUP_OWNER"}),
        "assign output"
    );
    // Assigning again replaces the role.
    assign(&app, &public, &app.group, "GROUP_READ_ONLY").await;
    let list = cli(&app, &["api-keys", "list"]).await.json();
    let roles = &find_key(&list, &public).expect("listed")["roles"];
    assert_eq!(
        roles,
        &json!([
            {"orgId": other_org, "roleName": "ORG_READ_ONLY"},
            {"groupId": app.group, "roleName": "GROUP_READ_ONLY"}
        ]),
        "roles after assign"
    );
    let unassigned = cli(
        &app,
        &["api-keys", "unassign", &public, "--project", &app.group],
    )
    .await
    .json();
    assert_eq!(
        unassigned,
        json!({"publicKey": public, "groupId": app.group, "removed": true}),
        "unassign output"
    );
    cli(
        &app,
        &["api-keys", "unassign", &public, "--project", &app.group],
    )
    .await
    .error(&[&public]);

    // access-list add / remove
    let added = cli(
        &app,
        &["api-keys", "access-list", "add", &public, "10.0.0.0/8"],
    )
    .await
    .json();
    assert_eq!(
        added,
        json!({"publicKey": public, "cidrBlock": "10.0.0.0/8"})
    );
    let added = cli(
        &app,
        &["api-keys", "access-list", "add", &public, "192.168.1.7"],
    )
    .await
    .json();
    assert_eq!(
        added["cidrBlock"], "192.168.1.7/32",
        "a bare address is a /32"
    );
    let added = cli(
        &app,
        &["api-keys", "access-list", "add", &public, "2001:db8::/32"],
    )
    .await
    .json();
    assert_eq!(added["cidrBlock"], "2001:db8::/32");
    let list = cli(&app, &["api-keys", "list"]).await.json();
    let mut entries: Vec<String> = find_key(&list, &public).expect("listed")["accessList"]
        .as_array()
        .expect("accessList")
        .iter()
        .map(|e| e.as_str().unwrap_or("?").to_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        vec!["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]
    );
    let removed = cli(
        &app,
        &["api-keys", "access-list", "remove", &public, "10.0.0.0/8"],
    )
    .await
    .json();
    assert_eq!(
        removed,
        json!({"publicKey": public, "cidrBlock": "10.0.0.0/8", "removed": true})
    );
    cli(
        &app,
        &["api-keys", "access-list", "remove", &public, "10.0.0.0/8"],
    )
    .await
    .error(&["10.0.0.0/8"]);
    let list = cli(&app, &["api-keys", "list"]).await.json();
    assert_eq!(
        find_key(&list, &public).expect("listed")["accessList"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "after remove: {list}"
    );

    // delete
    let deleted = cli(&app, &["api-keys", "delete", &public]).await.json();
    assert_eq!(deleted, json!({"deleted": public}));
    let list = cli(&app, &["api-keys", "list"]).await.json();
    assert!(
        find_key(&list, &public).is_none(),
        "deleted key listed: {list}"
    );
    assert!(
        find_key(&list, &app.public_key).is_some(),
        "the other key stays: {list}"
    );
    cli(&app, &["api-keys", "delete", &public])
        .await
        .error(&[&public]);
}

#[tokio::test]
async fn api_keys_refuse_bad_input() {
    let app = spawn_app().await;
    let key = create_key(&app, &app.org, "ORG_READ_ONLY").await;
    let public = key["publicKey"].as_str().expect("publicKey").to_owned();
    let unknown_org = ghost();
    let unknown_project = ghost();
    let before = cli(&app, &["api-keys", "list"]).await.json();

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // create
        (key_create(&unknown_org, "ORG_OWNER"), vec![&unknown_org]),
        (key_create("12345", "ORG_OWNER"), vec!["12345"]),
        (key_create(&app.org, "ORG_ADMIN"), vec!["--role"]),
        (key_create(&app.org, "GROUP_OWNER"), vec!["--role"]),
        (key_create(&app.org, "org_owner "), vec!["--role"]),
        // assign / unassign
        (key_assign(&public, &app.group, "ORG_OWNER"), vec!["--role"]),
        (
            key_assign(&public, &unknown_project, "GROUP_OWNER"),
            vec![&unknown_project],
        ),
        (key_assign(&public, "nope", "GROUP_OWNER"), vec!["nope"]),
        (
            key_assign("zzzzzzzz", &app.group, "GROUP_OWNER"),
            vec!["zzzzzzzz"],
        ),
        (
            key_assign("NOTAKEY1", &app.group, "GROUP_OWNER"),
            vec!["NOTAKEY1"],
        ),
        (
            vec!["api-keys", "unassign", &public, "--project", &app.group],
            vec![&public],
        ),
        (
            vec!["api-keys", "unassign", "zzzzzzzz", "--project", &app.group],
            vec!["zzzzzzzz"],
        ),
        (
            vec!["api-keys", "unassign", &public, "--project", "g"],
            vec!["g"],
        ),
        // access-list
        (
            vec!["api-keys", "access-list", "add", &public, "10.0.0.0/33"],
            vec!["10.0.0.0/33"],
        ),
        (
            vec!["api-keys", "access-list", "add", &public, "300.1.2.3"],
            vec!["300.1.2.3"],
        ),
        (
            vec!["api-keys", "access-list", "add", &public, "not-an-ip"],
            vec!["not-an-ip"],
        ),
        (
            vec!["api-keys", "access-list", "add", &public, "2001:db8::/129"],
            vec!["2001:db8::/129"],
        ),
        (vec!["api-keys", "access-list", "add", &public, ""], vec![]),
        (
            vec!["api-keys", "access-list", "add", "zzzzzzzz", "10.0.0.0/8"],
            vec!["zzzzzzzz"],
        ),
        (
            vec!["api-keys", "access-list", "add", "ab", "10.0.0.0/8"],
            vec!["ab"],
        ),
        (
            vec!["api-keys", "access-list", "remove", &public, "10.9.9.9/32"],
            vec!["10.9.9.9"],
        ),
        (
            vec![
                "api-keys",
                "access-list",
                "remove",
                "zzzzzzzz",
                "10.0.0.0/8",
            ],
            vec!["zzzzzzzz"],
        ),
        // delete
        (vec!["api-keys", "delete", "zzzzzzzz"], vec!["zzzzzzzz"]),
        (vec!["api-keys", "delete", "Abcdefgh"], vec!["Abcdefgh"]),
    ];
    for (args, mentions) in &cases {
        cli(&app, args).await.error(mentions);
    }

    let after = cli(&app, &["api-keys", "list"]).await.json();
    assert_eq!(before, after, "refused commands changed the keys");
}

#[tokio::test]
async fn missing_arguments_are_refused_with_one_clear_line() {
    let app = spawn_app().await;
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["orgs", "create"], vec!["--name"]),
        (vec!["projects", "create", "--name", "p"], vec!["--org"]),
        (
            vec!["projects", "create", "--org", &app.org],
            vec!["--name"],
        ),
        (vec!["projects", "delete"], vec!["GROUP_ID"]),
        (
            vec!["api-keys", "create", "--org", &app.org],
            vec!["--role"],
        ),
        (
            vec!["api-keys", "create", "--role", "ORG_OWNER"],
            vec!["--org"],
        ),
        (
            vec![
                "api-keys",
                "assign",
                &app.public_key,
                "--role",
                "GROUP_OWNER",
            ],
            vec!["--project"],
        ),
        (
            vec!["api-keys", "unassign", &app.public_key],
            vec!["--project"],
        ),
        (
            vec!["api-keys", "access-list", "add", &app.public_key],
            vec!["CIDR"],
        ),
        (
            vec!["api-keys", "access-list", "remove", &app.public_key],
            vec!["CIDR"],
        ),
        (vec!["api-keys", "delete"], vec!["PUBLIC_KEY"]),
        (vec!["orgs", "frobnicate"], vec!["frobnicate"]),
    ];
    let mut problems = Vec::new();
    for (args, mentions) in &cases {
        if let Err(problem) = cli(&app, args).await.check_error(mentions) {
            problems.push(problem);
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} commands with missing or unknown arguments are not refused with one clear \
         line on stderr:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The running server sees CLI changes within a second
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn keys_created_re_roled_and_deleted_with_the_cli_reach_the_running_server_within_a_second() {
    let app = spawn_app().await;
    let other_org = create_org(&app, "other").await;

    // Created: usable at once (ORG_OWNER of the first-start org).
    let key = create_key(&app, &app.org, "ORG_OWNER").await;
    let since = Instant::now();
    let owner = app.client_for(
        key["publicKey"].as_str().expect("publicKey"),
        key["privateKey"].as_str().expect("privateKey"),
    );
    poll(&owner, &app.v1(""), since, "new ORG_OWNER key", |r| {
        r.status == 200
    })
    .await;
    let reply = owner.post(&app.v1("OPS_GENIE"), OPS_GENIE).await;
    assert_eq!(reply.status, 200, "new owner key writes: {}", reply.text);

    // Re-roled: a key of another org gets GROUP_READ_ONLY, then GROUP_OWNER, then nothing.
    let key = create_key(&app, &other_org, "ORG_READ_ONLY").await;
    let public = key["publicKey"].as_str().expect("publicKey").to_owned();
    let since = Instant::now();
    let client = app.client_for(&public, key["privateKey"].as_str().expect("privateKey"));
    let reply = poll(&client, &app.v1(""), since, "key of another org", |r| {
        error_code(r) == "NOT_IN_GROUP"
    })
    .await;
    reply.assert_error(401, "NOT_IN_GROUP", &[]);

    assign(&app, &public, &app.group, "GROUP_READ_ONLY").await;
    let since = Instant::now();
    poll(&client, &app.v1(""), since, "GROUP_READ_ONLY", |r| {
        r.status == 200
    })
    .await;
    let reply = client.delete(&app.v1("OPS_GENIE")).await;
    reply.assert_error(403, "ACCESS_FORBIDDEN", &[]);

    assign(&app, &public, &app.group, "GROUP_OWNER").await;
    let since = Instant::now();
    loop {
        let reply = client.delete(&app.v1("OPS_GENIE")).await;
        if reply.status == 204 {
            break;
        }
        reply.assert_error(403, "ACCESS_FORBIDDEN", &[]);
        assert!(
            since.elapsed() <= PROPAGATION,
            "GROUP_OWNER not in force {:?} after the CLI returned",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    cli(
        &app,
        &["api-keys", "unassign", &public, "--project", &app.group],
    )
    .await
    .json();
    let since = Instant::now();
    poll(&client, &app.v1(""), since, "unassigned", |r| {
        error_code(r) == "NOT_IN_GROUP"
    })
    .await;

    // Access list: in force within a second, both ways.
    let args = [
        "api-keys",
        "access-list",
        "add",
        &app.public_key,
        "10.0.0.0/8",
    ];
    cli(&app, &args).await.json();
    let since = Instant::now();
    let reply = poll(
        &app.client,
        &app.v1(""),
        since,
        "access list 10.0.0.0/8",
        |r| r.status == 403,
    )
    .await;
    reply.assert_error(403, "IP_ADDRESS_NOT_ON_ACCESS_LIST", &["127.0.0.1"]);
    let args = [
        "api-keys",
        "access-list",
        "add",
        &app.public_key,
        "127.0.0.1",
    ];
    cli(&app, &args).await.json();
    let since = Instant::now();
    poll(
        &app.client,
        &app.v1(""),
        since,
        "access list 127.0.0.1",
        |r| r.status == 200,
    )
    .await;

    // Deleted: refused within a second.
    cli(&app, &["api-keys", "delete", &public]).await.json();
    let since = Instant::now();
    let reply = poll(&client, &app.v1(""), since, "deleted key", |r| {
        error_code(r) == "USER_UNAUTHORIZED"
    })
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert!(
        reply.header("www-authenticate").is_some(),
        "a deleted key gets a fresh challenge"
    );
}
