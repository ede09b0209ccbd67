//! API keys for services: only a SHA-256 of each key is stored.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
CREATE TABLE control_plane.api_keys (
    id         uuid        PRIMARY KEY,
    tenant_id  text        COLLATE "C" NOT NULL,
    name       text        NOT NULL,
    scopes     text        NOT NULL,
    key_hash   bytea       NOT NULL UNIQUE,
    prefix     text        NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    CONSTRAINT api_keys_hash_length CHECK (length(key_hash) = 32)
);
"#;

const SQLITE_UP: &str = r#"
CREATE TABLE api_keys (
    id         BLOB PRIMARY KEY NOT NULL,
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    key_hash   BLOB NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    CONSTRAINT api_keys_hash_length CHECK (length(key_hash) = 32)
) STRICT;
"#;

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
            DbBackend::Postgres => "DROP TABLE control_plane.api_keys",
            _ => "DROP TABLE api_keys",
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
