//! The raw SQLite baseline: the rows of the server's batch load inserted straight into a
//! migrated database file (same schema and settings as the server: WAL, `synchronous =
//! FULL`, its page cache), 1,000 rows per prepared multi-row INSERT and transaction, on one
//! connection (SQLite has one writer).

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::SubsecRound;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::events::{Columns, Generator};

const COLUMNS: &str = "INSERT INTO audit_logs (id, tenant_id, seq, occurred_at, recorded_at, \
    actor_type, actor_id, action, target_type, target_id, outcome, metadata, ip_address, \
    request_id, chain_version, prev_hash, hash) VALUES ";
const PER_ROW: usize = 17;

/// Rows per second inserted for `duration` into the migrated database at `path`: the
/// events of `batches` in turn, one batch per transaction, once it holds `rows_before` rows
/// (topped up untimed, as `Bench::seed` fills the server's: 30 days of events over the
/// tenants).
pub async fn insert_rate(
    path: &Path,
    batches: &[Vec<Value>],
    rows_before: u64,
    duration: Duration,
) -> anyhow::Result<f64> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        // The server's own settings (`migration::connect`).
        .pragma("cache_size", "-32768")
        .pragma("mmap_size", "268435456")
        .pragma("temp_store", "memory")
        .pragma("wal_autocheckpoint", "16384");
    let mut db = SqliteConnection::connect_with(&options).await?;
    let columns = |events: &[Value]| {
        events
            .iter()
            .map(Columns::of)
            .collect::<anyhow::Result<_>>()
    };
    let batches = batches.iter().map(|b| columns(b));
    let batches: Vec<Vec<Columns>> = batches.collect::<anyhow::Result<_>>()?;
    let mut seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_logs")
        .fetch_one(&mut db)
        .await?;
    let generator = Generator::new();
    let mut rng = SmallRng::seed_from_u64(0);
    while (seq as u64) < rows_before {
        let tenant = generator.tenant(&mut rng);
        let events: Vec<Value> = (0..1000).map(|_| generator.event(&mut rng, 30.0)).collect();
        insert_batch(&mut db, tenant, &columns(&events)?, &mut seq).await?;
    }
    let timed_from = seq;
    let started = Instant::now();
    for rows in batches.iter().cycle() {
        if started.elapsed() >= duration {
            break;
        }
        insert_batch(&mut db, "tenant-0", rows, &mut seq).await?;
    }
    Ok((seq - timed_from) as f64 / started.elapsed().as_secs_f64())
}

/// Inserts `rows` of `tenant` in one transaction, numbered on from `seq`.
async fn insert_batch(
    db: &mut SqliteConnection,
    tenant: &str,
    rows: &[Columns],
    seq: &mut i64,
) -> anyhow::Result<()> {
    // Whole microseconds, as the server records.
    let now = chrono::Utc::now().trunc_subsecs(6);
    let placeholders = vec![format!("({})", vec!["?"; PER_ROW].join(", ")); rows.len()];
    let sql = format!("{COLUMNS}{}", placeholders.join(", "));
    let mut txn = db.begin().await?;
    // Built from constants above.
    let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
    for row in rows {
        *seq += 1;
        insert = insert
            .bind(uuid::Uuid::now_v7())
            .bind(tenant)
            .bind(*seq)
            .bind(row.occurred_at)
            .bind(now)
            .bind(&row.actor_type)
            .bind(&row.actor_id)
            .bind(&row.action)
            .bind(&row.target_type)
            .bind(&row.target_id)
            .bind(&row.outcome)
            .bind(&row.metadata)
            .bind(&row.ip_address)
            .bind(&row.request_id)
            .bind(2_i16)
            .bind(vec![0u8; 32])
            .bind(vec![0xabu8; 32]);
    }
    insert.execute(&mut *txn).await?;
    txn.commit().await?;
    Ok(())
}
