//! SQLite's hot path, on the SQLite library directly (rusqlite) rather than through sqlx.
//!
//! sqlx runs every SQLite connection on a worker thread of its own and hands each statement
//! and each row over with channels. The benchmark's profile of a GET showed that hand-off
//! (futex waits, context switches on both sides) costing more than the lookup itself. Here:
//!
//! - **reads** run inline, on the task's own thread, on a small stash of read-only
//!   connections: a point lookup in WAL mode never waits for a writer and takes a few
//!   microseconds. A connection opens with no busy timeout, so an inline read can never
//!   sleep; in the rare case SQLite answers "busy" (another process recovering the WAL),
//!   the read is retried on a blocking thread that may wait, like every other statement,
//!   up to the busy timeout.
//! - **writes** go to one writer thread that commits everything waiting in one transaction
//!   (see `batch.rs`).
//!
//! sqlx keeps the rest: migrations, and the statements of the CLI and of authentication,
//! which are rare. Both drivers link the same SQLite library (`libsqlite3-sys`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::anyhow;
use rusqlite::{ffi, Connection, OpenFlags, OptionalExtension};

use super::batch::Writer;
use super::sql::{statements, IntegrationWrite, WriteOutcome};
use super::{Project, StoreError, StoreResult, StoredIntegration};
use crate::domain::ids::{GroupId, ObjectId};
use crate::domain::integration::IntegrationType;

/// Read connections kept open.
const READERS: usize = 4;

/// How long a statement that may wait waits for a lock, as on the sqlx connections.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The direct connections to one SQLite file.
pub struct Direct {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    writer: Writer,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// Opens the writer (and its thread) on the database file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let writer = Writer::start(open_writer(path)?)?;
        Ok(Self {
            path: path.to_owned(),
            readers: Mutex::new(Vec::with_capacity(READERS)),
            writer,
        })
    }

    /// One integration of a project.
    pub async fn one(
        &self,
        group: GroupId,
        kind: IntegrationType,
    ) -> StoreResult<Option<StoredIntegration>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(statements::ONE)?;
            statement
                .query_row((group.to_string(), kind.as_str()), integration_row)
                .optional()
        })
        .await?
        .transpose()
    }

    /// A project's integrations in creation order.
    pub async fn list(&self, group: GroupId) -> StoreResult<Vec<StoredIntegration>> {
        let rows = self
            .read(move |conn| {
                let mut statement = conn.prepare_cached(statements::LIST)?;
                let rows = statement.query_map([group.to_string()], integration_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    /// A project.
    pub async fn project(&self, group: GroupId) -> StoreResult<Option<Project>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(statements::PROJECT)?;
            statement
                .query_row([group.to_string()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .optional()
        })
        .await?
        .map(|(id, org_id, name, created_at)| {
            Ok(Project {
                id: parse_id(&id)?,
                org_id: parse_id(&org_id)?,
                name,
                created_at,
            })
        })
        .transpose()
    }

    /// Runs an integration write in the writer's next group commit.
    pub async fn write(&self, write: IntegrationWrite) -> StoreResult<WriteOutcome> {
        self.writer.submit(write).await
    }

    /// Runs `read` inline on a stashed (or new) read connection; on "busy", again on a
    /// blocking thread with a connection that waits.
    async fn read<T, F>(&self, read: F) -> StoreResult<T>
    where
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let stashed = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match stashed {
            Some(conn) => conn,
            None => open_reader(&self.path, Duration::ZERO).map_err(classify)?,
        };
        match read(&conn) {
            Ok(found) => {
                let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
                if readers.len() < READERS {
                    readers.push(conn);
                }
                Ok(found)
            }
            Err(err) if is_busy(&err) => {
                drop(conn);
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = open_reader(&path, BUSY_TIMEOUT)?;
                    read(&conn)
                })
                .await
                .map_err(|_| StoreError::Unavailable("the read was interrupted".into()))?
                .map_err(classify)
            }
            // The connection is dropped: a broken one is never used again.
            Err(err) => Err(classify(err)),
        }
    }
}

fn open_reader(path: &Path, busy: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy)?;
    Ok(conn)
}

fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|err| anyhow!("cannot open the SQLite database for writing: {err}"))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(
        "pragma journal_mode = wal; pragma synchronous = full; pragma foreign_keys = on;",
    )?;
    Ok(conn)
}

/// A row of `statements::ONE` or `LIST`; a row this server could not have written is an
/// error for its reader only.
fn integration_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoreResult<StoredIntegration>> {
    let id: String = row.get(0)?;
    let kind: String = row.get(1)?;
    let sealed: Vec<u8> = row.get(2)?;
    Ok((|| {
        Ok(StoredIntegration {
            id: parse_id(&id)?,
            kind: IntegrationType::parse(&kind).ok_or_else(|| {
                StoreError::Other(anyhow!("unknown integration type in database"))
            })?,
            sealed,
        })
    })())
}

fn parse_id(text: &str) -> StoreResult<ObjectId> {
    ObjectId::parse(text).ok_or_else(|| StoreError::Other(anyhow!("bad id in database")))
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Maps a SQLite error to the store's error kinds, as `sql::classify` does for sqlx's.
pub(super) fn classify(err: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, _) = &err {
        match failure.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                return StoreError::Conflict("unique")
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => return StoreError::NotFound,
            _ => {}
        }
        if matches!(
            failure.code,
            rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::ReadOnly
        ) {
            return StoreError::Unavailable(err.to_string());
        }
    }
    StoreError::Other(anyhow::Error::new(err))
}
