//! Command-line and environment configuration. Every flag has an `ATLAS_INTEGRATIONS_*`
//! environment variable; the flag wins.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "atlas-integrations",
    version,
    about = "Atlas-compatible third-party service integrations API server"
)]
pub struct Cli {
    /// Options every command shares.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command shares. `Debug` hides a password in the database URL.
#[derive(Clone, Args)]
pub struct Global {
    /// Database URL: `sqlite://PATH` or `postgres://...` (default: an SQLite file in the data directory).
    #[arg(long, global = true, env = "ATLAS_INTEGRATIONS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Data directory: the default SQLite file, the generated master key, first-start credentials.
    #[arg(
        long,
        global = true,
        env = "ATLAS_INTEGRATIONS_DATA_DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,
    /// File holding the master key (32 bytes, base64). `ATLAS_INTEGRATIONS_MASTER_KEY` may hold the key itself.
    #[arg(long, global = true, env = "ATLAS_INTEGRATIONS_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Database connections in the pool.
    #[arg(
        long,
        global = true,
        env = "ATLAS_INTEGRATIONS_POOL_SIZE",
        default_value_t = 8
    )]
    pub pool_size: u32,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Global")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("data_dir", &self.data_dir)
            .field("master_key_file", &self.master_key_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// A URL with its password, if any, replaced by `****`.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        Ok(_) => text.to_owned(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

impl Global {
    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            crate::store::sqlite::url_for_path(&self.data_dir.join("atlas-integrations.db"))
        })
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the API server.
    Serve(Serve),
    /// Runs the database migrations and exits.
    Migrate,
    /// Organizations.
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Projects (Atlas groups).
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// Programmatic API keys.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// Master keys for secrets at rest.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `serve` options.
#[derive(Debug, Clone, Args)]
pub struct Serve {
    /// Address to listen on.
    #[arg(
        long,
        env = "ATLAS_INTEGRATIONS_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// Public base URL for links (e.g. `https://atlas.example.com`), instead of the request's Host.
    #[arg(long, env = "ATLAS_INTEGRATIONS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Do not run migrations at start.
    #[arg(long, env = "ATLAS_INTEGRATIONS_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Failed authentications allowed per minute per address and per key; 0 turns the throttle off.
    #[arg(
        long,
        env = "ATLAS_INTEGRATIONS_AUTH_FAILURE_LIMIT",
        default_value_t = 10
    )]
    pub auth_failure_limit: u32,
    /// Seconds a throttled address or key waits.
    #[arg(
        long,
        env = "ATLAS_INTEGRATIONS_AUTH_COOLDOWN_SECS",
        default_value_t = 60
    )]
    pub auth_cooldown_secs: u64,
    /// Seconds a Digest nonce stays valid.
    #[arg(long, env = "ATLAS_INTEGRATIONS_NONCE_TTL_SECS", default_value_t = 300)]
    pub nonce_ttl_secs: u64,
    /// Proxies (addresses or CIDRs) whose X-Forwarded-For is believed; repeat or comma-separate.
    #[arg(
        long = "trusted-proxy",
        env = "ATLAS_INTEGRATIONS_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Requests per minute per project (off when absent).
    #[arg(long, env = "ATLAS_INTEGRATIONS_PROJECT_RATE_LIMIT")]
    pub project_rate_limit: Option<u32>,
    /// Milliseconds between checks of the database for key and role changes.
    #[arg(
        long,
        env = "ATLAS_INTEGRATIONS_AUTH_REFRESH_MS",
        default_value_t = 250
    )]
    pub auth_refresh_ms: u64,
}

/// `orgs` commands.
#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Creates an organization.
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// Lists organizations.
    List,
}

/// `projects` commands.
#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// Creates a project.
    Create {
        /// The organization id.
        #[arg(long)]
        org: String,
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// Lists projects.
    List {
        /// Only this organization's.
        #[arg(long)]
        org: Option<String>,
    },
    /// Deletes a project and its integrations.
    Delete {
        /// The project (group) id.
        group_id: String,
    },
}

/// `api-keys` commands.
#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Creates a key; its private key is shown this once.
    Create {
        /// The organization id.
        #[arg(long)]
        org: String,
        /// `ORG_OWNER` or `ORG_READ_ONLY`.
        #[arg(long)]
        role: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Gives a key a role on a project.
    Assign {
        /// The public key.
        public_key: String,
        /// The project (group) id.
        #[arg(long)]
        project: String,
        /// `GROUP_OWNER` or `GROUP_READ_ONLY`.
        #[arg(long)]
        role: String,
    },
    /// Removes a key's role on a project.
    Unassign {
        /// The public key.
        public_key: String,
        /// The project (group) id.
        #[arg(long)]
        project: String,
    },
    /// A key's IP access list.
    #[command(subcommand, name = "access-list")]
    AccessList(AccessListCommand),
    /// Lists keys (never their private keys).
    List,
    /// Deletes a key.
    Delete {
        /// The public key.
        public_key: String,
    },
}

/// `api-keys access-list` commands.
#[derive(Debug, Subcommand)]
pub enum AccessListCommand {
    /// Allows an address or CIDR block.
    Add {
        /// The public key.
        public_key: String,
        /// An IPv4/IPv6 address or CIDR block.
        cidr: String,
    },
    /// Removes an entry.
    Remove {
        /// The public key.
        public_key: String,
        /// The entry as added.
        cidr: String,
    },
}

/// `keys` commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-encrypts every secret under a new master key.
    Rotate {
        /// File with the new key (32 bytes, base64).
        #[arg(long)]
        new_key_file: PathBuf,
    },
    /// Writes a new random master key to a file (mode 0600).
    Generate {
        /// Where to write it; refuses to overwrite.
        path: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_database_password() {
        let global = Global {
            database_url: Some("postgres://app:hunter2@db:5432/atlas".into()),
            data_dir: "./data".into(),
            master_key_file: None,
            pool_size: 8,
        };
        let shown = format!("{global:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://app:****@db:5432/atlas"),
            "{shown}"
        );
    }
}
