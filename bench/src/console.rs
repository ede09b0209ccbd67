//! What an admin console asks: `auditLogStats` from the rollup beside the same question
//! counted from raw rows, and `GET /export` of a million events: rows/s and server memory.

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::json;

use crate::events::TENANTS;
use crate::load::{Graphql, new_histogram, token};
use crate::pgbench;
use crate::report::Report;
use crate::scenarios::Bench;
use crate::server::{PeakRss, Server, fresh_database, psql};

const STATS: &str = "query($since: DateTime) { auditLogStats(filter: { occurredAfter: $since }, groupBy: [ACTION], interval: DAY, first: 1000) { start action count } }";

impl Bench {
    /// Stats and export over `seeded` (or over a freshly seeded database of `events`).
    pub async fn console(
        &self,
        seeded: Option<&str>,
        events: u64,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let db = match seeded {
            Some(db) => db.to_owned(),
            None => {
                let db = fresh_database(&self.admin_url, "audit_bench_console")?;
                let server = Server::start(&self.bin, &db, 18186).await?;
                self.seed(&server, events).await?;
                psql(&db, "ANALYZE control_plane.audit_logs")?;
                db
            }
        };
        let server = Server::start(&self.bin, &db, 18187).await?;
        server.settle().await;
        let gql = Graphql::new(&server.url, token("tenant-0"));

        stats(&gql, &db, self.duration, report).await?;
        export_everything(&server, "ndjson", 100_000.0, report).await?;
        export_everything(&server, "csv", 80_000.0, report).await
    }
}

/// 30 days by day and action for one tenant: from the rollup (bounds on whole hours) and
/// counted from the events (a bound within an hour), 200 requests each.
async fn stats(
    gql: &Graphql,
    db: &str,
    duration: std::time::Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let hour = now.timestamp() / 3600 * 3600 - 30 * 86_400;
    let on_the_hour = chrono::DateTime::from_timestamp(hour, 0).unwrap_or(now);
    let mut p50 = [0.0; 2];
    for (i, since) in [on_the_hour, on_the_hour + chrono::Duration::minutes(1)]
        .into_iter()
        .enumerate()
    {
        let mut latency = new_histogram();
        for _ in 0..200 {
            let t0 = Instant::now();
            gql.call(STATS, json!({ "since": since.to_rfc3339() }))
                .await?;
            let _ = latency.record(t0.elapsed().as_micros() as u64);
        }
        p50[i] = latency.value_at_percentile(50.0) as f64 / 1000.0;
    }
    let raw = pgbench::run(
        db,
        "stats",
        &[
            "SELECT date_trunc('day', occurred_at AT TIME ZONE 'UTC') AS day, action, count(*) \
             FROM control_plane.audit_logs WHERE tenant_id = 'tenant-0' \
             AND occurred_at >= now() - interval '30 days' \
             GROUP BY 1, 2 ORDER BY 1, 3 DESC LIMIT 1000;\n"
                .to_owned(),
        ],
        1,
        duration.as_secs().min(10),
    )?;
    report.add(
        "auditLogStats: one tenant, 30 days, by ACTION per DAY (from the rollup)",
        format!(
            "p50 {:.2} ms; the same counted from the events by the server: p50 {:.1} ms",
            p50[0], p50[1]
        ),
        format!("GROUP BY over the rows: p50 {:.1} ms", raw.p50),
        Some(p50[0] / raw.p50),
        "p50 < 10 ms",
        Some(p50[0] < 10.0),
    );

    Ok(())
}

/// Every event of every tenant, in `format`, with the server's memory sampled.
async fn export_everything(
    server: &Server,
    format: &str,
    target: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tenants: Vec<&str> = TENANTS.iter().map(|(t, _)| *t).collect();
    let filter = json!({ "tenantIds": tenants }).to_string();
    let sampling = PeakRss::watch(server.pid());
    let t0 = Instant::now();
    let response = reqwest::Client::new()
        .get(format!("{}/export", server.url))
        .query(&[("format", format), ("filter", &filter)])
        .bearer_auth(token("tenant-0"))
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    if format == "csv" {
        rows = rows.saturating_sub(1); // the header
    }
    let took = t0.elapsed().as_secs_f64();
    let rss = sampling.peak();
    let per_second = rows as f64 / took;
    report.add(
            &format!("GET /export, {}, every tenant", format.to_uppercase()),
            format!(
                "{rows} rows ({:.0} MiB) in {took:.1} s: {per_second:.0} rows/s; server RSS peak {rss:.0} MiB",
                bytes as f64 / 1048576.0
            ),
            String::new(),
            None,
            &format!(">= {target:.0} rows/s, RSS < 150 MiB"),
            Some(per_second >= target && rss < 150.0),
        );
    Ok(())
}
