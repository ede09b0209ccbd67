//! The statements a write runs against the chain heads and the idempotency keys (the
//! events themselves: `rows`), and the JSON arrays PostgreSQL's statements carry.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use entity::audit_log::{self, Column};
use entity::idempotency_key;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    Statement,
};
use serde::Serialize;
use uuid::Uuid;

use super::job::{Request, Work};
use crate::error::{Error, Result};
use crate::service::live::listener;
use crate::service::tlog::canonical::GENESIS;

/// Rows per INSERT statement: SQLite allows 32,766 bound values, PostgreSQL 65,535.
pub(super) const ROWS_PER_INSERT: usize = 1000;

/// A tenant's chain head while the transaction holds its lock.
pub(super) struct Head {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub recorded_at: Option<DateTime<Utc>>,
}

/// Locks the heads of `tenant_ids` (sorted, distinct) until commit, creating missing ones
/// empty, and returns them by tenant (the caller checks that none is missing). A write
/// statement, so SQLite takes its write lock here rather than failing to upgrade a read lock
/// later. On PostgreSQL a statement locks a whole JSON array of them, in the same (byte)
/// order as every other writer, so that none deadlock.
pub(super) async fn lock_heads(
    txn: &DatabaseTransaction,
    tenant_ids: &[&str],
) -> Result<HashMap<String, Head>> {
    let backend = txn.get_database_backend();
    let statements: Vec<Statement> = match backend {
        DbBackend::Postgres => {
            let sql = "INSERT INTO chain_heads (tenant_id, seq, hash) \
                 SELECT t, 0, $2 FROM jsonb_array_elements_text($1::jsonb) AS t \
                 ORDER BY t COLLATE \"C\" \
                 ON CONFLICT (tenant_id) DO UPDATE SET seq = chain_heads.seq \
                 RETURNING tenant_id, seq, hash, recorded_at";
            let values = |tenants: String| [tenants.into(), GENESIS.to_vec().into()];
            json_arrays(tenant_ids)?
                .into_iter()
                .map(|tenants| Statement::from_sql_and_values(backend, sql, values(tenants)))
                .collect()
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

/// A moved head as `move_heads` reads it on PostgreSQL.
#[derive(Serialize)]
struct JsonHead<'a> {
    tenant_id: &'a str,
    seq: i64,
    hash: String,
    recorded_at: Option<DateTime<Utc>>,
}

/// Moves the heads on PostgreSQL, and sends NOTIFY payloads in the same round trip (a
/// data-modifying `WITH` runs whether or not the query reads it).
const MOVE_HEADS_POSTGRES: &str = "WITH moved AS (UPDATE chain_heads AS h \
     SET seq = v.seq, hash = decode(v.hash, 'hex'), recorded_at = v.recorded_at \
     FROM jsonb_to_recordset($1::jsonb) \
     AS v(tenant_id text, seq bigint, hash text, recorded_at timestamptz) \
     WHERE h.tenant_id = v.tenant_id) \
     SELECT pg_notify($2, payload) FROM jsonb_array_elements_text($3::jsonb) AS payload";

/// Moves the heads of the tenants written to, each from the sequence it was locked at. On
/// PostgreSQL, also announces the new sequence ranges to every instance, one NOTIFY per
/// transaction rather than per event (NOTIFY serializes commits): each statement moves a
/// JSON array of heads and carries the payloads that fit beside it under
/// `MAX_STATEMENT_JSON` (usually all of them); any left go out alone.
pub(super) async fn move_heads(
    txn: &DatabaseTransaction,
    moved: &[(&str, i64, &Head)],
) -> Result<()> {
    use entity::chain_head::{Column as Head, Entity};
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        let ranges: Vec<_> = (moved.iter())
            .map(|(tenant_id, first, head)| (tenant_id.to_string(), first + 1, head.seq))
            .collect();
        let notifications = listener::notifications(&ranges);
        let heads = moved.iter().map(|(tenant_id, _, head)| JsonHead {
            tenant_id,
            seq: head.seq,
            hash: hex::encode(&head.hash),
            recorded_at: head.recorded_at,
        });
        for (moving, sent) in statements(json_arrays(heads)?, notifications) {
            let sent = serde_json::to_string(&sent).map_err(Error::internal)?;
            let values = [moving.into(), listener::CHANNEL.into(), sent.into()];
            let statement = Statement::from_sql_and_values(backend, MOVE_HEADS_POSTGRES, values);
            txn.execute_raw(statement).await?;
        }
        return Ok(());
    }
    for (tenant_id, _, head) in moved {
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

/// `MOVE_HEADS_POSTGRES`'s arguments: each JSON array of heads, with the payloads that fit
/// beside it under `MAX_STATEMENT_JSON`, in order; payloads that fit nowhere go out alone,
/// with no heads (`[]`).
fn statements(heads: Vec<String>, payloads: Vec<String>) -> Vec<(String, Vec<String>)> {
    // Quoted in the array, a payload takes at most twice its length.
    let size = |payload: &String| 2 * payload.len() + 3;
    let mut payloads = payloads.into_iter().peekable();
    let mut statements = Vec::new();
    let mut heads = heads.into_iter();
    loop {
        let moving = heads.next();
        if moving.is_none() && payloads.peek().is_none() {
            return statements;
        }
        let alone = moving.is_none();
        let moving = moving.unwrap_or_else(|| "[]".to_owned());
        let mut room = MAX_STATEMENT_JSON.saturating_sub(moving.len());
        let mut sent = Vec::new();
        while let Some(payload) = payloads.next_if(|p| size(p) < room || (alone && sent.is_empty()))
        {
            room = room.saturating_sub(size(&payload));
            sent.push(payload);
        }
        statements.push((moving, sent));
    }
}

/// A tenant's stored keys among a JSON array of keys (PostgreSQL). With one array
/// parameter, the plan PostgreSQL caches for the statement still looks each key up in the
/// primary key; with a list of 1,000 parameters its generic plan filtered all of a tenant's
/// keys against the list, which took seconds per batch once a tenant held 60,000 keys. It
/// stays one statement per tenant, larger than `MAX_STATEMENT_JSON` or not: split into
/// pieces of that size, each piece took 76 ms and more as the table grew (audit-bench's
/// client load fell from 5,659 to 1,318 events/s), far worse than one wait on Nagle.
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

/// `remember_keys` on PostgreSQL, the keys as JSON arrays (see `INSERT_POSTGRES`).
const REMEMBER_KEYS_POSTGRES: &str = "INSERT INTO idempotency_keys \
     (tenant_id, key, event_id, seq, created_at) \
     SELECT tenant_id, key, event_id, seq, $2 FROM json_to_recordset($1::json) \
     AS k(tenant_id text, key text, event_id uuid, seq bigint) \
     ON CONFLICT (tenant_id, key) DO UPDATE \
     SET event_id = excluded.event_id, seq = excluded.seq, created_at = excluded.created_at";

/// A key as `REMEMBER_KEYS_POSTGRES` reads it.
#[derive(Serialize)]
struct JsonKey<'a> {
    tenant_id: &'a str,
    key: &'a str,
    event_id: Uuid,
    seq: i64,
}

/// Remembers the idempotency keys of new events (replacing a key whose event is gone).
pub(super) async fn remember_keys(
    txn: &DatabaseTransaction,
    rows: &[audit_log::Model],
    now: DateTime<Utc>,
) -> Result<()> {
    use idempotency_key::Column as Key;
    let keyed = rows
        .iter()
        .filter_map(|r| Some((r, r.idempotency_key.as_deref()?)));
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        let keys = keyed.map(|(row, key)| JsonKey {
            tenant_id: &row.tenant_id,
            key,
            event_id: row.id,
            seq: row.seq,
        });
        for json in json_arrays(keys)? {
            let values = [json.into(), now.into()];
            let statement = Statement::from_sql_and_values(backend, REMEMBER_KEYS_POSTGRES, values);
            txn.execute_raw(statement).await?;
        }
        return Ok(());
    }
    let keyed: Vec<_> = keyed.collect();
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
        for (row, key) in chunk {
            insert
                .values([
                    row.tenant_id.clone().into(),
                    (*key).into(),
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

/// The most bytes of JSON one statement carries. sqlx 0.9.0 leaves Nagle's algorithm on
/// (launchbadge/sqlx#4335, fixed upstream after that release), so a message that leaves in
/// more than one write waits for PostgreSQL's delayed ACK, 40 ms on Linux; over TLS, every
/// 16 KiB record is a write of its own. Under one record, a statement leaves in one write.
const MAX_STATEMENT_JSON: usize = 15 * 1024;

/// `items` as JSON arrays of at most `MAX_STATEMENT_JSON` bytes each (an item larger than
/// that alone).
pub(super) fn json_arrays<T: Serialize>(items: impl IntoIterator<Item = T>) -> Result<Vec<String>> {
    let mut arrays = Vec::new();
    let mut array = String::from("[");
    for value in items {
        let item = serde_json::to_string(&value).map_err(Error::internal)?;
        if array.len() > 1 && array.len() + item.len() + 2 > MAX_STATEMENT_JSON {
            array.push(']');
            arrays.push(std::mem::replace(&mut array, String::from("[")));
        }
        if array.len() > 1 {
            array.push(',');
        }
        array.push_str(&item);
    }
    if array.len() > 1 {
        array.push(']');
        arrays.push(array);
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::{MAX_STATEMENT_JSON, json_arrays, statements};

    #[test]
    fn heads_carry_the_notifications_that_fit_beside_them() {
        let (small, large) = ("n".repeat(100), "n".repeat(7000));
        let heads = |n: usize| vec!["h".repeat(MAX_STATEMENT_JSON - 500); n];
        // Usually one statement carries everything.
        let one = statements(vec!["[]".into()], vec![small.clone()]);
        assert_eq!(one, [("[]".to_owned(), vec![small.clone()])]);
        // What does not fit beside the heads goes out alone, once each, in order.
        let payloads = vec![small.clone(), large.clone(), large.clone(), small.clone()];
        let split = statements(heads(2), payloads.clone());
        let sent: Vec<String> = split.iter().flat_map(|(_, p)| p.clone()).collect();
        assert_eq!(sent, payloads);
        assert_eq!(split.iter().filter(|(h, _)| h != "[]").count(), 2);
        for (moving, sent) in &split {
            let json = moving.len() + serde_json::to_string(sent).unwrap().len();
            assert!(json <= MAX_STATEMENT_JSON, "{json}");
        }
        assert_eq!(split.len(), 4, "two with heads, then the large payloads");
        assert!(statements(Vec::new(), Vec::new()).is_empty());
    }

    #[test]
    fn json_arrays_stay_under_the_statement_bound() {
        let item = "x".repeat(1000);
        let arrays = json_arrays(std::iter::repeat_n(&item, 200)).unwrap();
        assert_eq!(arrays.len(), 14);
        let mut items = 0;
        for array in &arrays {
            assert!(array.len() <= MAX_STATEMENT_JSON, "{}", array.len());
            items += serde_json::from_str::<Vec<String>>(array).unwrap().len();
        }
        assert_eq!(items, 200);
        let large = "y".repeat(MAX_STATEMENT_JSON);
        let arrays = json_arrays([&item, &large, &item]).unwrap();
        assert_eq!(arrays.len(), 3);
        assert!(json_arrays(Vec::<String>::new()).unwrap().is_empty());
    }
}
