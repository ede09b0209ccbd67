//! The hourly rollup behind `auditLogStats`, filled from the events already stored.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
CREATE TABLE control_plane.audit_stats (
    tenant_id   text   COLLATE "C" NOT NULL,
    hour_start  bigint NOT NULL,
    action      text   COLLATE "C" NOT NULL,
    actor_type  text   NOT NULL,
    target_type text   NOT NULL,
    outcome     text   NOT NULL,
    events      bigint NOT NULL,
    CONSTRAINT audit_stats_pkey
        PRIMARY KEY (tenant_id, hour_start, action, actor_type, target_type, outcome)
);
INSERT INTO control_plane.audit_stats
SELECT tenant_id, (floor(extract(epoch FROM occurred_at) / 3600) * 3600)::bigint, action,
       actor_type, coalesce(target_type, ''), outcome, count(*)
FROM control_plane.audit_logs
GROUP BY 1, 2, 3, 4, 5, 6;
"#;

const SQLITE_UP: &str = r#"
CREATE TABLE audit_stats (
    tenant_id   TEXT    NOT NULL,
    hour_start  INTEGER NOT NULL,
    action      TEXT    NOT NULL,
    actor_type  TEXT    NOT NULL,
    target_type TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, hour_start, action, actor_type, target_type, outcome)
) STRICT, WITHOUT ROWID;
INSERT INTO audit_stats
SELECT tenant_id, CAST(strftime('%s', occurred_at) AS INTEGER) / 3600 * 3600, action,
       actor_type, coalesce(target_type, ''), outcome, count(*)
FROM audit_logs
GROUP BY 1, 2, 3, 4, 5, 6;
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
            DbBackend::Postgres => "DROP TABLE control_plane.audit_stats",
            _ => "DROP TABLE audit_stats",
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
