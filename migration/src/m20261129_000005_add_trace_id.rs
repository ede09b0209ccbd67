//! Events linked to traces: `trace_id` (the W3C trace id of the request that logged the
//! event) and `chain_version`, the canonical encoding each event was hashed with. Events
//! stored before keep version 1, which does not cover `trace_id`; new ones are version 2.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = "
ALTER TABLE control_plane.audit_logs
    ADD COLUMN trace_id text,
    ADD COLUMN chain_version smallint NOT NULL DEFAULT 1;
";

const SQLITE_UP: &str = "
ALTER TABLE audit_logs ADD COLUMN trace_id TEXT;
ALTER TABLE audit_logs ADD COLUMN chain_version INTEGER NOT NULL DEFAULT 1;
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
            DbBackend::Postgres => {
                "ALTER TABLE control_plane.audit_logs DROP COLUMN trace_id, DROP COLUMN chain_version"
            }
            _ => {
                "ALTER TABLE audit_logs DROP COLUMN trace_id; \
                 ALTER TABLE audit_logs DROP COLUMN chain_version"
            }
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
