//! The PostgreSQL backend, for several server instances sharing one database. Migrations run
//! under a session advisory lock (sqlx's migrator takes it), so instances starting together do
//! not race.

use std::time::Duration;

use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::{Connection, PgConnection};

use super::conns::Conns;

use super::SqlStore;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Lanes merging integration reads: each holds one connection while its query runs, and
/// fewer, fuller batches cost PostgreSQL less than many small ones. One lane: on the
/// benchmark's W1 (64 connections, 100,000 projects) it used 20–25 µs of PostgreSQL CPU per
/// read against 29–33 µs with two, and 38–42 µs of ours against 45–47 µs, for 10–20 % more
/// requests per second (2026-11-30, 2-core Xeon).
const READ_LANES: usize = 1;

/// Connects a pool of `pool_size` connections to the database a `postgres:` URL names.
pub async fn connect(url: &str, pool_size: u32) -> anyhow::Result<SqlStore> {
    let pool = AnyPoolOptions::new()
        .max_connections(pool_size.max(1))
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(true)
        .connect(url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let url = url.to_owned();
    let hot = Conns::new(
        pool_size.max(1) as usize,
        Duration::from_secs(3),
        Box::new(move || {
            let url = url.clone();
            Box::pin(async move { PgConnection::connect(&url).await })
        }),
    );
    Ok(SqlStore::pooled(pool, hot, READ_LANES))
}

/// Runs the embedded PostgreSQL migrations.
pub async fn migrate(store: &SqlStore) -> anyhow::Result<()> {
    MIGRATOR
        .run(&store.write)
        .await
        .context("cannot migrate the PostgreSQL database")
}

/// The migrations, for the test that checks both backends have the same versions.
pub fn migrator() -> &'static sqlx::migrate::Migrator {
    &MIGRATOR
}
