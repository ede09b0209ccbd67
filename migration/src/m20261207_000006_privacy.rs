//! Privacy: per-subject data keys, the sealed personal values of events, the action
//! registry and tenant settings; `personal`, the commitments a version-3 event's hash
//! covers in place of its personal values (docs/privacy.md).
//!
//! `audit_logs` stays append-only: erasure deletes data keys and sealed values, which live
//! in their own tables, and never touches an event.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = "
ALTER TABLE control_plane.audit_logs ADD COLUMN personal text;

CREATE TABLE control_plane.audit_subject_keys (
    tenant_id text NOT NULL,
    subject_id text NOT NULL,
    kek_id text NOT NULL,
    wrapped bytea NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, subject_id)
);

CREATE TABLE control_plane.audit_personal (
    tenant_id text NOT NULL,
    subject_id text NOT NULL,
    event_id uuid NOT NULL,
    subjects text NOT NULL,
    sealed bytea NOT NULL,
    PRIMARY KEY (tenant_id, subject_id, event_id)
);

CREATE TABLE control_plane.audit_actions (
    tenant_id text NOT NULL,
    action text NOT NULL,
    description text NOT NULL,
    metadata_schema text,
    personal_paths text NOT NULL,
    retention_days integer,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, action)
);

CREATE TABLE control_plane.audit_tenant_settings (
    tenant_id text PRIMARY KEY,
    require_registered_actions boolean NOT NULL
);
";

const SQLITE_UP: &str = "
ALTER TABLE audit_logs ADD COLUMN personal TEXT;

CREATE TABLE audit_subject_keys (
    tenant_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, subject_id)
) WITHOUT ROWID;

CREATE TABLE audit_personal (
    tenant_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    event_id BLOB NOT NULL,
    subjects TEXT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (tenant_id, subject_id, event_id)
) WITHOUT ROWID;

CREATE TABLE audit_actions (
    tenant_id TEXT NOT NULL,
    action TEXT NOT NULL,
    description TEXT NOT NULL,
    metadata_schema TEXT,
    personal_paths TEXT NOT NULL,
    retention_days INTEGER,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, action)
) WITHOUT ROWID;

CREATE TABLE audit_tenant_settings (
    tenant_id TEXT PRIMARY KEY NOT NULL,
    require_registered_actions INTEGER NOT NULL
) WITHOUT ROWID;
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
                "DROP TABLE control_plane.audit_tenant_settings, control_plane.audit_actions, \
                 control_plane.audit_personal, control_plane.audit_subject_keys; \
                 ALTER TABLE control_plane.audit_logs DROP COLUMN personal"
            }
            _ => {
                "DROP TABLE audit_tenant_settings; DROP TABLE audit_actions; \
                 DROP TABLE audit_personal; DROP TABLE audit_subject_keys; \
                 ALTER TABLE audit_logs DROP COLUMN personal"
            }
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
