//! The server's housekeeping, now and then every interval: monthly partitions ahead of time
//! (PostgreSQL), expired idempotency keys, and the retention policy.

use chrono::{DateTime, Utc};
use entity::audit_log;
use entity::idempotency_key::{Column, Entity};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
};

use crate::config::RetentionConfig;
use crate::error::Result;
use crate::service::ingest::Ingestor;

/// Months of partitions kept ready beyond the current one.
const MONTHS_AHEAD: i32 = 3;

/// Runs for as long as the server does.
pub async fn run(db: DatabaseConnection, ingestor: Ingestor, config: RetentionConfig) {
    let every = std::time::Duration::from_secs(Ord::max(config.retention_interval_minutes, 1) * 60);
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        if let Err(err) = once(&db, &ingestor, &config, Utc::now()).await {
            tracing::error!(error = %err, "maintenance run failed");
        }
    }
}

/// One round of housekeeping.
pub async fn once(
    db: &DatabaseConnection,
    ingestor: &Ingestor,
    config: &RetentionConfig,
    now: DateTime<Utc>,
) -> Result<()> {
    if db.get_database_backend() == DbBackend::Postgres {
        db.execute_unprepared(&format!(
            "SELECT control_plane.ensure_audit_partitions({MONTHS_AHEAD})"
        ))
        .await?;
    }
    let expiry = now - chrono::Duration::days(i64::from(config.idempotency_ttl_days));
    Entity::delete_many()
        .filter(Column::CreatedAt.lt(expiry))
        .exec(db)
        .await?;
    if !config.retention.is_empty() {
        let tenants = crate::service::tlog::chain::tenants(db).await?;
        apply_retention(ingestor, config, now, tenants, || {}).await?;
    }
    expire_personal(db, ingestor, now).await?;
    Ok(())
}

/// Erases the personal values that registered actions keep no longer (`retentionDays`);
/// returns the expiry events recorded. The events themselves stay.
pub async fn expire_personal(
    db: &DatabaseConnection,
    ingestor: &Ingestor,
    now: DateTime<Utc>,
) -> Result<Vec<audit_log::Model>> {
    let mut recorded = Vec::new();
    for (tenant_id, action, days) in crate::service::actions::store::retained(db).await? {
        let cutoff = now - chrono::Duration::days(i64::from(days));
        if let Some(event) = ingestor.expire(&tenant_id, &action, cutoff).await? {
            tracing::info!(tenant = %tenant_id, action = %action, "personal values expired");
            recorded.push(event);
        }
    }
    Ok(recorded)
}

/// Applies a retention policy to `tenants` once, calling `done` as each is reached; returns
/// the purge events recorded.
pub async fn apply_retention(
    ingestor: &Ingestor,
    policy: &RetentionConfig,
    now: DateTime<Utc>,
    tenants: Vec<String>,
    mut done: impl FnMut(),
) -> Result<Vec<audit_log::Model>> {
    let mut recorded = Vec::new();
    for tenant_id in tenants {
        done();
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
