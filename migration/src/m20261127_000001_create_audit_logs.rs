//! The audit log table, its constraints and indexes, the per-tenant chain heads, retention
//! checkpoints, idempotency keys, and the append-only triggers.
//!
//! Written as SQL per backend: partitions, CHECK constraints, `inet`, `jsonb`, partial and GIN
//! indexes are where the two databases differ, and reviewers should see exactly what each
//! one gets. On PostgreSQL the table is range-partitioned by month on `occurred_at`; every
//! key and index leads with `tenant_id`, so the table can be distributed by tenant (Citus).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
CREATE TABLE control_plane.audit_logs (
    id              uuid        NOT NULL,
    tenant_id       text        COLLATE "C" NOT NULL DEFAULT 'default',
    seq             bigint      NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    actor_type      text        NOT NULL,
    actor_id        text        NOT NULL,
    actor_name      text,
    action          text        COLLATE "C" NOT NULL,
    target_type     text,
    target_id       text,
    target_name     text,
    outcome         text        NOT NULL,
    reason          text,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    ip_address      inet,
    user_agent      text,
    request_id      text,
    idempotency_key text,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    -- Unique keys of a partitioned table must hold the partition key, so (tenant_id, seq) is
    -- kept unique by the chain head lock (and checked by verification), and idempotency keys
    -- live in their own table.
    CONSTRAINT audit_logs_pkey PRIMARY KEY (tenant_id, id, occurred_at),
    CONSTRAINT audit_logs_seq_positive CHECK (seq > 0),
    CONSTRAINT audit_logs_hash_length CHECK (length(prev_hash) = 32 AND length(hash) = 32),
    CONSTRAINT audit_logs_actor_type_check CHECK (actor_type IN ('user', 'service', 'system')),
    CONSTRAINT audit_logs_actor_id_check CHECK (actor_id <> ''),
    CONSTRAINT audit_logs_outcome_check CHECK (outcome IN ('success', 'failure', 'denied')),
    CONSTRAINT audit_logs_action_check CHECK (
        length(action) <= 128 AND action ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$'),
    CONSTRAINT audit_logs_target_check CHECK (
        (target_type IS NULL) = (target_id IS NULL)
        AND (target_type IS NOT NULL OR target_name IS NULL)
        AND (target_id IS NULL OR target_id <> '')),
    CONSTRAINT audit_logs_metadata_check CHECK (jsonb_typeof(metadata) = 'object')
) PARTITION BY RANGE (occurred_at);
CREATE INDEX audit_logs_tenant_seq_idx ON control_plane.audit_logs (tenant_id, seq);
CREATE INDEX audit_logs_tenant_time_idx
    ON control_plane.audit_logs (tenant_id, occurred_at DESC, id DESC);
CREATE INDEX audit_logs_actor_idx
    ON control_plane.audit_logs (tenant_id, actor_id, occurred_at DESC, id DESC);
CREATE INDEX audit_logs_target_idx
    ON control_plane.audit_logs (tenant_id, target_type, target_id, occurred_at DESC, id DESC)
    WHERE target_type IS NOT NULL;
CREATE INDEX audit_logs_action_idx
    ON control_plane.audit_logs (tenant_id, action, occurred_at DESC, id DESC);
CREATE INDEX audit_logs_request_idx
    ON control_plane.audit_logs (tenant_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX audit_logs_metadata_idx
    ON control_plane.audit_logs USING gin (metadata jsonb_path_ops);

-- Idempotency keys, unique per tenant, kept until they expire or their event is purged.
CREATE TABLE control_plane.idempotency_keys (
    tenant_id   text        COLLATE "C" NOT NULL,
    key         text        NOT NULL,
    event_id    uuid        NOT NULL,
    seq         bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON control_plane.idempotency_keys (created_at);

CREATE TABLE control_plane.chain_heads (
    tenant_id   text        COLLATE "C" PRIMARY KEY,
    seq         bigint      NOT NULL,
    hash        bytea       NOT NULL,
    recorded_at timestamptz
);

-- What retention purged: the last purged event of a tenant, where verification restarts.
CREATE TABLE control_plane.chain_checkpoints (
    tenant_id    text        COLLATE "C" NOT NULL,
    seq          bigint      NOT NULL,
    hash         bytea       NOT NULL,
    purged_count bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

-- Append-only: UPDATE, DELETE and TRUNCATE are refused, except DELETE inside a transaction
-- of the retention job, which sets `audit.retention = 'on'` with SET LOCAL.
-- Row triggers reach every partition; TRUNCATE triggers are added to each partition too.
CREATE FUNCTION control_plane.audit_logs_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('audit.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'control_plane.audit_logs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_logs_append_only
    BEFORE UPDATE OR DELETE ON control_plane.audit_logs
    FOR EACH ROW EXECUTE FUNCTION control_plane.audit_logs_append_only();
CREATE TRIGGER audit_logs_append_only_truncate
    BEFORE TRUNCATE ON control_plane.audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.audit_logs_append_only();

-- Events outside the monthly partitions (older ones, mostly) land here.
CREATE TABLE control_plane.audit_logs_default PARTITION OF control_plane.audit_logs DEFAULT;
CREATE TRIGGER audit_logs_append_only_truncate
    BEFORE TRUNCATE ON control_plane.audit_logs_default
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.audit_logs_append_only();

-- Creates the monthly partitions `audit_logs_pYYYYMM` from last month to `months_ahead`
-- months ahead, skipping a month whose events already sit in the default partition. The
-- server calls it at start and daily; SECURITY DEFINER lets a server role without CREATE
-- keep partitions ahead of time.
CREATE FUNCTION control_plane.ensure_audit_partitions(months_ahead integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = control_plane, pg_temp AS $$
DECLARE
    first timestamp := date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month';
    low timestamptz;
    high timestamptz;
    name text;
    created integer := 0;
BEGIN
    FOR i IN 0 .. months_ahead + 1 LOOP
        low := (first + make_interval(months => i)) AT TIME ZONE 'UTC';
        high := (first + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        name := 'audit_logs_p' || to_char(low AT TIME ZONE 'UTC', 'YYYYMM');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM audit_logs_default WHERE occurred_at >= low AND occurred_at < high);
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_logs FOR VALUES FROM (%L) TO (%L)',
            name, low, high);
        EXECUTE format('CREATE TRIGGER audit_logs_append_only_truncate BEFORE TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only()', name);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;
SELECT control_plane.ensure_audit_partitions(3);
"#;

// SQLite has no regular expressions: the action format is spelled out with GLOB. Together the
// terms say: only [a-z0-9_.], starts with a letter, every segment after a dot starts with a
// letter (so no empty segment), and 1 to 3 dots (2 to 4 segments).
const SQLITE_UP: &str = r#"
CREATE TABLE audit_logs (
    id              BLOB    PRIMARY KEY NOT NULL,
    tenant_id       TEXT    NOT NULL DEFAULT 'default',
    seq             INTEGER NOT NULL,
    occurred_at     TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    actor_type      TEXT    NOT NULL,
    actor_id        TEXT    NOT NULL,
    actor_name      TEXT,
    action          TEXT    NOT NULL,
    target_type     TEXT,
    target_id       TEXT,
    target_name     TEXT,
    outcome         TEXT    NOT NULL,
    reason          TEXT,
    metadata        TEXT    NOT NULL DEFAULT '{}',
    ip_address      TEXT,
    user_agent      TEXT,
    request_id      TEXT,
    idempotency_key TEXT,
    prev_hash       BLOB    NOT NULL,
    hash            BLOB    NOT NULL,
    CONSTRAINT audit_logs_tenant_seq_key UNIQUE (tenant_id, seq),
    CONSTRAINT audit_logs_seq_positive CHECK (seq > 0),
    CONSTRAINT audit_logs_hash_length CHECK (length(prev_hash) = 32 AND length(hash) = 32),
    CONSTRAINT audit_logs_actor_type_check CHECK (actor_type IN ('user', 'service', 'system')),
    CONSTRAINT audit_logs_actor_id_check CHECK (actor_id <> ''),
    CONSTRAINT audit_logs_outcome_check CHECK (outcome IN ('success', 'failure', 'denied')),
    CONSTRAINT audit_logs_action_check CHECK (
        length(action) <= 128
        AND action GLOB '[a-z]*'
        AND action NOT GLOB '*[^a-z0-9_.]*'
        AND action NOT GLOB '*.[^a-z]*'
        AND action NOT GLOB '*.'
        AND length(action) - length(replace(action, '.', '')) BETWEEN 1 AND 3),
    CONSTRAINT audit_logs_target_check CHECK (
        (target_type IS NULL) = (target_id IS NULL)
        AND (target_type IS NOT NULL OR target_name IS NULL)
        AND (target_id IS NULL OR target_id <> '')),
    CONSTRAINT audit_logs_metadata_check CHECK (json_valid(metadata) AND json_type(metadata) = 'object')
) STRICT;
CREATE INDEX audit_logs_tenant_time_idx ON audit_logs (tenant_id, occurred_at DESC, id DESC);
CREATE INDEX audit_logs_actor_idx ON audit_logs (tenant_id, actor_id, occurred_at DESC, id DESC);
CREATE INDEX audit_logs_target_idx
    ON audit_logs (tenant_id, target_type, target_id, occurred_at DESC, id DESC)
    WHERE target_type IS NOT NULL;
CREATE INDEX audit_logs_action_idx ON audit_logs (tenant_id, action, occurred_at DESC, id DESC);
CREATE INDEX audit_logs_request_idx ON audit_logs (tenant_id, request_id) WHERE request_id IS NOT NULL;
CREATE TABLE idempotency_keys (
    tenant_id  TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    event_id   BLOB    NOT NULL,
    seq        INTEGER NOT NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, key)
) STRICT;
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE chain_heads (
    tenant_id   TEXT    PRIMARY KEY NOT NULL,
    seq         INTEGER NOT NULL,
    hash        BLOB    NOT NULL,
    recorded_at TEXT
) STRICT;

CREATE TABLE chain_checkpoints (
    tenant_id    TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    hash         BLOB    NOT NULL,
    purged_count INTEGER NOT NULL,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) STRICT;

-- Append-only: SQLite has no session settings, so the retention job opens this one-row gate
-- inside its transaction and closes it again before committing.
CREATE TABLE retention_gate (open INTEGER NOT NULL CHECK (open IN (0, 1))) STRICT;
INSERT INTO retention_gate (open) VALUES (0);
CREATE TRIGGER audit_logs_no_update BEFORE UPDATE ON audit_logs
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only: UPDATE is not allowed');
END;
CREATE TRIGGER audit_logs_no_delete BEFORE DELETE ON audit_logs
WHEN (SELECT open FROM retention_gate) = 0
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only: DELETE is not allowed');
END;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES_UP,
            DbBackend::Sqlite => SQLITE_UP,
            other => {
                return Err(DbErr::BackendNotSupported {
                    db: other.as_str(),
                    ctx: "audit-service",
                });
            }
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let (prefix, extra) = match manager.get_database_backend() {
            DbBackend::Postgres => (
                "control_plane.",
                " DROP FUNCTION control_plane.audit_logs_append_only(); \
                 DROP FUNCTION control_plane.ensure_audit_partitions(integer);",
            ),
            _ => ("", " DROP TABLE retention_gate;"),
        };
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "DROP TABLE {prefix}idempotency_keys; DROP TABLE {prefix}chain_checkpoints; \
                 DROP TABLE {prefix}chain_heads; DROP TABLE {prefix}audit_logs;{extra}"
            ))
            .await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
