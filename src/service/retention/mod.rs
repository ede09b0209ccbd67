//! Retention: cutting the oldest part of a tenant's chain without losing the proof of what
//! remains (here; it runs inside the ingest transaction, under the tenant's head lock), and
//! the housekeeping task that asks for it (`maintenance`).

pub mod maintenance;

use chrono::{DateTime, Utc};
use entity::audit_log::{self, Column};
use entity::{chain_checkpoint, idempotency_key};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, Statement,
};

use crate::error::{Error, Result};
use crate::service::query::stats::hour_sql;

/// What a purge removed: everything up to and including `seq`, whose hash verification of
/// the remaining events starts from.
pub struct Cut {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub purged_count: u64,
    pub cutoff: DateTime<Utc>,
}

/// Deletes the tenant's oldest events, those before the first one recorded at or after
/// `cutoff`, and writes a checkpoint. A chain is only ever cut at a sequence number, so the
/// remaining events still verify from the checkpoint. `None` when nothing is old enough.
pub async fn cut(
    txn: &DatabaseTransaction,
    tenant_id: &str,
    head_seq: i64,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<Cut>> {
    let first_kept = audit_log::Entity::find()
        .filter(Column::TenantId.eq(tenant_id))
        .filter(Column::RecordedAt.gte(cutoff))
        .order_by_asc(Column::Seq)
        .one(txn)
        .await?;
    let through = first_kept.map_or(head_seq, |row| row.seq - 1);
    let last_purged = audit_log::Entity::find()
        .filter(Column::TenantId.eq(tenant_id))
        .filter(Column::Seq.lte(through))
        .order_by_desc(Column::Seq)
        .one(txn)
        .await?;
    let Some(last_purged) = last_purged else {
        return Ok(None);
    };

    // The purged events' leaves stay in the tree's tiles, so that proofs still work.
    crate::service::tlog::tree::keep_before_purge(txn, tenant_id, through as u64).await?;
    uncount(txn, tenant_id, through).await?;
    crate::service::privacy::store::purge(txn, tenant_id, through).await?;
    let mut purged_count = 0;
    if txn.get_database_backend() == DbBackend::Postgres {
        purged_count += drop_partitions(txn, tenant_id, through, cutoff).await?;
    }
    open_gate(txn, true).await?;
    let delete = Query::delete()
        .from_table(audit_log::Entity)
        .and_where(Expr::col(Column::TenantId).eq(tenant_id))
        .and_where(Expr::col(Column::Seq).lte(through))
        .to_owned();
    purged_count += txn.execute(&delete).await?.rows_affected();
    open_gate(txn, false).await?;
    let keys = Query::delete()
        .from_table(idempotency_key::Entity)
        .and_where(Expr::col(idempotency_key::Column::TenantId).eq(tenant_id))
        .and_where(Expr::col(idempotency_key::Column::Seq).lte(through))
        .to_owned();
    txn.execute(&keys).await?;

    let checkpoint = Query::insert()
        .into_table(chain_checkpoint::Entity)
        .columns([
            chain_checkpoint::Column::TenantId,
            chain_checkpoint::Column::Seq,
            chain_checkpoint::Column::Hash,
            chain_checkpoint::Column::PurgedCount,
            chain_checkpoint::Column::CreatedAt,
        ])
        .values([
            tenant_id.into(),
            last_purged.seq.into(),
            last_purged.hash.clone().into(),
            (purged_count as i64).into(),
            now.into(),
        ])
        .map_err(Error::internal)?
        .to_owned();
    txn.execute(&checkpoint).await?;
    Ok(Some(Cut {
        seq: last_purged.seq,
        hash: last_purged.hash,
        purged_count,
        cutoff,
    }))
}

/// Takes the events about to be purged (sequence up to `through`) out of the hourly and
/// daily rollups, so that `auditLogStats` keeps counting exactly what remains.
async fn uncount(txn: &DatabaseTransaction, tenant_id: &str, through: i64) -> Result<()> {
    let backend = txn.get_database_backend();
    let (tenant, seq) = match backend {
        DbBackend::Postgres => ("$1", "$2"),
        _ => ("?1", "?2"),
    };
    let hour = hour_sql(backend);
    let day = format!("({hour} - {hour} % 86400)");
    for (table, start, bucket) in [
        ("audit_stats", "hour_start", hour.to_owned()),
        ("audit_stats_daily", "day_start", day),
    ] {
        let subtract = format!(
            "UPDATE {table} SET events = {table}.events - gone.n
             FROM (SELECT {bucket} AS start, action, actor_type,
                          coalesce(target_type, '') AS target_type, outcome, count(*) AS n
                   FROM audit_logs WHERE tenant_id = {tenant} AND seq <= {seq}
                   GROUP BY 1, 2, 3, 4, 5) AS gone
             WHERE {table}.tenant_id = {tenant} AND {table}.{start} = gone.start
               AND {table}.action = gone.action AND {table}.actor_type = gone.actor_type
               AND {table}.target_type = gone.target_type AND {table}.outcome = gone.outcome",
        );
        let values = [tenant_id.into(), through.into()];
        txn.execute_raw(Statement::from_sql_and_values(backend, subtract, values))
            .await?;
        let empty = format!("DELETE FROM {table} WHERE tenant_id = {tenant} AND events <= 0");
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            empty,
            [tenant_id.into()],
        ))
        .await?;
    }
    Ok(())
}

/// Drops whole monthly partitions that end before the cutoff and hold only this tenant's
/// events, all of them purged: far cheaper than deleting their rows one by one. Partitions
/// shared with other tenants are left to row deletes. Returns the rows dropped.
async fn drop_partitions(
    txn: &DatabaseTransaction,
    tenant_id: &str,
    through: i64,
    cutoff: DateTime<Utc>,
) -> Result<u64> {
    let partitions = txn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT c.relname AS name FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent \
             WHERE p.relname = 'audit_logs' AND c.relname ~ '^audit_logs_p[0-9]{6}$' \
             AND to_timestamp(substr(c.relname, 13), 'YYYYMM') + interval '1 month' <= $1 \
             ORDER BY 1",
            [cutoff.into()],
        ))
        .await?;
    let mut dropped = 0;
    for partition in partitions {
        let name: String = partition.try_get("", "name")?;
        let sql = format!(
            "SELECT count(*) AS n, \
                    count(*) FILTER (WHERE tenant_id <> $1 OR seq > $2) AS kept \
             FROM control_plane.\"{name}\""
        );
        let counts = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                [tenant_id.into(), through.into()],
            ))
            .await?
            .ok_or_else(|| Error::internal("count returned no row"))?;
        let (rows, kept): (i64, i64) = (counts.try_get("", "n")?, counts.try_get("", "kept")?);
        if rows == 0 || kept > 0 {
            continue;
        }
        txn.execute_unprepared(&format!(
            "ALTER TABLE control_plane.audit_logs DETACH PARTITION control_plane.\"{name}\"; \
             DROP TABLE control_plane.\"{name}\""
        ))
        .await?;
        tracing::info!(partition = %name, rows, "retention dropped a partition");
        dropped += rows as u64;
    }
    Ok(dropped)
}

/// The one way past the append-only triggers: a transaction-local setting on PostgreSQL, a
/// gate row (opened and closed within the transaction) on SQLite.
async fn open_gate(txn: &DatabaseTransaction, open: bool) -> Result<()> {
    let sql = match (txn.get_database_backend(), open) {
        (DbBackend::Postgres, true) => "SET LOCAL audit.retention = 'on'",
        (DbBackend::Postgres, false) => "SET LOCAL audit.retention = 'off'",
        (_, true) => "UPDATE retention_gate SET open = 1",
        (_, false) => "UPDATE retention_gate SET open = 0",
    };
    txn.execute_unprepared(sql).await?;
    Ok(())
}
