//! Command line and environment: one struct per subcommand, each field documented.

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
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand, the server runs (`serve`).
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the GraphQL server (the default); applies pending migrations first.
    Serve(ServeConfig),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseConfig),
    /// Print the GraphQL schema (SDL), as `schema.graphql` holds it.
    Schema,
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
    /// Connections in the pool.
    #[arg(
        long = "db-pool-size",
        env = "AUDIT_DB_POOL_SIZE",
        default_value_t = 10
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
}

fn secret(value: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(value))
}
