//! Storage: one async trait, [`Store`], with an SQLite implementation (the embedded default)
//! and a PostgreSQL one (several server instances sharing one database).
//!
//! The store sees secrets only sealed (encrypted by [`crate::crypto`]); it never decrypts.
//! Rules that must hold across processes are enforced by the database itself: one
//! integration per `(project, type)` by a unique constraint, and every change to keys, roles,
//! access lists or projects bumps `auth_epoch` in the same transaction so that every server
//! drops its authentication cache.

mod batch;
mod conns;
mod direct;
pub mod postgres;
mod reads;
mod sql;
pub mod sqlite;

pub use sql::SqlStore;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::ids::{GroupId, ObjectId, OrgId};
use crate::domain::integration::IntegrationType;

/// Storage failures, as the HTTP layer and the CLI need to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (or a row it refers to does not).
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database cannot be reached right now.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    /// Its id.
    pub id: OrgId,
    /// Its name.
    pub name: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

/// A project (Atlas "group").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Its id.
    pub id: GroupId,
    /// The organization it belongs to.
    pub org_id: OrgId,
    /// Its name.
    pub name: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

/// An organization-level role of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgRole {
    /// `ORG_OWNER`: owner of every project of the org.
    Owner,
    /// `ORG_READ_ONLY`: read-only on every project of the org.
    ReadOnly,
}

impl OrgRole {
    /// The Atlas name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "ORG_OWNER",
            Self::ReadOnly => "ORG_READ_ONLY",
        }
    }

    /// Parses an Atlas name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Owner, Self::ReadOnly]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// A project-level role of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectRole {
    /// `GROUP_OWNER`: reads and writes.
    Owner,
    /// `GROUP_READ_ONLY`: reads.
    ReadOnly,
}

impl ProjectRole {
    /// The Atlas name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "GROUP_OWNER",
            Self::ReadOnly => "GROUP_READ_ONLY",
        }
    }

    /// Parses an Atlas name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Owner, Self::ReadOnly]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// An API key with its roles and access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id.
    pub id: ObjectId,
    /// The organization it belongs to.
    pub org_id: OrgId,
    /// The public key (the Digest user name).
    pub public_key: String,
    /// The private key, sealed.
    pub sealed_private_key: Vec<u8>,
    /// Free text.
    pub description: String,
    /// Its role on its organization.
    pub org_role: OrgRole,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Roles on single projects.
    pub project_roles: Vec<(GroupId, ProjectRole)>,
    /// Addresses and CIDR blocks it may be used from (empty: anywhere), as text.
    pub access_list: Vec<String>,
}

/// One stored integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIntegration {
    /// The v2 `id`, assigned at creation.
    pub id: ObjectId,
    /// The type.
    pub kind: IntegrationType,
    /// The configuration JSON, sealed with `(group id, type)` as associated data.
    pub sealed: Vec<u8>,
}

/// Where a sealed value lives, for key rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealedRef {
    /// An integration's configuration.
    Integration {
        /// The project.
        group: GroupId,
        /// The type.
        kind: IntegrationType,
    },
    /// An API key's private key.
    ApiKey {
        /// The key's id.
        id: ObjectId,
    },
    /// A metadata value.
    Meta {
        /// Its name.
        name: String,
    },
}

/// The storage operations the server and the CLI need.
/// Where a project's integrations are, as the storage last saw it (SQLite: the project's
/// number, the high part of its integrations' keys), kept by the authenticator with the
/// project's organization so that a GET finds it in the entry the access check has just read
/// instead of in a map of its own (a hash probe that misses the CPU's caches with 100,000
/// projects). Only a hint: the read checks the row it finds against the project and looks
/// the number up again when the hint finds nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadHint(pub(crate) Option<i64>);

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// A metadata value.
    async fn meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Stores `value` unless the name already has one; returns the value that is stored.
    async fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> StoreResult<Vec<u8>>;

    /// Removes a metadata value (no error when absent).
    async fn delete_meta(&self, name: &str) -> StoreResult<()>;

    /// A project's integrations, oldest first.
    async fn list_integrations(&self, group: GroupId) -> StoreResult<Vec<StoredIntegration>>;
    /// One integration.
    async fn get_integration(
        &self,
        group: GroupId,
        kind: IntegrationType,
    ) -> StoreResult<Option<StoredIntegration>>;
    /// [`Store::get_integration`] with the hint [`Store::project_access`] gave for `group`
    /// (which only makes the read cheaper: a stale hint gives the same answer).
    async fn get_integration_hinted(
        &self,
        group: GroupId,
        kind: IntegrationType,
        hint: ReadHint,
    ) -> StoreResult<Option<StoredIntegration>> {
        let _ = hint;
        self.get_integration(group, kind).await
    }
    /// Creates an integration; `Conflict` when the type is already configured.
    async fn create_integration(
        &self,
        group: GroupId,
        integration: &StoredIntegration,
    ) -> StoreResult<()>;
    /// Replaces the configuration of a type, keeping its id and position, or creates it with
    /// `integration.id`; returns the id that is stored.
    async fn replace_integration(
        &self,
        group: GroupId,
        integration: &StoredIntegration,
    ) -> StoreResult<ObjectId>;
    /// [`Store::create_integration`], then the project's integrations as they are right after
    /// it (what POST answers); SQLite reads them in the write's own transaction.
    async fn create_integration_listed(
        &self,
        group: GroupId,
        integration: &StoredIntegration,
    ) -> StoreResult<Vec<StoredIntegration>>;
    /// [`Store::replace_integration`], then the project's integrations as they are right
    /// after it (what PUT answers); SQLite reads them in the write's own transaction.
    async fn replace_integration_listed(
        &self,
        group: GroupId,
        integration: &StoredIntegration,
    ) -> StoreResult<Vec<StoredIntegration>>;
    /// Deletes an integration; false when there was none.
    async fn delete_integration(&self, group: GroupId, kind: IntegrationType) -> StoreResult<bool>;

    /// Creates an organization.
    async fn create_org(&self, org: &Org) -> StoreResult<()>;
    /// Every organization, oldest first.
    async fn list_orgs(&self) -> StoreResult<Vec<Org>>;
    /// Creates a project; `NotFound` when its organization does not exist.
    async fn create_project(&self, project: &Project) -> StoreResult<()>;
    /// One project.
    async fn project(&self, id: GroupId) -> StoreResult<Option<Project>>;
    /// What the authenticator keeps of a project: its organization, and a hint that makes
    /// reading its integrations cheaper ([`Store::get_integration_hinted`]).
    async fn project_access(&self, id: GroupId) -> StoreResult<Option<(OrgId, ReadHint)>> {
        Ok(self
            .project(id)
            .await?
            .map(|project| (project.org_id, ReadHint::default())))
    }
    /// Projects, oldest first, of one organization or of all.
    async fn list_projects(&self, org: Option<OrgId>) -> StoreResult<Vec<Project>>;
    /// Deletes a project with its integrations and key roles; false when there was none.
    async fn delete_project(&self, id: GroupId) -> StoreResult<bool>;

    /// Creates an API key (roles and access list included); `NotFound` for an unknown org,
    /// `Conflict` for a public key in use.
    async fn create_api_key(&self, key: &ApiKey) -> StoreResult<()>;
    /// Every API key with its roles and access list.
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Deletes an API key; false when there was none.
    async fn delete_api_key(&self, public_key: &str) -> StoreResult<bool>;
    /// Gives a key a role on a project (replacing any); `NotFound` for an unknown key or project.
    async fn set_project_role(
        &self,
        public_key: &str,
        project: GroupId,
        role: ProjectRole,
    ) -> StoreResult<()>;
    /// Removes a key's role on a project; false when it had none.
    async fn remove_project_role(&self, public_key: &str, project: GroupId) -> StoreResult<bool>;
    /// Adds an access-list entry (idempotent); `NotFound` for an unknown key.
    async fn add_access_entry(&self, public_key: &str, cidr: &str) -> StoreResult<()>;
    /// Removes an access-list entry; false when it was not there.
    async fn remove_access_entry(&self, public_key: &str, cidr: &str) -> StoreResult<bool>;
    /// A counter bumped by every change to keys, roles, access lists or projects.
    async fn auth_epoch(&self) -> StoreResult<i64>;

    /// Every sealed value in the database, for key rotation.
    async fn sealed_values(&self) -> StoreResult<Vec<(SealedRef, Vec<u8>)>>;
    /// Replaces a sealed value if it still equals `old`; false when it changed meanwhile.
    async fn reseal(&self, at: &SealedRef, old: &[u8], new: &[u8]) -> StoreResult<bool>;
}

/// Opens the store a database URL names (`sqlite:` or `postgres:`/`postgresql:`), runs the
/// migrations unless `migrate` is false.
pub async fn open(url: &str, migrate: bool, pool_size: u32) -> anyhow::Result<Arc<dyn Store>> {
    sqlx::any::install_default_drivers();
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = postgres::connect(url, pool_size).await?;
        if migrate {
            postgres::migrate(&store).await?;
        }
        Ok(Arc::new(store))
    } else if url.starts_with("sqlite:") {
        let store = sqlite::open(url).await?;
        if migrate {
            sqlite::migrate(&store).await?;
        }
        Ok(Arc::new(store))
    } else {
        anyhow::bail!("unsupported database URL: it must start with sqlite: or postgres:")
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
