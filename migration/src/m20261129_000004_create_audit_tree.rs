//! The tenants' Merkle trees (RFC 9162) as C2SP tiles, and the signed checkpoints of their
//! heads. Both are append-only: a tile or a checkpoint, once written, is never rewritten.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
-- A tile: `width` (1 to 256) consecutive hashes at tree level 8 × `level`, starting at index
-- 256 × `idx`, and the hash of the subtree they make (`root`, meaningful for full tiles).
-- Full tiles are written as the log grows; partial ones only when retention purges the
-- events of a tile that is not full yet.
CREATE TABLE control_plane.audit_tree_tiles (
    tenant_id text     COLLATE "C" NOT NULL,
    level     smallint NOT NULL,
    idx       bigint   NOT NULL,
    width     smallint NOT NULL CHECK (width BETWEEN 1 AND 256),
    hashes    bytea    NOT NULL CHECK (length(hashes) = 32 * width),
    root      bytea    NOT NULL,
    CONSTRAINT audit_tree_tiles_pkey PRIMARY KEY (tenant_id, level, idx, width)
);

-- A C2SP signed note of a checkpoint: origin, tree size and root hash, signed with Ed25519.
CREATE TABLE control_plane.audit_tree_checkpoints (
    tenant_id   text        COLLATE "C" NOT NULL,
    tree_size   bigint      NOT NULL CHECK (tree_size > 0),
    root_hash   bytea       NOT NULL,
    signed_note text        NOT NULL,
    issued_at   timestamptz NOT NULL,
    CONSTRAINT audit_tree_checkpoints_pkey PRIMARY KEY (tenant_id, tree_size)
);

CREATE FUNCTION control_plane.audit_tree_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'control_plane.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_tree_tiles_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON control_plane.audit_tree_tiles
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.audit_tree_append_only();
CREATE TRIGGER audit_tree_checkpoints_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON control_plane.audit_tree_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.audit_tree_append_only();
"#;

const SQLITE_UP: &str = r#"
CREATE TABLE audit_tree_tiles (
    tenant_id TEXT    NOT NULL,
    level     INTEGER NOT NULL,
    idx       INTEGER NOT NULL,
    width     INTEGER NOT NULL CHECK (width BETWEEN 1 AND 256),
    hashes    BLOB    NOT NULL CHECK (length(hashes) = 32 * width),
    root      BLOB    NOT NULL,
    PRIMARY KEY (tenant_id, level, idx, width)
) STRICT;
CREATE TABLE audit_tree_checkpoints (
    tenant_id   TEXT    NOT NULL,
    tree_size   INTEGER NOT NULL CHECK (tree_size > 0),
    root_hash   BLOB    NOT NULL,
    signed_note TEXT    NOT NULL,
    issued_at   TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, tree_size)
) STRICT;
CREATE TRIGGER audit_tree_tiles_no_update BEFORE UPDATE ON audit_tree_tiles
BEGIN SELECT RAISE(ABORT, 'audit_tree_tiles is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER audit_tree_tiles_no_delete BEFORE DELETE ON audit_tree_tiles
BEGIN SELECT RAISE(ABORT, 'audit_tree_tiles is append-only: DELETE is not allowed'); END;
CREATE TRIGGER audit_tree_checkpoints_no_update BEFORE UPDATE ON audit_tree_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_tree_checkpoints is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER audit_tree_checkpoints_no_delete BEFORE DELETE ON audit_tree_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_tree_checkpoints is append-only: DELETE is not allowed'); END;
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
            DbBackend::Postgres => {
                "DROP TABLE control_plane.audit_tree_checkpoints, control_plane.audit_tree_tiles;
                 DROP FUNCTION control_plane.audit_tree_append_only()"
            }
            _ => "DROP TABLE audit_tree_checkpoints; DROP TABLE audit_tree_tiles;",
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
