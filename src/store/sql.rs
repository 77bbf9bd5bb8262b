//! The SQL both backends share, run through sqlx's `Any` driver.
//!
//! The statements are plain SQL that SQLite, PostgreSQL and the PostgreSQL-compatible
//! distributed engines (CockroachDB, YugabyteDB) all accept: `$N` placeholders, `insert ...
//! on conflict ... do update ... returning` for upserts (no `merge`, no `insert or replace`),
//! text ids rather than native uuid/ObjectId types, `bigint` Unix-millisecond timestamps
//! rather than `timestamptz`, and no triggers, stored procedures or `serial` arithmetic the
//! others lack. What differs per backend (connecting, pragmas, migrations, locking) lives in
//! `sqlite.rs` and `postgres.rs`.

use anyhow::anyhow;
use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use super::conns::Conns;
use super::direct::{keyed, Direct};
use super::reads::ReadBatcher;

use super::{
    now_ms, ApiKey, Org, OrgRole, Project, ProjectRole, ReadHint, SealedRef, Store, StoreError,
    StoreResult, StoredIntegration,
};
use crate::domain::ids::{GroupId, ObjectId, OrgId};
use crate::domain::integration::IntegrationType;

/// The shared SQL implementation of [`Store`]. Writes go through `write` (one connection on
/// SQLite, where a second writer would only wait for the lock), reads through `read`.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(super) read: AnyPool,
    pub(super) write: AnyPool,
    hot: HotPath,
}

/// How integrations (and projects, for authentication) are read and written.
#[derive(Debug, Clone)]
enum HotPath {
    /// PostgreSQL: reads merged into shared queries by lanes over long-lived connections
    /// (`reads.rs`), writes one statement each on the pool.
    Pooled(ReadBatcher),
    /// SQLite: the library called directly, reads inline, writes group-committed
    /// (`direct.rs`).
    Direct(std::sync::Arc<Direct>),
}

/// Maps a sqlx error to the store's error kinds.
pub(crate) fn classify(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict("unique"),
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(db) if is_connection_loss(db.code().as_deref()) => {
            StoreError::Unavailable(err.to_string())
        }
        _ => StoreError::Other(anyhow::Error::new(err)),
    }
}

/// Errors that mean "the database cannot be reached or used right now" rather than "this
/// statement is wrong": PostgreSQL SQLSTATE classes 08 (connection exception), 28 (login
/// refused), 53 (insufficient resources, e.g. too many connections), 57P (shutdown, crash,
/// cannot connect now), 3D000 (no such database), 55000 (database not accepting
/// connections), and SQLite's CANTOPEN (14) and IOERR (10).
fn is_connection_loss(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        ["08", "28", "53", "57P"].iter().any(|p| c.starts_with(p))
            || ["3D000", "55000", "14", "10"].contains(&c)
    })
}

pub(super) fn id_col(row: &AnyRow, col: &str) -> StoreResult<ObjectId> {
    let text: String = row.try_get(col).map_err(classify)?;
    ObjectId::parse(&text).ok_or_else(|| StoreError::Other(anyhow!("bad id in column {col}")))
}

pub(super) fn project_row(row: &AnyRow) -> StoreResult<Project> {
    Ok(Project {
        id: id_col(row, "id")?,
        org_id: id_col(row, "org_id")?,
        name: row.try_get("name").map_err(classify)?,
        created_at: row.try_get("created_at").map_err(classify)?,
    })
}

/// One write to the integration table, run directly or in a group commit.
#[derive(Debug, Clone)]
pub(super) enum IntegrationWrite {
    Create {
        group: GroupId,
        integration: StoredIntegration,
    },
    Replace {
        group: GroupId,
        integration: StoredIntegration,
    },
    Delete {
        group: GroupId,
        kind: IntegrationType,
    },
}

/// What a write reports.
#[derive(Debug)]
pub(super) enum WriteOutcome {
    /// Create: true; delete: whether a row was deleted.
    Done(bool),
    /// Replace: the id stored.
    Id(ObjectId),
}

/// The integration statements, plain SQL both drivers run (`$N` parameters, which SQLite
/// numbers by first appearance).
pub(super) mod statements {
    /// Create; a unique violation means "already configured".
    pub const CREATE: &str =
        "insert into integration (group_id, type, id, config, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $5)";
    /// Replace or create; answers the id kept.
    pub const REPLACE: &str =
        "insert into integration (group_id, type, id, config, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $5) \
         on conflict (group_id, type) do update \
         set config = excluded.config, updated_at = excluded.updated_at \
         returning id";
    /// Delete.
    pub const DELETE: &str = "delete from integration where group_id = $1 and type = $2";
}

impl IntegrationWrite {
    /// The statement, its group and type, and for creates and replaces the row's id and
    /// sealed configuration.
    pub(super) fn parts(
        &self,
    ) -> (
        &'static str,
        GroupId,
        IntegrationType,
        Option<&StoredIntegration>,
    ) {
        match self {
            Self::Create { group, integration } => (
                statements::CREATE,
                *group,
                integration.kind,
                Some(integration),
            ),
            Self::Replace { group, integration } => (
                statements::REPLACE,
                *group,
                integration.kind,
                Some(integration),
            ),
            Self::Delete { group, kind } => (statements::DELETE, *group, *kind, None),
        }
    }

    /// Runs the write on `conn` (PostgreSQL: one statement, its own transaction).
    pub(super) async fn apply(&self, conn: &mut AnyConnection) -> StoreResult<WriteOutcome> {
        let (sql, group, kind, row) = self.parts();
        let mut query = sqlx::query(sql).bind(group.to_string()).bind(kind.as_str());
        if let Some(row) = row {
            query = query
                .bind(row.id.to_string())
                .bind(row.sealed.clone())
                .bind(now_ms());
        }
        match self {
            Self::Replace { .. } => {
                let found = query.fetch_one(&mut *conn).await.map_err(classify)?;
                let id: String = found.try_get(0).map_err(classify)?;
                WriteOutcome::replaced(&id)
            }
            _ => {
                let done = query.execute(&mut *conn).await.map_err(classify)?;
                Ok(WriteOutcome::Done(done.rows_affected() > 0))
            }
        }
    }
}

impl WriteOutcome {
    /// A replace's outcome from the id the database answered.
    pub(super) fn replaced(id: &str) -> StoreResult<Self> {
        Self::replaced_id(id).map(Self::Id)
    }

    /// The id a replace answered, parsed.
    pub(super) fn replaced_id(id: &str) -> StoreResult<ObjectId> {
        ObjectId::parse(id).ok_or_else(|| StoreError::Other(anyhow!("bad integration id")))
    }
}

const BUMP_EPOCH: &str = "update auth_epoch set value = value + 1 where id = 1";

impl SqlStore {
    /// A PostgreSQL store over a pool; integration reads are merged by `read_lanes` lanes
    /// over the `hot` connections.
    pub(super) fn pooled(pool: AnyPool, hot: Conns, read_lanes: usize) -> Self {
        Self {
            read: pool.clone(),
            write: pool,
            hot: HotPath::Pooled(ReadBatcher::start(std::sync::Arc::new(hot), read_lanes)),
        }
    }

    /// An SQLite store: `read` and `write` pools for the rare statements, `direct` for
    /// integrations and project lookups.
    pub(super) fn direct(read: AnyPool, write: AnyPool, direct: Direct) -> Self {
        Self {
            read,
            write,
            hot: HotPath::Direct(std::sync::Arc::new(direct)),
        }
    }

    /// Whether this is the SQLite store, whose integration table goes by key (`keyed`).
    fn is_sqlite(&self) -> bool {
        matches!(self.hot, HotPath::Direct(_))
    }

    async fn write_integration(&self, write: IntegrationWrite) -> StoreResult<WriteOutcome> {
        self.write_and_list(write, false)
            .await
            .map(|(outcome, _)| outcome)
    }

    /// Runs a write and answers the project's integrations right after it.
    async fn listed(&self, write: IntegrationWrite) -> StoreResult<Vec<StoredIntegration>> {
        Ok(self
            .write_and_list(write, true)
            .await?
            .1
            .unwrap_or_default())
    }

    /// Runs a write; with `list`, also answers the project's integrations right after it,
    /// read in the write's transaction on SQLite (the writer's cache holds the pages it just
    /// wrote, where a reader's was emptied by the commit), by a separate read on PostgreSQL.
    async fn write_and_list(
        &self,
        write: IntegrationWrite,
        list: bool,
    ) -> StoreResult<(WriteOutcome, Option<Vec<StoredIntegration>>)> {
        let group = write.parts().1;
        let (outcome, listed) = match &self.hot {
            HotPath::Direct(direct) => direct.write(write, list).await?,
            HotPath::Pooled(_) => {
                let mut conn = self.write.acquire().await.map_err(classify)?;
                (write.apply(&mut conn).await?, None)
            }
        };
        let listed = match listed {
            Some(rows) => Some(rows),
            None if list => Some(self.list_integrations(group).await?),
            None => None,
        };
        Ok((outcome, listed))
    }

    /// A project and the hint for reading its integrations.
    async fn project_hinted(&self, id: GroupId) -> StoreResult<Option<(Project, ReadHint)>> {
        match &self.hot {
            HotPath::Direct(direct) => direct.project(id).await,
            HotPath::Pooled(reads) => reads.project(id).await,
        }
    }

    /// Starts a transaction that changes keys, roles, access lists or projects: its first
    /// statement bumps `auth_epoch`, which also takes SQLite's write lock up front.
    async fn auth_change(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.write.begin().await.map_err(classify)?;
        sqlx::query(BUMP_EPOCH)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        Ok(tx)
    }

    async fn existing_key_id(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        public_key: &str,
    ) -> StoreResult<String> {
        Self::key_id(tx, public_key)
            .await?
            .ok_or(StoreError::NotFound)
    }

    async fn key_id(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        public_key: &str,
    ) -> StoreResult<Option<String>> {
        sqlx::query_scalar("select id from api_key where public_key = $1")
            .bind(public_key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(classify)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1")
            .execute(&self.read)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        sqlx::query_scalar("select value from meta where name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await
            .map_err(classify)
    }

    async fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        sqlx::query("insert into meta (name, value) values ($1, $2) on conflict (name) do nothing")
            .bind(name)
            .bind(value.to_vec())
            .execute(&self.write)
            .await
            .map_err(classify)?;
        sqlx::query_scalar("select value from meta where name = $1")
            .bind(name)
            .fetch_one(&self.write)
            .await
            .map_err(classify)
    }

    async fn delete_meta(&self, name: &str) -> StoreResult<()> {
        sqlx::query("delete from meta where name = $1")
            .bind(name)
            .execute(&self.write)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn list_integrations(&self, group: GroupId) -> StoreResult<Vec<StoredIntegration>> {
        match &self.hot {
            HotPath::Direct(direct) => direct.list(group).await,
            HotPath::Pooled(reads) => reads.list(group).await,
        }
    }

    async fn get_integration(
        &self,
        group: GroupId,
        kind: IntegrationType,
    ) -> StoreResult<Option<StoredIntegration>> {
        self.get_integration_hinted(group, kind, ReadHint::default())
            .await
    }

    async fn get_integration_hinted(
        &self,
        group: GroupId,
        kind: IntegrationType,
        hint: ReadHint,
    ) -> StoreResult<Option<StoredIntegration>> {
        match &self.hot {
            HotPath::Direct(direct) => direct.one(group, kind, hint).await,
            HotPath::Pooled(reads) => reads.one(group, kind, hint).await,
        }
    }

    async fn create_integration(
        &self,
        group: GroupId,
        integration: &StoredIntegration,
    ) -> StoreResult<()> {
        self.write_integration(IntegrationWrite::Create {
            group,
            integration: integration.clone(),
        })
        .await
        .map(|_| ())
    }

    async fn replace_integration(
        &self,
        group: GroupId,
        integration: &StoredIntegration,
    ) -> StoreResult<ObjectId> {
        match self
            .write_integration(IntegrationWrite::Replace {
                group,
                integration: integration.clone(),
            })
            .await?
        {
            WriteOutcome::Id(id) => Ok(id),
            WriteOutcome::Done(_) => Err(StoreError::Other(anyhow!("replace returned no id"))),
        }
    }

    async fn create_integration_listed(
        &self,
        group: GroupId,
        integration: &StoredIntegration,
    ) -> StoreResult<Vec<StoredIntegration>> {
        self.listed(IntegrationWrite::Create {
            group,
            integration: integration.clone(),
        })
        .await
    }

    async fn replace_integration_listed(
        &self,
        group: GroupId,
        integration: &StoredIntegration,
    ) -> StoreResult<Vec<StoredIntegration>> {
        self.listed(IntegrationWrite::Replace {
            group,
            integration: integration.clone(),
        })
        .await
    }

    async fn delete_integration(&self, group: GroupId, kind: IntegrationType) -> StoreResult<bool> {
        match self
            .write_integration(IntegrationWrite::Delete { group, kind })
            .await?
        {
            WriteOutcome::Done(done) => Ok(done),
            WriteOutcome::Id(_) => Ok(true),
        }
    }

    async fn create_org(&self, org: &Org) -> StoreResult<()> {
        sqlx::query("insert into org (id, name, created_at) values ($1, $2, $3)")
            .bind(org.id.to_string())
            .bind(org.name.clone())
            .bind(org.created_at)
            .execute(&self.write)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn list_orgs(&self) -> StoreResult<Vec<Org>> {
        let rows = sqlx::query("select id, name, created_at from org order by created_at, id")
            .fetch_all(&self.read)
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(Org {
                    id: id_col(row, "id")?,
                    name: row.try_get("name").map_err(classify)?,
                    created_at: row.try_get("created_at").map_err(classify)?,
                })
            })
            .collect()
    }

    async fn create_project(&self, project: &Project) -> StoreResult<()> {
        let mut tx = self.auth_change().await?;
        sqlx::query("insert into project (id, org_id, name, created_at) values ($1, $2, $3, $4)")
            .bind(project.id.to_string())
            .bind(project.org_id.to_string())
            .bind(project.name.clone())
            .bind(project.created_at)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn project(&self, id: GroupId) -> StoreResult<Option<Project>> {
        Ok(self.project_hinted(id).await?.map(|(project, _)| project))
    }

    async fn project_access(&self, id: GroupId) -> StoreResult<Option<(OrgId, ReadHint)>> {
        Ok(self
            .project_hinted(id)
            .await?
            .map(|(project, hint)| (project.org_id, hint)))
    }

    async fn list_projects(&self, org: Option<OrgId>) -> StoreResult<Vec<Project>> {
        let rows = match org {
            Some(org) => {
                sqlx::query(
                    "select id, org_id, name, created_at from project where org_id = $1 \
                 order by created_at, id",
                )
                .bind(org.to_string())
                .fetch_all(&self.read)
                .await
            }
            None => {
                sqlx::query(
                    "select id, org_id, name, created_at from project order by created_at, id",
                )
                .fetch_all(&self.read)
                .await
            }
        }
        .map_err(classify)?;
        rows.iter().map(project_row).collect()
    }

    async fn delete_project(&self, id: GroupId) -> StoreResult<bool> {
        let mut tx = self.auth_change().await?;
        // Explicit deletes rather than relying on `on delete cascade` alone, which some
        // PostgreSQL-compatible engines implement only partially.
        // SQLite's integration table has no index on `group_id`: its rows go by key range.
        let integrations = if self.is_sqlite() {
            keyed::DELETE_PROJECT
        } else {
            "delete from integration where group_id = $1"
        };
        for sql in [
            integrations,
            "delete from api_key_project where project_id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        let done = sqlx::query("delete from project where id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let mut tx = self.auth_change().await?;
        sqlx::query(
            "insert into api_key (id, org_id, public_key, private_key, description, org_role, \
             created_at) values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(key.id.to_string())
        .bind(key.org_id.to_string())
        .bind(key.public_key.clone())
        .bind(key.sealed_private_key.clone())
        .bind(key.description.clone())
        .bind(key.org_role.as_str())
        .bind(key.created_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        for (project, role) in &key.project_roles {
            sqlx::query(
                "insert into api_key_project (api_key_id, project_id, role) values ($1, $2, $3)",
            )
            .bind(key.id.to_string())
            .bind(project.to_string())
            .bind(role.as_str())
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        for cidr in &key.access_list {
            sqlx::query(
                "insert into api_key_access (api_key_id, cidr, created_at) values ($1, $2, $3)",
            )
            .bind(key.id.to_string())
            .bind(cidr.clone())
            .bind(key.created_at)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        let mut tx = self.read.begin().await.map_err(classify)?;
        let rows = sqlx::query(
            "select id, org_id, public_key, private_key, description, org_role, created_at \
             from api_key order by created_at, id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        let roles = sqlx::query(
            "select api_key_id, project_id, role from api_key_project order by project_id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        let access =
            sqlx::query("select api_key_id, cidr from api_key_access order by created_at, cidr")
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let role: String = row.try_get("org_role").map_err(classify)?;
            keys.push(ApiKey {
                id: id_col(row, "id")?,
                org_id: id_col(row, "org_id")?,
                public_key: row.try_get("public_key").map_err(classify)?,
                sealed_private_key: row.try_get("private_key").map_err(classify)?,
                description: row.try_get("description").map_err(classify)?,
                org_role: OrgRole::parse(&role)
                    .ok_or_else(|| StoreError::Other(anyhow!("unknown org role in database")))?,
                created_at: row.try_get("created_at").map_err(classify)?,
                project_roles: Vec::new(),
                access_list: Vec::new(),
            });
        }
        for row in &roles {
            let key_id = id_col(row, "api_key_id")?;
            let role: String = row.try_get("role").map_err(classify)?;
            let role = ProjectRole::parse(&role)
                .ok_or_else(|| StoreError::Other(anyhow!("unknown project role in database")))?;
            if let Some(key) = keys.iter_mut().find(|k| k.id == key_id) {
                key.project_roles.push((id_col(row, "project_id")?, role));
            }
        }
        for row in &access {
            let key_id = id_col(row, "api_key_id")?;
            if let Some(key) = keys.iter_mut().find(|k| k.id == key_id) {
                key.access_list.push(row.try_get("cidr").map_err(classify)?);
            }
        }
        Ok(keys)
    }

    async fn delete_api_key(&self, public_key: &str) -> StoreResult<bool> {
        let mut tx = self.auth_change().await?;
        let Some(id) = Self::key_id(&mut tx, public_key).await? else {
            return Ok(false);
        };
        for sql in [
            "delete from api_key_project where api_key_id = $1",
            "delete from api_key_access where api_key_id = $1",
            "delete from api_key where id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.clone())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn set_project_role(
        &self,
        public_key: &str,
        project: GroupId,
        role: ProjectRole,
    ) -> StoreResult<()> {
        let mut tx = self.auth_change().await?;
        let id = Self::existing_key_id(&mut tx, public_key).await?;
        sqlx::query(
            "insert into api_key_project (api_key_id, project_id, role) values ($1, $2, $3) \
             on conflict (api_key_id, project_id) do update set role = excluded.role",
        )
        .bind(id)
        .bind(project.to_string())
        .bind(role.as_str())
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn remove_project_role(&self, public_key: &str, project: GroupId) -> StoreResult<bool> {
        let mut tx = self.auth_change().await?;
        let id = Self::existing_key_id(&mut tx, public_key).await?;
        let done =
            sqlx::query("delete from api_key_project where api_key_id = $1 and project_id = $2")
                .bind(id)
                .bind(project.to_string())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn add_access_entry(&self, public_key: &str, cidr: &str) -> StoreResult<()> {
        let mut tx = self.auth_change().await?;
        let id = Self::existing_key_id(&mut tx, public_key).await?;
        sqlx::query(
            "insert into api_key_access (api_key_id, cidr, created_at) values ($1, $2, $3) \
             on conflict (api_key_id, cidr) do nothing",
        )
        .bind(id)
        .bind(cidr)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn remove_access_entry(&self, public_key: &str, cidr: &str) -> StoreResult<bool> {
        let mut tx = self.auth_change().await?;
        let id = Self::existing_key_id(&mut tx, public_key).await?;
        let done = sqlx::query("delete from api_key_access where api_key_id = $1 and cidr = $2")
            .bind(id)
            .bind(cidr)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn auth_epoch(&self) -> StoreResult<i64> {
        sqlx::query_scalar("select value from auth_epoch where id = 1")
            .fetch_one(&self.read)
            .await
            .map_err(classify)
    }

    async fn sealed_values(&self) -> StoreResult<Vec<(SealedRef, Vec<u8>)>> {
        let mut out = Vec::new();
        let rows = sqlx::query("select group_id, type, config from integration order by seq")
            .fetch_all(&self.read)
            .await
            .map_err(classify)?;
        for row in &rows {
            let kind: String = row.try_get("type").map_err(classify)?;
            let kind = IntegrationType::parse(&kind)
                .ok_or_else(|| StoreError::Other(anyhow!("unknown integration type")))?;
            let at = SealedRef::Integration {
                group: id_col(row, "group_id")?,
                kind,
            };
            out.push((at, row.try_get("config").map_err(classify)?));
        }
        let rows = sqlx::query("select id, private_key from api_key order by id")
            .fetch_all(&self.read)
            .await
            .map_err(classify)?;
        for row in &rows {
            let at = SealedRef::ApiKey {
                id: id_col(row, "id")?,
            };
            out.push((at, row.try_get("private_key").map_err(classify)?));
        }
        let rows = sqlx::query("select name, value from meta order by name")
            .fetch_all(&self.read)
            .await
            .map_err(classify)?;
        for row in &rows {
            let name: String = row.try_get("name").map_err(classify)?;
            out.push((
                SealedRef::Meta { name },
                row.try_get("value").map_err(classify)?,
            ));
        }
        Ok(out)
    }

    async fn reseal(&self, at: &SealedRef, old: &[u8], new: &[u8]) -> StoreResult<bool> {
        let query = match at {
            SealedRef::Integration { group, kind } if self.is_sqlite() => {
                sqlx::query(keyed::RESEAL)
                    .bind(new.to_vec())
                    .bind(group.to_string())
                    .bind(kind.code())
                    .bind(old.to_vec())
            }
            SealedRef::Integration { group, kind } => sqlx::query(
                "update integration set config = $1 where group_id = $2 and type = $3 \
                 and config = $4",
            )
            .bind(new.to_vec())
            .bind(group.to_string())
            .bind(kind.as_str())
            .bind(old.to_vec()),
            SealedRef::ApiKey { id } => sqlx::query(
                "update api_key set private_key = $1 where id = $2 and private_key = $3",
            )
            .bind(new.to_vec())
            .bind(id.to_string())
            .bind(old.to_vec()),
            SealedRef::Meta { name } => {
                sqlx::query("update meta set value = $1 where name = $2 and value = $3")
                    .bind(new.to_vec())
                    .bind(name.clone())
                    .bind(old.to_vec())
            }
        };
        let done = query.execute(&self.write).await.map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }
}
