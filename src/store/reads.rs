//! Concurrent integration and project reads answered together ("read group commit").
//!
//! The benchmark's profiles showed the per-query overhead, not the lookup, dominating a GET:
//! on PostgreSQL one network round trip and one executor start per request, which cost
//! PostgreSQL more CPU than the whole request cost this server; on SQLite the start and end
//! of a read transaction (shared-memory locks, `fcntl`, contention between threads), three
//! times the lookup itself. So reads that arrive together are answered together: a few lanes
//! each take everything waiting (up to [`MAX_READS`]) and answer it at once. On PostgreSQL a
//! lane is a task running at most three statements for the batch (one for the single
//! integrations asked for, one for the projects whose list was asked for, one for the
//! projects themselves, the authenticator's first look at a project); on SQLite a lane is a
//! task running the batch's lookups inline, in one read transaction (`direct.rs`), answering
//! each key as soon as it is found ([`Answers`]) so that the other worker thread serves those
//! requests while the lane goes on.
//!
//! Nothing is cached: every read is answered by a query that started after the read was
//! asked for, so it sees every write acknowledged before it, from this process or another.
//! A lane is never cancelled half way through a query (a requester that goes away only
//! drops its answer), so a connection is never left in the middle of a statement.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use anyhow::anyhow;
use sqlx::postgres::PgRow;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::conns::Conns;
use super::sql::classify;
use super::{Project, ReadHint, StoreError, StoreResult, StoredIntegration};
use crate::domain::ids::{GroupId, ObjectId};
use crate::domain::integration::IntegrationType;

/// The most reads answered by one lane's turn: as many as the benchmark's 64 connections can
/// have waiting, so that none waits for a second turn (and a second read transaction). Four
/// side-by-side passes of W1 on SQLite against 32: 0.48–0.52× of the ceiling (mean 0.51)
/// against 0.46–0.51× (mean 0.49), 20.3–22.9 against 21.6–22.8 µs per GET: a small gain
/// within the host's noise.
pub const MAX_READS: usize = 64;

/// Statements are built for batches of 1, 2, 4 … [`MAX_READS`] keys (the rest padded by
/// repeating a key), so that each connection prepares at most seven of each.
const SIZES: usize = MAX_READS.trailing_zeros() as usize + 1;

type One = StoreResult<Option<StoredIntegration>>;
type List = StoreResult<Vec<StoredIntegration>>;
type OneProject = StoreResult<Option<(Project, ReadHint)>>;

/// One read waiting for its lane.
pub(super) enum Read {
    One {
        group: GroupId,
        kind: IntegrationType,
        hint: ReadHint,
        reply: oneshot::Sender<One>,
    },
    List {
        group: GroupId,
        reply: oneshot::Sender<List>,
    },
    Project {
        group: GroupId,
        reply: oneshot::Sender<OneProject>,
    },
}

/// The queue in front of the lanes.
#[derive(Debug, Clone)]
pub struct ReadBatcher {
    queue: mpsc::Sender<Read>,
}

impl ReadBatcher {
    /// Starts `lanes` lane tasks reading through `conns` (PostgreSQL).
    pub fn start(conns: Arc<Conns>, lanes: usize) -> Self {
        let (queue, reads) = mpsc::channel(MAX_READS * 32);
        let reads = Arc::new(Mutex::new(reads));
        for _ in 0..lanes.max(1) {
            tokio::spawn(lane(Arc::clone(&conns), Arc::clone(&reads)));
        }
        Self { queue }
    }

    /// Starts `lanes` lane tasks, each with its own `state` (made by `make`), answering
    /// every batch inline with `fetch` (SQLite: a batch of lookups takes tens of
    /// microseconds, less than a hand-off to another thread would). `fetch` answers each
    /// key through [`Answers`] as soon as it is found; reads it leaves unanswered get
    /// nothing found, or its error.
    pub fn start_inline<S: Send + 'static>(
        lanes: usize,
        make: impl Fn() -> S,
        fetch: fn(&mut S, &Keys, &mut Answers<'_>) -> StoreResult<()>,
    ) -> Self {
        let (queue, reads) = mpsc::channel(MAX_READS * 32);
        let reads = Arc::new(Mutex::new(reads));
        for _ in 0..lanes.max(1) {
            let mut state = make();
            let reads = Arc::clone(&reads);
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(MAX_READS);
                while take(&reads, &mut batch).await {
                    let keys = Keys::of(&batch);
                    let done = fetch(&mut state, &keys, &mut Answers { batch: &mut batch });
                    answer(&mut batch, done.map(|()| Found::default()));
                }
            });
        }
        Self { queue }
    }

    /// One integration of a project.
    pub async fn one(&self, group: GroupId, kind: IntegrationType, hint: ReadHint) -> One {
        let (reply, answer) = oneshot::channel();
        self.ask(Read::One {
            group,
            kind,
            hint,
            reply,
        })
        .await?;
        answer.await.map_err(|_| stopped())?
    }

    /// A project's integrations in creation order.
    pub async fn list(&self, group: GroupId) -> List {
        let (reply, answer) = oneshot::channel();
        self.ask(Read::List { group, reply }).await?;
        answer.await.map_err(|_| stopped())?
    }

    /// A project and the hint for reading its integrations (the authenticator's first look
    /// at a project goes here).
    pub async fn project(&self, group: GroupId) -> OneProject {
        let (reply, answer) = oneshot::channel();
        self.ask(Read::Project { group, reply }).await?;
        answer.await.map_err(|_| stopped())?
    }

    async fn ask(&self, read: Read) -> StoreResult<()> {
        self.queue.send(read).await.map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the reader has stopped".into())
}

async fn lane(conns: Arc<Conns>, reads: Arc<Mutex<mpsc::Receiver<Read>>>) {
    let mut batch = Vec::with_capacity(MAX_READS);
    while take(&reads, &mut batch).await {
        let keys = Keys::of(&batch);
        let found = query(&conns, &keys).await;
        answer(&mut batch, found);
    }
}

/// Waits for a read, lets every other ready task run (and ask for its reads), then takes
/// all that is waiting, up to [`MAX_READS`]. False when every sender is gone.
///
/// A woken task runs next on its worker, so without the yield most batches held the one
/// read that woke the lane: on SQLite each read then paid for a read transaction of its own
/// (two `fcntl` calls on the shared-memory locks and the pager's checks), on PostgreSQL for
/// a query of its own. On the benchmark's W1 (2-core AMD EPYC, SQLite) the yield took
/// `fcntl` from 1.6 to 0.16 per GET and the server's CPU per GET on one project from 53 to
/// 31 µs.
async fn take(reads: &Mutex<mpsc::Receiver<Read>>, batch: &mut Vec<Read>) -> bool {
    let mut queue = reads.lock().await;
    if queue.recv_many(batch, MAX_READS).await == 0 {
        return false;
    }
    tokio::task::yield_now().await;
    while batch.len() < MAX_READS {
        match queue.try_recv() {
            Ok(read) => batch.push(read),
            Err(_) => break,
        }
    }
    true
}

/// The distinct keys a batch asks for, each kind in the order its first read arrived.
///
/// Arrival order, not key order: the lane answers keys in this order, so reads are served
/// first come, first served (in key order a read's place in its batch was random). Key order
/// bought nothing (the keys of a batch are far apart in every B-tree). On the benchmark's W1
/// this did not measurably narrow the latency spread (p99 2.05–2.24× the median against
/// 2.23–2.44× in three side-by-side pairs): the ceiling, with no batches at all, shows the same
/// spread, so it comes from the machine's scheduling, not from the lane.
#[derive(Debug, Default)]
pub(super) struct Keys {
    /// Single integrations.
    pub points: Vec<(GroupId, IntegrationType)>,
    /// The hint each of `points` was asked with (its first read's).
    pub hints: Vec<ReadHint>,
    /// Projects whose list is asked for.
    pub groups: Vec<GroupId>,
    /// Projects.
    pub projects: Vec<GroupId>,
}

impl Keys {
    fn of(batch: &[Read]) -> Self {
        let mut keys = Self::default();
        for read in batch {
            match read {
                Read::One {
                    group, kind, hint, ..
                } => {
                    if push_new(&mut keys.points, (*group, *kind)) {
                        keys.hints.push(*hint);
                    }
                }
                Read::List { group, .. } => {
                    push_new(&mut keys.groups, *group);
                }
                Read::Project { group, .. } => {
                    push_new(&mut keys.projects, *group);
                }
            }
        }
        keys
    }
}

/// The reads of a lane's batch, answered one key at a time as the lane finds it.
///
/// Answering at once rather than at the end of the batch lets the other worker thread take
/// the woken requests (render, write the answer) while this one goes on with the batch's
/// lookups: with every read answered at the end, the other core had nothing to do for the
/// length of a batch, and the benchmark's W1 left a sixth of the machine idle.
pub(super) struct Answers<'a> {
    batch: &'a mut Vec<Read>,
}

impl Answers<'_> {
    /// Answers the reads of integration `kind` of `group`.
    pub fn one(&mut self, group: GroupId, kind: IntegrationType, row: Option<StoredIntegration>) {
        self.answer_with(
            |read| matches!(read, Read::One { group: g, kind: k, .. } if *g == group && *k == kind),
            row,
            |read| match read {
                Read::One { reply, .. } => Some(reply),
                _ => None,
            },
        );
    }

    /// Answers the reads of `group`'s list.
    pub fn list(&mut self, group: GroupId, rows: Vec<StoredIntegration>) {
        self.answer_with(
            |read| matches!(read, Read::List { group: g, .. } if *g == group),
            rows,
            |read| match read {
                Read::List { reply, .. } => Some(reply),
                _ => None,
            },
        );
    }

    /// Answers the reads `asks` picks out with `value`, through the sender `reply` takes
    /// from each: moved to the last of them, copied for any other (the same key asked twice
    /// in one batch).
    fn answer_with<T: Clone>(
        &mut self,
        asks: impl Fn(&Read) -> bool,
        value: T,
        reply: impl Fn(Read) -> Option<oneshot::Sender<StoreResult<T>>>,
    ) {
        let mut waiting: Option<oneshot::Sender<StoreResult<T>>> = None;
        self.answer(asks, |read| {
            if let Some(earlier) = reply(read).and_then(|reply| waiting.replace(reply)) {
                let _ = earlier.send(Ok(value.clone()));
            }
        });
        if let Some(last) = waiting {
            let _ = last.send(Ok(value));
        }
    }

    /// Answers the reads of project `group`.
    pub fn project(&mut self, group: GroupId, project: Option<&Project>, hint: ReadHint) {
        self.answer(
            |read| matches!(read, Read::Project { group: g, .. } if *g == group),
            |read| {
                if let Read::Project { reply, .. } = read {
                    let _ = reply.send(Ok(project.map(|p| (p.clone(), hint))));
                }
            },
        );
    }

    /// Takes the reads `asks` picks out of the batch and answers each with `send`.
    fn answer(&mut self, asks: impl Fn(&Read) -> bool, mut send: impl FnMut(Read)) {
        let mut i = 0;
        while i < self.batch.len() {
            if asks(&self.batch[i]) {
                send(self.batch.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }
}

/// Answers every read of `batch` from `found` (and empties it).
fn answer(batch: &mut Vec<Read>, found: StoreResult<Found>) {
    let found = match found {
        Ok(found) => found,
        Err(err) => return fail_all(batch, &err),
    };
    for read in batch.drain(..) {
        match read {
            Read::One {
                group, kind, reply, ..
            } => {
                let _ = reply.send(Ok(found.points.get(&(group, kind)).cloned()));
            }
            Read::List { group, reply } => {
                let _ = reply.send(Ok(found.lists.get(&group).cloned().unwrap_or_default()));
            }
            Read::Project { group, reply } => {
                let project = found.projects.get(&group).cloned();
                let _ = reply.send(Ok(project.map(|p| (p, ReadHint::default()))));
            }
        }
    }
}

/// Appends `key` unless `keys` has it (a batch holds at most [`MAX_READS`] reads); true when
/// it was appended.
fn push_new<T: PartialEq>(keys: &mut Vec<T>, key: T) -> bool {
    let new = !keys.contains(&key);
    if new {
        keys.push(key);
    }
    new
}

/// Rows found, by key.
#[derive(Default)]
pub(super) struct Found {
    /// Single integrations.
    pub points: HashMap<(GroupId, IntegrationType), StoredIntegration>,
    /// Lists, in creation order.
    pub lists: HashMap<GroupId, Vec<StoredIntegration>>,
    /// Projects.
    pub projects: HashMap<GroupId, Project>,
}

async fn query(conns: &Conns, keys: &Keys) -> StoreResult<Found> {
    let Keys {
        points,
        groups,
        projects,
        ..
    } = keys;
    let mut found = Found::default();
    let mut lease = conns.lease().await?;
    if !points.is_empty() {
        let sql = &statements().points[size_class(points.len())];
        let mut q = sqlx::query(sql);
        for (group, kind) in padded(points) {
            q = q.bind(group.to_string()).bind(kind.as_str());
        }
        let rows = q.fetch_all(lease.conn()).await.map_err(classify)?;
        for row in &rows {
            let (group, integration) = decode(row)?;
            found.points.insert((group, integration.kind), integration);
        }
    }
    for row in &fetch_in(lease.conn(), &statements().lists, groups).await? {
        let (group, integration) = decode(row)?;
        found.lists.entry(group).or_default().push(integration);
    }
    for row in &fetch_in(lease.conn(), &statements().projects, projects).await? {
        let project = project(row)?;
        found.projects.insert(project.id, project);
    }
    lease.finish();
    Ok(found)
}

/// The rows of the `in`-list statement (of `sizes`) for `ids`; none for no ids.
async fn fetch_in(
    conn: &mut sqlx::PgConnection,
    sizes: &[String],
    ids: &[GroupId],
) -> StoreResult<Vec<PgRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = sqlx::query(&sizes[size_class(ids.len())]);
    for id in padded(ids) {
        q = q.bind(id.to_string());
    }
    q.fetch_all(conn).await.map_err(classify)
}

/// A row's project and integration. A row this server could not have written (bad type or
/// id) fails the whole batch, like any other sign of a damaged database. Read from
/// PostgreSQL's own rows, borrowing the text columns: sqlx's `Any` rows copied every column
/// (and its name) first, ≈ 5 % of the server's CPU in the benchmark's PostgreSQL W1.
fn decode(row: &PgRow) -> StoreResult<(GroupId, StoredIntegration)> {
    let kind: &str = row.try_get(1).map_err(classify)?;
    let kind = IntegrationType::parse(kind)
        .ok_or_else(|| StoreError::Other(anyhow!("unknown integration type in database")))?;
    Ok((
        pg_id(row, 0)?,
        StoredIntegration {
            id: pg_id(row, 2)?,
            kind,
            sealed: row.try_get(3).map_err(classify)?,
        },
    ))
}

/// A project row (`id, org_id, name, created_at`).
fn project(row: &PgRow) -> StoreResult<Project> {
    Ok(Project {
        id: pg_id(row, 0)?,
        org_id: pg_id(row, 1)?,
        name: row.try_get(2).map_err(classify)?,
        created_at: row.try_get(3).map_err(classify)?,
    })
}

/// An id column, borrowed and parsed.
fn pg_id(row: &PgRow, col: usize) -> StoreResult<ObjectId> {
    let text: &str = row.try_get(col).map_err(classify)?;
    ObjectId::parse(text).ok_or_else(|| StoreError::Other(anyhow!("bad id in column {col}")))
}

/// `keys` repeated at the end up to the next size class.
fn padded<T: Copy>(keys: &[T]) -> impl Iterator<Item = T> + '_ {
    let size = 1usize << size_class(keys.len());
    let last = keys[keys.len() - 1];
    keys.iter()
        .copied()
        .chain(std::iter::repeat(last))
        .take(size)
}

/// The index of the smallest size (1, 2, 4 …) that holds `n` keys.
fn size_class(n: usize) -> usize {
    n.max(1).next_power_of_two().trailing_zeros() as usize
}

struct Statements {
    points: Vec<String>,
    lists: Vec<String>,
    projects: Vec<String>,
}

/// The statements for every size class. Plain SQL both SQLite and PostgreSQL plan as index
/// lookups: a join with a `values` list (whose columns both name `column1`, `column2`) and
/// `in` lists.
fn statements() -> &'static Statements {
    static STATEMENTS: OnceLock<Statements> = OnceLock::new();
    STATEMENTS.get_or_init(|| {
        let sizes = (0..SIZES).map(|class| 1usize << class);
        let in_list = |n: usize| {
            (1..=n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Statements {
            projects: sizes
                .clone()
                .map(|n| {
                    format!(
                        "select id, org_id, name, created_at from project where id in ({})",
                        in_list(n)
                    )
                })
                .collect(),
            points: sizes
                .clone()
                .map(|n| {
                    let values: Vec<String> = (0..n)
                        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                        .collect();
                    format!(
                        "select i.group_id, i.type, i.id, i.config from (values {}) as k \
                         join integration i on i.group_id = k.column1 and i.type = k.column2",
                        values.join(", ")
                    )
                })
                .collect(),
            lists: sizes
                .map(|n| {
                    format!(
                        "select group_id, type, id, config from integration \
                         where group_id in ({}) order by seq",
                        in_list(n)
                    )
                })
                .collect(),
        }
    })
}

fn fail_all(batch: &mut Vec<Read>, err: &StoreError) {
    let again = || match err {
        StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        other => StoreError::Other(anyhow!("{other}")),
    };
    for read in batch.drain(..) {
        match read {
            Read::One { reply, .. } => {
                let _ = reply.send(Err(again()));
            }
            Read::List { reply, .. } => {
                let _ = reply.send(Err(again()));
            }
            Read::Project { reply, .. } => {
                let _ = reply.send(Err(again()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::ObjectId;

    /// Each key's reads are answered when the lane reports the key, not when the batch ends,
    /// duplicates included; the reads of other keys stay in the batch, and what the lane
    /// never reports gets nothing found.
    #[test]
    fn answers_go_out_as_each_key_is_found() {
        let (a, b) = (GroupId::generate(), GroupId::generate());
        let slack = IntegrationType::Slack;
        let row = StoredIntegration {
            id: ObjectId::generate(),
            kind: slack,
            sealed: vec![1, 2, 3],
        };
        let mut batch = Vec::new();
        let mut ask_one = |group| {
            let (reply, answer) = oneshot::channel();
            batch.push(Read::One {
                group,
                kind: slack,
                hint: ReadHint::default(),
                reply,
            });
            answer
        };
        let (mut a1, mut a2, mut b1) = (ask_one(a), ask_one(a), ask_one(b));
        let (reply, mut list_b) = oneshot::channel();
        batch.push(Read::List { group: b, reply });
        let (reply, mut project_a) = oneshot::channel();
        batch.push(Read::Project { group: a, reply });

        let mut answers = Answers { batch: &mut batch };
        answers.one(a, slack, Some(row.clone()));
        for answer in [&mut a1, &mut a2] {
            let found = answer.try_recv().expect("answered at once").unwrap();
            assert_eq!(found.map(|r| r.sealed), Some(vec![1, 2, 3]));
        }
        assert!(b1.try_recv().is_err(), "another key's read waits");
        answers.list(b, vec![row.clone()]);
        assert_eq!(list_b.try_recv().unwrap().unwrap().len(), 1);
        assert_eq!(batch.len(), 2, "the unanswered reads stay in the batch");

        answer(&mut batch, Ok(Found::default()));
        assert!(batch.is_empty());
        assert!(b1.try_recv().unwrap().unwrap().is_none());
        assert!(project_a.try_recv().unwrap().unwrap().is_none());
    }

    /// Keys keep the order in which their first read arrived (the lane answers in that
    /// order), without repeats.
    #[test]
    fn keys_keep_the_order_reads_arrived_in() {
        let groups: Vec<GroupId> = (0..5).map(|_| GroupId::generate()).collect();
        let (slack, teams) = (IntegrationType::Slack, IntegrationType::MicrosoftTeams);
        let mut batch = Vec::new();
        for (i, (group, kind)) in [
            (groups[3], slack),
            (groups[0], teams),
            (groups[4], slack),
            (groups[0], teams),
            (groups[1], slack),
            (groups[3], slack),
        ]
        .into_iter()
        .enumerate()
        {
            let (reply, _answer) = oneshot::channel();
            let hint = ReadHint(Some(i as i64));
            batch.push(Read::One {
                group,
                kind,
                hint,
                reply,
            });
        }
        for group in [groups[2], groups[0], groups[2]] {
            let (reply, _answer) = oneshot::channel();
            batch.push(Read::List { group, reply });
        }
        let keys = Keys::of(&batch);
        assert_eq!(
            keys.points,
            [
                (groups[3], slack),
                (groups[0], teams),
                (groups[4], slack),
                (groups[1], slack)
            ]
        );
        // Each point with the hint of its first read.
        assert_eq!(keys.hints, [0, 1, 2, 4].map(|i| ReadHint(Some(i))));
        assert_eq!(keys.groups, [groups[2], groups[0]]);
        assert!(keys.projects.is_empty());
    }

    #[test]
    fn batches_pad_to_powers_of_two() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1), 0);
        assert_eq!(size_class(2), 1);
        assert_eq!(size_class(3), 2);
        assert_eq!(size_class(MAX_READS), SIZES - 1);
        assert_eq!(padded(&[1, 2, 3]).collect::<Vec<_>>(), [1, 2, 3, 3]);
        assert_eq!(padded(&[7]).collect::<Vec<_>>(), [7]);
        assert_eq!(statements().points.len(), SIZES);
        assert!(statements().points[1].contains("($3, $4)"));
        assert!(statements().lists[2].ends_with("in ($1, $2, $3, $4) order by seq"));
    }
}
