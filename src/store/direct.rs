//! SQLite's hot path, on the SQLite library directly (rusqlite) rather than through sqlx.
//!
//! sqlx runs every SQLite connection on a worker thread of its own and hands each statement
//! and each row over with channels. The benchmark's profile of a GET showed that hand-off
//! (futex waits, context switches on both sides) costing more than the lookup itself, and,
//! once the lookups ran inline, the start and end of each lookup's read transaction costing
//! three times the lookup. Here:
//!
//! - **reads** are answered by a lane task taking every read waiting and running them
//!   inline, in one read transaction (`reads.rs`): one transaction per batch and no
//!   hand-off to another thread (an earlier version with reader threads doubled the p99
//!   latency: on two cores, extra runnable threads wait for a time slice). The transaction
//!   starts after every read of the batch was asked for, so each sees every write
//!   acknowledged before it was asked, from this process or another. In WAL mode a reader
//!   does not wait for writers; it can only meet a lock while another process recovers the
//!   WAL after a crash, when it waits (blocking its worker thread) up to the busy timeout
//!   like every other statement.
//! - **writes** go to one writer thread that commits everything waiting in one transaction
//!   (`batch.rs`).
//!
//! sqlx keeps the rest: migrations, and the statements of the CLI and of authentication,
//! which are rare. Both drivers link the same SQLite library (`libsqlite3-sys`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use rusqlite::{ffi, CachedStatement, Connection, OpenFlags, OptionalExtension};

use super::batch::Writer;
use super::reads::{Answers, Keys, ReadBatcher};
use super::sql::{IntegrationWrite, WriteOutcome};
use super::{Project, ReadHint, StoreError, StoreResult, StoredIntegration};
use crate::domain::ids::{GroupId, ObjectId};
use crate::domain::integration::IntegrationType;

/// SQLite's own statements for the integration table as migrations 0002 and 0003 key it:
/// `rid` is the project's number × 16 + the type's code, so one integration is one lookup in
/// the table's B-tree (the project's number comes from the small covering index
/// `project_id_num`). A project's rows are the keys next to each other from its number × 16,
/// so lists and deletes use the key too. The table has no other index: the key makes
/// (project, type) unique, and the writes read the project's number first, so that an
/// unknown project writes nothing (there is no foreign key to refuse it).
pub(super) mod keyed {
    /// One integration by its key: `?1` the key (project number × 16 + type code), `?2`
    /// group. The `group_id` check makes a number remembered from before the project was
    /// deleted and its number reused find nothing rather than another project's row.
    pub const ONE: &str =
        "select id, type, config from integration where rid = ?1 and group_id = ?2";
    /// A project's number: `?1` group.
    pub const NUMBER: &str = "select num from project indexed by project_id_num where id = ?1";
    /// A project and its number: the authenticator's first look at a project also gives
    /// the number its first GET needs.
    pub const PROJECT: &str = "select id, org_id, name, created_at, num from project where id = ?1";
    /// What a create or a replace needs first: the project's number and the `seq` a new row
    /// of it takes; no row when the project does not exist. `?1` group.
    pub const NEXT: &str = "select p.num, (select coalesce(max(i.seq), 0) + 1 from integration i \
                            where i.rid between p.num * 16 and p.num * 16 + 15) \
                            from project p indexed by project_id_num where p.id = ?1";
    /// The insert both writes share: `?1` key, `?2` seq, `?3` group, `?4` type, `?5` id,
    /// `?6` sealed configuration, `?7` time. A key taken is a primary-key conflict.
    macro_rules! insert {
        () => {
            "insert into integration \
             (rid, seq, group_id, type, id, config, created_at, updated_at) \
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)"
        };
    }
    /// Create.
    pub const CREATE: &str = insert!();
    /// Replace or create, same parameters; answers the id kept (nothing if the key held
    /// another project's row, which deleting a project makes impossible).
    pub const REPLACE: &str = concat!(
        insert!(),
        " on conflict (rid) do update \
         set config = excluded.config, updated_at = excluded.updated_at \
         where integration.group_id = excluded.group_id \
         returning id"
    );
    /// A project's integrations and their `seq`: `?1` group. Its rows are the keys
    /// `num × 16 to num × 16 + 15`, next to each other in the table's B-tree: one descent.
    /// In key order: the caller puts them in creation order (`order by seq` ran SQLite's
    /// sorter, which copied every row, configuration included, in and out again).
    pub const LIST: &str = "select i.id, i.type, i.config, i.seq \
                            from project p indexed by project_id_num \
                            join integration i on i.rid between p.num * 16 and p.num * 16 + 15 \
                            where p.id = ?1 and i.group_id = ?1";
    /// What a create or a replace answering the list needs first: the project's number and
    /// its integrations with their `seq` (one row with nulls when it has none; no row when
    /// the project does not exist). `?1` group.
    pub const ROWS: &str = "select p.num, i.id, i.type, i.config, i.seq \
                            from project p indexed by project_id_num \
                            left join integration i \
                            on i.rid between p.num * 16 and p.num * 16 + 15 and i.group_id = p.id \
                            where p.id = ?1";
    /// Delete: `?1` group, `?2` type code.
    pub const DELETE: &str = "delete from integration \
                              where rid = (select num from project indexed by project_id_num where id = ?1) * 16 + ?2 \
                              and group_id = ?1";
    /// Every integration of a project, when deleting it: `$1` group (sqlx statement).
    pub const DELETE_PROJECT: &str = "delete from integration \
        where rid between (select num from project indexed by project_id_num where id = $1) * 16 \
        and (select num from project indexed by project_id_num where id = $1) * 16 + 15 \
        and group_id = $1";
    /// Rotation's compare-and-swap of one sealed configuration: `$1` new, `$2` group, `$3`
    /// type code, `$4` old (sqlx statement).
    pub const RESEAL: &str = "update integration set config = $1 \
        where rid = (select num from project indexed by project_id_num where id = $2) * 16 + $3 \
        and group_id = $2 and config = $4";
}

/// Read lanes. One: its page cache holds every B-tree's upper levels once rather than twice,
/// and its batches are fuller (one read transaction for more reads). On the benchmark's W1
/// (100,000 projects, 2-core Xeon) one lane used 39–43 µs of CPU per GET against 44–48 µs
/// with two, for 15 % more requests per second; W2 and W3 gained too.
const READERS: usize = 1;

/// The read lane's page cache, KiB: room for the integration table's upper levels (≈ 100
/// pages at 100,000 projects) and what the lane reads of the project index (project numbers
/// mostly come from the maps: [`Numbers`], the authenticator's hint), so that a lookup reads
/// only its own leaf. The leaves do not fit anyway (8 MiB held 7 % of them), and a smaller
/// cache is cheaper to search and to empty: every commit of the writer empties it (SQLite
/// walks the whole hash table), and the lookups' hash probes miss the CPU's caches less.
/// perf, W1 on 100,000 projects, 8 MiB -> 1 MiB: `pcache1Fetch` 3.8 % -> 1.4 % of the
/// server's samples against 1 % more in `pread`; W3: emptying it 1.4 % -> 0.3 %. At 1 MiB
/// the upper levels still dropped out: `perf stat` counted 1.44 `pread`s per GET in W1,
/// against 1.25 at 2 MiB and 1.21 at 4 MiB (session 12), for 1.2 MiB more RSS; what is
/// left above one is not the upper levels.
const READER_CACHE_KIB: u32 = 2048;

/// How long a statement waits for a lock, as on the sqlx connections.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the checkpointer copies the WAL's new pages into the database file: often
/// enough that under a steady stream of writes it, not the writer, does almost all of it.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);

/// The WAL size, in pages, at which the writer checkpoints by itself (SQLite's default is
/// 1,000). The checkpointer keeps the WAL well below it; the writer's own checkpoint is the
/// backstop that lets SQLite start the WAL file over (see [`Checkpointer`]).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 4_000;

/// The direct connections to one SQLite file.
#[derive(Debug)]
pub struct Direct {
    reads: ReadBatcher,
    writer: Writer,
    _checkpointer: Checkpointer,
}

/// A thread that checkpoints the WAL (`PASSIVE`: it never waits for readers or the writer)
/// every [`CHECKPOINT_INTERVAL`]. Left to the writer alone (SQLite's automatic checkpoint
/// once the WAL holds 1,000 pages), a checkpoint was 18 % of the writer's CPU in the
/// benchmark's W3, and each one (a thousand page writes and an `fsync` of the database
/// file) held every write waiting: connections piled up behind writes and the p99 reached
/// 30 ms. At 100 ms the WAL still reached 1,000 pages between two passes under W3, so the
/// writer still checkpointed (13 % of its time): at 20 ms, and with the writer's threshold at
/// [`WRITER_AUTOCHECKPOINT_PAGES`], side by side W3's p99 fell from 11–13 ms to 7–8 ms and
/// W4's from 20 to 15 ms. The writer keeps its automatic checkpoint, which then only has the
/// few pages committed since this thread's last pass to copy: a checkpoint run while the
/// writer keeps committing never catches up with the WAL's end, and SQLite only starts the
/// WAL file over after a checkpoint that did, so without the writer's own the file grew
/// without bound (150 MB in one benchmark run).
///
/// While nothing is committed it sleeps: a pass that would find no new frame waits for the
/// writer's next commit ([`Commits`]), or [`IDLE_CHECK_INTERVAL`] for another process's.
/// (An idle server's checkpointer used to wake 50 times a second. Backing off on a timer
/// alone was tried and dropped: the first burst after an idle spell outgrew the writer's
/// threshold before the next pass, and past it SQLite checkpoints on every commit.) It stops
/// when the store and its writer are dropped.
#[derive(Debug)]
struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

/// How long an idle checkpointer sleeps when no commit of this process wakes it: writes of
/// other processes (the CLI) reach the database file within about this time.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The writer's commits, counted for the checkpointer, which the writer wakes when it sleeps.
#[derive(Debug)]
pub(super) struct Commits {
    count: AtomicU64,
    parked: AtomicBool,
    wake: std::sync::mpsc::Sender<()>,
}

impl Commits {
    /// Called by the writer after each commit.
    pub(super) fn committed(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.parked.swap(false, Ordering::SeqCst) {
            let _ = self.wake.send(());
        }
    }
}

impl Checkpointer {
    /// Starts the thread; the writer reports its commits to the [`Commits`] answered.
    fn start(path: &Path) -> anyhow::Result<(Self, Arc<Commits>)> {
        let conn = open_writer(path)?;
        conn.execute_batch("pragma cache_size = -64;")?;
        let (stop, wakes) = std::sync::mpsc::channel::<()>();
        let commits = Arc::new(Commits {
            count: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            wake: stop.clone(),
        });
        let seen_by = Arc::clone(&commits);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&conn, &wakes, &seen_by))?;
        Ok((Self { _stop: stop }, commits))
    }
}

/// Checkpoints every [`CHECKPOINT_INTERVAL`] while commits come, else one interval after the
/// next one comes (or when [`IDLE_CHECK_INTERVAL`] has passed); ends when every sender is
/// gone (the store's and the writer's).
fn checkpoint_loop(conn: &Connection, wakes: &std::sync::mpsc::Receiver<()>, commits: &Commits) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut seen = commits.count.load(Ordering::SeqCst);
    loop {
        let mut wait = CHECKPOINT_INTERVAL;
        if commits.count.load(Ordering::SeqCst) == seen {
            // Park, then look again: a commit between the two loads either is seen here or
            // finds `parked` set and sends a wake.
            commits.parked.store(true, Ordering::SeqCst);
            if commits.count.load(Ordering::SeqCst) == seen {
                wait = IDLE_CHECK_INTERVAL;
            } else {
                commits.parked.store(false, Ordering::SeqCst);
            }
        }
        match wakes.recv_timeout(wait) {
            Err(RecvTimeoutError::Disconnected) => return,
            // The first commit after an idle spell: pass one interval later, as under load
            // (passing at once made every commit of a slow, steady writer a checkpoint of its
            // own, and the next commit start the WAL over with one more `fsync`).
            Ok(()) if wait == IDLE_CHECK_INTERVAL => {
                let due = std::time::Instant::now() + CHECKPOINT_INTERVAL;
                while let Some(left) = due.checked_duration_since(std::time::Instant::now()) {
                    if let Err(RecvTimeoutError::Disconnected) = wakes.recv_timeout(left) {
                        return;
                    }
                }
            }
            _ => {}
        }
        commits.parked.store(false, Ordering::SeqCst);
        seen = commits.count.load(Ordering::SeqCst);
        if let Err(err) = conn.query_row("pragma wal_checkpoint(passive)", [], |_| Ok(())) {
            tracing::warn!(error = %err, "WAL checkpoint failed; will try again");
        }
    }
}

/// A lane's connection, opened on first use and again after an error, and the project
/// numbers it has read.
struct Reader {
    path: PathBuf,
    conn: Option<Connection>,
    numbers: Numbers,
}

/// Project numbers already read, so that a GET is one lookup in the integration table's
/// B-tree rather than one in `project_id_num` first: in the benchmark's W1 (100,000
/// projects) the index lookup was 7 % of the server's CPU, and the index's leaves, pushed
/// out of the page cache by the integration pages, cost 0.8 extra `pread` per GET.
///
/// A number is only a hint: a project's number is fixed while it exists, but a deleted
/// project's number is reused, and a project could be deleted and created again under the
/// same id. A row is only taken when its `group_id` is the project's, and when the hinted key
/// finds nothing the number is read again (and the lookup repeated when it changed), so a
/// stale number costs a lookup, never a wrong answer.
#[derive(Default)]
struct Numbers(std::collections::HashMap<GroupId, i64>);

/// Project numbers remembered at most (≈ 2.5 MiB at 100,000) before starting over.
const NUMBERS_LIMIT: usize = 200_000;

impl Numbers {
    fn get(&self, group: GroupId) -> Option<i64> {
        self.0.get(&group).copied()
    }

    fn set(&mut self, group: GroupId, number: Option<i64>) {
        match number {
            Some(number) => {
                if self.0.len() >= NUMBERS_LIMIT {
                    self.0.clear();
                }
                self.0.insert(group, number);
            }
            None => {
                self.0.remove(&group);
            }
        }
    }
}

impl Direct {
    /// Opens the writer and starts the read lanes and the writer thread on the database
    /// file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let (checkpointer, commits) = Checkpointer::start(path)?;
        let writer = Writer::start(open_writer(path)?, commits)?;
        let reads = ReadBatcher::start_inline(
            READERS,
            || Reader {
                path: path.to_owned(),
                conn: None,
                numbers: Numbers::default(),
            },
            read_batch,
        );
        Ok(Self {
            reads,
            writer,
            _checkpointer: checkpointer,
        })
    }

    /// One integration of a project.
    pub async fn one(
        &self,
        group: GroupId,
        kind: IntegrationType,
        hint: ReadHint,
    ) -> StoreResult<Option<StoredIntegration>> {
        self.reads.one(group, kind, hint).await
    }

    /// A project's integrations in creation order.
    pub async fn list(&self, group: GroupId) -> StoreResult<Vec<StoredIntegration>> {
        self.reads.list(group).await
    }

    /// A project, and its number as the hint for reading its integrations.
    pub async fn project(&self, group: GroupId) -> StoreResult<Option<(Project, ReadHint)>> {
        self.reads.project(group).await
    }

    /// Runs an integration write in the writer's next group commit; with `list`, also
    /// answers the project's integrations as the write left them.
    pub async fn write(
        &self,
        write: IntegrationWrite,
        list: bool,
    ) -> StoreResult<(WriteOutcome, Option<Vec<StoredIntegration>>)> {
        self.writer.submit(write, list).await
    }
}

/// Answers a batch of reads in one read transaction (none for a single lookup). After an
/// error the connection is dropped and the next batch opens a new one.
fn read_batch(reader: &mut Reader, keys: &Keys, answers: &mut Answers<'_>) -> StoreResult<()> {
    let conn = match reader.conn.take() {
        Some(conn) => conn,
        None => open_reader(&reader.path).map_err(classify)?,
    };
    let done = lookups(&conn, &mut reader.numbers, keys, answers).map_err(classify)?;
    reader.conn = Some(conn);
    done
}

/// A project's integrations in creation order.
fn list(
    held: &mut Held<'_>,
    group: GroupId,
) -> rusqlite::Result<StoreResult<Vec<StoredIntegration>>> {
    let mut rows = held
        .get(keyed::LIST)?
        .query_map([group.text().as_str()], |row| {
            Ok((row.get::<_, i64>(3)?, integration_row(row)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.sort_unstable_by_key(|&(seq, _)| seq);
    Ok(rows.into_iter().map(|(_, row)| row).collect())
}

/// Statements taken from the connection's statement cache once for a whole batch and
/// returned at its end: each take and return hashes the statement's text and moves it in
/// the cache's LRU list (for the writer, five times per write before).
pub(super) struct Held<'c> {
    conn: &'c Connection,
    held: Vec<(&'static str, CachedStatement<'c>)>,
}

impl<'c> Held<'c> {
    pub(super) fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            held: Vec::new(),
        }
    }

    /// The statement of `sql` (a constant: held statements are told apart by address).
    pub(super) fn get(&mut self, sql: &'static str) -> rusqlite::Result<&mut CachedStatement<'c>> {
        let at = match self
            .held
            .iter()
            .position(|&(held, _)| std::ptr::eq(held, sql))
        {
            Some(at) => at,
            None => {
                self.held.push((sql, self.conn.prepare_cached(sql)?));
                self.held.len() - 1
            }
        };
        Ok(&mut self.held[at].1)
    }
}

fn lookups(
    conn: &Connection,
    numbers: &mut Numbers,
    keys: &Keys,
    answers: &mut Answers<'_>,
) -> rusqlite::Result<StoreResult<()>> {
    let count = keys.points.len() + keys.groups.len() + keys.projects.len();
    let mut held = Held::new(conn);
    // One read transaction for the batch, begun and ended by statements the connection
    // keeps prepared (`unchecked_transaction` prepared `BEGIN` and `COMMIT` anew, and
    // finalized them, for every batch). It is ended whatever the lookups found: for a read
    // transaction, `COMMIT` only gives up the snapshot.
    let begun = count > 1;
    if begun {
        held.get(BEGIN_READ)?.execute([])?;
    }
    let found = answer_keys(&mut held, numbers, keys, answers);
    if begun {
        held.get(END_READ)?.execute([])?;
    }
    found
}

/// Starts a batch's read transaction (held with its statements, see [`lookups`]).
const BEGIN_READ: &str = "begin";
/// Ends a batch's read transaction.
const END_READ: &str = "commit";

fn answer_keys(
    held: &mut Held<'_>,
    numbers: &mut Numbers,
    keys: &Keys,
    answers: &mut Answers<'_>,
) -> rusqlite::Result<StoreResult<()>> {
    for (&(group, kind), &ReadHint(asked)) in keys.points.iter().zip(&keys.hints) {
        let hex = group.text();
        let text = hex.as_str();
        // The number the authenticator was given with the project, else the one remembered.
        let hint = asked.or_else(|| numbers.get(group));
        let mut row = match hint {
            Some(num) => one(held, num, kind, text)?,
            None => None,
        };
        if row.is_none() {
            let read = held
                .get(keyed::NUMBER)?
                .query_row([text], |row| row.get::<_, Option<i64>>(0))
                .optional()?
                .flatten();
            numbers.set(group, read);
            if let Some(num) = read.filter(|&num| Some(num) != hint) {
                row = one(held, num, kind, text)?;
            }
        }
        match row.transpose() {
            Ok(row) => answers.one(group, kind, row),
            Err(err) => return Ok(Err(err)),
        }
    }
    for &group in &keys.groups {
        match list(held, group)? {
            Ok(rows) => answers.list(group, rows),
            Err(err) => return Ok(Err(err)),
        }
    }
    for &group in &keys.projects {
        let row = held
            .get(keyed::PROJECT)?
            .query_row([group.text().as_str()], |row| {
                Ok((
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                ))
            })
            .optional()?;
        let number = row.as_ref().and_then(|row| row.3);
        numbers.set(group, number);
        let project = match row {
            Some((org_id, name, created_at, _)) => match parse_id(&org_id) {
                Ok(org_id) => Some(Project {
                    id: group,
                    org_id,
                    name,
                    created_at,
                }),
                Err(err) => return Ok(Err(err)),
            },
            None => None,
        };
        answers.project(group, project.as_ref(), ReadHint(number));
    }
    Ok(Ok(()))
}

/// The integration of `kind` under project number `num`, if it is `group`'s (`text`).
fn one(
    held: &mut Held<'_>,
    num: i64,
    kind: IntegrationType,
    text: &str,
) -> rusqlite::Result<Option<StoreResult<StoredIntegration>>> {
    held.get(keyed::ONE)?
        .query_row((num * 16 + kind.code(), text), integration_row)
        .optional()
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(&format!("pragma cache_size = -{READER_CACHE_KIB};"))?;
    Ok(conn)
}

pub(super) fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|err| anyhow!("cannot open the SQLite database for writing: {err}"))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The writer's page cache, unlike a reader's, survives its own commits: 8 MiB keeps the
    // upper levels of the integration and project B-trees that every write walks.
    conn.execute_batch(&format!(
        "pragma journal_mode = wal; pragma synchronous = full; pragma foreign_keys = on; \
         pragma cache_size = -8192; pragma wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES};"
    ))?;
    Ok(conn)
}

/// A row of `keyed::ONE` or `keyed::LIST`; a row this server could not have written is an
/// error for the batch's reads not yet answered, reported without dropping the connection.
fn integration_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoreResult<StoredIntegration>> {
    integration_columns(row, 0)
}

/// [`integration_row`] from the row's column `first` on (id, type, sealed configuration).
pub(super) fn integration_columns(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<StoreResult<StoredIntegration>> {
    let id = row.get_ref(first)?.as_str()?;
    let kind = row.get_ref(first + 1)?.as_str()?;
    let sealed = row.get_ref(first + 2)?.as_blob()?;
    Ok((|| {
        Ok(StoredIntegration {
            id: parse_id(id)?,
            kind: IntegrationType::parse(kind).ok_or_else(|| {
                StoreError::Other(anyhow!("unknown integration type in database"))
            })?,
            sealed: sealed.to_vec(),
        })
    })())
}

fn parse_id(text: &str) -> StoreResult<ObjectId> {
    ObjectId::parse(text).ok_or_else(|| StoreError::Other(anyhow!("bad id in database")))
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

#[cfg(test)]
mod tests {
    /// The SQLite linked in is built with `.cargo/config.toml`'s `LIBSQLITE3_FLAGS`: each
    /// connection keeps its own page cache, and allocations keep no global statistics, so no
    /// process-wide mutex sits between the read lane and the writer thread.
    #[test]
    fn sqlite_is_built_without_process_wide_cache_and_memory_statistics_locks() {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory database");
        let mut statement = conn
            .prepare("pragma compile_options")
            .expect("pragma compiles");
        let options: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .expect("pragma runs")
            .collect::<Result<_, _>>()
            .expect("options read");
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
    }

    /// The read lane's connection gets its own page cache size (the upper levels of the
    /// B-trees must stay in it; see [`super::READER_CACHE_KIB`]).
    #[test]
    fn the_read_lane_keeps_a_page_cache_of_its_own_size() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let path = dir.path().join("reader.db");
        let _writer = super::open_writer(&path).expect("writer");
        let reader = super::open_reader(&path).expect("reader");
        let size: i64 = reader
            .query_row("pragma cache_size", [], |row| row.get(0))
            .expect("pragma runs");
        assert_eq!(size, -i64::from(super::READER_CACHE_KIB));
    }
}
