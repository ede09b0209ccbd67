//! Process counters, served at `GET /metrics` in the Prometheus text format.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::DatabaseConnection;

/// Counters of one server instance.
#[derive(Default)]
pub struct Metrics {
    sql_statements: AtomicU64,
}

impl Metrics {
    /// Counts every statement `db` (and every clone made afterwards) runs.
    pub fn watch(self: &Arc<Self>, db: &mut DatabaseConnection) {
        let metrics = Arc::clone(self);
        db.set_metric_callback(move |_| {
            metrics.sql_statements.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub fn render(&self) -> String {
        format!(
            "# HELP audit_sql_statements_total SQL statements run against the database.\n\
             # TYPE audit_sql_statements_total counter\n\
             audit_sql_statements_total {}\n",
            self.sql_statements.load(Ordering::Relaxed)
        )
    }
}
