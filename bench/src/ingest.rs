//! Ingest: batch and single-event loads beside pgbench's inserts, and SQLite's.

use serde_json::json;

use crate::events::{self};
use crate::load::{self, Graphql, token};
use crate::pgbench;
use crate::report::{Report, pg_rate, rate};
use crate::scenarios::{BATCH, Bench, SINGLE, bodies};
use crate::server::{Server, counter, fresh_database, migrate};
use crate::sqlite;

/// Batches in the batch load (and in its raw baselines), and events in the single load
/// (at most 128: pgbench's limit of scripts).
const BATCHES: usize = 8;
const SINGLES: usize = 128;

impl Bench {
    /// audit-bench's batch load: `clients` workers sending 1,000-event batches to tenant
    /// `tenant-0` for the run's duration.
    pub async fn batch_load(&self, server: &Server, clients: usize) -> load::Stats {
        let gql = Graphql::new(&server.url, token("tenant-0"));
        let batches = events::fixed(BATCHES, 1000);
        let batches = bodies(BATCH, batches.into_iter().map(|b| json!({ "inputs": b })));
        load::run(clients, self.duration, move |w, n| {
            let (gql, batches) = (gql.clone(), batches.clone());
            async move {
                gql.send(batches[(w + n as usize) % batches.len()].clone())
                    .await?;
                Ok(1000)
            }
        })
        .await
    }

    /// audit-bench's single-event load: `clients` workers each sending one event at a time
    /// to tenant `tenant-0` for the run's duration.
    pub async fn single_load(&self, server: &Server, clients: usize) -> load::Stats {
        let gql = Graphql::new(&server.url, token("tenant-0"));
        let singles = events::fixed(SINGLES, 1).into_iter().flatten();
        let singles = bodies(SINGLE, singles.map(|e| json!({ "input": e })));
        load::run(clients, self.duration, move |w, n| {
            let (gql, singles) = (gql.clone(), singles.clone());
            async move {
                gql.send(singles[(w * 7 + n as usize) % singles.len()].clone())
                    .await?;
                Ok(1)
            }
        })
        .await
    }

    /// Batch and single-event ingest on PostgreSQL against pgbench's INSERTs; batch ingest
    /// on SQLite.
    pub async fn ingest(&self, report: &mut Report) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_ingest")?;
        let raw = fresh_database(&self.admin_url, "audit_bench_raw")?;
        migrate(&self.bin, &raw)?;
        let server = Server::start(&self.bin, &db, 18181).await?;
        self.batches_beside_raw(&server, &raw, report).await?;
        self.singles_beside_raw(&server, &raw, report).await?;
        shares(&server, report).await?;
        drop(server);
        self.ingest_sqlite(report).await
    }

    /// The batch load beside pgbench inserting the same events three ways.
    async fn batches_beside_raw(
        &self,
        server: &Server,
        raw: &str,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let stats = self.batch_load(server, 4).await;
        // The raw inserts are sent the same events, as literals in their statements.
        let batches = events::fixed(BATCHES, 1000);
        let scripts = |form: pgbench::Form| {
            batches
                .iter()
                .map(|b| form(b))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        // The first is the target's baseline. A tenant's events are written by one
        // transaction at a time (its chain head), so the last shows what one connection can do.
        let forms: [(&str, pgbench::Form, usize, &str); 3] = [
            (
                "insert_values",
                pgbench::insert_values,
                4,
                "batch ingest, 1,000-event batches, 4 clients",
            ),
            (
                "insert_select",
                pgbench::insert_select,
                4,
                "the same, beside INSERT ... SELECT of the same rows from a JSON literal",
            ),
            (
                "insert_values_one",
                pgbench::insert_values,
                1,
                "the same, beside INSERT ... VALUES on one connection",
            ),
        ];
        for (i, (name, form, clients, what)) in forms.into_iter().enumerate() {
            let measured =
                pgbench::run(raw, name, &scripts(form)?, clients, self.duration.as_secs())?;
            let ratio = stats.per_second() / (measured.tps * 1000.0);
            let (target, met) = if i == 0 {
                (">= 0.60", Some(ratio >= 0.6))
            } else {
                ("", None)
            };
            let measured = pg_rate(&measured, 1000.0, "rows");
            let measured = format!("{measured}, {clients} connection(s)");
            report.add(
                what,
                rate(&stats, "events"),
                measured,
                Some(ratio),
                target,
                met,
            );
        }

        Ok(())
    }

    /// The single-event load beside pgbench inserting one row per transaction.
    async fn singles_beside_raw(
        &self,
        server: &Server,
        raw: &str,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let stats = self.single_load(server, 64).await;
        let raw_one = pgbench::run(
            raw,
            "insert_one",
            &(events::fixed(SINGLES, 1).iter())
                .map(|e| pgbench::insert_one(&e[0]))
                .collect::<anyhow::Result<Vec<_>>>()?,
            64,
            self.duration.as_secs(),
        )?;
        let ratio = stats.per_second() / raw_one.tps;
        let p99 = stats.ms(99.0);
        report.add(
            "single-event ingest, 64 clients (group commit)",
            rate(&stats, "events"),
            pg_rate(&raw_one, 1.0, "rows"),
            Some(ratio),
            ">= 1.5, p99 < 20 ms",
            Some(ratio >= 1.5 && p99 < 20.0),
        );

        Ok(())
    }

    /// Batch ingest on the embedded SQLite database.
    pub async fn ingest_sqlite(&self, report: &mut Report) -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join("audit-bench-sqlite");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let sqlite = format!("sqlite://{}?mode=rwc", dir.join("audit.db").display());
        let raw = dir.join("raw.db");
        migrate(&self.bin, &format!("sqlite://{}?mode=rwc", raw.display()))?;
        let server = Server::start(&self.bin, &sqlite, 18182).await?;
        let batches = events::fixed(BATCHES, 1000);
        // The same rows straight into a database of the same schema, holding as many rows.
        for (table, seed) in [("empty table", 0), ("1M more rows", 1_000_000)] {
            if seed > 0 {
                let seeded = self.seed(&server, seed).await?;
                eprintln!("seeded {seeded} events into SQLite");
            }
            let before = server.metrics().await?;
            let stats = self.batch_load(&server, 2).await;
            let after = server.metrics().await?;
            let spent = |name: &str| counter(&after, name) - counter(&before, name);
            let in_transaction = spent("audit_ingest_commit_duration_seconds_sum") * 1e6
                / spent("audit_ingest_events_total").max(1.0);
            // The raw table holds as many rows as the server's when its measurement started.
            let rows_before = counter(&before, "audit_ingest_events_total") as u64;
            let raw_rate = sqlite::insert_rate(&raw, &batches, rows_before, self.duration).await?;
            let ratio = stats.per_second() / raw_rate.max(1.0);
            report.add(
                &format!("SQLite batch ingest, 1,000-event batches, 2 clients, {table}"),
                format!(
                    "{} ({in_transaction:.0} µs per event inside the write transaction)",
                    rate(&stats, "events")
                ),
                format!("raw prepared INSERT of 1,000 rows per transaction: {raw_rate:.0} rows/s"),
                Some(ratio),
                ">= 0.60",
                Some(ratio >= 0.6),
            );
        }
        Ok(())
    }
}

/// What the chain and the rollups took of the ingest transactions, from `/metrics`.
async fn shares(server: &Server, report: &mut Report) -> anyhow::Result<()> {
    let metrics = server.metrics().await?;
    let counter = |name: &str| counter(&metrics, name);
    let in_transactions = counter("audit_ingest_commit_duration_seconds_sum").max(1e-9);
    let share = counter("audit_ingest_chain_duration_seconds_sum") / in_transactions;
    let rollup = counter("audit_ingest_rollup_duration_seconds_sum") / in_transactions;
    let per_commit = counter("audit_ingest_events_total")
        / counter("audit_ingest_commit_duration_seconds_count").max(1.0);
    report.add(
        "hash chain's share of ingest transaction time",
        format!(
            "{:.1}% ({per_commit:.0} events per transaction on average)",
            share * 100.0
        ),
        String::new(),
        None,
        "< 15%",
        Some(share < 0.15),
    );
    report.add(
        "the rollups' share (hourly and daily) of ingest transaction time (auditLogStats)",
        format!("{:.1}%", rollup * 100.0),
        String::new(),
        None,
        "< 5%",
        Some(rollup < 0.05),
    );
    Ok(())
}
