//! The statements a write runs against the chain heads, the idempotency keys and the log.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use entity::audit_log::{self, Column};
use entity::idempotency_key;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, Statement,
};

use super::{Request, Work};
use crate::error::{Error, Result};
use crate::service::canonical::GENESIS;
use crate::service::stats::hour_start;

/// Rows per INSERT statement: SQLite allows 32,766 bound values, PostgreSQL 65,535.
pub(super) const ROWS_PER_INSERT: usize = 1000;

/// A tenant's chain head while the transaction holds its lock.
pub(super) struct Head {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub recorded_at: Option<DateTime<Utc>>,
}

/// Locks the heads of `tenant_ids` (sorted, distinct) until commit, creating missing ones
/// empty, and returns them by tenant (the caller checks that none is missing). A write statement, so SQLite takes its write lock here rather
/// than failing to upgrade a read lock later. On PostgreSQL one statement locks them all,
/// in the same (byte) order as every other writer, so that none deadlock.
pub(super) async fn lock_heads(
    txn: &DatabaseTransaction,
    tenant_ids: &[&str],
) -> Result<HashMap<String, Head>> {
    let backend = txn.get_database_backend();
    let statements = match backend {
        DbBackend::Postgres => {
            let sql = "INSERT INTO chain_heads (tenant_id, seq, hash) \
                 SELECT t, 0, $2 FROM jsonb_array_elements_text($1::jsonb) AS t \
                 ORDER BY t COLLATE \"C\" \
                 ON CONFLICT (tenant_id) DO UPDATE SET seq = chain_heads.seq \
                 RETURNING tenant_id, seq, hash, recorded_at";
            let tenants = serde_json::json!(tenant_ids);
            vec![Statement::from_sql_and_values(
                backend,
                sql,
                [tenants.into(), GENESIS.to_vec().into()],
            )]
        }
        _ => {
            let sql = "INSERT INTO chain_heads (tenant_id, seq, hash) VALUES (?, 0, ?) \
                 ON CONFLICT (tenant_id) DO UPDATE SET seq = chain_heads.seq \
                 RETURNING tenant_id, seq, hash, recorded_at";
            let values = |t: &&str| [(*t).into(), GENESIS.to_vec().into()];
            tenant_ids
                .iter()
                .map(|t| Statement::from_sql_and_values(backend, sql, values(t)))
                .collect()
        }
    };
    let mut heads = HashMap::with_capacity(tenant_ids.len());
    for statement in statements {
        for row in txn.query_all_raw(statement).await? {
            let head = Head {
                seq: row.try_get("", "seq")?,
                hash: row.try_get("", "hash")?,
                recorded_at: row.try_get("", "recorded_at")?,
            };
            heads.insert(row.try_get("", "tenant_id")?, head);
        }
    }
    Ok(heads)
}

/// Moves the heads of the tenants written to: one statement on PostgreSQL.
pub(super) async fn move_heads(txn: &DatabaseTransaction, moved: &[(&str, &Head)]) -> Result<()> {
    use entity::chain_head::{Column as Head, Entity};
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        let sql = "UPDATE chain_heads AS h \
             SET seq = v.seq, hash = decode(v.hash, 'hex'), recorded_at = v.recorded_at \
             FROM jsonb_to_recordset($1::jsonb) \
             AS v(tenant_id text, seq bigint, hash text, recorded_at timestamptz) \
             WHERE h.tenant_id = v.tenant_id";
        let heads: Vec<_> = moved
            .iter()
            .map(|(tenant_id, head)| {
                serde_json::json!({
                    "tenant_id": tenant_id,
                    "seq": head.seq,
                    "hash": hex::encode(&head.hash),
                    "recorded_at": head.recorded_at,
                })
            })
            .collect();
        let values = [serde_json::Value::from(heads).into()];
        txn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        return Ok(());
    }
    for (tenant_id, head) in moved {
        let update = Query::update()
            .table(Entity)
            .value(Head::Seq, head.seq)
            .value(Head::Hash, head.hash.clone())
            .value(Head::RecordedAt, head.recorded_at)
            .and_where(Expr::col(Head::TenantId).eq(*tenant_id))
            .to_owned();
        txn.execute(&update).await?;
    }
    Ok(())
}

/// A tenant's stored keys among a JSON array of keys (PostgreSQL). With one array
/// parameter, the plan PostgreSQL caches for the statement still looks each key up in the
/// primary key; with a list of 1,000 parameters its generic plan filtered all of a tenant's
/// keys against the list, which took seconds per batch once a tenant held 60,000 keys.
pub const USED_KEYS_POSTGRES: &str = "SELECT tenant_id, key, event_id, seq, created_at \
     FROM idempotency_keys WHERE tenant_id = $1 \
     AND key = ANY (ARRAY(SELECT jsonb_array_elements_text($2::jsonb)))";

/// Stored events carrying any of the jobs' idempotency keys, by (tenant, key).
pub(super) async fn load_keyed(
    txn: &DatabaseTransaction,
    requests: &[Request],
) -> Result<HashMap<(String, String), audit_log::Model>> {
    let mut keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tenant_id, work) in requests {
        if let Work::Log(events) = work {
            let wanted = events.iter().filter_map(|e| e.idempotency_key.as_deref());
            keys.entry(tenant_id.as_str()).or_default().extend(wanted);
        }
    }
    let mut known = HashMap::new();
    for (tenant_id, keys) in keys.into_iter().filter(|(_, k)| !k.is_empty()) {
        let used = match txn.get_database_backend() {
            DbBackend::Postgres => {
                let keys = serde_json::to_string(&keys).map_err(Error::internal)?;
                let values = [tenant_id.into(), keys.into()];
                idempotency_key::Entity::find()
                    .from_raw_sql(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        USED_KEYS_POSTGRES,
                        values,
                    ))
                    .all(txn)
                    .await?
            }
            _ => {
                idempotency_key::Entity::find()
                    .filter(idempotency_key::Column::TenantId.eq(tenant_id))
                    .filter(idempotency_key::Column::Key.is_in(keys))
                    .all(txn)
                    .await?
            }
        };
        if used.is_empty() {
            continue;
        }
        let stored = audit_log::Entity::find()
            .filter(Column::TenantId.eq(tenant_id))
            .filter(Column::Id.is_in(used.iter().map(|k| k.event_id)))
            .all(txn)
            .await?;
        for model in stored {
            if let Some(key) = model.idempotency_key.clone() {
                known.insert((tenant_id.to_owned(), key), model);
            }
        }
    }
    Ok(known)
}

/// Remembers the idempotency keys of new events (replacing a key whose event is gone).
pub(super) async fn remember_keys(
    txn: &DatabaseTransaction,
    rows: &[audit_log::Model],
    now: DateTime<Utc>,
) -> Result<()> {
    use idempotency_key::Column as Key;
    let keyed: Vec<_> = rows
        .iter()
        .filter(|r| r.idempotency_key.is_some())
        .collect();
    for chunk in keyed.chunks(ROWS_PER_INSERT) {
        let mut insert = Query::insert();
        insert
            .into_table(idempotency_key::Entity)
            .columns([
                Key::TenantId,
                Key::Key,
                Key::EventId,
                Key::Seq,
                Key::CreatedAt,
            ])
            .on_conflict(
                OnConflict::columns([Key::TenantId, Key::Key])
                    .update_columns([Key::EventId, Key::Seq, Key::CreatedAt])
                    .to_owned(),
            );
        for row in chunk {
            insert
                .values([
                    row.tenant_id.clone().into(),
                    row.idempotency_key.clone().into(),
                    row.id.into(),
                    row.seq.into(),
                    now.into(),
                ])
                .map_err(Error::internal)?;
        }
        txn.execute(&insert).await?;
    }
    Ok(())
}

pub(super) async fn insert(txn: &DatabaseTransaction, rows: &[audit_log::Model]) -> Result<()> {
    let postgres = txn.get_database_backend() == DbBackend::Postgres;
    let mut insert = Query::insert();
    insert.into_table(audit_log::Entity).columns([
        Column::Id,
        Column::TenantId,
        Column::Seq,
        Column::OccurredAt,
        Column::RecordedAt,
        Column::ActorType,
        Column::ActorId,
        Column::ActorName,
        Column::Action,
        Column::TargetType,
        Column::TargetId,
        Column::TargetName,
        Column::Outcome,
        Column::Reason,
        Column::Metadata,
        Column::IpAddress,
        Column::UserAgent,
        Column::RequestId,
        Column::TraceId,
        Column::ChainVersion,
        Column::IdempotencyKey,
        Column::PrevHash,
        Column::Hash,
    ]);
    for row in rows {
        let ip = Expr::val(row.ip_address.clone());
        let values: Vec<Expr> = vec![
            Expr::val(row.id),
            Expr::val(row.tenant_id.clone()),
            Expr::val(row.seq),
            Expr::val(row.occurred_at),
            Expr::val(row.recorded_at),
            Expr::val(row.actor_type.to_value()),
            Expr::val(row.actor_id.clone()),
            Expr::val(row.actor_name.clone()),
            Expr::val(row.action.clone()),
            Expr::val(row.target_type.clone()),
            Expr::val(row.target_id.clone()),
            Expr::val(row.target_name.clone()),
            Expr::val(row.outcome.to_value()),
            Expr::val(row.reason.clone()),
            Expr::val(row.metadata.clone()),
            if postgres { ip.cast_as("inet") } else { ip },
            Expr::val(row.user_agent.clone()),
            Expr::val(row.request_id.clone()),
            Expr::val(row.trace_id.clone()),
            Expr::val(row.chain_version),
            Expr::val(row.idempotency_key.clone()),
            Expr::val(row.prev_hash.clone()),
            Expr::val(row.hash.clone()),
        ];
        insert.values(values).map_err(Error::internal)?;
    }
    txn.execute(&insert).await?;
    Ok(())
}

/// The rollup's upsert. The buckets travel as one JSON array, so the statement's text is the
/// same for every transaction (prepared once per connection) whatever their number.
const COUNT_EVENTS_POSTGRES: &str = "INSERT INTO audit_stats \
     (tenant_id, hour_start, action, actor_type, target_type, outcome, events) \
     SELECT b->>0, (b->>1)::bigint, b->>2, b->>3, b->>4, b->>5, (b->>6)::bigint \
     FROM jsonb_array_elements($1::jsonb) AS b \
     ON CONFLICT (tenant_id, hour_start, action, actor_type, target_type, outcome) \
     DO UPDATE SET events = audit_stats.events + excluded.events";

/// `COUNT_EVENTS_POSTGRES` for SQLite (`WHERE true` settles a parsing ambiguity of
/// `INSERT ... SELECT ... ON CONFLICT`).
const COUNT_EVENTS_SQLITE: &str = "INSERT INTO audit_stats \
     (tenant_id, hour_start, action, actor_type, target_type, outcome, events) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
     value ->> 6 FROM json_each(?1) WHERE true \
     ON CONFLICT (tenant_id, hour_start, action, actor_type, target_type, outcome) \
     DO UPDATE SET events = audit_stats.events + excluded.events";

/// Adds a group commit's new events to the hourly rollup (`audit_stats`): counted in memory
/// first, then one statement.
pub(super) async fn count_events(
    txn: &DatabaseTransaction,
    rows: &[audit_log::Model],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut buckets: HashMap<(&str, i64, &str, String, &str, String), i64> = HashMap::new();
    for row in rows {
        let key = (
            row.tenant_id.as_str(),
            hour_start(row.occurred_at),
            row.action.as_str(),
            row.actor_type.to_value(),
            row.target_type.as_deref().unwrap_or_default(),
            row.outcome.to_value(),
        );
        *buckets.entry(key).or_default() += 1;
    }
    let buckets: Vec<_> = buckets
        .into_iter()
        .map(
            |((tenant, hour, action, actor_type, target_type, outcome), events)| {
                (
                    tenant,
                    hour,
                    action,
                    actor_type,
                    target_type,
                    outcome,
                    events,
                )
            },
        )
        .collect();
    let json = serde_json::to_string(&buckets).map_err(Error::internal)?;
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => COUNT_EVENTS_POSTGRES,
        _ => COUNT_EVENTS_SQLITE,
    };
    txn.execute_raw(Statement::from_sql_and_values(backend, sql, [json.into()]))
        .await?;
    Ok(())
}
