//! Schema migrations of audit-service, and the one way to open its database.
//!
//! On PostgreSQL everything lives in the schema `control_plane`, reached through the
//! connection's `search_path`, so the same unqualified entity names serve SQLite too.

use std::time::Duration;

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend, Statement,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

mod m20261127_000001_create_audit_logs;
mod m20261127_000002_create_api_keys;
mod m20261129_000003_create_audit_stats;
mod m20261129_000004_create_audit_tree;
mod m20261129_000005_add_trace_id;
mod m20261207_000006_privacy;
mod m20261208_000007_streams;
mod m20261209_000008_daily_stats;

/// The PostgreSQL schema that holds audit-service's tables.
pub const PG_SCHEMA: &str = "control_plane";

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_audit_logs::Migration),
            Box::new(m20261127_000002_create_api_keys::Migration),
            Box::new(m20261129_000003_create_audit_stats::Migration),
            Box::new(m20261129_000004_create_audit_tree::Migration),
            Box::new(m20261129_000005_add_trace_id::Migration),
            Box::new(m20261207_000006_privacy::Migration),
            Box::new(m20261208_000007_streams::Migration),
            Box::new(m20261209_000008_daily_stats::Migration),
        ]
    }
}

/// How long a SQLite statement waits for a lock another connection or process holds.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often opening a pool is tried before giving up.
const CONNECT_ATTEMPTS: u32 = 5;

/// Opens a connection pool on `url` (`postgres://...` or `sqlite://...`).
///
/// PostgreSQL connections use `search_path = control_plane`, and the schema is created when
/// missing. SQLite runs in WAL mode with a busy timeout, so readers never block the writer.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
        .sqlx_logging(false)
        .set_schema_search_path(PG_SCHEMA)
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                // FULL keeps every acknowledged event across a power loss.
                .synchronous(SqliteSynchronous::Full)
                // Another process holding the lock longer is an outage: the write fails
                // as UNAVAILABLE rather than wait for it.
                .busy_timeout(BUSY_TIMEOUT)
                .foreign_keys(true)
                // Seven B-trees take every insert; a 2 MiB page cache (the default) sends
                // most of their pages through read and write system calls.
                .pragma("cache_size", "-32768")
                .pragma("mmap_size", "268435456")
                .pragma("temp_store", "memory")
                // Deleted rows (erased keys, docs/privacy.md) are overwritten, not left in
                // free pages.
                .pragma("secure_delete", "on")
                .pragma("wal_autocheckpoint", "16384")
        });
    // Requests wait at most a second for a connection; opening the pool may take longer on
    // a busy machine, so it is tried a few times.
    let mut attempts = 1;
    let db = loop {
        match Database::connect(options.clone()).await {
            Err(DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) if attempts < CONNECT_ATTEMPTS => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            connected => break connected?,
        }
    };
    if db.get_database_backend() == DbBackend::Postgres {
        ensure_pg_schema(&db).await?;
    }
    Ok(db)
}

/// Creates the schema only when it is missing, so a server role without CREATE still starts.
async fn ensure_pg_schema(db: &DatabaseConnection) -> Result<(), DbErr> {
    let exists = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS one FROM pg_namespace WHERE nspname = $1",
            [PG_SCHEMA.into()],
        ))
        .await?
        .is_some();
    if !exists {
        db.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
            .await?;
    }
    Ok(())
}
