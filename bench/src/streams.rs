//! Log streams (docs/streams.md): how fast a stream drains a backlog to a webhook and to
//! NATS JetStream, beside the ingest rate that built the backlog; the end-to-end lag of a
//! webhook stream at 500 events/s; and what streams cost ingest (the batch load with two
//! streams delivering beside the same load with none, alternated, medians).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::events;
use crate::load::{self, Graphql, median, new_histogram, token};
use crate::report::{Report, rate};
use crate::scenarios::{Bench, SINGLE, bodies};
use crate::server::{Server, fresh_database};

/// Events of the backlog each sink drains.
const BACKLOG: u64 = 100_000;
/// Alternated runs of the load with and without streams.
const ROUNDS: usize = 3;
/// The paced load of the lag measurement.
const PACED_PER_SECOND: u64 = 500;

const CREATE: &str =
    "mutation($input: AuditStreamInput!) { createAuditStream(input: $input) { id } }";
const DELETE: &str = "mutation($id: ID!) { deleteAuditStream(id: $id) }";

/// A webhook receiver that acknowledges at once without reading what it got (as cheap as a
/// receiver can be on the server's machine), except while it measures, for events that
/// carry `metadata.sentMicros`, the time from sending to arrival.
#[derive(Clone, Default)]
struct Receiver {
    lag: Arc<Mutex<Option<Histogram<u64>>>>,
}

impl Receiver {
    async fn start(&self) -> anyhow::Result<String> {
        let state = self.clone();
        let app =
            axum::Router::new().fallback(axum::routing::post(move |body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let now = now_micros();
                    let mut lag = state.lag.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(histogram) = lag.as_mut() {
                        let batch: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
                        for event in &batch {
                            if let Some(sent) = event["metadata"]["sentMicros"].as_u64() {
                                let _ = histogram.record(now.saturating_sub(sent));
                            }
                        }
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(url)
    }
}

/// Microseconds since the epoch: below 2^53, so the canonical JSON keeps it an integer.
fn now_micros() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or_default()
}

/// The stream's `deliveredSequence`, and the tenant's head.
async fn progress(gql: &Graphql, id: &str) -> anyhow::Result<(i64, i64)> {
    let found = gql
        .call(
            "{ auditStreams { id deliveredSequence lagEvents } }",
            json!({}),
        )
        .await?;
    let stream = (found["auditStreams"].as_array())
        .and_then(|streams| streams.iter().find(|s| s["id"] == id))
        .ok_or_else(|| anyhow::anyhow!("stream {id} is gone"))?;
    let delivered: i64 = stream["deliveredSequence"]
        .as_str()
        .unwrap_or("0")
        .parse()?;
    Ok((
        delivered,
        delivered + stream["lagEvents"].as_i64().unwrap_or_default(),
    ))
}

/// Waits until the stream has delivered through the head; returns how long that took.
async fn drained(gql: &Graphql, id: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let (delivered, head) = progress(gql, id).await?;
        if delivered >= head {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "stream {id} stalled at {delivered} of {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create(gql: &Graphql, input: Value) -> anyhow::Result<String> {
    let created = gql.call(CREATE, json!({ "input": input })).await?;
    Ok(created["createAuditStream"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

impl Bench {
    pub async fn streams(&self, report: &mut Report) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_streams")?;
        let server = Server::start(&self.bin, &db, 18197).await?;
        let gql = Graphql::new(&server.url, token("tenant-0"));
        let receiver = Receiver::default();
        let hook = receiver.start().await?;
        let jetstream =
            async_nats::jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await?);
        // A JetStream stream per phase: a redelivered event id within the duplicate window
        // is dropped, which would hide the drain's events behind the first phase's.
        let stream = |phase: &str| {
            let subject = format!("bench.{phase}.{}", uuid::Uuid::now_v7().simple());
            let config = async_nats::jetstream::stream::Config {
                name: subject.replace('.', "_"),
                subjects: vec![subject.clone()],
                ..Default::default()
            };
            let jetstream = jetstream.clone();
            async move { anyhow::Ok((subject, jetstream.create_stream(config).await?)) }
        };
        let (subject, _) = stream("cost").await?;

        // What streams cost ingest: alternated runs with none, a webhook stream, a NATS
        // stream (each sink shares the machine's two cores with the server).
        let sinks = [
            (
                "a webhook stream",
                json!({ "name": "cost-hook", "kind": "WEBHOOK", "url": hook }),
            ),
            (
                "a NATS stream",
                json!({ "name": "cost-nats", "kind": "NATS", "url": "nats://127.0.0.1:4222", "subject": subject }),
            ),
        ];
        // Each run, and the server's CPU time per event in it (delivery included).
        let mut runs: [Vec<load::Stats>; 3] = Default::default();
        let mut cpu: [Vec<f64>; 3] = Default::default();
        let timed = |cpu: &mut Vec<f64>, before: Duration, stats: &load::Stats| {
            let spent = server.cpu().saturating_sub(before);
            cpu.push(spent.as_secs_f64() * 1e6 / stats.items.max(1) as f64);
        };
        for _ in 0..ROUNDS {
            let before = server.cpu();
            let stats = self.batch_load(&server, 4).await;
            timed(&mut cpu[0], before, &stats);
            runs[0].push(stats);
            for (i, (_, input)) in sinks.iter().enumerate() {
                let before = server.cpu();
                let id = create(&gql, input.clone()).await?;
                let stats = self.batch_load(&server, 4).await;
                drained(&gql, &id).await?;
                timed(&mut cpu[i + 1], before, &stats);
                runs[i + 1].push(stats);
                gql.call(DELETE, json!({ "id": id })).await?;
            }
        }
        let cpu = cpu.map(|mut runs| {
            runs.sort_by(f64::total_cmp);
            runs[runs.len() / 2]
        });
        let [without, hook_runs, nats_runs] = runs;
        let without = median(without);
        for (i, ((what, _), with)) in sinks.iter().zip([hook_runs, nats_runs]).enumerate() {
            let with = median(with);
            let ratio = with.per_second() / without.per_second();
            report.add(
                &format!("batch ingest, 1,000-event batches, 4 clients: with {what} delivering / with no stream (medians of {ROUNDS} alternated runs)"),
                rate(&with, "events"),
                rate(&without, "events"),
                Some(ratio),
                ">= 0.95",
                Some(ratio >= 0.95),
            );
            report.add(
                &format!("the server's CPU per ingested event, its delivery included: with {what} / with no stream (medians)"),
                format!("{:.1} µs", cpu[i + 1]),
                format!("{:.1} µs", cpu[0]),
                Some(cpu[0] / cpu[i + 1]),
                "",
                None,
            );
        }
        let ingest = without.per_second();

        // Draining a backlog of BACKLOG events, from the first sequence, to each sink.
        let (_, head) = {
            let id = create(
                &gql,
                json!({ "name": "probe", "kind": "WEBHOOK", "url": hook }),
            )
            .await?;
            let found = progress(&gql, &id).await?;
            gql.call(DELETE, json!({ "id": id })).await?;
            found
        };
        anyhow::ensure!(
            head as u64 >= BACKLOG,
            "the ingest runs left only {head} events"
        );
        let from = (head as u64 - BACKLOG + 1).to_string();
        let (subject, mut nats) = stream("drain").await?;
        for (name, input) in [
            (
                "a webhook (local receiver)",
                json!({ "name": "drain-hook", "kind": "WEBHOOK", "url": hook, "fromSequence": from }),
            ),
            (
                "NATS JetStream (publish with acknowledgement)",
                json!({ "name": "drain-nats", "kind": "NATS", "url": "nats://127.0.0.1:4222", "subject": subject, "fromSequence": from }),
            ),
        ] {
            let id = create(&gql, input).await?;
            let took = drained(&gql, &id).await?;
            gql.call(DELETE, json!({ "id": id })).await?;
            let per_second = BACKLOG as f64 / took.as_secs_f64();
            report.add(
                &format!("stream delivery to {name}: a backlog of {BACKLOG} events drained / batch ingest of the same events (4 clients)"),
                format!("{per_second:.0} events/s"),
                format!("{ingest:.0} events/s"),
                Some(per_second / ingest),
                "",
                None,
            );
        }
        let held = nats.info().await?.state.messages;
        anyhow::ensure!(
            held >= BACKLOG,
            "JetStream holds {held} of {BACKLOG} events"
        );

        // End-to-end lag at 500 events/s: from sending the mutation to the webhook's receipt.
        *receiver.lag.lock().unwrap_or_else(|e| e.into_inner()) = Some(new_histogram());
        let id = create(
            &gql,
            json!({ "name": "lag", "kind": "WEBHOOK", "url": hook }),
        )
        .await?;
        let sent = self.paced(&gql).await;
        drained(&gql, &id).await?;
        let lag = receiver
            .lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(new_histogram);
        let p99 = lag.value_at_quantile(0.99) as f64 / 1000.0;
        report.add(
            &format!("end-to-end lag, mutation sent to webhook received, {PACED_PER_SECOND} events/s for {} s ({} events): p50 / p99", self.duration.as_secs(), lag.len()),
            format!("p50 {:.1} ms, p99 {p99:.1} ms", lag.value_at_quantile(0.5) as f64 / 1000.0),
            format!("{sent} sent"),
            None,
            "p99 < 1 s",
            Some(p99 < 1000.0 && lag.len() == sent),
        );
        Ok(())
    }

    /// Single events at `PACED_PER_SECOND` for the run's duration, each carrying the time
    /// it was sent; returns how many were sent.
    async fn paced(&self, gql: &Graphql) -> u64 {
        let template = events::fixed(1, 1).remove(0).remove(0);
        let mut tick = tokio::time::interval(Duration::from_secs(1) / PACED_PER_SECOND as u32);
        let total = PACED_PER_SECOND * self.duration.as_secs();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..total {
            tick.tick().await;
            let mut event = template.clone();
            event["metadata"] = json!({ "sentMicros": now_micros() });
            let body = bodies(SINGLE, [json!({ "input": event })]);
            let gql = gql.clone();
            tasks.spawn(async move { gql.send(body[0].clone()).await.is_ok() });
        }
        let mut sent = 0;
        while let Some(done) = tasks.join_next().await {
            sent += u64::from(done.unwrap_or(false));
        }
        sent
    }
}
