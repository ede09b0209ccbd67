//! Reads: filtered pages beside pgbench, page depth, memory, federation entities.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::{Value, json};

use crate::events::{Generator, TENANTS};
use crate::load::{self, Graphql, new_histogram, token};
use crate::pgbench;
use crate::report::{Report, pg_rate, rate};
use crate::scenarios::{BATCH, Bench, PAGE};
use crate::server::{PeakRss, Server, fresh_database, psql};

impl Bench {
    /// Seeds `events` realistic events, then measures filtered pages beside pgbench, the cost
    /// of depth, and memory. Returns the seeded database's URL.
    pub async fn query(&self, events: u64, report: &mut Report) -> anyhow::Result<String> {
        let db = fresh_database(&self.admin_url, "audit_bench_query")?;
        let server = Server::start(&self.bin, &db, 18183).await?;
        let seeded = self.seed(&server, events).await?;
        psql(&db, "ANALYZE control_plane.audit_logs")?;
        eprintln!("seeded {seeded} events");
        self.filtered_pages(&server, &db, report).await?;
        let gql = Graphql::new(&server.url, token("tenant-0"));
        let filter = json!({ "occurredAfter": (chrono::Utc::now() - chrono::Duration::days(31)).to_rfc3339() });
        let p1 = depth(&gql, &filter, report).await?;
        counted(&gql, &filter, p1, report).await?;
        Ok(db)
    }

    /// One actor's page of the last 7 days, from 8 clients and from one, beside pgbench
    /// running the same SQL; the server's own time per page from `Server-Timing`.
    async fn filtered_pages(
        &self,
        server: &Server,
        db: &str,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let generator = Arc::new(Generator::new());
        let gql = Graphql::new(&server.url, token("tenant-0"));
        let since = (chrono::Utc::now() - chrono::Duration::days(7)).to_rfc3339();
        // What the server says each page took (`Server-Timing`), in microseconds.
        let server_side = Arc::new(std::sync::Mutex::new(new_histogram()));
        let page = {
            let (gql, generator, since) = (gql.clone(), generator.clone(), since.clone());
            let server_side = server_side.clone();
            move |_w: usize, n: u64| {
                let (gql, generator, since) = (gql.clone(), generator.clone(), since.clone());
                let server_side = server_side.clone();
                async move {
                    let actor = generator.actor(&mut SmallRng::seed_from_u64(n.wrapping_mul(7919)));
                    let (_, spent) = gql
                        .timed_call(PAGE, json!({ "actors": [actor], "since": since }))
                        .await?;
                    let mut server_side = server_side.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = server_side.record(spent.as_micros() as u64);
                    Ok(1)
                }
            }
        };
        let sampling = PeakRss::watch(server.pid());
        let stats = load::run(8, self.duration, page.clone()).await;
        let raw = pgbench::run(
            db,
            "page",
            &[pgbench::page("tenant-0", 7)],
            8,
            self.duration.as_secs(),
        )?;
        let ratio = stats.per_second() / raw.tps;
        report.add(
            "filtered page (actor, last 7 days), 1M events, 8 clients",
            rate(&stats, "requests"),
            pg_rate(&raw, 1.0, "queries"),
            Some(ratio),
            ">= 0.40",
            Some(ratio >= 0.4),
        );
        let rss = sampling.peak();
        report.add(
            "server memory (RSS) under the query load",
            format!("{rss:.0} MiB"),
            String::new(),
            None,
            "< 150 MiB",
            Some(rss < 150.0),
        );

        server_side
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        let alone = load::run(1, Duration::from_secs(5), page).await;
        report.add(
            "filtered page, one client at a time",
            rate(&alone, "requests"),
            String::new(),
            None,
            "p50 < 2 ms",
            Some(alone.ms(50.0) < 2.0),
        );
        server_time(db, &server_side, report)?;

        Ok(())
    }

    pub async fn seed(&self, server: &Server, events: u64) -> anyhow::Result<u64> {
        let generator = Arc::new(Generator::new());
        let clients: Arc<Vec<Graphql>> = Arc::new(
            TENANTS
                .iter()
                .map(|(t, _)| Graphql::new(&server.url, token(t)))
                .collect(),
        );
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut workers = Vec::new();
        for w in 0..3u64 {
            let (generator, clients, done) = (generator.clone(), clients.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(w);
                while done.fetch_add(1000, std::sync::atomic::Ordering::Relaxed) < events {
                    let tenant = generator.tenant(&mut rng);
                    let client = TENANTS.iter().position(|(t, _)| *t == tenant).unwrap_or(0);
                    let inputs: Vec<Value> =
                        (0..1000).map(|_| generator.event(&mut rng, 30.0)).collect();
                    clients[client]
                        .call(BATCH, json!({ "inputs": inputs }))
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        for worker in workers {
            worker.await??;
        }
        Ok(done.load(std::sync::atomic::Ordering::Relaxed).min(events))
    }

    /// Trails of 100 federation entities in one request: latency and SQL statements.
    pub async fn federation(
        &self,
        seeded: Option<&str>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let db = match seeded {
            Some(db) => db.to_owned(),
            None => {
                let db = fresh_database(&self.admin_url, "audit_bench_federation")?;
                let server = Server::start(&self.bin, &db, 18184).await?;
                self.seed(&server, 100_000).await?;
                db
            }
        };
        let server = Server::start(&self.bin, &db, 18185).await?;
        let gql = Graphql::new(&server.url, token("tenant-0"));
        let trails = "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditTarget { id auditLogs(first: 10) { nodes { id action occurredAt actor { id } } } } } }";
        let counted = "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditTarget { id auditLogs(first: 10) { totalCount nodes { id action occurredAt actor { id } } } } } }";
        for (entities, query, label) in [
            (10usize, trails, ""),
            (100, trails, ""),
            (100, counted, " + totalCount"),
        ] {
            let representations: Vec<Value> = (0..entities)
                .map(|i| {
                    let kind = ["project", "role", "api_key", "user", "service"][i % 5];
                    json!({ "__typename": "AuditTarget", "type": kind, "id": format!("t-{i}") })
                })
                .collect();
            let mut latency = new_histogram();
            let before = server.statements().await?;
            let rounds = 100;
            for _ in 0..rounds {
                let t0 = Instant::now();
                let data = gql.call(query, json!({ "r": representations })).await?;
                let _ = latency.record(t0.elapsed().as_micros() as u64);
                anyhow::ensure!(
                    data["_entities"]
                        .as_array()
                        .is_some_and(|e| e.len() == entities)
                );
            }
            let statements = (server.statements().await? - before) as f64 / rounds as f64;
            report.add(
                &format!(
                    "federation: {entities} AuditTarget entities, auditLogs(first: 10){label}"
                ),
                format!(
                    "p50 {:.1} / p99 {:.1} ms, {statements:.1} SQL statements per request",
                    latency.value_at_percentile(50.0) as f64 / 1000.0,
                    latency.value_at_percentile(99.0) as f64 / 1000.0
                ),
                String::new(),
                None,
                "statements do not grow with entities",
                None,
            );
        }
        Ok(())
    }
}

/// The same tenant-wide page, page 1 against page 2,000; page 1's p50, in ms.
async fn depth(gql: &Graphql, filter: &Value, report: &mut Report) -> anyhow::Result<f64> {
    let deep_query = "query($f: AuditLogFilter, $after: String) { auditLogs(first: 50, after: $after, filter: $f) { edges { node { id action occurredAt } } pageInfo { endCursor } } }";
    let mut cursor = Value::Null;
    for _ in 1..2000 {
        let data = gql
            .call(deep_query, json!({ "f": filter, "after": cursor }))
            .await?;
        cursor = data["auditLogs"]["pageInfo"]["endCursor"].clone();
    }
    let (mut first, mut deep) = (new_histogram(), new_histogram());
    for _ in 0..300 {
        for (after, histogram) in [(Value::Null, &mut first), (cursor.clone(), &mut deep)] {
            let t0 = Instant::now();
            gql.call(deep_query, json!({ "f": filter, "after": after }))
                .await?;
            let _ = histogram.record(t0.elapsed().as_micros() as u64);
        }
    }
    let (p1, p2000) = (
        first.value_at_percentile(50.0) as f64 / 1000.0,
        deep.value_at_percentile(50.0) as f64 / 1000.0,
    );
    report.add(
        "keyset depth: page 2,000 vs page 1 (p50)",
        format!("{p2000:.2} ms vs {p1:.2} ms"),
        String::new(),
        Some(p2000 / p1),
        "<= 1.5",
        Some(p2000 / p1 <= 1.5),
    );

    Ok(p1)
}

/// The same page with `totalCount` selected, which counts every matching event.
async fn counted(
    gql: &Graphql,
    filter: &Value,
    p1: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let count_query = "query($f: AuditLogFilter) { auditLogs(first: 50, filter: $f) { totalCount edges { node { id } } } }";
    let mut counted = new_histogram();
    for _ in 0..30 {
        let t0 = Instant::now();
        gql.call(count_query, json!({ "f": filter })).await?;
        let _ = counted.record(t0.elapsed().as_micros() as u64);
    }
    report.add(
        "the same page with totalCount selected (counts ~500k rows)",
        format!(
            "p50 {:.1} ms (vs {p1:.2} ms without)",
            counted.value_at_percentile(50.0) as f64 / 1000.0
        ),
        String::new(),
        None,
        "costs nothing unless selected",
        None,
    );
    Ok(())
}

/// The server's own time per page (`Server-Timing`) beside the same SQL from one pgbench
/// client.
fn server_time(
    db: &str,
    server_side: &std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let server_side = server_side
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let p50 = server_side.value_at_quantile(0.5) as f64 / 1000.0;
    // What the database alone takes: the same SQL from one pgbench client.
    let raw = pgbench::run(db, "page-1", &[pgbench::page("tenant-0", 7)], 1, 5)?;
    report.add(
        "filtered page, one client at a time: time in the server (`Server-Timing`)",
        format!(
            "p50 {p50:.2} / p99 {:.2} ms",
            server_side.value_at_quantile(0.99) as f64 / 1000.0
        ),
        format!("the same SQL from one client: p50 {:.2} ms", raw.p50),
        None,
        "p50 < 1 ms",
        Some(p50 < 1.0),
    );

    Ok(())
}
