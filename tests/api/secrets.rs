//! Secrets at rest and in logs: nothing readable in the database file, its WAL, a `pg_dump`
//! or the server's log; master-key rotation (also interrupted), wrong and missing keys, and a
//! tampered ciphertext.

use atlas_integrations::crypto::MasterKey;
use atlas_integrations::rotation::rotate_with_limit;
use atlas_integrations::startup::{open_database, Application};
use atlas_integrations::store::SealedRef;

use crate::helpers::{
    backend_is_postgres, path, serve_options, spawn_app, spawn_instance, DigestClient, Options,
    Process, TestApp,
};

/// One body per type, each secret distinctive so that a byte scan can find it.
fn secret_bodies() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        ("PAGER_DUTY", r#"{"serviceKey":"SCANPAGERDUTYSERVICEKEY01"}"#.into(), vec!["SCANPAGERDUTYSERVICEKEY01"]),
        ("SLACK", r#"{"apiToken":"SCANSLACKAPITOKEN02","teamName":"t","channelName":"c"}"#.into(), vec!["SCANSLACKAPITOKEN02"]),
        ("DATADOG", r#"{"apiKey":"5ca9da7ad09aa1ce5ca9da7ad09aa1ce"}"#.into(), vec!["5ca9da7ad09aa1ce5ca9da7ad09aa1ce"]),
        (
            "NEW_RELIC",
            r#"{"licenseKey":"SCANNRLICENSE04","accountId":"SCANNRACCOUNT05","writeToken":"SCANNRWRITE06","readToken":"SCANNRREAD07"}"#.into(),
            vec!["SCANNRLICENSE04", "SCANNRACCOUNT05", "SCANNRWRITE06", "SCANNRREAD07"],
        ),
        ("OPS_GENIE", r#"{"apiKey":"SCANOPSGENIEKEY08"}"#.into(), vec!["SCANOPSGENIEKEY08"]),
        ("VICTOR_OPS", r#"{"apiKey":"SCANVICTOROPSKEY09","routingKey":"SCANVICTORROUTING10"}"#.into(), vec!["SCANVICTOROPSKEY09", "SCANVICTORROUTING10"]),
        ("FLOWDOCK", r#"{"flowName":"f","apiToken":"SCANFLOWDOCKTOKEN11","orgName":"o"}"#.into(), vec!["SCANFLOWDOCKTOKEN11"]),
        (
            "WEBHOOK",
            r#"{"url":"https://scanwebhookhost12.example.com/SCANWEBHOOKPATH13","secret":"SCANWEBHOOKSECRET14"}"#.into(),
            vec!["scanwebhookhost12", "SCANWEBHOOKPATH13", "SCANWEBHOOKSECRET14"],
        ),
        (
            "MICROSOFT_TEAMS",
            r#"{"microsoftTeamsWebhookUrl":"https://scanteamshost15.example.com/SCANTEAMSPATH16"}"#.into(),
            vec!["scanteamshost15", "SCANTEAMSPATH16"],
        ),
        (
            "PROMETHEUS",
            r#"{"username":"u","password":"SCANPROMETHEUSPASSWORD17","serviceDiscovery":"http","enabled":true}"#.into(),
            vec!["SCANPROMETHEUSPASSWORD17"],
        ),
    ]
}

async fn store_every_type(client: &DigestClient, group: &str) -> Vec<&'static str> {
    let mut secrets = Vec::new();
    for (kind, body, values) in secret_bodies() {
        let reply = client.post(&path("v1.0", group, kind), &body).await;
        assert_eq!(reply.status, 200, "{kind}: {}", reply.text);
        for value in &values {
            let text = &reply.text;
            // Atlas returns these in clear, and keeps the host of a masked URL.
            let shown_in_clear = matches!(kind, "NEW_RELIC" | "FLOWDOCK")
                || value.contains("ROUTING")
                || value.contains("host");
            assert_eq!(
                text.contains(value),
                shown_in_clear,
                "{kind} {value} in response: {text}"
            );
        }
        secrets.extend(values);
    }
    secrets
}

fn find_any(haystack: &[u8], needles: &[&str]) -> Vec<String> {
    needles
        .iter()
        .filter(|n| {
            haystack
                .windows(n.len())
                .any(|w| w.eq_ignore_ascii_case(n.as_bytes()))
        })
        .map(|n| (*n).to_owned())
        .collect()
}

fn database_bytes(app: &TestApp) -> Vec<u8> {
    let url = app.global.database_url.clone().unwrap();
    if backend_is_postgres() {
        let out = std::process::Command::new("pg_dump")
            .arg(&url)
            .output()
            .expect("pg_dump runs");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty());
        out.stdout
    } else {
        let file = url.trim_start_matches("sqlite://").to_owned();
        let mut bytes = std::fs::read(&file).expect("database file");
        if let Ok(wal) = std::fs::read(format!("{file}-wal")) {
            bytes.extend(wal);
        }
        bytes
    }
}

#[tokio::test]
async fn no_secret_is_readable_in_the_database_or_its_wal_or_dump() {
    // Arrange
    let app = spawn_app().await;
    let mut secrets = store_every_type(&app.client, &app.group).await;
    let private_key = app.private_key.clone();
    secrets.push(&private_key);

    // Act
    let bytes = database_bytes(&app);

    // Assert: the scan can see plain text (the org name is stored in clear) ...
    assert!(
        !find_any(&bytes, &["default"]).is_empty(),
        "the scan reads the data"
    );
    // ... and finds none of the secrets.
    assert_eq!(find_any(&bytes, &secrets), Vec::<String>::new());
}

#[tokio::test]
async fn no_secret_reaches_the_log() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let server = Process::start(&["--data-dir", &data], &[("RUST_LOG", "trace")]);
    let group = server.credential("group id");
    let public = server.credential("public key");
    let private = server.credential("private key");
    let client = DigestClient::new(&server.base, &public, &private);

    // Act: successful writes, failing validation that carries secrets, and a bad password.
    let mut secrets = store_every_type(&client, &group).await;
    let bad = client
        .put(
            &path("v1.0", &group, "DATADOG"),
            r#"{"apiKey":"SCANNOTHEXSECRET18"}"#,
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(!bad.text.contains("SCANNOTHEXSECRET18"), "{}", bad.text);
    secrets.push("SCANNOTHEXSECRET18");
    let wrong = DigestClient::new(&server.base, &public, "SCANWRONGPASSWORD19");
    assert_eq!(wrong.get(&path("v1.0", &group, "")).await.status, 401);
    secrets.push("SCANWRONGPASSWORD19");
    secrets.push(&private);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Assert
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.contains("request_id"),
        "the log has request lines: {log}"
    );
    assert_eq!(find_any(log.as_bytes(), &secrets), Vec::<String>::new());
}

#[tokio::test]
async fn rotation_interrupted_half_way_loses_nothing_and_resumes() {
    // Arrange
    let app = spawn_app().await;
    let secrets = store_every_type(&app.client, &app.group).await;
    let before = app.client.get(&app.v1("")).await.json();
    let (store, old_ring) = open_database(&app.global, false).await.unwrap();
    let new_key = MasterKey::generate();
    let new_key_file = app.global.data_dir.join("new.key");
    new_key.write_new_file(&new_key_file).unwrap();

    // Act 1: stop after 3 values.
    let progress = rotate_with_limit(
        store.as_ref(),
        &old_ring,
        MasterKey::load_file(&new_key_file).unwrap(),
        Some(3),
    )
    .await
    .unwrap();
    assert_eq!((progress.resealed, progress.complete), (3, false));
    let under_new = store
        .sealed_values()
        .await
        .unwrap()
        .iter()
        .filter(|(_, v)| atlas_integrations::crypto::Keyring::key_id_of(v) == Some(new_key.id()))
        .count();
    assert_eq!(under_new, 3);

    // Assert 1: the running server (old key) adopts the pending key and serves everything,
    // writes included; a server started now with the old key does too.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(app.client.get(&app.v1("")).await.json(), before);
    let second = spawn_instance(&app.global).await;
    let other = DigestClient::new(&second.base, &app.public_key, &app.private_key);
    assert_eq!(
        other.get(&app.v1("")).await.json()["totalCount"],
        before["totalCount"]
    );
    let reply = app
        .client
        .put(&app.v1("OPS_GENIE"), r#"{"apiKey":"SCANOPSGENIEKEY20"}"#)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // Act 2: resume.
    let progress = rotate_with_limit(
        store.as_ref(),
        &old_ring,
        MasterKey::load_file(&new_key_file).unwrap(),
        None,
    )
    .await
    .unwrap();
    assert!(progress.complete);

    // Assert 2: everything is under the new key, the running server still serves, the old
    // key no longer opens the database and the new one does.
    for (at, value) in store.sealed_values().await.unwrap() {
        if matches!(&at, SealedRef::Meta { name } if name == "bootstrapped") {
            continue;
        }
        assert_eq!(
            atlas_integrations::crypto::Keyring::key_id_of(&value),
            Some(new_key.id()),
            "{at:?}"
        );
    }
    let after = app.client.get(&app.v1("")).await.json();
    assert_eq!(after["totalCount"], before["totalCount"]);
    assert!(
        open_database(&app.global, false).await.is_err(),
        "the old key must be refused now"
    );
    let mut global = app.global.clone();
    global.master_key_file = Some(new_key_file);
    let third = spawn_instance(&global).await;
    let with_new = DigestClient::new(&third.base, &app.public_key, &app.private_key);
    let list = with_new.get(&app.v1("")).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json()["totalCount"], before["totalCount"]);
    let bytes = database_bytes(&app);
    assert_eq!(find_any(&bytes, &secrets), Vec::<String>::new());
}

#[tokio::test]
async fn a_wrong_master_key_stops_the_server_and_changes_nothing() {
    // Arrange
    let app = spawn_app().await;
    store_every_type(&app.client, &app.group).await;
    let before = database_bytes(&app).len();
    let wrong = app.global.data_dir.join("wrong.key");
    MasterKey::generate().write_new_file(&wrong).unwrap();
    let mut global = app.global.clone();
    global.master_key_file = Some(wrong);

    // Act
    let result = Application::build(&global, &serve_options(&Options::default())).await;

    // Assert
    let message = format!("{:#}", result.err().expect("must refuse to start"));
    assert!(
        message.contains("does not match this database"),
        "{message}"
    );
    assert_eq!(app.client.get(&app.v1("")).await.json()["totalCount"], 10);
    assert!(database_bytes(&app).len() >= before);
}

#[tokio::test]
async fn a_missing_master_key_stops_the_server_without_generating_a_new_one() {
    // Arrange
    let app = spawn_app().await;
    store_every_type(&app.client, &app.group).await;
    let key_file = app.global.data_dir.join("master.key");
    let saved = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();

    // Act
    let result = Application::build(&app.global, &serve_options(&Options::default())).await;

    // Assert
    let message = format!("{:#}", result.err().expect("must refuse to start"));
    assert!(message.contains("no master key was given"), "{message}");
    assert!(
        !key_file.exists(),
        "no new key may be generated over encrypted data"
    );
    std::fs::write(&key_file, saved).unwrap();
    assert!(
        Application::build(&app.global, &serve_options(&Options::default()))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_tampered_ciphertext_is_a_clear_error_and_other_rows_are_still_served() {
    // Arrange
    let app = spawn_app().await;
    store_every_type(&app.client, &app.group).await;
    let (store, _) = open_database(&app.global, false).await.unwrap();
    let (at, sealed) = store
        .sealed_values()
        .await
        .unwrap()
        .into_iter()
        .find(|(at, _)| matches!(at, SealedRef::Integration { kind, .. } if kind.as_str() == "WEBHOOK"))
        .unwrap();
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(store.reseal(&at, &sealed, &tampered).await.unwrap());

    // Act
    let one = app.client.get(&app.v1("WEBHOOK")).await;
    let list = app.client.get(&app.v1("")).await;
    let other = app.client.get(&app.v1("DATADOG")).await;

    // Assert
    one.assert_error(500, "UNEXPECTED_ERROR", &[]);
    assert_eq!(list.status, 200);
    let kinds: Vec<String> = list.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    assert!(!kinds.contains(&"WEBHOOK".to_owned()));
    assert_eq!(other.status, 200);
    // A PUT sending masks back does not overwrite what it cannot read (the masks would
    // replace the real secrets); a PUT that sets every field repairs the row unread.
    let refused = app
        .client
        .put(
            &app.v1("WEBHOOK"),
            r#"{"url":"https://fixed.example.com/****"}"#,
        )
        .await;
    refused.assert_error(500, "UNEXPECTED_ERROR", &[]);
    let fixed = app
        .client
        .put(
            &app.v1("WEBHOOK"),
            r#"{"url":"https://fixed.example.com/x"}"#,
        )
        .await;
    assert_eq!(fixed.status, 200, "{}", fixed.text);
    assert_eq!(
        app.client.get(&app.v1("WEBHOOK")).await.json()["url"],
        "https://fixed.example.com/****"
    );
}
