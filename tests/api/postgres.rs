//! PostgreSQL only (run with `ATLAS_TEST_BACKEND=postgres`): several server instances on one
//! database, losing the database and getting it back, concurrent migrations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

use crate::helpers::{
    backend_is_postgres, challenge_param, digest_header, poll_until, send_raw, spawn_app,
    spawn_instance, DigestClient,
};

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| crate::pg::DEFAULT_URL.to_owned())
}

fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned()
}

async fn admin(sql: &str) {
    let mut conn = PgConnection::connect(&admin_url())
        .await
        .expect("admin connection");
    conn.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

#[tokio::test]
async fn concurrent_posts_through_two_instances_give_exactly_one_success() {
    if !backend_is_postgres() {
        return;
    }
    // Arrange
    let app = spawn_app().await;
    let second = spawn_instance(&app.global).await;
    let a = Arc::new(DigestClient::new(
        &app.base,
        &app.public_key,
        &app.private_key,
    ));
    let b = Arc::new(DigestClient::new(
        &second.base,
        &app.public_key,
        &app.private_key,
    ));
    let body = r#"{"type":"OPS_GENIE","apiKey":"opsgenie-key"}"#;

    // Act
    let path = app.v1("OPS_GENIE");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let path = path.clone();
            tokio::spawn(async move { client.post(&path, body).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }

    // Assert
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let conflicts = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!(
        (ok, conflicts),
        (1, 15),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(b.get(&app.v1("")).await.json()["totalCount"], 1);
}

#[tokio::test]
async fn a_nonce_issued_by_one_instance_is_accepted_by_the_other() {
    if !backend_is_postgres() {
        return;
    }
    let app = spawn_app().await;
    let second = spawn_instance(&app.global).await;
    let path = app.v1("");
    let http = reqwest::Client::new();
    let challenge = send_raw(
        &http,
        &app.base,
        reqwest::Method::GET,
        &path,
        None,
        &[],
        None,
    )
    .await;
    let nonce = challenge_param(&challenge.header("www-authenticate").unwrap(), "nonce").unwrap();
    let auth = digest_header(
        &app.public_key,
        &app.private_key,
        "GET",
        &path,
        &nonce,
        1,
        "abcdef0123456789",
    );
    let reply = send_raw(
        &http,
        &second.base,
        reqwest::Method::GET,
        &path,
        None,
        &[],
        Some(&auth),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test]
async fn a_key_change_made_with_the_cli_reaches_both_instances_within_a_second() {
    if !backend_is_postgres() {
        return;
    }
    // Arrange
    let app = spawn_app().await;
    let second = spawn_instance(&app.global).await;
    let created = atlas_integrations::admin::api_keys(
        &app.global,
        atlas_integrations::config::ApiKeysCommand::Create {
            org: app.org.clone(),
            role: "ORG_READ_ONLY".into(),
            description: String::new(),
        },
    )
    .await
    .unwrap();
    let public = created["publicKey"].as_str().unwrap().to_owned();
    let private = created["privateKey"].as_str().unwrap().to_owned();
    let started = Instant::now();
    for base in [&app.base, &second.base] {
        let client = DigestClient::new(base, &public, &private);
        let what = format!("new key not seen within 1 s on {base}");
        poll_until(&client, &app.v1(""), &[], started, &what, |r| {
            r.status == 200
        })
        .await;
    }

    // Act: delete it.
    atlas_integrations::admin::api_keys(
        &app.global,
        atlas_integrations::config::ApiKeysCommand::Delete {
            public_key: public.clone(),
        },
    )
    .await
    .unwrap();
    let started = Instant::now();

    // Assert
    for base in [&app.base, &second.base] {
        let client = DigestClient::new(base, &public, &private);
        let what = format!("deleted key still accepted after 1 s on {base}");
        poll_until(&client, &app.v1(""), &[], started, &what, |r| {
            r.status == 401
        })
        .await;
    }
}

#[tokio::test]
async fn losing_the_database_gives_503_and_the_server_recovers_by_itself() {
    if !backend_is_postgres() {
        return;
    }
    // Arrange
    let app = spawn_app().await;
    let body = r#"{"type":"DATADOG","apiKey":"abcdef"}"#;
    assert_eq!(app.client.post(&app.v1("DATADOG"), body).await.status, 200);
    let name = database_name(app.global.database_url.as_deref().unwrap());

    // Act: the database refuses connections and every open one is cut.
    admin(&format!(
        "alter database \"{name}\" allow_connections false"
    ))
    .await;
    admin(&format!(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{name}'"
    ))
    .await;
    let down = app.client.get(&app.v1("DATADOG")).await;
    let health = reqwest::get(format!("{}/health", app.base))
        .await
        .unwrap()
        .status();
    admin(&format!("alter database \"{name}\" allow_connections true")).await;

    // Assert
    down.assert_error(503, "SERVICE_UNAVAILABLE", &[]);
    assert_eq!(
        down.json()["detail"],
        "The service is temporarily unavailable."
    );
    assert_eq!(health, 503);
    let started = Instant::now();
    loop {
        let reply = app.client.get(&app.v1("")).await;
        if reply.status == 200 {
            assert_eq!(reply.json()["totalCount"], 1, "nothing lost");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no recovery: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.client
            .post(&app.v1("SLACK"), r#"{"apiToken":"x","teamName":"t"}"#)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn instances_starting_together_do_not_race_on_migrations() {
    if !backend_is_postgres() {
        return;
    }
    let db = crate::pg::TestDb::create().await.expect("postgres");
    let url = db.url().to_owned();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                atlas_integrations::store::open(&url, true, 2)
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("migrate concurrently");
    }
}
