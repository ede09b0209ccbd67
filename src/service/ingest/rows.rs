//! The statements that write a group commit's events: the rows (one multi-row INSERT per
//! thousand, or JSON arrays on PostgreSQL) and the hourly and daily rollups they add to.

use std::collections::HashMap;

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use chrono::{DateTime, Utc};
use entity::audit_log::{self, Column};
use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{ActiveEnum, ConnectionTrait, DatabaseTransaction, DbBackend, Statement};
use serde::Serialize;
use uuid::Uuid;

use super::tables::json_arrays;
use crate::error::{Error, Result};
use crate::service::privacy::store::{ROWS_PER_STATEMENT, Sealed, personal_table};
use crate::service::query::stats::hour_start;

/// The columns every insert writes, in order.
const COLUMNS: [Column; 24] = [
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
    Column::Personal,
];

/// The insert on PostgreSQL: the rows travel as a JSON array, so the statement has one
/// parameter and one text (prepared once per connection) whatever the number of rows,
/// where a multi-row `VALUES` binds 24 parameters a row and has a text per row count. The
/// keys are short (`JsonRow` names each column's), absent values are left out and hashes
/// are in base64: with full column names, nulls and hex, a row's JSON was 65% longer, and
/// a group needed as many more statements.
const INSERT_POSTGRES: &str = "INSERT INTO audit_logs (id, tenant_id, seq, occurred_at, \
     recorded_at, actor_type, actor_id, actor_name, action, target_type, target_id, \
     target_name, outcome, reason, metadata, ip_address, user_agent, request_id, trace_id, \
     chain_version, idempotency_key, prev_hash, hash, personal) \
     SELECT i, t, s, o, r, at, a, an, ac, tt, ti, tn, oc, re, m, ip, ua, rq, tr, v, k, \
     decode(p, 'base64'), decode(h, 'base64'), pe \
     FROM json_to_recordset($1::json) AS j(i uuid, t text, s bigint, o timestamptz, \
     r timestamptz, at text, a text, an text, ac text, tt text, ti text, tn text, oc text, \
     re text, m jsonb, ip inet, ua text, rq text, tr text, v smallint, k text, p text, h text, \
     pe text)";

/// A row as `INSERT_POSTGRES` reads it.
#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(rename = "i")]
    id: Uuid,
    #[serde(rename = "t")]
    tenant_id: &'a str,
    #[serde(rename = "s")]
    seq: i64,
    #[serde(rename = "o")]
    occurred_at: DateTime<Utc>,
    #[serde(rename = "r")]
    recorded_at: DateTime<Utc>,
    #[serde(rename = "at")]
    actor_type: String,
    #[serde(rename = "a")]
    actor_id: &'a str,
    #[serde(rename = "an", skip_serializing_if = "Option::is_none")]
    actor_name: Option<&'a str>,
    #[serde(rename = "ac")]
    action: &'a str,
    #[serde(rename = "tt", skip_serializing_if = "Option::is_none")]
    target_type: Option<&'a str>,
    #[serde(rename = "ti", skip_serializing_if = "Option::is_none")]
    target_id: Option<&'a str>,
    #[serde(rename = "tn", skip_serializing_if = "Option::is_none")]
    target_name: Option<&'a str>,
    #[serde(rename = "oc")]
    outcome: String,
    #[serde(rename = "re", skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(rename = "m")]
    metadata: &'a serde_json::Value,
    #[serde(rename = "ip", skip_serializing_if = "Option::is_none")]
    ip_address: Option<&'a str>,
    #[serde(rename = "ua", skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(rename = "rq", skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(rename = "tr", skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(rename = "v")]
    chain_version: i16,
    #[serde(rename = "k", skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    #[serde(rename = "p")]
    prev_hash: String,
    #[serde(rename = "h")]
    hash: String,
    #[serde(rename = "pe", skip_serializing_if = "Option::is_none")]
    personal: Option<&'a str>,
}

impl<'a> From<&'a audit_log::Model> for JsonRow<'a> {
    fn from(row: &'a audit_log::Model) -> Self {
        JsonRow {
            id: row.id,
            tenant_id: &row.tenant_id,
            seq: row.seq,
            occurred_at: row.occurred_at,
            recorded_at: row.recorded_at,
            actor_type: row.actor_type.to_value(),
            actor_id: &row.actor_id,
            actor_name: row.actor_name.as_deref(),
            action: &row.action,
            target_type: row.target_type.as_deref(),
            target_id: row.target_id.as_deref(),
            target_name: row.target_name.as_deref(),
            outcome: row.outcome.to_value(),
            reason: row.reason.as_deref(),
            metadata: &row.metadata.0,
            ip_address: row.ip_address.as_deref(),
            user_agent: row.user_agent.as_deref(),
            request_id: row.request_id.as_deref(),
            trace_id: row.trace_id.as_deref(),
            chain_version: row.chain_version,
            idempotency_key: row.idempotency_key.as_deref(),
            prev_hash: BASE64_STANDARD.encode(&row.prev_hash),
            hash: BASE64_STANDARD.encode(&row.hash),
            personal: row.personal.as_deref(),
        }
    }
}

/// Inserts `rows` (at most `ROWS_PER_INSERT`): in one statement on SQLite, in statements of
/// at most `MAX_STATEMENT_JSON` on PostgreSQL.
pub(super) async fn insert(txn: &DatabaseTransaction, rows: &[audit_log::Model]) -> Result<()> {
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        for json in json_arrays(rows.iter().map(JsonRow::from))? {
            let insert = Statement::from_sql_and_values(backend, INSERT_POSTGRES, [json.into()]);
            txn.execute_raw(insert).await?;
        }
        return Ok(());
    }
    let mut insert = Query::insert();
    insert.into_table(audit_log::Entity).columns(COLUMNS);
    for row in rows {
        let values: [Expr; 24] = [
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
            Expr::val(row.ip_address.clone()),
            Expr::val(row.user_agent.clone()),
            Expr::val(row.request_id.clone()),
            Expr::val(row.trace_id.clone()),
            Expr::val(row.chain_version),
            Expr::val(row.idempotency_key.clone()),
            Expr::val(row.prev_hash.clone()),
            Expr::val(row.hash.clone()),
            Expr::val(row.personal.clone()),
        ];
        insert.values(values).map_err(Error::internal)?;
    }
    txn.execute(&insert).await?;
    Ok(())
}

/// The sealed personal values' insert on PostgreSQL, as `INSERT_POSTGRES` does it: one
/// JSON array parameter, whatever the number of rows.
const INSERT_SEALED_POSTGRES: &str = "INSERT INTO audit_personal \
     (tenant_id, subject_id, event_id, subjects, sealed) \
     SELECT t, s, e, j, decode(b, 'base64') \
     FROM json_to_recordset($1::json) AS r(t text, s text, e uuid, j text, b text)";

/// A row as `INSERT_SEALED_POSTGRES` reads it.
#[derive(Serialize)]
struct SealedRow<'a> {
    t: &'a str,
    s: &'a str,
    e: Uuid,
    j: &'a str,
    b: String,
}

/// Stores events' sealed personal values, a row per subject; only the actor's row holds
/// the sealed bytes (the others name the event for erasure), so that naming 16 subjects
/// does not write the values 16 times.
pub(super) async fn insert_sealed(txn: &DatabaseTransaction, sealed: &[Sealed]) -> Result<()> {
    let mut rows = Vec::new();
    for event in sealed {
        let subjects = serde_json::to_string(&event.subjects).map_err(Error::internal)?;
        for subject in &event.subjects {
            let bytes: &[u8] = match *subject == event.actor_id {
                true => &event.sealed,
                false => &[],
            };
            rows.push((event, subject, subjects.clone(), bytes));
        }
    }
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        let rows = rows
            .iter()
            .map(|(event, subject, subjects, bytes)| SealedRow {
                t: &event.tenant_id,
                s: subject,
                e: event.event_id,
                j: subjects,
                b: BASE64_STANDARD.encode(bytes),
            });
        for json in json_arrays(rows)? {
            let insert =
                Statement::from_sql_and_values(backend, INSERT_SEALED_POSTGRES, [json.into()]);
            txn.execute_raw(insert).await?;
        }
        return Ok(());
    }
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = Query::insert();
        insert
            .into_table(personal_table())
            .columns(["tenant_id", "subject_id", "event_id", "subjects", "sealed"].map(Alias::new));
        for (event, subject, subjects, bytes) in chunk {
            insert
                .values([
                    event.tenant_id.as_str().into(),
                    subject.as_str().into(),
                    event.event_id.into(),
                    subjects.as_str().into(),
                    bytes.to_vec().into(),
                ])
                .map_err(Error::internal)?;
        }
        txn.execute(&insert).await?;
    }
    Ok(())
}

/// The rollups' upsert: the hourly buckets, and the same summed by day. The buckets travel
/// as one JSON array, so the statement's text is the same for every transaction (prepared
/// once per connection) whatever their number; one statement writes both rollups.
const COUNT_EVENTS_POSTGRES: &str = "WITH b AS MATERIALIZED ( \
     SELECT b->>0 AS tenant_id, (b->>1)::bigint AS hour_start, b->>2 AS action, \
     b->>3 AS actor_type, b->>4 AS target_type, b->>5 AS outcome, (b->>6)::bigint AS events \
     FROM jsonb_array_elements($1::jsonb) AS b), \
     hourly AS (INSERT INTO audit_stats \
     (tenant_id, hour_start, action, actor_type, target_type, outcome, events) \
     SELECT * FROM b \
     ON CONFLICT (tenant_id, hour_start, action, actor_type, target_type, outcome) \
     DO UPDATE SET events = audit_stats.events + excluded.events) \
     INSERT INTO audit_stats_daily \
     (tenant_id, day_start, action, actor_type, target_type, outcome, events) \
     SELECT tenant_id, hour_start - hour_start % 86400, action, actor_type, target_type, \
     outcome, sum(events) FROM b GROUP BY 1, 2, 3, 4, 5, 6 \
     ON CONFLICT (tenant_id, day_start, action, actor_type, target_type, outcome) \
     DO UPDATE SET events = audit_stats_daily.events + excluded.events";

/// `COUNT_EVENTS_POSTGRES` for SQLite, which has no INSERT in WITH: two statements (`WHERE
/// true` settles a parsing ambiguity of `INSERT ... SELECT ... ON CONFLICT`).
const COUNT_EVENTS_SQLITE: [&str; 2] = [
    "INSERT INTO audit_stats \
     (tenant_id, hour_start, action, actor_type, target_type, outcome, events) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
     value ->> 6 FROM json_each(?1) WHERE true \
     ON CONFLICT (tenant_id, hour_start, action, actor_type, target_type, outcome) \
     DO UPDATE SET events = audit_stats.events + excluded.events",
    "INSERT INTO audit_stats_daily \
     (tenant_id, day_start, action, actor_type, target_type, outcome, events) \
     SELECT value ->> 0, (value ->> 1) - (value ->> 1) % 86400, value ->> 2, value ->> 3, \
     value ->> 4, value ->> 5, sum(value ->> 6) FROM json_each(?1) WHERE true \
     GROUP BY 1, 2, 3, 4, 5, 6 \
     ON CONFLICT (tenant_id, day_start, action, actor_type, target_type, outcome) \
     DO UPDATE SET events = audit_stats_daily.events + excluded.events",
];

/// Adds a group commit's new events to the hourly and daily rollups (`audit_stats`,
/// `audit_stats_daily`): counted in memory first, then one statement.
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
    let backend = txn.get_database_backend();
    let statements = match backend {
        DbBackend::Postgres => &[COUNT_EVENTS_POSTGRES][..],
        _ => &COUNT_EVENTS_SQLITE[..],
    };
    for json in json_arrays(buckets)? {
        for sql in statements {
            let json = json.clone().into();
            txn.execute_raw(Statement::from_sql_and_values(backend, *sql, [json]))
                .await?;
        }
    }
    Ok(())
}
