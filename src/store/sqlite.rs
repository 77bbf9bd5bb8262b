//! The embedded SQLite backend: one file, WAL journal, `synchronous=FULL` (an acknowledged
//! write survives `kill -9` and power loss), foreign keys on, a busy timeout so that the CLI
//! and the server can write to the same file.

use std::time::Duration;

use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, Connection, Executor};

use super::conns::Conns;

use super::SqlStore;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const PRAGMAS: &str = "pragma journal_mode = wal; pragma synchronous = full; \
                       pragma foreign_keys = on; pragma busy_timeout = 10000;";

/// Opens (creating if needed) the SQLite database a `sqlite:` URL names.
pub async fn open(url: &str, pool_size: u32) -> anyhow::Result<SqlStore> {
    let url = with_create_mode(url);
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
    // wait on the lock while holding a pool slot.
    let write = options(1)
        .connect(&url)
        .await
        .with_context(|| "cannot open the SQLite database")?;
    // The hot reads have their own connections (`Conns`); this pool serves the rest.
    let read = options(2)
        .connect(&url)
        .await
        .with_context(|| "cannot open the SQLite database")?;
    // More concurrent readers than cores only adds SQLite worker threads and page caches.
    let hot = Conns::new(
        pool_size.clamp(1, 4) as usize,
        Duration::from_secs(30),
        Box::new(move || {
            let url = url.clone();
            Box::pin(async move {
                let mut conn = AnyConnection::connect(&url).await?;
                conn.execute(PRAGMAS).await?;
                Ok(conn)
            })
        }),
    );
    Ok(SqlStore::new(read, write, hot, true))
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
