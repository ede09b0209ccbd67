//! The table the measurements fill: a row per measurement, beside its baseline.

use crate::load;
use crate::pgbench;
use crate::server::psql;

/// The results table.
pub struct Report {
    header: String,
    rows: Vec<[String; 6]>,
}

impl Report {
    pub fn new(admin_url: &str) -> Self {
        let pg = psql(admin_url, "SELECT version()").unwrap_or_default();
        let sync = psql(admin_url, "SHOW synchronous_commit").unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let header = format!(
            "Measured {} on {cores} cores; {pg}; synchronous_commit = {sync} for both the server \
             and pgbench. Medians and percentiles of one run; this machine is noisy.\n\n\
             | measurement | audit-service | raw PostgreSQL (pgbench) | ratio | target | met |\n\
             |---|---|---|---|---|---|\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        );
        Report {
            header,
            rows: Vec::new(),
        }
    }

    pub fn add(
        &mut self,
        what: &str,
        ours: String,
        raw: String,
        ratio: Option<f64>,
        target: &str,
        met: Option<bool>,
    ) {
        let row = [
            what.to_owned(),
            ours,
            raw,
            ratio.map_or("".into(), |r| format!("{r:.2}")),
            target.to_owned(),
            met.map_or("".into(), |m| if m { "yes" } else { "no" }.to_owned()),
        ];
        eprintln!("{}", row.join(" | "));
        self.rows.push(row);
    }

    pub fn markdown(&self) -> String {
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("| {} |", r.join(" | ")))
            .collect();
        format!("{}{}\n", self.header, rows.join("\n"))
    }
}

pub fn rate(stats: &load::Stats, unit: &str) -> String {
    format!(
        "{:.0} {unit}/s (p50 {:.1} / p95 {:.1} / p99 {:.1} ms{})",
        stats.per_second(),
        stats.ms(50.0),
        stats.ms(95.0),
        stats.ms(99.0),
        if stats.errors > 0 {
            format!(", {} errors", stats.errors)
        } else {
            String::new()
        }
    )
}

pub fn pg_rate(r: &pgbench::Result, per_tx: f64, unit: &str) -> String {
    format!(
        "{:.0} {unit}/s (p50 {:.1} / p95 {:.1} / p99 {:.1} ms)",
        r.tps * per_tx,
        r.p50,
        r.p95,
        r.p99
    )
}
