//! Seeding the benchmark databases through the library's storage layer: one organization,
//! N projects with the five [`SEEDED`](super::spec::SEEDED) integrations each (validated by
//! the domain schema and sealed like the server seals them), and one `ORG_OWNER` key.
//!
//! A seeded database is kept under the data directory with a `seed.json` describing it
//! (project count, the key, the group ids) and reused by later runs with the same N.
//!
//! SQLite runs with `synchronous=FULL`, so 600,000 single-row commits on this disk would take
//! an hour of fsyncs: the database is built on tmpfs (`/dev/shm`, where fsync is free) through
//! the same `Store` calls, then copied into place. PostgreSQL is seeded with
//! `synchronous_commit = off` on the database during the load (reset afterwards).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use sqlx::Connection;

use atlas_integrations::config::Global;
use atlas_integrations::crypto::Keyring;
use atlas_integrations::domain::ids::ObjectId;
use atlas_integrations::domain::integration::{validate, ApiVersion};
use atlas_integrations::http::integrations::seal;
use atlas_integrations::startup;
use atlas_integrations::store::{now_ms, Org, OrgRole, Project, Store, StoredIntegration};

use super::spec::{self, Rng, SEEDED};

/// What a seeded database holds, as the load generator needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seed {
    /// Number of projects.
    pub projects: usize,
    /// The organization.
    pub org: String,
    /// The ORG_OWNER key's public key.
    pub public_key: String,
    /// Its private key.
    pub private_key: String,
    /// Every project's group id.
    pub groups: Vec<String>,
    /// How long seeding took, in seconds.
    pub seconds: f64,
}

/// A seeded database ready to serve.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// What it holds.
    pub seed: Arc<Seed>,
    /// Its data directory (master key, SQLite file, seed.json, server logs).
    pub dir: PathBuf,
    /// The database URL to pass to the server (`None`: the data directory's SQLite file).
    pub database_url: Option<String>,
    /// Whether this run seeded it (false: reused).
    pub fresh: bool,
}

const SEED_FILE: &str = "seed.json";
const DB_FILE: &str = "atlas-integrations.db";

fn read_seed(dir: &Path) -> Option<Seed> {
    let text = std::fs::read_to_string(dir.join(SEED_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_seed(dir: &Path, seed: &Seed) -> anyhow::Result<()> {
    let tmp = dir.join("seed.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(seed)?)?;
    std::fs::rename(&tmp, dir.join(SEED_FILE))?;
    Ok(())
}

/// The SQLite database of `projects` projects under `root`, seeded now or reused.
pub async fn sqlite(root: &Path, projects: usize) -> anyhow::Result<Seeded> {
    let dir = root.join(format!("sqlite-{projects}"));
    if let Some(seed) = read_seed(&dir) {
        if seed.projects == projects && dir.join(DB_FILE).exists() {
            return Ok(Seeded {
                seed: Arc::new(seed),
                dir,
                database_url: None,
                fresh: false,
            });
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let shm = Path::new("/dev/shm");
    let build_dir = if shm.is_dir() {
        shm.join(format!("atlas-bench-{}-{projects}", std::process::id()))
    } else {
        eprintln!("  (no /dev/shm: seeding on disk, one fsync per row; this is slow for large N)");
        dir.join("build")
    };
    std::fs::create_dir_all(&build_dir)?;
    let db_path = build_dir.join(DB_FILE);
    let global = Global {
        database_url: Some(atlas_integrations::store::sqlite::url_for_path(&db_path)),
        data_dir: dir.clone(),
        master_key_file: None,
        pool_size: 2,
    };
    let started = Instant::now();
    let result = async {
        let (store, keyring) = startup::open_database(&global, true).await?;
        let seed = populate(store, keyring, projects, 3).await?;
        checkpoint(&db_path).await?;
        for suffix in ["", "-wal"] {
            let from = PathBuf::from(format!("{}{suffix}", db_path.display()));
            if from.exists() {
                let to = PathBuf::from(format!("{}{suffix}", dir.join(DB_FILE).display()));
                std::fs::copy(&from, &to)
                    .with_context(|| format!("cannot copy {}", from.display()))?;
            }
        }
        anyhow::Ok(seed)
    }
    .await;
    let _ = std::fs::remove_dir_all(&build_dir);
    let mut seed = result?;
    seed.seconds = started.elapsed().as_secs_f64();
    write_seed(&dir, &seed)?;
    Ok(Seeded {
        seed: Arc::new(seed),
        dir,
        database_url: None,
        fresh: true,
    })
}

/// Folds the WAL into the database file so that one file holds everything.
async fn checkpoint(db_path: &Path) -> anyhow::Result<()> {
    // The store's pools close their connections in the background once dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = atlas_integrations::store::sqlite::url_for_path(db_path);
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .context("cannot reopen the seeded database")?;
    sqlx::query("pragma wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
        .context("cannot checkpoint the seeded database")?;
    conn.close().await?;
    Ok(())
}

/// The PostgreSQL database `bench_<projects>` next to `admin_url`'s, seeded now or reused;
/// `Ok(None)` when PostgreSQL does not answer.
pub async fn postgres(
    root: &Path,
    admin_url: &str,
    projects: usize,
) -> anyhow::Result<Option<Seeded>> {
    let connect = tokio::time::timeout(
        Duration::from_secs(3),
        sqlx::PgConnection::connect(admin_url),
    )
    .await;
    let mut admin = match connect {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            eprintln!("  PostgreSQL at {admin_url} does not answer ({err}): skipped");
            return Ok(None);
        }
        Err(_) => {
            eprintln!("  PostgreSQL at {admin_url} does not answer (timeout): skipped");
            return Ok(None);
        }
    };
    let name = format!("bench_{projects}");
    let mut url = url::Url::parse(admin_url).context("--postgres-url is not a URL")?;
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let dir = root.join(format!("postgres-{projects}"));
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if exists {
        if let Some(seed) = read_seed(&dir) {
            if seed.projects == projects && still_there(&dir, &url, &seed).await {
                vacuum_analyze(&url).await?;
                return Ok(Some(Seeded {
                    seed: Arc::new(seed),
                    dir,
                    database_url: Some(url),
                    fresh: false,
                }));
            }
        }
        sqlx::query(&format!("drop database {name} with (force)"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot drop the stale database {name}"))?;
    }
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot create the database {name}"))?;
    sqlx::query(&format!(
        "alter database {name} set synchronous_commit = off"
    ))
    .execute(&mut admin)
    .await?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let global = Global {
        database_url: Some(url.clone()),
        data_dir: dir.clone(),
        master_key_file: None,
        pool_size: 8,
    };
    let started = Instant::now();
    let result = async {
        let (store, keyring) = startup::open_database(&global, true).await?;
        populate(store, keyring, projects, 8).await
    }
    .await;
    sqlx::query(&format!("alter database {name} reset synchronous_commit"))
        .execute(&mut admin)
        .await?;
    let _ = admin.close().await;
    let mut seed = result?;
    seed.seconds = started.elapsed().as_secs_f64();
    vacuum_analyze(&url).await?;
    write_seed(&dir, &seed)?;
    Ok(Some(Seeded {
        seed: Arc::new(seed),
        dir,
        database_url: Some(url),
        fresh: true,
    }))
}

/// `VACUUM (ANALYZE)` of the benchmark's database, as after any bulk load: autovacuum may be
/// off (this project's machines run PostgreSQL without it), and a database never vacuumed nor
/// analyzed has no statistics and no visibility map. The planner then guessed 18 rows per `(group_id, type)`
/// and chose a bitmap heap scan per key, and every first read of a page set its hint bits,
/// dirtying it for the checkpointer to write back during the runs. Run before every use, fresh
/// or reused: on a vacuumed database it takes a second.
async fn vacuum_analyze(url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql("vacuum (analyze)")
        .execute(&mut conn)
        .await
        .context("cannot vacuum the benchmark's PostgreSQL database")?;
    conn.close().await?;
    Ok(())
}

/// Whether a reused PostgreSQL database still has the seeded key and projects.
async fn still_there(dir: &Path, url: &str, seed: &Seed) -> bool {
    let global = Global {
        database_url: Some(url.to_owned()),
        data_dir: dir.to_path_buf(),
        master_key_file: None,
        pool_size: 1,
    };
    let Ok((store, _)) = startup::open_database(&global, true).await else {
        return false;
    };
    for group in [seed.groups.first(), seed.groups.last()]
        .into_iter()
        .flatten()
    {
        let Some(id) = ObjectId::parse(group) else {
            return false;
        };
        if !matches!(store.project(id).await, Ok(Some(_))) {
            return false;
        }
    }
    matches!(store.list_api_keys().await, Ok(keys) if keys.iter().any(|k| k.public_key == seed.public_key))
}

/// Creates the org, the key and `projects` projects with their integrations, `workers`
/// projects at a time.
async fn populate(
    store: Arc<dyn Store>,
    keyring: Keyring,
    projects: usize,
    workers: usize,
) -> anyhow::Result<Seed> {
    let org = Org {
        id: ObjectId::generate(),
        name: "bench".to_owned(),
        created_at: now_ms(),
    };
    store.create_org(&org).await?;
    let (key, private_key) =
        startup::new_api_key(&keyring, org.id, OrgRole::Owner, "benchmark key");
    store.create_api_key(&key).await?;
    let groups: Arc<Vec<ObjectId>> =
        Arc::new((0..projects).map(|_| ObjectId::generate()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let (store, keyring, groups, next, done) = (
            Arc::clone(&store),
            keyring.clone(),
            Arc::clone(&groups),
            Arc::clone(&next),
            Arc::clone(&done),
        );
        let org_id = org.id;
        tasks.spawn(async move {
            let mut rng = Rng::new(0x5eed ^ worker as u64);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(&group) = groups.get(index) else {
                    return anyhow::Ok(());
                };
                store
                    .create_project(&Project {
                        id: group,
                        org_id,
                        name: format!("bench-{index}"),
                        created_at: now_ms(),
                    })
                    .await?;
                for kind in SEEDED {
                    let body: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(&spec::body(kind, rng.next_u64()))?;
                    let config = validate(kind, ApiVersion::V1, &body, None)
                        .map_err(|e| anyhow!("the seed body of {kind} is invalid: {e:?}"))?;
                    let stored = StoredIntegration {
                        id: ObjectId::generate(),
                        kind,
                        sealed: seal(&keyring, group, &config),
                    };
                    store.create_integration(group, &stored).await?;
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished % 10_000 == 0 {
                    let rate = finished as f64 / started.elapsed().as_secs_f64();
                    eprintln!(
                        "  {finished}/{projects} projects ({rate:.0} projects/s, 6 rows each)"
                    );
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a seeding task panicked")??;
    }
    if done.load(Ordering::Relaxed) != projects {
        bail!("seeding stopped early");
    }
    Ok(Seed {
        projects,
        org: org.id.to_string(),
        public_key: key.public_key,
        private_key: secrecy::ExposeSecret::expose_secret(&private_key).to_owned(),
        groups: groups.iter().map(ToString::to_string).collect(),
        seconds: 0.0,
    })
}

/// PostgreSQL's `version()`, for the machine description.
pub async fn postgres_version(admin_url: &str) -> Option<String> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await.ok()?;
    let version: String = sqlx::query_scalar("select version()")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let _ = conn.close().await;
    Some(version.split(" on ").next().unwrap_or(&version).to_owned())
}
