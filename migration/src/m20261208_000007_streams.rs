//! Log streams (docs/streams.md): each row is one tenant's delivery to a sink, with its
//! cursor (the last sequence number the sink acknowledged) and the lease of the instance
//! delivering it. Times a lease compares are milliseconds since the epoch, the same on
//! both backends.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = "
CREATE TABLE control_plane.audit_streams (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    name text NOT NULL,
    kind text NOT NULL,
    url text NOT NULL,
    subject text,
    kek_id text,
    secret bytea,
    filter text,
    personal boolean NOT NULL,
    paused boolean NOT NULL,
    delivered_seq bigint NOT NULL,
    generation bigint NOT NULL,
    last_error text,
    failing_since_ms bigint,
    last_delivered_at timestamptz,
    lease_owner text,
    lease_until_ms bigint,
    created_at timestamptz NOT NULL,
    UNIQUE (tenant_id, name)
);
";

const SQLITE_UP: &str = "
CREATE TABLE audit_streams (
    id BLOB PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    subject TEXT,
    kek_id TEXT,
    secret BLOB,
    filter TEXT,
    personal INTEGER NOT NULL,
    paused INTEGER NOT NULL,
    delivered_seq INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    last_error TEXT,
    failing_since_ms INTEGER,
    last_delivered_at TEXT,
    lease_owner TEXT,
    lease_until_ms INTEGER,
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES_UP,
            _ => SQLITE_UP,
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            DbBackend::Postgres => "DROP TABLE control_plane.audit_streams",
            _ => "DROP TABLE audit_streams",
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
