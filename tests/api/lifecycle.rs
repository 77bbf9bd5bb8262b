//! The server process: durability across `kill -9`, `/health`, graceful shutdown.

use std::process::Command;

use crate::helpers::{challenge_param, digest_header, path, spawn_app, DigestClient, Process};

fn credentials(p: &Process) -> (String, String, String) {
    (
        p.credential("group id"),
        p.credential("public key"),
        p.credential("private key"),
    )
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut server = Process::start(&["--data-dir", &data], &[]);
    let (group, public, private) = credentials(&server);
    let client = DigestClient::new(&server.base, &public, &private);
    let bodies = [
        (
            "DATADOG",
            r#"{"type":"DATADOG","apiKey":"abcdef0123456789"}"#,
        ),
        (
            "SLACK",
            r#"{"type":"SLACK","apiToken":"xoxb-1234","teamName":"T","channelName":"c"}"#,
        ),
        (
            "PAGER_DUTY",
            r#"{"type":"PAGER_DUTY","serviceKey":"pd-secret-1"}"#,
        ),
        (
            "OPS_GENIE",
            r#"{"type":"OPS_GENIE","apiKey":"og-secret-1","region":"EU"}"#,
        ),
        (
            "WEBHOOK",
            r#"{"type":"WEBHOOK","url":"https://hooks.example.com/x","secret":"s"}"#,
        ),
    ];
    // Act: every write is acknowledged, then the process dies without any chance to flush.
    for (kind, body) in bodies {
        let reply = client.post(&path("v1.0", &group, kind), body).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let reply = client
        .put(
            &path("v1.0", &group, "PAGER_DUTY"),
            r#"{"type":"PAGER_DUTY","serviceKey":"pd-secret-2","region":"EU"}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = client.delete(&path("v1.0", &group, "OPS_GENIE")).await;
    assert_eq!(reply.status, 204);
    server.kill9();

    // Assert
    let server = Process::start(&["--data-dir", &data], &[]);
    assert!(
        server.stdout.lock().unwrap().is_empty(),
        "no second bootstrap"
    );
    let client = DigestClient::new(&server.base, &public, &private);
    let list = client.get(&path("v1.0", &group, "")).await.json();
    let kinds: Vec<&str> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["DATADOG", "SLACK", "PAGER_DUTY", "WEBHOOK"]);
    let pd = client.get(&path("v1.0", &group, "PAGER_DUTY")).await.json();
    assert_eq!(pd["region"], "EU");
    assert_eq!(pd["serviceKey"], "*******et-2");
}

#[tokio::test]
async fn health_answers_without_authentication() {
    let app = spawn_app().await;
    let reply = app
        .client
        .raw()
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.json::<serde_json::Value>().await.unwrap()["status"],
        "OK"
    );
}

#[tokio::test]
async fn health_refuses_other_methods() {
    let app = spawn_app().await;
    let reply = app
        .client
        .raw()
        .post(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 405);
    assert_eq!(reply.headers()["allow"], "GET");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let reply = app.client.get(&app.v1("")).await;
    let id = reply.header("x-request-id").expect("x-request-id");
    assert_eq!(id.len(), 36, "{id}");
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_cleanly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Arrange: a nonce, and a request whose body is only half sent when SIGTERM arrives.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut server = Process::start(&["--data-dir", &data], &[]);
    let (group, public, private) = credentials(&server);
    let uri = path("v1.0", &group, "DATADOG");
    let challenge = reqwest::Client::new()
        .get(format!("{}{uri}", server.base))
        .send()
        .await
        .unwrap();
    let nonce = challenge_param(
        challenge.headers()["www-authenticate"].to_str().unwrap(),
        "nonce",
    )
    .unwrap();
    let auth = digest_header(
        &public,
        &private,
        "POST",
        &uri,
        &nonce,
        1,
        "0123456789abcdef",
    );
    let body = r#"{"type":"DATADOG","apiKey":"abcdef"}"#;
    let (first, rest) = body.split_at(10);
    let mut stream = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {uri} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // Act
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let exit = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();

    // Assert
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"DATADOG\""), "{text}");
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_cannot_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    // Arrange: a connection that sends half a request line and stops.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut server = Process::start(&["--data-dir", &data], &[]);
    let mut stalled = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stalled
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Act
    let pid = server.child.id().to_string();
    let started = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();

    // Assert: the header-read timeout (10 s) ends it, well before the shutdown deadline.
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test]
async fn idle_connections_and_unfinished_request_heads_are_closed_after_ten_to_fifteen_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Arrange: one connection that sent half a request head, one that finished a request and
    // then said nothing, one that keeps asking for /health every second.
    let app = spawn_app().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut busy = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();

    // Act: keep the busy connection in use while waiting for the others to be closed.
    let closed = |mut stream: tokio::net::TcpStream| async move {
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), read).await;
        started.elapsed()
    };
    let keep_busy = async {
        for second in 0..17 {
            assert!(
                health_on(&mut busy).await,
                "the connection in use was closed after {second} s"
            );
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    };
    let ((stalled_after, idle_after), ()) = tokio::join!(
        async { tokio::join!(closed(stalled), closed(idle)) },
        keep_busy
    );

    // Assert
    for after in [stalled_after, idle_after] {
        assert!(
            after >= std::time::Duration::from_secs(9)
                && after <= std::time::Duration::from_secs(16),
            "closed after {after:?}"
        );
    }
}

/// Asks for `/health` on an open keep-alive connection: whether a whole 200 came back on it.
async fn health_on(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        response.extend_from_slice(&chunk[..n]);
        let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        if response.len() >= head_end + 4 + length {
            return response.starts_with(b"HTTP/1.1 200");
        }
    }
}
