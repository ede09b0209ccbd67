//! Process counters, served at `GET /metrics` in the Prometheus text format.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::DatabaseConnection;

/// Counters of one server instance.
#[derive(Default)]
pub struct Metrics {
    sql_statements: AtomicU64,
    commits: AtomicU64,
    events: AtomicU64,
    commit_micros: AtomicU64,
    chain_micros: AtomicU64,
    rollup_micros: AtomicU64,
    /// Sum over tenants of the last sequence continuous verification checked.
    pub verified_sequence: AtomicU64,
    pub verification_failures: AtomicU64,
    pub tree_micros: AtomicU64,
}

impl Metrics {
    /// Counts every statement `db` (and every clone made afterwards) runs.
    pub fn watch(self: &Arc<Self>, db: &mut DatabaseConnection) {
        let metrics = Arc::clone(self);
        db.set_metric_callback(move |_| {
            metrics.sql_statements.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// One ingest transaction: how long it took, how much of that went to numbering and
    /// hashing the events (the hash chain's share of the write path), and how much to the
    /// hourly rollup.
    pub fn committed(&self, events: usize, total: Duration, chain: Duration, rollup: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(total.as_micros() as u64, Ordering::Relaxed);
        self.chain_micros
            .fetch_add(chain.as_micros() as u64, Ordering::Relaxed);
        self.rollup_micros
            .fetch_add(rollup.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let counters = [
            (
                "audit_sql_statements_total",
                "SQL statements run for requests and the write path (not the tree's upkeep).",
                &self.sql_statements,
            ),
            (
                "audit_ingest_transactions_total",
                "Ingest (group commit) transactions.",
                &self.commits,
            ),
            (
                "audit_ingest_events_total",
                "Events committed.",
                &self.events,
            ),
            (
                "audit_ingest_transaction_microseconds_total",
                "Time spent in ingest transactions.",
                &self.commit_micros,
            ),
            (
                "audit_ingest_chain_microseconds_total",
                "Of that, time spent numbering and hashing events.",
                &self.chain_micros,
            ),
            (
                "audit_ingest_rollup_microseconds_total",
                "Of that, time spent adding events to the hourly rollup (auditLogStats).",
                &self.rollup_micros,
            ),
            (
                "audit_chain_verification_failures_total",
                "Tenants whose chain or tree continuous verification found broken.",
                &self.verification_failures,
            ),
            (
                "audit_tree_microseconds_total",
                "Time spent sealing tree tiles and signing checkpoints.",
                &self.tree_micros,
            ),
        ];
        let gauges = [(
            "audit_chain_verified_sequence",
            "Sum over tenants of the last sequence number continuous verification checked \
             (tenants are not labels: there may be any number of them).",
            &self.verified_sequence,
        )];
        let kinds = counters
            .iter()
            .map(|c| (c, "counter"))
            .chain(gauges.iter().map(|g| (g, "gauge")));
        kinds
            .map(|((name, help, value), kind)| {
                format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                    value.load(Ordering::Relaxed)
                )
            })
            .collect()
    }
}
