//! The raw SQLite baseline: the same event rows inserted straight into a migrated database
//! file (same schema, WAL, `synchronous = FULL` as the server), 1,000 rows per prepared
//! multi-row INSERT and transaction, on one connection (SQLite has one writer).

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

const COLUMNS: &str = "INSERT INTO audit_logs (id, tenant_id, seq, occurred_at, recorded_at, \
    actor_type, actor_id, action, target_type, target_id, outcome, metadata, ip_address, \
    request_id, prev_hash, hash) VALUES ";
const PER_ROW: usize = 16;

/// Rows per second inserted for `duration` into the migrated database at `path`, once it
/// holds `rows_before` rows (topped up the same way, untimed).
pub async fn insert_rate(
    path: &Path,
    rows_per_batch: usize,
    rows_before: u64,
    duration: Duration,
) -> anyhow::Result<f64> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut db = SqliteConnection::connect_with(&options).await?;
    let placeholders = vec![format!("({})", vec!["?"; PER_ROW].join(", ")); rows_per_batch];
    let sql = format!("{COLUMNS}{}", placeholders.join(", "));
    let mut seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_logs")
        .fetch_one(&mut db)
        .await?;
    while (seq as u64) < rows_before {
        insert_batch(&mut db, &sql, rows_per_batch, &mut seq).await?;
    }
    let timed_from = seq;
    let started = Instant::now();
    while started.elapsed() < duration {
        insert_batch(&mut db, &sql, rows_per_batch, &mut seq).await?;
    }
    Ok((seq - timed_from) as f64 / started.elapsed().as_secs_f64())
}

/// Inserts `rows` rows with `sql` in one transaction, numbered on from `seq`.
async fn insert_batch(
    db: &mut SqliteConnection,
    sql: &str,
    rows: usize,
    seq: &mut i64,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let mut txn = db.begin().await?;
    // Built from constants above.
    let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
    for _ in 0..rows {
        *seq += 1;
        let n = *seq as usize;
        insert = insert
            .bind(uuid::Uuid::now_v7())
            .bind("raw")
            .bind(*seq)
            .bind(now)
            .bind(now)
            .bind("user")
            .bind(format!("actor-{}", n % 5000))
            .bind(format!("resource{}.updated", n % 40))
            .bind("project")
            .bind(format!("t-{}", n % 20000))
            .bind("success")
            .bind(format!(r#"{{"env":"prod","n":{n}}}"#))
            .bind("10.1.2.3")
            .bind(format!("req-{n}"))
            .bind(vec![0u8; 32])
            .bind(vec![0xabu8; 32]);
    }
    insert.execute(&mut *txn).await?;
    txn.commit().await?;
    Ok(())
}
