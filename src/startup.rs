//! Opening the database with its master key, first-start bootstrap, and the server's life
//! cycle (bind, serve, graceful shutdown).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::auth::digest::NonceKey;
use crate::auth::{private_key_aad, AuthSettings, Authenticator};
use crate::config::{Global, Serve};
use crate::crypto::{Keyring, MasterKey};
use crate::domain::ids::{generate_private_key, generate_public_key, ObjectId};
use crate::http::{AppState, ProjectLimiter, Shared};
use crate::rotation::LiveKeys;
use crate::store::{self, now_ms, ApiKey, Org, OrgRole, Project, Store};

mod connections;

/// Metadata names.
pub mod meta {
    /// The key-check value of the master key.
    pub const KEY_CHECK: &str = "key_check";
    /// The Digest nonce HMAC key, sealed.
    pub const NONCE_KEY: &str = "nonce_key";
    /// Set once the first-start bootstrap has run (or was not needed).
    pub const BOOTSTRAPPED: &str = "bootstrapped";
    /// The new master key of a rotation in progress, sealed under the old one.
    pub const PENDING_KEY: &str = "pending_key";
}

/// Associated data for a sealed metadata value.
pub fn meta_aad(name: &str) -> Vec<u8> {
    format!("meta:{name}").into_bytes()
}

/// Opens the store and the master key, checking one against the other.
pub async fn open_database(
    global: &Global,
    migrate: bool,
) -> anyhow::Result<(Arc<dyn Store>, Keyring)> {
    let url = global.database_url();
    if url.starts_with("sqlite:") && global.database_url.is_none() {
        create_private_dir(&global.data_dir)?;
    }
    let store = store::open(&url, migrate, global.pool_size).await?;
    let keyring = load_keyring(global, store.as_ref()).await?;
    Ok((store, keyring))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

/// The default master key file in the data directory.
pub fn default_key_path(global: &Global) -> PathBuf {
    global.data_dir.join("master.key")
}

async fn load_keyring(global: &Global, store: &dyn Store) -> anyhow::Result<Keyring> {
    let stored_check = store.meta(meta::KEY_CHECK).await?;
    // A key file named on the command line (or its variable) wins over a key given inline.
    let key = if let Some(path) = &global.master_key_file {
        MasterKey::load_file(path)?
    } else if let Ok(text) = std::env::var("ATLAS_INTEGRATIONS_MASTER_KEY") {
        MasterKey::from_base64(&text).context("ATLAS_INTEGRATIONS_MASTER_KEY is not a valid key")?
    } else {
        let path = default_key_path(global);
        if path.exists() {
            MasterKey::load_file(&path)?
        } else if stored_check.is_some() {
            bail!(
                "this database holds encrypted secrets but no master key was given: pass \
                 --master-key-file or ATLAS_INTEGRATIONS_MASTER_KEY (looked for {})",
                path.display()
            );
        } else {
            create_private_dir(&global.data_dir)?;
            let key = MasterKey::generate();
            key.write_new_file(&path)?;
            eprintln!(
                "Generated a new master key for secrets at rest: {} (keep it safe: without it \
                 the stored secrets cannot be read)",
                path.display()
            );
            key
        }
    };
    let keyring = Keyring::new(key);
    let check = store
        .put_meta_if_absent(meta::KEY_CHECK, &keyring.key_check())
        .await?;
    keyring.verify_key_check(&check)?;
    Ok(keyring)
}

/// The nonce HMAC key shared by every instance on this database.
async fn nonce_key(store: &dyn Store, keyring: &Keyring) -> anyhow::Result<NonceKey> {
    let fresh = NonceKey::generate();
    let sealed = keyring.encrypt(&meta_aad(meta::NONCE_KEY), fresh.as_bytes());
    let stored = store.put_meta_if_absent(meta::NONCE_KEY, &sealed).await?;
    let plain = keyring
        .decrypt(&meta_aad(meta::NONCE_KEY), &stored)
        .context("cannot decrypt the stored nonce key")?;
    let bytes: [u8; 32] = plain
        .expose_secret()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the stored nonce key has the wrong length"))?;
    Ok(NonceKey::from_bytes(bytes))
}

/// What the first start created, shown once.
#[derive(Debug)]
pub struct FirstStart {
    /// The `default` organization.
    pub org_id: ObjectId,
    /// The `default` project.
    pub group_id: ObjectId,
    /// The owner key's public key.
    pub public_key: String,
    /// The owner key's private key.
    pub private_key: secrecy::SecretString,
}

impl FirstStart {
    /// The text printed and written to the data directory.
    pub fn text(&self, base_url: &str) -> String {
        format!(
            "First start: created organization \"default\" ({org}), project \"default\" and an ORG_OWNER API key.\n\
             \n  group id:    {group}\n  public key:  {public}\n  private key: {private}\n\n\
             The private key is shown only here. Try it:\n\n  \
             curl --digest -u \"{public}:{private}\" \"{base_url}/api/atlas/v1.0/groups/{group}/integrations\"\n",
            org = self.org_id,
            group = self.group_id,
            public = self.public_key,
            private = self.private_key.expose_secret(),
        )
    }
}

/// How long an unfinished bootstrap may take before another start takes it over.
const BOOTSTRAP_TIMEOUT_MS: i64 = 60_000;

/// Creates org `default`, project `default` and an owner key, once per database, and only
/// when the database has no organization yet.
pub async fn bootstrap(store: &dyn Store, keyring: &Keyring) -> anyhow::Result<Option<FirstStart>> {
    if !store.list_orgs().await?.is_empty() {
        // Organizations exist (made here or with the CLI): nothing to bootstrap, ever again.
        store
            .put_meta_if_absent(meta::BOOTSTRAPPED, b"organizations")
            .await?;
        return Ok(None);
    }
    // The marker elects one instance among several starting together; one that died before
    // creating the organization leaves a marker but no organization, and the next start
    // takes over.
    let token = format!("{}:{}", now_ms(), ObjectId::generate());
    let mut winner = store
        .put_meta_if_absent(meta::BOOTSTRAPPED, token.as_bytes())
        .await?;
    if winner != token.as_bytes() {
        let started_ms = std::str::from_utf8(&winner)
            .ok()
            .and_then(|w| w.split(':').next())
            .and_then(|ms| ms.parse::<i64>().ok());
        let abandoned = started_ms.is_some_and(|ms| now_ms() - ms > BOOTSTRAP_TIMEOUT_MS);
        if !abandoned {
            return Ok(None);
        }
        store.delete_meta(meta::BOOTSTRAPPED).await?;
        winner = store
            .put_meta_if_absent(meta::BOOTSTRAPPED, token.as_bytes())
            .await?;
        if winner != token.as_bytes() {
            return Ok(None);
        }
    }
    let now = now_ms();
    let org = Org {
        id: ObjectId::generate(),
        name: "default".to_owned(),
        created_at: now,
    };
    store.create_org(&org).await?;
    let project = Project {
        id: ObjectId::generate(),
        org_id: org.id,
        name: "default".to_owned(),
        created_at: now,
    };
    store.create_project(&project).await?;
    let (key, private_key) = new_api_key(keyring, org.id, OrgRole::Owner, "created at first start");
    store.create_api_key(&key).await?;
    Ok(Some(FirstStart {
        org_id: org.id,
        group_id: project.id,
        public_key: key.public_key,
        private_key,
    }))
}

/// A new API key record and its private key (to show once).
pub fn new_api_key(
    keyring: &Keyring,
    org_id: ObjectId,
    role: OrgRole,
    description: &str,
) -> (ApiKey, secrecy::SecretString) {
    let public_key = generate_public_key();
    let private_key = secrecy::SecretString::from(generate_private_key());
    let sealed = keyring.encrypt(
        &private_key_aad(&public_key),
        private_key.expose_secret().as_bytes(),
    );
    let key = ApiKey {
        id: ObjectId::generate(),
        org_id,
        public_key,
        sealed_private_key: sealed,
        description: description.to_owned(),
        org_role: role,
        created_at: now_ms(),
        project_roles: Vec::new(),
        access_list: Vec::new(),
    };
    (key, private_key)
}

/// Writes a file readable only by its owner (replacing an older one).
pub fn write_private_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    auth: Arc<Authenticator>,
    first_start: Option<FirstStart>,
}

impl Application {
    /// Opens the database, bootstraps a new one, and binds the listener.
    pub async fn build(global: &Global, serve: &Serve) -> anyhow::Result<Self> {
        let (store, keyring) = open_database(global, !serve.no_migrate).await?;
        let nonce_key = nonce_key(store.as_ref(), &keyring).await?;
        let first_start = bootstrap(store.as_ref(), &keyring).await?;
        let settings = AuthSettings {
            nonce_ttl: Duration::from_secs(serve.nonce_ttl_secs.max(1)),
            failure_limit: serve.auth_failure_limit,
            cooldown: Duration::from_secs(serve.auth_cooldown_secs.max(1)),
            refresh_interval: Duration::from_millis(serve.auth_refresh_ms.max(10)),
        };
        let keyring = LiveKeys::new(keyring);
        let auth = Authenticator::new(
            Arc::clone(&store),
            Arc::clone(&keyring),
            nonce_key,
            settings,
        )
        .await?;
        let mut trusted_proxies = Vec::new();
        for entry in serve
            .trusted_proxies
            .iter()
            .filter(|e| !e.trim().is_empty())
        {
            trusted_proxies.push(
                crate::auth::parse_cidr(entry.trim()).with_context(|| {
                    format!("--trusted-proxy {entry:?} is not an address or CIDR")
                })?,
            );
        }
        let public_url = match &serve.public_url {
            Some(url) => {
                let parsed = url::Url::parse(url).context("--public-url is not a URL")?;
                if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
                    bail!("--public-url must be an absolute http or https URL");
                }
                Some(url.trim_end_matches('/').to_owned())
            }
            None => None,
        };
        let state = AppState::new(Shared {
            store,
            keyring,
            auth: Arc::clone(&auth),
            public_url,
            trusted_proxies,
            project_limit: serve.project_rate_limit.map(ProjectLimiter::new),
        });
        let listener = TcpListener::bind(serve.listen)
            .await
            .with_context(|| format!("cannot listen on {}", serve.listen))?;
        Ok(Self {
            listener,
            state,
            auth,
            first_start,
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// What the first start created, if this start was the first.
    pub fn first_start(&self) -> Option<&FirstStart> {
        self.first_start.as_ref()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let refresher = self.auth.spawn_refresher();
        let result = serve(self.listener, self.state, shutdown).await;
        refresher.abort();
        result
    }
}

/// How long a graceful shutdown waits for requests in flight before it gives up on them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// The accept loop: HTTP/1.1 and HTTP/2 on every connection, each closed once idle for 10 to
/// 15 s (a client that never finishes its request head is dropped rather than holding a
/// connection and delaying shutdown forever: [`connections`]), and on `shutdown` a graceful
/// stop bounded by [`SHUTDOWN_DEADLINE`].
async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().timer(TokioTimer::new());
    let connections = connections::Connections::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let activity = Arc::new(connections::Activity::default());
        let counted = Arc::clone(&activity);
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let finished = counted.start();
                let response =
                    crate::http::dispatch(state.clone(), peer, request.map(axum::body::Body::new));
                async move {
                    let response = response.await;
                    drop(finished);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(connections.watch(connection, activity));
    }
    drop(listener);
    tokio::select! {
        () = connections.stop() => {}
        () = tokio::time::sleep(SHUTDOWN_DEADLINE) => {
            tracing::warn!("requests still in flight after the shutdown deadline were dropped");
        }
    }
    Ok(())
}
