//! The embedded SQLite backend: one file, WAL journal, `synchronous=FULL` (an acknowledged
//! write survives `kill -9` and power loss), foreign keys on, a busy timeout so that the CLI
//! and the server can write to the same file.

use std::time::Duration;

use anyhow::Context;
use std::str::FromStr;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::Executor;

use super::direct::Direct;

use super::SqlStore;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const PRAGMAS: &str = "pragma journal_mode = wal; pragma synchronous = full; \
                       pragma foreign_keys = on; pragma busy_timeout = 10000;";

/// Opens (creating if needed) the SQLite database a `sqlite:` URL names.
pub async fn open(url: &str) -> anyhow::Result<SqlStore> {
    let url = with_create_mode(url);
    let path = SqliteConnectOptions::from_str(&url)
        .context("invalid SQLite URL")?
        .get_filename()
        .to_owned();
    if path.as_os_str() == ":memory:" || url.contains("mode=memory") {
        anyhow::bail!("an in-memory SQLite database is not supported: name a file");
    }
    let options = |max: u32| {
        AnyPoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move { conn.execute(PRAGMAS).await.map(|_| ()) })
            })
    };
    // One writer: SQLite serialises writers anyway, and a second writer connection would only
    // wait on the lock while holding a pool slot. It creates the file and turns WAL on.
    let write = options(1)
        .connect(&url)
        .await
        .with_context(|| "cannot open the SQLite database")?;
    let read = options(2)
        .connect(&url)
        .await
        .with_context(|| "cannot open the SQLite database")?;
    let direct = Direct::open(&path)?;
    Ok(SqlStore::direct(read, write, direct))
}

/// Runs the embedded SQLite migrations.
pub async fn migrate(store: &SqlStore) -> anyhow::Result<()> {
    MIGRATOR
        .run(&store.write)
        .await
        .context("cannot migrate the SQLite database")
}

/// The migrations, for the test that checks both backends have the same versions.
pub fn migrator() -> &'static sqlx::migrate::Migrator {
    &MIGRATOR
}

fn with_create_mode(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The `sqlite:` URL of a database file.
pub fn url_for_path(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}
