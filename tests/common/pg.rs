//! Throw-away PostgreSQL databases for integration tests.
//!
//! [`TestDb::create`] makes a fresh, empty database `t_<uuid>` on the server named by
//! `TEST_DATABASE_URL` (default [`DEFAULT_URL`]: trust auth, user `postgres`, database
//! `test`), and dropping the [`TestDb`] drops that database again, with `(force)` so that
//! connections still open do not keep it alive. The drop also runs when the test panics.
//!
//! When the server cannot be reached, `create` prints
//! `PostgreSQL not reachable at ...: PostgreSQL tests skipped` to stderr and returns `None`, so
//! the test can return early and pass; with `ATLAS_REQUIRE_POSTGRES=1` it panics instead, so
//! that CI cannot skip them silently.
//!
//! Use it from a test binary with `mod common { pub mod pg; }` and:
//!
//! ```ignore
//! let Some(db) = common::pg::TestDb::create().await else { return };
//! let store = atlas_integrations::store::open(db.url(), true, 4).await?;
//! // Declare `db` before whatever holds connections, so that it is dropped last.
//! ```

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

/// The server the tests use when `TEST_DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh database that is dropped with this value.
#[derive(Debug)]
pub struct TestDb {
    /// The server's URL, naming the database used for `create`/`drop database`.
    admin_url: String,
    /// The fresh database's name, `t_<uuid without hyphens>`.
    name: String,
    /// The URL of the fresh database.
    url: String,
}

impl TestDb {
    /// Creates a fresh database; `None` when PostgreSQL is not reachable and not required.
    pub async fn create() -> Option<Self> {
        let admin_url =
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let mut admin = match connect(&admin_url).await {
            Ok(conn) => conn,
            Err(err) => {
                if std::env::var("ATLAS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!(
                        "PostgreSQL not reachable at {admin_url} ({err}) \
                         and ATLAS_REQUIRE_POSTGRES=1"
                    );
                }
                eprintln!(
                    "PostgreSQL not reachable at {admin_url} ({err}): PostgreSQL tests skipped"
                );
                return None;
            }
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(format!("create database \"{name}\"").as_str())
            .await
            .unwrap_or_else(|err| panic!("create database {name} at {admin_url}: {err}"));
        // Best effort: the connection is not needed any more.
        let _ = admin.close().await;
        let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is not a valid URL");
        url.set_path(&format!("/{name}"));
        Some(Self {
            admin_url,
            name,
            url: url.into(),
        })
    }

    /// The URL of the fresh database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    /// Drops the database from a thread of its own with its own runtime, so that it works from
    /// inside or outside a runtime and while a panic unwinds. Never panics: a failure is only
    /// reported on stderr.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("drop database if exists \"{}\" with (force)", self.name);
        let done = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async {
                let mut admin = connect(&admin_url).await.map_err(|err| err.to_string())?;
                admin
                    .execute(sql.as_str())
                    .await
                    .map_err(|err| err.to_string())?;
                let _ = admin.close().await;
                Ok(())
            })
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("cannot drop test database {}: {err}", self.name),
            Err(_) => eprintln!(
                "cannot drop test database {}: the thread panicked",
                self.name
            ),
        }
    }
}

async fn connect(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}
