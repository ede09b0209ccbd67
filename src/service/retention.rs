//! Retention: cutting the oldest part of a tenant's chain without losing the proof of what
//! remains. Runs inside the ingest transaction, under the tenant's head lock.

use chrono::{DateTime, Utc};
use entity::audit_log::{self, Column};
use entity::chain_checkpoint;
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder,
};

use crate::error::{Error, Result};

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

    open_gate(txn, true).await?;
    let delete = Query::delete()
        .from_table(audit_log::Entity)
        .and_where(Expr::col(Column::TenantId).eq(tenant_id))
        .and_where(Expr::col(Column::Seq).lte(through))
        .to_owned();
    let purged_count = txn.execute(&delete).await?.rows_affected();
    open_gate(txn, false).await?;

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

/// Applies a retention policy to every tenant once; returns the purge events recorded.
pub async fn apply(
    db: &impl ConnectionTrait,
    ingestor: &crate::service::ingest::Ingestor,
    policy: &crate::config::RetentionConfig,
    now: DateTime<Utc>,
) -> Result<Vec<audit_log::Model>> {
    let mut recorded = Vec::new();
    for tenant_id in crate::service::chain::tenants(db).await? {
        let Some(days) = policy.days_for(&tenant_id) else {
            continue;
        };
        let cutoff = now - chrono::Duration::days(i64::from(days));
        if let Some(event) = ingestor.purge(&tenant_id, cutoff).await? {
            tracing::info!(tenant = %tenant_id, event = %event.id, "retention purged old events");
            recorded.push(event);
        }
    }
    Ok(recorded)
}

/// The server's retention job: applies the policy now and then every interval.
pub async fn run_periodically(
    db: sea_orm::DatabaseConnection,
    ingestor: crate::service::ingest::Ingestor,
    policy: crate::config::RetentionConfig,
) {
    let every = std::time::Duration::from_secs(Ord::max(policy.retention_interval_minutes, 1) * 60);
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        if let Err(err) = apply(&db, &ingestor, &policy, Utc::now()).await {
            tracing::error!(error = %err, "retention run failed");
        }
    }
}
