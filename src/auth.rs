//! API-key authentication and authorization: HTTP Digest (contract §7), the key cache,
//! access lists and roles (§1, §5).
//!
//! Authenticating a request costs no database round trip: keys, roles and access lists are
//! held in memory and reloaded when the database's `auth_epoch` changes (polled, so changes
//! made by the CLI or another server process are seen within a fraction of a second).
//! Project → organization lookups are cached the same way.

pub mod digest;
pub mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::ids::{GroupId, ObjectId, OrgId};
use crate::rotation::LiveKeys;
use crate::store::{ApiKey, OrgRole, ProjectRole, ReadHint, Store, StoreError};
use digest::{Credentials, NonceKey, NonceStatus, ReplayGuard, ReplayVerdict};
use throttle::FailureThrottle;

/// Associated data binding a sealed private key to its public key.
pub fn private_key_aad(public_key: &str) -> Vec<u8> {
    format!("api-key:{public_key}").into_bytes()
}

/// A key as the cache holds it: private key decrypted (in a secret), roles indexed.
pub struct CachedKey {
    /// The key's id.
    pub id: ObjectId,
    /// The public key.
    pub public_key: String,
    /// Its organization.
    pub org_id: OrgId,
    /// Its organization role.
    pub org_role: OrgRole,
    ha1: digest::Ha1,
    project_roles: HashMap<GroupId, ProjectRole>,
    access_list: Vec<IpNet>,
}

impl std::fmt::Debug for CachedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedKey")
            .field("public_key", &self.public_key)
            .field("org_role", &self.org_role)
            .finish_non_exhaustive()
    }
}

/// What a key may do on a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// GET.
    Read,
    /// GET, POST, PUT, DELETE.
    Write,
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header: the first leg of Digest. Not counted by the throttle.
    Challenge,
    /// Correct credentials on an expired nonce: answer `stale=true`. Not counted.
    Stale,
    /// Anything else: counted by the throttle.
    Denied,
    /// Too many failures from this address or for this key.
    Throttled {
        /// Seconds until the cool-down ends.
        retry_after: u64,
    },
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// How long a nonce is valid.
    pub nonce_ttl: Duration,
    /// Failed attempts allowed per minute per address and per key (0: no throttle).
    pub failure_limit: u32,
    /// How long a throttled address or key waits.
    pub cooldown: Duration,
    /// How often the cache checks the database for changes.
    pub refresh_interval: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            nonce_ttl: Duration::from_secs(300),
            failure_limit: 10,
            cooldown: Duration::from_secs(60),
            refresh_interval: Duration::from_millis(250),
        }
    }
}

/// The authenticator shared by all requests.
pub struct Authenticator {
    store: Arc<dyn Store>,
    keyring: Arc<LiveKeys>,
    nonce_key: NonceKey,
    settings: AuthSettings,
    replay: ReplayGuard,
    throttle: FailureThrottle,
    keys: RwLock<Arc<HashMap<String, Arc<CachedKey>>>>,
    projects: RwLock<HashMap<GroupId, Option<(OrgId, ReadHint)>>>,
    epoch: AtomicI64,
}

/// Projects cached at most before the cache starts over (bounds memory).
const PROJECT_CACHE_LIMIT: usize = 200_000;

impl Authenticator {
    /// Builds the authenticator and loads the key cache.
    pub async fn new(
        store: Arc<dyn Store>,
        keyring: Arc<LiveKeys>,
        nonce_key: NonceKey,
        settings: AuthSettings,
    ) -> Result<Arc<Self>, StoreError> {
        let auth = Arc::new(Self {
            store,
            keyring,
            nonce_key,
            replay: ReplayGuard::new(settings.nonce_ttl, 200_000),
            throttle: FailureThrottle::new(
                settings.failure_limit,
                Duration::from_secs(60),
                settings.cooldown,
            ),
            settings,
            keys: RwLock::new(Arc::new(HashMap::new())),
            projects: RwLock::new(HashMap::new()),
            epoch: AtomicI64::new(i64::MIN),
        });
        auth.refresh().await?;
        Ok(auth)
    }

    /// Reloads the caches if the database's auth epoch moved. Returns whether it reloaded.
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        if let Err(err) = self.keyring.adopt_pending(self.store.as_ref()).await {
            tracing::error!(error = %err, "cannot adopt the pending master key");
        }
        let epoch = self.store.auth_epoch().await?;
        if epoch == self.epoch.load(Ordering::Acquire) {
            return Ok(false);
        }
        let keys = self.store.list_api_keys().await?;
        let mut map = HashMap::with_capacity(keys.len());
        for key in keys {
            match self.cache_entry(&key) {
                Some(entry) => {
                    map.insert(key.public_key.clone(), Arc::new(entry));
                }
                None => tracing::error!(
                    public_key = %key.public_key,
                    "cannot decrypt this API key's private key: the key is disabled"
                ),
            }
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        self.projects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.epoch.store(epoch, Ordering::Release);
        Ok(true)
    }

    fn cache_entry(&self, key: &ApiKey) -> Option<CachedKey> {
        let plain = self
            .keyring
            .ring()
            .decrypt(&private_key_aad(&key.public_key), &key.sealed_private_key)
            .ok()?;
        let text = SecretString::from(std::str::from_utf8(plain.expose_secret()).ok()?);
        let text = text.expose_secret();
        let access_list = key
            .access_list
            .iter()
            .filter_map(|entry| parse_cidr(entry))
            .collect();
        Some(CachedKey {
            id: key.id,
            public_key: key.public_key.clone(),
            org_id: key.org_id,
            org_role: key.org_role,
            ha1: digest::Ha1::new(&key.public_key, text),
            project_roles: key.project_roles.iter().copied().collect(),
            access_list,
        })
    }

    /// Polls the database for auth changes until the process ends.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = self.settings.refresh_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(auth) = weak.upgrade() else { break };
                if let Err(err) = auth.refresh().await {
                    tracing::warn!(error = %err, "cannot refresh the API key cache");
                }
            }
        })
    }

    /// Failed attempts allowed per minute (0: no throttle).
    pub fn failure_limit(&self) -> u32 {
        self.settings.failure_limit
    }

    /// A fresh nonce for a challenge.
    pub fn nonce(&self) -> String {
        self.nonce_key.issue(SystemTime::now())
    }

    /// Checks a request's `Authorization` header. `uri` is the request target as sent.
    pub fn authenticate(
        &self,
        header: Option<&[u8]>,
        method: &str,
        uri: &str,
        client: IpAddr,
    ) -> Result<Arc<CachedKey>, AuthFailure> {
        let Some(header) = header else {
            return Err(AuthFailure::Challenge);
        };
        let creds = digest::parse_authorization(header).ok();
        let public_key = creds.as_ref().map(|c| c.username.as_ref());
        match creds.as_ref().map(|c| self.check(c, method, uri)) {
            Some(Ok(key)) => Ok(key),
            Some(Err(AuthFailure::Stale)) => Err(AuthFailure::Stale),
            _ => {
                let now = Instant::now();
                if let Some(wait) = self.throttle.locked(client, public_key, now) {
                    return Err(AuthFailure::Throttled {
                        retry_after: wait.as_secs().max(1),
                    });
                }
                self.throttle.record_failure(client, public_key, now);
                Err(AuthFailure::Denied)
            }
        }
    }

    fn check(
        &self,
        creds: &Credentials<'_>,
        method: &str,
        uri: &str,
    ) -> Result<Arc<CachedKey>, AuthFailure> {
        if creds.uri != uri {
            return Err(AuthFailure::Denied);
        }
        let now = SystemTime::now();
        let (issued_at_ms, stale) =
            match self
                .nonce_key
                .check(&creds.nonce, now, self.settings.nonce_ttl)
            {
                NonceStatus::Valid { issued_at_ms } => (issued_at_ms, false),
                NonceStatus::Stale { issued_at_ms } => (issued_at_ms, true),
                NonceStatus::Invalid => return Err(AuthFailure::Denied),
            };
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(key) = keys.get(creds.username.as_ref()) else {
            // Same work as for a known key, so timing does not tell which keys exist.
            let _ = digest::verify_ha1(creds, method, unknown_key_ha1());
            return Err(AuthFailure::Denied);
        };
        if !digest::verify_ha1(creds, method, &key.ha1) {
            return Err(AuthFailure::Denied);
        }
        if stale {
            return Err(AuthFailure::Stale);
        }
        match self
            .replay
            .check_and_record(&creds.nonce, &creds.cnonce, creds.nc, issued_at_ms, now)
        {
            ReplayVerdict::Fresh => Ok(Arc::clone(key)),
            ReplayVerdict::Stale => Err(AuthFailure::Stale),
            ReplayVerdict::Replayed => Err(AuthFailure::Denied),
        }
    }

    /// What `key` may do on `group`, with the storage's hint for reading the project's
    /// integrations; `None` when it has no access or the project does not exist (the two are
    /// not told apart).
    pub async fn access(
        &self,
        key: &CachedKey,
        group: GroupId,
    ) -> Result<Option<(Access, ReadHint)>, StoreError> {
        let Some((org, hint)) = self.project_org(group).await? else {
            return Ok(None);
        };
        let from_org = (org == key.org_id).then_some(match key.org_role {
            OrgRole::Owner => Access::Write,
            OrgRole::ReadOnly => Access::Read,
        });
        let from_project = key.project_roles.get(&group).map(|role| match role {
            ProjectRole::Owner => Access::Write,
            ProjectRole::ReadOnly => Access::Read,
        });
        Ok(from_org.max(from_project).map(|access| (access, hint)))
    }

    async fn project_org(&self, group: GroupId) -> Result<Option<(OrgId, ReadHint)>, StoreError> {
        if let Some(org) = self
            .projects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
        {
            return Ok(*org);
        }
        let org = self.store.project_access(group).await?;
        let mut projects = self.projects.write().unwrap_or_else(|e| e.into_inner());
        if projects.len() >= PROJECT_CACHE_LIMIT {
            projects.clear();
        }
        projects.insert(group, org);
        Ok(org)
    }
}

/// The HA1 checked against when the username is no key's, so that an unknown key costs the
/// same work as a known one.
fn unknown_key_ha1() -> &'static digest::Ha1 {
    static HA1: std::sync::OnceLock<digest::Ha1> = std::sync::OnceLock::new();
    HA1.get_or_init(|| digest::Ha1::new("unknown", "00000000-0000-0000-0000-000000000000"))
}

/// Whether `client` may use `key` (an empty access list allows every address).
pub fn allowed_from(key: &CachedKey, client: IpAddr) -> bool {
    let client = canonical_ip(client);
    key.access_list.is_empty() || key.access_list.iter().any(|net| net.contains(&client))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) count as their IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Parses an address or CIDR block (`10.0.0.1`, `10.0.0.0/8`, `::1`, `2001:db8::/32`). An
/// IPv4-mapped IPv6 block (`::ffff:10.0.0.0/104`) becomes its IPv4 block, since client
/// addresses are compared in their IPv4 form.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let net = text
        .parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))?;
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    };
    Some(net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_single_addresses_blocks_and_mapped_ipv4() {
        assert_eq!(parse_cidr("10.0.0.1"), "10.0.0.1/32".parse().ok());
        assert_eq!(parse_cidr("10.1.2.3/8"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_cidr("2001:db8::1/32"), "2001:db8::/32".parse().ok());
        assert_eq!(parse_cidr("::ffff:10.0.0.1"), "10.0.0.1/32".parse().ok());
        assert_eq!(parse_cidr("::ffff:10.0.0.0/104"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_cidr("nonsense"), None);
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
