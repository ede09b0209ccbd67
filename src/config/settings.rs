//! The settings: one struct per subcommand, each field documented; a setting is an
//! argument with an environment variable.

use std::convert::Infallible;
use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

/// audit-service: the audit log of the platform's control plane, served over GraphQL.
#[derive(Parser, Debug)]
#[command(
    name = "audit-service",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A TOML file of settings, keyed by their long flag names (`listen`, `database-url`,
    /// ...). Flags and environment variables take precedence over it.
    // Taken off the command line before clap sees it (see `take_config_path`), so that it
    // may come before or after a subcommand; declared here for `--help`.
    #[arg(long, env = "AUDIT_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand, the server runs (`serve`).
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the GraphQL server (the default); applies pending migrations first.
    Serve(Box<ServeConfig>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseConfig),
    /// Print the effective server configuration as TOML, each value with where it came
    /// from (flag, environment, file or default); secrets are redacted.
    Config(Box<ServeConfig>),
    /// Print the GraphQL schema (SDL), as `schema.graphql` holds it.
    Schema {
        /// Print the Apollo Federation subgraph SDL instead (`schema.subgraph.graphql`).
        #[arg(long)]
        subgraph: bool,
    },
    /// Check the hash chains; exits non-zero naming the first bad sequence and why.
    Verify {
        #[command(flatten)]
        database: DatabaseConfig,
        /// Only this tenant (all tenants by default).
        #[arg(long)]
        tenant: Option<String>,
        /// Print the result as one JSON object instead of a line per tenant.
        #[arg(long)]
        json: bool,
    },
    /// Write a tenant's events, with sequence numbers and hashes, to stdout in sequence
    /// order.
    Export {
        #[command(flatten)]
        database: DatabaseConfig,
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
        /// Only the events this `AuditLogFilter`, written as JSON, matches
        /// (`{"actions": ["project.*"]}`); `tenantIds` is `--tenant`'s.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Manage API keys.
    Keys {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Manage the Ed25519 key that signs checkpoints.
    CheckpointKey {
        #[command(subcommand)]
        action: CheckpointKeyCommand,
    },
    /// Manage the privacy key file: the keys that wrap data subjects' keys.
    PrivacyKey {
        #[command(subcommand)]
        action: PrivacyKeyCommand,
    },
    /// Erase a data subject's personal values in a tenant (as `eraseAuditSubject` does):
    /// its key and sealed values are destroyed; events, hashes and proofs stay.
    Erase {
        #[command(flatten)]
        database: DatabaseConfig,
        #[arg(long)]
        tenant: String,
        /// The data subject (a user's id, or an id events named in `subjectIds`).
        #[arg(long)]
        subject: String,
        /// Why (the request's reference); recorded with the erasure.
        #[arg(long)]
        reason: String,
    },
    /// Apply the retention policy (and the actions' `retentionDays`) once, then exit; or,
    /// with `--tenant` and `--before`, purge one tenant's events recorded before an instant.
    Purge {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        retention: RetentionConfig,
        /// The tenant to purge (with `--before`).
        #[arg(long, requires = "before")]
        tenant: Option<String>,
        /// Purge events recorded before this RFC 3339 instant (with `--tenant`).
        #[arg(long, requires = "tenant")]
        before: Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// What to do with API keys.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// The tenant the key acts in.
        #[arg(long)]
        tenant: String,
        /// A scope to grant: audit:write, audit:read, audit:admin (repeat for more).
        #[arg(long = "scope", required = true, value_parser = ["audit:write", "audit:read", "audit:admin", "audit:pii"])]
        scopes: Vec<String>,
        /// Who uses the key (`api-gateway`).
        #[arg(long)]
        name: String,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key; every instance refuses it within seconds.
    Revoke {
        /// The key's id, from `keys list`.
        id: uuid::Uuid,
    },
}

/// What to do with the privacy key file.
#[derive(Subcommand, Debug)]
pub enum PrivacyKeyCommand {
    /// Make a new key file at `--out` (which must not exist yet), as
    /// AUDIT_PRIVACY_KEY_FILE reads it.
    Create {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Add a new key to the front of a key file: new data keys are wrapped with it, and the
    /// old keys still unwrap theirs until `rewrap` has run.
    Rotate {
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Rewrap every data key with the key file's first key; afterwards the older keys may
    /// be removed from the file.
    Rewrap {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        privacy: PrivacyConfig,
    },
}

/// What to do with the checkpoint signing key.
#[derive(Subcommand, Debug)]
pub enum CheckpointKeyCommand {
    /// Make a new key, write it to `--out` (which must not exist yet), and print its
    /// verifier key (`name+keyhash+base64`), which auditors use to check signatures.
    Create {
        /// The key's name in signatures and in the verifier key (no spaces, no `+`).
        #[arg(long)]
        name: String,
        /// Where to write the private key (as AUDIT_CHECKPOINT_KEY_FILE reads it).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// Export formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Newline-delimited JSON: the canonical encoding plus `hash` and `prev_hash`.
    Ndjson,
    /// RFC 4180 CSV with a header row; metadata as a JSON string.
    Csv,
}

/// How long events are kept.
#[derive(Args, Debug, Clone)]
pub struct RetentionConfig {
    /// Days to keep events, per tenant: `acme=90,globex=365`, and `*=400` for every other
    /// tenant. Tenants without an entry keep everything. Off by default.
    #[arg(long, env = "AUDIT_RETENTION", value_parser = retention_rule, value_delimiter = ',')]
    pub retention: Vec<(String, u32)>,
    /// Minutes between housekeeping runs in the server (partitions, retention, keys).
    #[arg(long, env = "AUDIT_RETENTION_INTERVAL_MINUTES", default_value_t = 60)]
    pub retention_interval_minutes: u64,
    /// Days an idempotency key is remembered (a retry after that creates a new event).
    #[arg(long, env = "AUDIT_IDEMPOTENCY_TTL_DAYS", default_value_t = 30)]
    pub idempotency_ttl_days: u32,
}

impl RetentionConfig {
    /// The days to keep `tenant_id`'s events, if they expire at all.
    pub fn days_for(&self, tenant_id: &str) -> Option<u32> {
        let rule = |name: &str| {
            self.retention
                .iter()
                .find(|(t, _)| t == name)
                .map(|(_, d)| *d)
        };
        rule(tenant_id).or_else(|| rule("*"))
    }
}

fn retention_rule(value: &str) -> Result<(String, u32), String> {
    let (tenant, days) = value
        .split_once('=')
        .ok_or_else(|| format!("`{value}` is not TENANT=DAYS"))?;
    let days = days
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| format!("`{days}` is not a number of days (1 or more)"))?;
    Ok((tenant.trim().to_owned(), days))
}

/// Where the database is.
#[derive(Args, Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://user:pass@host/db` or `sqlite://path.db?mode=rwc`. Never logged.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://audit.db?mode=rwc",
        value_parser = secret,
        hide_default_value = false
    )]
    pub url: SecretString,
    /// Connections in the pool, 1 to 1,000.
    #[arg(
        long = "db-pool-size",
        env = "AUDIT_DB_POOL_SIZE",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub pool_size: u32,
}

/// How the server runs.
#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Address and port to listen on.
    #[arg(long, env = "AUDIT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Browser origins allowed to call the API (CORS), comma-separated; none by default.
    #[arg(
        long = "cors-origins",
        env = "AUDIT_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Most nested selection depth of a GraphQL document.
    #[arg(long, env = "AUDIT_MAX_DEPTH", default_value_t = 15)]
    pub max_depth: usize,
    /// Largest complexity of a GraphQL document: a point per selected field, times the page
    /// size (`first`/`last`, 50 by default) for every field inside a page, so nested trails
    /// multiply. Four requests of this size may run at once; smaller ones share that room.
    #[arg(long, env = "AUDIT_MAX_COMPLEXITY", default_value_t = 50_000)]
    pub max_complexity: usize,
    /// Answer introspection (`__schema`, `__type`); switch off in production if you like.
    #[arg(long, env = "AUDIT_INTROSPECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub introspection: bool,
    /// Milliseconds a DataLoader batch (federation entities, trails) waits for more keys.
    #[arg(long, env = "AUDIT_BATCH_WINDOW_MS", default_value_t = 2)]
    pub batch_window_ms: u64,
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Events a live subscriber may fall behind before it is dropped with `SUBSCRIBER_LAGGED`.
    #[arg(long, env = "AUDIT_SUBSCRIBER_BUFFER", default_value_t = 1000)]
    pub subscriber_buffer: usize,
    #[command(flatten)]
    pub retention: RetentionConfig,
    #[command(flatten)]
    pub transparency: TransparencyConfig,
    #[command(flatten)]
    pub replicas: ReplicaConfig,
    #[command(flatten)]
    pub privacy: PrivacyConfig,
    /// Seconds a log stream's sink may fail before the stream reads `FAILING` (it keeps
    /// retrying and resumes from its cursor when the sink is back).
    #[arg(long, env = "AUDIT_STREAM_FAILING_AFTER", default_value_t = 300)]
    pub stream_failing_after: u64,
    /// Seconds a SIGTERM or SIGINT gives in-flight requests, queued writes and live
    /// subscriptions to finish before the process exits anyway.
    #[arg(
        long = "shutdown-timeout",
        env = "AUDIT_SHUTDOWN_TIMEOUT",
        default_value_t = 30
    )]
    pub shutdown_timeout_seconds: u64,
}

/// The keys personal values are sealed under (docs/privacy.md).
#[derive(Args, Debug, Clone, Default)]
pub struct PrivacyConfig {
    /// The privacy key file, as `privacy-key create` writes it. Required on PostgreSQL; on
    /// SQLite without it, `<database file>.privacy-key` is used, made on first start.
    #[arg(long = "privacy-key-file", env = "AUDIT_PRIVACY_KEY_FILE")]
    pub privacy_key_file: Option<std::path::PathBuf>,
}

/// PostgreSQL streaming replicas that serve reads.
#[derive(Args, Debug, Clone, Default)]
pub struct ReplicaConfig {
    /// Replicas of the PostgreSQL database to read from (`postgres://...`, comma-separated);
    /// queries, stats, exports, proofs and replays go to them. Never logged.
    #[arg(
        long = "read-database-url",
        env = "AUDIT_READ_DATABASE_URL",
        value_delimiter = ',',
        value_parser = secret
    )]
    pub urls: Vec<SecretString>,
    /// Milliseconds a read that sends a write's `x-audit-consistency` token waits for a
    /// replica to replay that far; after that the primary serves it.
    #[arg(
        long = "replica-wait-ms",
        env = "AUDIT_REPLICA_WAIT_MS",
        default_value_t = 500
    )]
    pub wait_ms: u64,
    /// A replica more than this many seconds behind is skipped until it catches up.
    #[arg(
        long = "replica-max-lag-seconds",
        env = "AUDIT_REPLICA_MAX_LAG_SECONDS",
        default_value_t = 30
    )]
    pub max_lag_seconds: u64,
}

/// The tenants' Merkle trees: signed checkpoints and continuous verification.
#[derive(Args, Debug, Clone)]
pub struct TransparencyConfig {
    /// The start of every checkpoint's origin line: `<origin>/<tenant>`.
    #[arg(
        long = "log-origin",
        env = "AUDIT_LOG_ORIGIN",
        default_value = "audit-service"
    )]
    pub origin: String,
    /// The Ed25519 key checkpoints are signed with, as `checkpoint-key create` writes it;
    /// without one, no checkpoints are issued (and no proofs can be asked for).
    #[arg(long = "checkpoint-key-file", env = "AUDIT_CHECKPOINT_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// Seconds between checkpoints of the tenants whose log grew.
    #[arg(
        long = "checkpoint-interval-seconds",
        env = "AUDIT_CHECKPOINT_INTERVAL_SECONDS",
        default_value_t = 60
    )]
    pub checkpoint_interval_seconds: u64,
    /// Milliseconds between passes that store the trees' new full tiles (how far the stored
    /// tree may lag the log); 0 stores tiles only when a checkpoint is signed, and proofs
    /// then read more events.
    #[arg(
        long = "tree-seal-interval-ms",
        env = "AUDIT_TREE_SEAL_INTERVAL_MS",
        default_value_t = 500
    )]
    pub seal_interval_ms: u64,
    /// Seconds between rounds of continuous verification of every tenant's chain and tree.
    #[arg(
        long = "verify-interval-seconds",
        env = "AUDIT_VERIFY_INTERVAL_SECONDS",
        default_value_t = 60
    )]
    pub verify_interval_seconds: u64,
}

impl Default for TransparencyConfig {
    fn default() -> Self {
        TransparencyConfig {
            origin: "audit-service".to_owned(),
            key_file: None,
            checkpoint_interval_seconds: 60,
            seal_interval_ms: 500,
            verify_interval_seconds: 60,
        }
    }
}

fn secret(value: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(value))
}

/// Where credentials come from, and how much each may do.
#[derive(Args, Debug, Clone, Default)]
pub struct AuthConfig {
    /// Shared secret for HS256 JWTs from the platform's auth-service. Never logged.
    #[arg(long, env = "AUDIT_JWT_HS256_SECRET", value_parser = secret)]
    pub jwt_hs256_secret: Option<SecretString>,
    /// A JWKS file with the public keys (RS256, ES256) of the platform's auth-service.
    #[arg(long, env = "AUDIT_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<std::path::PathBuf>,
    /// Required `iss` of JWTs, when set.
    #[arg(long, env = "AUDIT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of JWTs, when set.
    #[arg(long, env = "AUDIT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Requests per second each credential may make (token bucket); 0 turns it off.
    #[arg(long, env = "AUDIT_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,
    /// Requests a credential may make at once beyond the steady rate.
    #[arg(long, env = "AUDIT_RATE_LIMIT_BURST", default_value_t = 2000)]
    pub rate_limit_burst: u32,
}

impl AuthConfig {
    pub fn jwt_configured(&self) -> bool {
        self.jwt_hs256_secret.is_some() || self.jwt_jwks_file.is_some()
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            retention: Vec::new(),
            retention_interval_minutes: 60,
            idempotency_ttl_days: 30,
        }
    }
}
