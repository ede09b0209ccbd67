//! Logging: `RUST_LOG`-style filtering (`AUDIT_LOG`), human-readable lines on stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `AUDIT_LOG` overrides the default `info` level.
pub fn init() {
    let filter = EnvFilter::try_from_env("AUDIT_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
