//! The same work done directly against PostgreSQL with pgbench custom scripts.

use std::process::Command;

use anyhow::{Context, bail};

use crate::load::new_histogram;

/// What a pgbench run measured.
pub struct Result {
    pub tps: f64,
    /// Transaction latency percentiles in milliseconds: p50, p95, p99.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Runs `script` with `clients` connections for `seconds` against `database_url`, with the
/// extended protocol and prepared statements (`-M prepared`), as the server's driver runs
/// its own: the simple protocol would plan every statement again, and flatter the server.
pub fn run(
    database_url: &str,
    name: &str,
    script: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Result> {
    let dir = std::env::temp_dir().join(format!("audit-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{name}.sql"));
    std::fs::write(&file, script)?;
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-f"])
        .arg(&file)
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

/// One event row as literal SQL values, shaped like the events the bench logs.
fn row(n: usize) -> String {
    format!(
        "(gen_random_uuid(), 'pgbench', {}, now(), now(), 'user', 'actor-{}', 'resource{}.updated', \
         'project', 't-{}', 'success', '{{\"env\":\"prod\",\"n\":{n}}}', '10.1.2.3', 'req-{n}', \
         '\\x{}', '\\x{}')",
        n + 1,
        n % 5000,
        n % 40,
        n % 20000,
        "00".repeat(32),
        "ab".repeat(32)
    )
}

const COLUMNS: &str = "INSERT INTO control_plane.audit_logs (id, tenant_id, seq, occurred_at, \
    recorded_at, actor_type, actor_id, action, target_type, target_id, outcome, metadata, \
    ip_address, request_id, prev_hash, hash) VALUES ";

/// One multi-row INSERT of `rows` events per transaction.
pub fn insert_batch(rows: usize) -> String {
    let values: Vec<String> = (0..rows).map(row).collect();
    format!("{COLUMNS}{};\n", values.join(", "))
}

/// One single-row INSERT per transaction.
pub fn insert_one() -> String {
    format!(
        "\\set n random(1, 1000000000)\n{COLUMNS}{};\n",
        row(0)
            .replace("'req-0'", "'req-' || :n")
            .replace(", 0, now()", ", :n, now()")
    )
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
