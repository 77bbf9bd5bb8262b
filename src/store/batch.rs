//! Group commit for integration writes on SQLite.
//!
//! With `synchronous=FULL` every commit waits for the disk, and SQLite has one writer, so
//! commits are the throughput limit. Concurrent writes are queued to one writer task, which
//! takes everything waiting (up to [`MAX_BATCH`]) and runs it in one transaction, each write
//! inside its own savepoint so that one failure (a duplicate create) rolls back only that
//! write. Nobody is answered before the commit has returned, so an acknowledged write is on
//! disk exactly as with one commit per write.

use sqlx::{AnyConnection, AnyPool, Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use super::sql::{classify, IntegrationWrite, WriteOutcome};
use super::{StoreError, StoreResult};

/// The most writes committed together.
pub const MAX_BATCH: usize = 256;

type Job = (IntegrationWrite, oneshot::Sender<StoreResult<WriteOutcome>>);

/// The queue in front of the writer task.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the writer task on `pool` (a one-connection pool).
    pub fn start(pool: AnyPool) -> Self {
        let (queue, jobs) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(pool, jobs));
        Self { queue }
    }

    /// Runs one write in the next batch and waits for its commit.
    pub async fn submit(&self, write: IntegrationWrite) -> StoreResult<WriteOutcome> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((write, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }
}

async fn run(pool: AnyPool, mut jobs: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match pool.acquire().await {
            Ok(mut conn) => commit_batch(&mut conn, &mut batch).await,
            Err(err) => {
                let message = err.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }
}

async fn commit_batch(conn: &mut AnyConnection, batch: &mut Vec<Job>) {
    if batch.len() == 1 {
        // Nothing to share a commit with: autocommit saves the savepoint round trips.
        if let Some((write, reply)) = batch.pop() {
            let _ = reply.send(write.apply(&mut *conn).await);
        }
        return;
    }
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(err) => return fail_all(batch, classify(err)),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for (write, _) in batch.iter() {
        if let Err(err) = tx.execute("savepoint w").await {
            return fail_all(batch, classify(err));
        }
        let outcome = write.apply(&mut tx).await;
        let end = if outcome.is_ok() {
            "release savepoint w"
        } else {
            "rollback to savepoint w; release savepoint w"
        };
        if let Err(err) = tx.execute(end).await {
            return fail_all(batch, classify(err));
        }
        outcomes.push(outcome);
    }
    if let Err(err) = tx.commit().await {
        return fail_all(batch, classify(err));
    }
    for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

fn fail_all(batch: &mut Vec<Job>, err: StoreError) {
    let message = err.to_string();
    for (_, reply) in batch.drain(..) {
        let _ = reply.send(Err(match &err {
            StoreError::Unavailable(_) => StoreError::Unavailable(message.clone()),
            _ => StoreError::Other(anyhow::anyhow!("batch commit failed: {message}")),
        }));
    }
}
