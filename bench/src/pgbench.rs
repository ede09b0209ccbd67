//! The same work done directly against PostgreSQL with pgbench custom scripts.

use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::events::Columns;
use crate::load::new_histogram;

/// What a pgbench run measured.
pub struct Result {
    pub tps: f64,
    /// Transaction latency percentiles in milliseconds: p50, p95, p99.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Runs `scripts` (each transaction one of them, picked at random) with `clients`
/// connections for `seconds` against `database_url`, with the extended protocol and
/// prepared statements (`-M prepared`), as the server's driver runs its own: the simple
/// protocol would plan every statement again, and flatter the server.
pub fn run(
    database_url: &str,
    name: &str,
    scripts: &[String],
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Result> {
    let dir = std::env::temp_dir().join(format!("audit-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut pgbench = Command::new("pgbench");
    pgbench.args(["-n", "-M", "prepared"]);
    for (i, script) in scripts.iter().enumerate() {
        let file = dir.join(format!("{name}-{i}.sql"));
        std::fs::write(&file, script)?;
        pgbench.arg("-f").arg(file);
    }
    let output = pgbench
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-l",
            "--log-prefix",
        ])
        .arg(dir.join("log"))
        .arg(database_url)
        .current_dir(&dir)
        .output()
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench {name}: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no tps in pgbench output")?;
    let mut latency = new_histogram();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("log"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
            {
                let _ = latency.record(us.max(1));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ms = |p: f64| latency.value_at_percentile(p) as f64 / 1000.0;
    Ok(Result {
        tps,
        p50: ms(50.0),
        p95: ms(95.0),
        p99: ms(99.0),
    })
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One event row as literal SQL values: the columns the server stores for `event`, with a
/// placeholder id, sequence and hashes.
fn row(event: &Value, seq: usize) -> anyhow::Result<String> {
    let c = Columns::of(event)?;
    Ok(format!(
        "(gen_random_uuid(), 'tenant-0', {seq}, {}, now(), {}, {}, {}, {}, {}, {}, {}, {}, {}, 2, \
         '\\x{}', '\\x{}')",
        literal(&c.occurred_at.to_rfc3339()),
        literal(&c.actor_type),
        literal(&c.actor_id),
        literal(&c.action),
        literal(&c.target_type),
        literal(&c.target_id),
        literal(&c.outcome),
        literal(&c.metadata),
        literal(&c.ip_address),
        literal(&c.request_id),
        "00".repeat(32),
        "ab".repeat(32)
    ))
}

const COLUMNS: &str = "INSERT INTO control_plane.audit_logs (id, tenant_id, seq, occurred_at, \
    recorded_at, actor_type, actor_id, action, target_type, target_id, outcome, metadata, \
    ip_address, request_id, chain_version, prev_hash, hash)";

/// A raw insert's script for one batch of events.
pub type Form = fn(&[Value]) -> anyhow::Result<String>;

/// One multi-row `INSERT ... VALUES` of `events` per transaction.
pub fn insert_values(events: &[Value]) -> anyhow::Result<String> {
    let values = (events.iter().enumerate())
        .map(|(i, e)| row(e, i + 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(format!("{COLUMNS} VALUES {};\n", values.join(", ")))
}

/// One `INSERT ... SELECT` of `events` per transaction, read from a JSON literal with
/// `json_to_recordset`, as the server's own insert reads its parameter.
pub fn insert_select(events: &[Value]) -> anyhow::Result<String> {
    let rows = (events.iter().enumerate())
        .map(|(i, e)| {
            let c = Columns::of(e)?;
            Ok(json!({
                "seq": i + 1, "occurred_at": c.occurred_at, "actor_type": c.actor_type,
                "actor_id": c.actor_id, "action": c.action, "target_type": c.target_type,
                "target_id": c.target_id, "outcome": c.outcome, "metadata": e["metadata"],
                "ip_address": c.ip_address, "request_id": c.request_id,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rows = literal(&serde_json::to_string(&rows)?);
    Ok(format!(
        "{COLUMNS} SELECT gen_random_uuid(), 'tenant-0', seq, occurred_at, now(), actor_type, \
         actor_id, action, target_type, target_id, outcome, metadata, ip_address, request_id, 2, \
         '\\x{zero}', '\\x{ab}' FROM json_to_recordset({rows}::json) AS r(seq bigint, \
         occurred_at timestamptz, actor_type text, actor_id text, action text, target_type text, \
         target_id text, outcome text, metadata jsonb, ip_address inet, request_id text);\n",
        zero = "00".repeat(32),
        ab = "ab".repeat(32),
    ))
}

/// A single-row INSERT of `event` per transaction.
pub fn insert_one(event: &Value) -> anyhow::Result<String> {
    Ok(format!("{COLUMNS} VALUES {};\n", row(event, 1)?))
}

/// The SQL of the filtered page query, with a Zipf-distributed actor as the API bench uses.
pub fn page(tenant: &str, since_days: u32) -> String {
    format!(
        "\\set a random_zipfian(0, 4999, 1.1)\n\
         SELECT *, CAST(ip_address AS text) AS ip FROM control_plane.audit_logs \
         WHERE tenant_id = '{tenant}' AND actor_id = 'actor-' || :a \
         AND occurred_at >= now() - interval '{since_days} days' \
         ORDER BY occurred_at DESC, id DESC LIMIT 51;\n"
    )
}
