//! The measurements, each against a fresh database, each beside its pgbench equivalent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::broadcast::Broadcast;
use crate::events::{self, Generator, TENANTS};
use crate::load::{self, Graphql, new_histogram, token};
use crate::pgbench;
use crate::server::{PeakRss, Server, counter, fresh_database, migrate, psql};
use crate::sqlite;

const BATCH: &str =
    "mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { id } }";
const SINGLE: &str = "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }";
const PAGE: &str = "query($actors: [String!], $since: DateTime) { auditLogs(first: 50, filter: { actorIds: $actors, occurredAfter: $since }) { edges { cursor node { id action occurredAt actor { type id } target { type id } outcome metadata } } pageInfo { hasNextPage endCursor } } }";

pub struct Bench {
    pub admin_url: String,
    pub bin: String,
    pub duration: Duration,
}

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

fn pg_rate(r: &pgbench::Result, per_tx: f64, unit: &str) -> String {
    format!(
        "{:.0} {unit}/s (p50 {:.1} / p95 {:.1} / p99 {:.1} ms)",
        r.tps * per_tx,
        r.p50,
        r.p95,
        r.p99
    )
}

/// Request bodies made once, so the load generator spends its CPU on sending.
fn bodies(query: &str, variables: impl IntoIterator<Item = Value>) -> Arc<Vec<bytes::Bytes>> {
    Arc::new(
        variables
            .into_iter()
            .map(|v| Graphql::body(query, v))
            .collect(),
    )
}

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
        let stats = self.batch_load(&server, 4).await;
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
            let measured = pgbench::run(
                &raw,
                name,
                &scripts(form)?,
                clients,
                self.duration.as_secs(),
            )?;
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

        let stats = self.single_load(&server, 64).await;
        let raw_one = pgbench::run(
            &raw,
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
            "hourly rollup's share of ingest transaction time (auditLogStats)",
            format!("{:.1}%", rollup * 100.0),
            String::new(),
            None,
            "< 5%",
            Some(rollup < 0.05),
        );
        drop(server);
        self.ingest_sqlite(report).await
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

    /// Seeds `events` realistic events, then measures filtered pages beside pgbench, the cost
    /// of depth, and memory. Returns the seeded database's URL.
    pub async fn query(&self, events: u64, report: &mut Report) -> anyhow::Result<String> {
        let db = fresh_database(&self.admin_url, "audit_bench_query")?;
        let server = Server::start(&self.bin, &db, 18183).await?;
        let seeded = self.seed(&server, events).await?;
        psql(&db, "ANALYZE control_plane.audit_logs")?;
        eprintln!("seeded {seeded} events");

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
            &db,
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
        let server_side = server_side
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let p50 = server_side.value_at_quantile(0.5) as f64 / 1000.0;
        // What the database alone takes: the same SQL from one pgbench client.
        let raw = pgbench::run(&db, "page-1", &[pgbench::page("tenant-0", 7)], 1, 5)?;
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

        // Depth: the same tenant-wide filter, page 1 against page 2,000.
        let filter = json!({ "occurredAfter": (chrono::Utc::now() - chrono::Duration::days(31)).to_rfc3339() });
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
        Ok(db)
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

    /// WebSocket subscribers while events are logged at a steady rate: time from sending
    /// an event to each subscriber receiving it. The target point, 1,000 subscribers at
    /// 500 events/s, and two lighter ones to show where capacity lies.
    pub async fn subscribers(&self, report: &mut Report) -> anyhow::Result<()> {
        let loads = [
            // 1,000 subscribers over 10 tenants, half of them with an `actions` filter, and
            // 500 events/s spread over the tenants.
            (1000, 500, 10, "p99 < 50 ms, nothing dropped, RSS < 150 MB"),
            (1000, 500, 1, "p99 < 100 ms"),
            (1000, 50, 1, ""),
            (100, 500, 1, ""),
        ];
        for (subscribers, per_second, tenants, target) in loads {
            let load = Load {
                subscribers,
                per_second,
                tenants,
            };
            self.live_tail(load, target, report).await?;
        }
        Ok(())
    }

    /// The live tail under `load`, and the raw broadcast baseline under the same load.
    async fn live_tail(&self, load: Load, target: &str, report: &mut Report) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_live")?;
        let server = Server::start(&self.bin, &db, 18186).await?;
        let url = format!("{}/graphql", server.url.replacen("http", "ws", 1));
        let clients: Vec<Graphql> = (0..load.tenants)
            .map(|t| Graphql::new(&server.url, token(&format!("tenant-{t}"))))
            .collect();
        let ours = self
            .fan_out(&url, load, Some(&server), move |tick| {
                let gql = clients[(tick % load.tenants) as usize].clone();
                tokio::spawn(async move {
                    let input = json!({ "actor": { "type": "SERVICE", "id": "bench" }, "action": "bench.tick", "metadata": { "sentAt": chrono::Utc::now().timestamp_micros() } });
                    let _ = gql.call(SINGLE, json!({ "input": input })).await;
                });
            })
            .await?;
        drop(server);
        let raw = Broadcast::start(load.tenants).await?;
        let frames = Arc::new(raw);
        let publisher = frames.clone();
        let baseline = self
            .fan_out(&frames.url, load, None, move |tick| {
                // The server's frame for this subscription, with the same content and size.
                let sent = chrono::Utc::now().timestamp_micros();
                publisher.publish(tick % load.tenants, format!(
                    r#"{{"type":"next","id":"1","payload":{{"data":{{"auditLogCreated":{{"metadata":{{"sentAt":{sent}}}}}}}}}}}"#
                ));
            })
            .await?;
        let rate = |f: &FanOut| f.delivered as f64 / self.duration.as_secs_f64();
        let p99 = ours.ms(99.0);
        let tenants = match load.tenants {
            1 => String::new(),
            n => format!(" over {n} tenants (half filtered)"),
        };
        report.add(
            &format!(
                "live tail: {} subscribers{tenants}, {} events/s",
                load.subscribers, load.per_second
            ),
            ours.describe(),
            format!("raw broadcast: {}", baseline.describe()),
            Some(rate(&ours) / rate(&baseline).max(1.0)),
            target,
            (!target.is_empty()).then(|| {
                let limit = if load.tenants > 1 { 50.0 } else { 100.0 };
                p99 < limit && ours.delivered == ours.expected && ours.peak_rss < 143.0
            }),
        );
        Ok(())
    }

    /// Connects `load.subscribers` graphql-transport-ws subscribers to `url` (subscriber `i`
    /// in tenant `i % tenants`, every second one with an `actions` filter), calls `publish`
    /// with the tick number at `per_second` for the run's duration (the event of tick `k`
    /// goes to tenant `k % tenants`), and measures send-to-delivery latency.
    async fn fan_out(
        &self,
        url: &str,
        load: Load,
        server: Option<&Server>,
        publish: impl Fn(u64),
    ) -> anyhow::Result<FanOut> {
        let latency = Arc::new(std::sync::Mutex::new(new_histogram()));
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut subscribers = Vec::new();
        for i in 0..load.subscribers {
            let auth = format!(
                "Bearer {}",
                token(&format!("tenant-{}", i as u64 % load.tenants))
            );
            let query = match (load.tenants > 1, i % 2) {
                (true, 1) => {
                    r#"subscription { auditLogCreated(filter: { actions: ["bench.*"] }) { metadata } }"#
                }
                _ => "subscription { auditLogCreated { metadata } }",
            };
            let mut request = url.into_client_request()?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
            socket
                .send(Message::Text(
                    json!({ "type": "connection_init", "payload": { "authorization": auth } })
                        .to_string()
                        .into(),
                ))
                .await?;
            if server.is_some() {
                socket.next().await;
            }
            socket
                .send(Message::Text(
                    json!({ "id": "1", "type": "subscribe", "payload": { "query": query } })
                        .to_string()
                        .into(),
                ))
                .await?;
            let (latency, received) = (latency.clone(), received.clone());
            subscribers.push(tokio::spawn(async move {
                while let Some(Ok(message)) = socket.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    // Cheaper than parsing JSON 500,000 times a second on the same two cores.
                    let Some(sent) = text
                        .split("\"sentAt\":")
                        .nth(1)
                        .and_then(|r| r.split(['}', ',']).next())
                        .and_then(|n| n.parse::<i64>().ok())
                    else {
                        if text.contains("\"ping\"") {
                            let _ = socket
                                .send(Message::Text(r#"{"type":"pong"}"#.into()))
                                .await;
                        }
                        continue;
                    };
                    let micros = (chrono::Utc::now().timestamp_micros() - sent).max(1) as u64;
                    let _ = latency.lock().map(|mut h| h.record(micros));
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / load.per_second));
        let deadline = Instant::now() + self.duration;
        let mut sent = 0u64;
        let mut peak_rss = 0f64;
        while Instant::now() < deadline {
            ticks.tick().await;
            publish(sent);
            sent += 1;
            if let Some(server) = server
                && sent.is_multiple_of(250)
            {
                peak_rss = peak_rss.max(server.rss_mib());
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for s in &subscribers {
            s.abort();
        }
        let histogram = latency
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_histogram());
        Ok(FanOut {
            histogram,
            expected: sent * load.subscribers as u64 / load.tenants,
            delivered: received.load(std::sync::atomic::Ordering::Relaxed),
            peak_rss,
        })
    }
}

/// The shape of a fan-out run.
#[derive(Clone, Copy)]
struct Load {
    subscribers: usize,
    per_second: u64,
    tenants: u64,
}

/// What the subscribers of one fan-out run saw.
struct FanOut {
    histogram: hdrhistogram::Histogram<u64>,
    expected: u64,
    delivered: u64,
    peak_rss: f64,
}

impl FanOut {
    fn ms(&self, percentile: f64) -> f64 {
        self.histogram.value_at_percentile(percentile) as f64 / 1000.0
    }

    fn describe(&self) -> String {
        let rss = match self.peak_rss {
            0.0 => String::new(),
            mib => format!("; server RSS {mib:.0} MiB"),
        };
        format!(
            "p50 {:.1} / p99 {:.1} ms send-to-delivery; {} of {} deliveries{rss}",
            self.ms(50.0),
            self.ms(99.0),
            self.delivered,
            self.expected
        )
    }
}
