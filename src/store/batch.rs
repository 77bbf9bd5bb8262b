//! Group commit for integration writes on SQLite.
//!
//! With `synchronous=FULL` every commit waits for the disk, and SQLite has one writer, so
//! commits are the throughput limit. Concurrent writes are queued to one writer thread, which
//! takes everything waiting (up to [`MAX_BATCH`]) and runs it in one transaction. Each write
//! changes the database with one statement, after the reads that can refuse it, and SQLite
//! undoes a failing statement, so one failure (a duplicate create) leaves the others as they
//! are without a savepoint per write. Nobody is answered before the commit has returned, so
//! an acknowledged write is on disk exactly as with one commit per write. The thread owns its
//! connection and calls SQLite directly: a batch costs one hand-off, not one per statement.

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::direct::{classify, integration_columns, keyed, Commits, Held};
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
    if let Err(err) = run_cached(conn, &["begin immediate"]) {
        return fail_all(batch, &classify(err));
    }
    // Each write changes the database with one statement, after every read it depends on
    // (see `apply`), and SQLite undoes a statement that fails: a write that fails leaves
    // nothing behind, and the batch goes on without savepoints. Only an error that made
    // SQLite roll the whole transaction back (an I/O error, a full disk) ends the batch.
    let mut held = Held::new(conn);
    let mut outcomes = Vec::with_capacity(batch.len());
    for (write, list, _) in batch.iter() {
        let outcome = apply(&mut held, write, *list);
        if let Err(err) = &outcome {
            if conn.is_autocommit() {
                drop(held);
                return abandon(conn, batch, err);
            }
        }
        outcomes.push(outcome);
    }
    drop(held);
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

/// Runs one write; with `listed`, also answers the project's integrations as the write left
/// them. Everything that can fail is read before the one statement that changes the
/// database, so that a failed write has changed nothing: the project's number and the next
/// `seq` (`keyed::NEXT`), or with `listed` the project's rows themselves (`keyed::ROWS`),
/// to which the list adds or in which it replaces the row written.
fn apply(held: &mut Held<'_>, write: &IntegrationWrite, listed: bool) -> StoreResult<Written> {
    let (_, group, kind, row) = write.parts();
    let hex = group.text();
    let group = hex.as_str();
    let Some(row) = row else {
        // Delete.
        let changed = held
            .get(keyed::DELETE)
            .and_then(|delete| delete.execute((group, kind.code())))
            .map_err(classify)?;
        return Ok((WriteOutcome::Done(changed > 0), None));
    };
    let (number, seq, mut rows) = if listed {
        let (number, rows) = project_rows(held, group)?;
        let seq = rows.iter().map(|&(seq, _)| seq).max().unwrap_or(0) + 1;
        (number, seq, rows)
    } else {
        let (number, seq) = held
            .get(keyed::NEXT)
            .and_then(|next| {
                next.query_row([group], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                    .optional()
            })
            .map_err(classify)?
            .ok_or(StoreError::NotFound)?;
        (number, seq, Vec::new())
    };
    let row_id = row.id.text();
    let params = (
        number * 16 + kind.code(),
        seq,
        group,
        kind.as_str(),
        row_id.as_str(),
        &row.sealed,
        now_ms(),
    );
    let (outcome, id) = if let IntegrationWrite::Replace { .. } = write {
        let id: String = held
            .get(keyed::REPLACE)
            .and_then(|replace| replace.query_row(params, |r| r.get(0)).optional())
            .map_err(classify)?
            .ok_or_else(|| {
                StoreError::Other(anyhow::anyhow!(
                    "an integration key is held by another project's row"
                ))
            })?;
        let id = WriteOutcome::replaced_id(&id)?;
        (WriteOutcome::Id(id), id)
    } else {
        let changed = held
            .get(keyed::CREATE)
            .and_then(|create| create.execute(params))
            .map_err(classify)?;
        (WriteOutcome::Done(changed > 0), row.id)
    };
    if !listed {
        return Ok((outcome, None));
    }
    let written = StoredIntegration {
        id,
        kind,
        sealed: row.sealed.clone(),
    };
    match rows.iter_mut().find(|(_, stored)| stored.kind == kind) {
        // Replaced: the row keeps its place (`seq`) and its id.
        Some((_, stored)) => *stored = written,
        None => rows.push((seq, written)),
    }
    rows.sort_unstable_by_key(|&(seq, _)| seq);
    Ok((
        outcome,
        Some(rows.into_iter().map(|(_, row)| row).collect()),
    ))
}

/// A project's number and its integrations with their `seq`, in no order; `NotFound` when
/// the project does not exist.
fn project_rows(
    held: &mut Held<'_>,
    group: &str,
) -> StoreResult<(i64, Vec<(i64, StoredIntegration)>)> {
    let read = held
        .get(keyed::ROWS)
        .and_then(|rows| {
            rows.query_map([group], |r| {
                let number = r.get::<_, i64>(0)?;
                let stored = match r.get_ref(1)? {
                    rusqlite::types::ValueRef::Null => None,
                    _ => Some((r.get::<_, i64>(4)?, integration_columns(r, 1)?)),
                };
                Ok((number, stored))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(classify)?;
    let number = read.first().ok_or(StoreError::NotFound)?.0;
    let mut rows = Vec::with_capacity(read.len() + 1);
    for (_, stored) in read {
        if let Some((seq, stored)) = stored {
            rows.push((seq, stored?));
        }
    }
    Ok((number, rows))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::ObjectId;
    use crate::domain::integration::IntegrationType;
    use crate::store::{Org, Project};

    fn row(kind: IntegrationType, sealed: &[u8]) -> StoredIntegration {
        StoredIntegration {
            id: ObjectId::generate(),
            kind,
            sealed: sealed.to_vec(),
        }
    }

    /// One transaction holding writes that fail (a duplicate create, a create on a project
    /// that does not exist, a delete of nothing) between writes that succeed: the failures
    /// change nothing, the others are all committed, and each listed write answers the list
    /// as it left it.
    #[tokio::test]
    async fn failing_writes_of_a_batch_change_nothing_and_the_others_commit() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("batch.db");
        let url = crate::store::sqlite::url_for_path(&path);
        let store = crate::store::open(&url, true, 1).await.expect("open store");
        let org = Org {
            id: ObjectId::generate(),
            name: "o".into(),
            created_at: 1,
        };
        store.create_org(&org).await.expect("create org");
        let project = Project {
            id: ObjectId::generate(),
            org_id: org.id,
            name: "p".into(),
            created_at: 1,
        };
        store
            .create_project(&project)
            .await
            .expect("create project");
        let group = project.id;
        let slack = row(IntegrationType::Slack, b"slack 1");
        store.create_integration(group, &slack).await.expect("seed");
        let datadog = row(IntegrationType::Datadog, b"datadog 1");
        store
            .create_integration(group, &datadog)
            .await
            .expect("seed");

        let slack_again = row(IntegrationType::Slack, b"slack 2");
        let webhook = row(IntegrationType::Webhook, b"webhook 1");
        let writes = [
            (
                IntegrationWrite::Create {
                    group,
                    integration: slack_again.clone(),
                },
                true,
            ),
            (
                IntegrationWrite::Replace {
                    group,
                    integration: slack_again.clone(),
                },
                true,
            ),
            (
                IntegrationWrite::Create {
                    group: ObjectId::generate(),
                    integration: webhook.clone(),
                },
                true,
            ),
            (
                IntegrationWrite::Delete {
                    group,
                    kind: IntegrationType::PagerDuty,
                },
                false,
            ),
            (
                IntegrationWrite::Delete {
                    group,
                    kind: IntegrationType::Datadog,
                },
                false,
            ),
            (
                IntegrationWrite::Create {
                    group,
                    integration: webhook.clone(),
                },
                true,
            ),
            (
                IntegrationWrite::Create {
                    group,
                    integration: webhook.clone(),
                },
                false,
            ),
        ];
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for (write, list) in writes {
            let (tx, rx) = oneshot::channel();
            batch.push((write, list, tx));
            answers.push(rx);
        }
        let conn = super::super::direct::open_writer(&path).expect("writer");
        commit_batch(&conn, &mut batch);
        let mut answers = answers
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("answered"));

        let replaced = StoredIntegration {
            id: slack.id,
            ..slack_again.clone()
        };
        assert!(matches!(answers.next(), Some(Err(StoreError::Conflict(_)))));
        match answers.next() {
            Some(Ok((WriteOutcome::Id(id), Some(list)))) => {
                assert_eq!(id, slack.id);
                assert_eq!(list, vec![replaced.clone(), datadog.clone()]);
            }
            other => panic!("replace: {other:?}"),
        }
        assert!(matches!(answers.next(), Some(Err(StoreError::NotFound))));
        assert!(matches!(
            answers.next(),
            Some(Ok((WriteOutcome::Done(false), None)))
        ));
        assert!(matches!(
            answers.next(),
            Some(Ok((WriteOutcome::Done(true), None)))
        ));
        match answers.next() {
            Some(Ok((WriteOutcome::Done(true), Some(list)))) => {
                assert_eq!(list, vec![replaced.clone(), webhook.clone()]);
            }
            other => panic!("create: {other:?}"),
        }
        assert!(matches!(answers.next(), Some(Err(StoreError::Conflict(_)))));
        assert_eq!(
            store.list_integrations(group).await.expect("list"),
            vec![replaced, webhook]
        );
    }
}
