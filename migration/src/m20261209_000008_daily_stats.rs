//! The daily rollup beside the hourly one: `auditLogStats` by day, week or month over whole
//! days reads a twenty-fourth of the rows. Filled from the hourly rollup. On PostgreSQL both
//! leave half of each page free, so that the ingest transaction's upserts of a bucket's
//! count stay on its page (a HOT update, without a new index entry).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
CREATE TABLE control_plane.audit_stats_daily (
    tenant_id   text   COLLATE "C" NOT NULL,
    day_start   bigint NOT NULL,
    action      text   COLLATE "C" NOT NULL,
    actor_type  text   NOT NULL,
    target_type text   NOT NULL,
    outcome     text   NOT NULL,
    events      bigint NOT NULL,
    CONSTRAINT audit_stats_daily_pkey
        PRIMARY KEY (tenant_id, day_start, action, actor_type, target_type, outcome)
) WITH (fillfactor = 50);
ALTER TABLE control_plane.audit_stats SET (fillfactor = 50);
INSERT INTO control_plane.audit_stats_daily
SELECT tenant_id, hour_start - hour_start % 86400, action, actor_type, target_type, outcome,
       sum(events)
FROM control_plane.audit_stats
GROUP BY 1, 2, 3, 4, 5, 6;
"#;

const SQLITE_UP: &str = r#"
CREATE TABLE audit_stats_daily (
    tenant_id   TEXT    NOT NULL,
    day_start   INTEGER NOT NULL,
    action      TEXT    NOT NULL,
    actor_type  TEXT    NOT NULL,
    target_type TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day_start, action, actor_type, target_type, outcome)
) STRICT, WITHOUT ROWID;
INSERT INTO audit_stats_daily
SELECT tenant_id, hour_start - hour_start % 86400, action, actor_type, target_type, outcome,
       sum(events)
FROM audit_stats
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
            DbBackend::Postgres => "DROP TABLE control_plane.audit_stats_daily",
            _ => "DROP TABLE audit_stats_daily",
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
