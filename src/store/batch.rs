//! Group commit for integration writes on SQLite.
//!
//! With `synchronous=FULL` every commit waits for the disk, and SQLite has one writer, so
//! commits are the throughput limit. Concurrent writes are queued to one writer thread, which
//! takes everything waiting (up to [`MAX_BATCH`]) and runs it in one transaction, each write
//! inside its own savepoint so that one failure (a duplicate create) rolls back only that
//! write. Nobody is answered before the commit has returned, so an acknowledged write is on
//! disk exactly as with one commit per write. The thread owns its connection and calls
//! SQLite directly: a batch costs one hand-off, not one per statement.

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::direct::{classify, keyed, list, Commits};
use super::sql::{IntegrationWrite, WriteOutcome};
use super::{now_ms, StoreError, StoreResult, StoredIntegration};

/// The most writes committed together.
pub const MAX_BATCH: usize = 256;

/// A write's outcome, and the project's integrations right after it when asked for.
type Written = (WriteOutcome, Option<Vec<StoredIntegration>>);

/// A write, whether to list the project after it, and where to answer.
type Job = (
    IntegrationWrite,
    bool,
    oneshot::Sender<StoreResult<Written>>,
);

/// The queue in front of the writer thread.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `conn`, reporting its commits to `commits`; it ends when
    /// the last `Writer` is dropped.
    pub fn start(conn: Connection, commits: Arc<Commits>) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel(MAX_BATCH * 4);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, jobs, &commits))?;
        Ok(Self { queue })
    }

    /// Runs one write in the next batch and waits for its commit; with `list`, the answer
    /// also holds the project's integrations as the write left them.
    pub async fn submit(&self, write: IntegrationWrite, list: bool) -> StoreResult<Written> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((write, list, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }
}

/// Commits whatever is waiting, as soon as the last commit is done: writes that arrive during
/// a commit make the next batch, so batches grow with the load by themselves. (An earlier
/// version waited until 1 ms after the last commit to gather more: in the benchmark that
/// sleep was a third of every commit cycle under load, and side by side W4 rose from
/// 11–13k to 15–16k durable PUTs/s and W3 from 0.25–0.31× to 0.32× without it.)
fn run(conn: Connection, mut jobs: mpsc::Receiver<Job>, commits: &Commits) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = jobs.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&conn, &mut batch);
        commits.committed();
    }
}

fn commit_batch(conn: &Connection, batch: &mut Vec<Job>) {
    if batch.len() == 1 {
        // Nothing to share a commit with: autocommit saves the savepoint statements.
        if let Some((write, list, reply)) = batch.pop() {
            let _ = reply.send(apply(conn, &write, list));
        }
        return;
    }
    if let Err(err) = run_cached(conn, &["begin immediate"]) {
        return fail_all(batch, &classify(err));
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (write, list, _) in batch.iter() {
        if let Err(err) = run_cached(conn, &["savepoint w"]) {
            return abandon(conn, batch, &classify(err));
        }
        let outcome = apply(conn, write, *list);
        let end: &[&str] = if outcome.is_ok() {
            &["release savepoint w"]
        } else {
            &["rollback to savepoint w", "release savepoint w"]
        };
        if let Err(err) = run_cached(conn, end) {
            return abandon(conn, batch, &classify(err));
        }
        outcomes.push(outcome);
    }
    if let Err(err) = run_cached(conn, &["commit"]) {
        return abandon(conn, batch, &classify(err));
    }
    for ((_, _, reply), outcome) in batch.drain(..).zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

/// Runs statements without parameters from the connection's statement cache
/// (`execute_batch` compiles them again every time: 3 % of the writer's CPU in W4).
fn run_cached(conn: &Connection, statements: &[&str]) -> rusqlite::Result<()> {
    for sql in statements {
        conn.prepare_cached(sql)?.execute([])?;
    }
    Ok(())
}

/// Runs one write on `conn`, then with `listed` reads the project's integrations.
fn apply(conn: &Connection, write: &IntegrationWrite, listed: bool) -> StoreResult<Written> {
    let (outcome, number) = write_one(conn, write)?;
    if !listed {
        return Ok((outcome, None));
    }
    let rows = list(conn, write.parts().1, number).map_err(classify)??;
    Ok((outcome, Some(rows)))
}

/// Runs one write; also answers the project's number when it was read.
fn write_one(
    conn: &Connection,
    write: &IntegrationWrite,
) -> StoreResult<(WriteOutcome, Option<i64>)> {
    let (_, group, kind, row) = write.parts();
    let group = group.to_string();
    let Some(row) = row else {
        // Delete.
        let changed = conn
            .prepare_cached(keyed::DELETE)
            .and_then(|mut delete| delete.execute((&group, kind.code())))
            .map_err(classify)?;
        return Ok((WriteOutcome::Done(changed > 0), None));
    };
    let (number, seq) = conn
        .prepare_cached(keyed::NEXT)
        .and_then(|mut next| {
            next.query_row([&group], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .optional()
        })
        .map_err(classify)?
        .ok_or(StoreError::NotFound)?;
    let params = (
        number * 16 + kind.code(),
        seq,
        &group,
        kind.as_str(),
        row.id.to_string(),
        &row.sealed,
        now_ms(),
    );
    let outcome = if let IntegrationWrite::Replace { .. } = write {
        let id: String = conn
            .prepare_cached(keyed::REPLACE)
            .and_then(|mut replace| replace.query_row(params, |r| r.get(0)).optional())
            .map_err(classify)?
            .ok_or_else(|| {
                StoreError::Other(anyhow::anyhow!(
                    "an integration key is held by another project's row"
                ))
            })?;
        WriteOutcome::replaced(&id)?
    } else {
        let changed = conn
            .prepare_cached(keyed::CREATE)
            .and_then(|mut create| create.execute(params))
            .map_err(classify)?;
        WriteOutcome::Done(changed > 0)
    };
    Ok((outcome, Some(number)))
}

/// The transaction cannot go on: roll back what it did and fail every write of the batch.
fn abandon(conn: &Connection, batch: &mut Vec<Job>, err: &StoreError) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("rollback");
    }
    fail_all(batch, err);
}

fn fail_all(batch: &mut Vec<Job>, err: &StoreError) {
    let message = err.to_string();
    for (_, _, reply) in batch.drain(..) {
        let _ = reply.send(Err(match err {
            StoreError::Unavailable(_) => StoreError::Unavailable(message.clone()),
            _ => StoreError::Other(anyhow::anyhow!("batch commit failed: {message}")),
        }));
    }
}
