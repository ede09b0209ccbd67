//! The client kit measured: one `audit-client` delivering in batches beside audit-bench's
//! own batch load, what `enqueue()` costs the caller, and what `AuditLayer` adds to a
//! request.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use audit_client::{AuditClient, Credential, Event, OnFull};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tower::{Layer, Service, ServiceExt};

use crate::events::Generator;
use crate::load::token;
use crate::report::{Report, rate};
use crate::scenarios::Bench;
use crate::server::{Server, fresh_database};

/// The rate `enqueue()` latency is measured at: half the throughput target.
const PACED_RATE: u64 = 5_000;

impl Bench {
    pub async fn client(&self, report: &mut Report) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_client")?;
        let server = Server::start(&self.bin, &db, 18185).await?;
        let generator = Generator::new();
        let mut rng = SmallRng::seed_from_u64(11);
        let events: Vec<Event> = (0..10_000)
            .map(|_| serde_json::from_value(generator.event(&mut rng, 1.0)))
            .collect::<Result<_, _>>()?;

        // audit-bench's own batch load, the baseline, in the same run.
        let baseline = self.batch_load(&server, 4).await;

        self.delivery(&server, &events, &baseline, report).await?;
        self.enqueue_latency(&server, &events, report).await?;
        layer_overhead(&server, report).await
    }

    /// One client, one producer enqueueing as fast as the buffer lets it, beside the
    /// batch load.
    async fn delivery(
        &self,
        server: &Server,
        events: &[Event],
        baseline: &crate::load::Stats,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        // One client, one producer enqueueing as fast as the buffer lets it.
        let audit = client(server, "tenant-1", None)?;
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < self.duration {
            audit
                .enqueue(events[(sent % 10_000) as usize].clone())
                .await?;
            sent += 1;
        }
        audit.flush().await;
        let elapsed = started.elapsed().as_secs_f64();
        let metrics = audit.metrics();
        let per_second = metrics.delivered as f64 / elapsed;
        let ratio = per_second / baseline.per_second();
        report.add(
            "audit-client: one client's batched delivery (enqueue until flushed)",
            format!(
                "{per_second:.0} events/s ({} delivered, {} retries, {} dead-lettered)",
                metrics.delivered, metrics.retries, metrics.dead_lettered
            ),
            format!("audit-bench batch load: {}", rate(baseline, "events")),
            Some(ratio),
            ">= 10,000/s and >= 0.60",
            Some(per_second >= 10_000.0 && ratio >= 0.6),
        );

        Ok(())
    }

    /// What one enqueue() costs the calling task, in memory and with the spool.
    async fn enqueue_latency(
        &self,
        server: &Server,
        events: &[Event],
        report: &mut Report,
    ) -> anyhow::Result<()> {
        // What one enqueue() costs the calling task, at a rate the client sustains, beside
        // the same paced loop timing only a copy of the event: the floor this machine puts
        // under any microsecond-sized step after a sleep.
        let floor = paced(events, self.duration, |event| async move {
            std::hint::black_box(event.clone());
            Ok(())
        })
        .await?;
        let floor_text = format!("copying the event instead: {}", percentiles(&floor));
        let spool = tempdir()?;
        let fsync_spool = tempdir()?;
        for (what, spool) in [
            ("in memory", None),
            ("with the spool (written)", Some((spool.as_path(), false))),
            (
                "with the spool (fsync per event)",
                Some((fsync_spool.as_path(), true)),
            ),
        ] {
            let audit = client(server, "tenant-2", spool)?;
            let latency = paced_enqueue(&audit, events, self.duration).await?;
            audit.flush().await;
            let p99 = latency.value_at_percentile(99.0) as f64 / 1000.0;
            let target = if spool.is_none() {
                "p99 < 5 µs"
            } else {
                "(the spool's cost)"
            };
            report.add(
                &format!("enqueue() on the caller's task, {what}, {PACED_RATE} events/s"),
                percentiles(&latency),
                floor_text.clone(),
                None,
                target,
                spool.is_none().then_some(p99 < 5.0),
            );
        }
        std::fs::remove_dir_all(spool).ok();
        std::fs::remove_dir_all(fsync_spool).ok();

        // The same with nothing else running: audit-service unreachable, so the machine's
        // two cores are not busy storing the events (what is left is the call's own cost).
        // Room for every event of the run: none is delivered, and a full buffer would make
        // enqueue() wait for ever.
        let room = (PACED_RATE * self.duration.as_secs()) as usize + 1000;
        let idle = AuditClient::builder("http://127.0.0.1:9/graphql")
            .backoff(Duration::from_secs(5), Duration::from_secs(5))
            .buffer(room, OnFull::Wait)
            .buffer_bytes(room * 2048)
            .build()?;
        let latency = paced_enqueue(&idle, events, self.duration).await?;
        let p99 = latency.value_at_percentile(99.0) as f64 / 1000.0;
        report.add(
            &format!("enqueue() on the caller's task, in memory, {PACED_RATE} events/s, machine otherwise idle"),
            percentiles(&latency),
            floor_text,
            None,
            "p99 < 5 µs",
            Some(p99 < 5.0),
        );
        drop(idle);

        Ok(())
    }
}

/// AuditLayer around a trivial handler, called in process: with and without it.
async fn layer_overhead(server: &Server, report: &mut Report) -> anyhow::Result<()> {
    // AuditLayer around a trivial handler, called in process: with and without it.
    let audit = client(server, "tenant-3", None)?;
    let bare = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let requests = 200_000;
    let without = call_many(bare, requests).await?;
    let with = call_many(
        audit
            .layer("project.updated")
            .target(
                "project",
                audit_client::layer::from_header("x-project".parse()?),
            )
            .layer(bare),
        requests,
    )
    .await?;
    audit.flush().await;
    let us = |h: &Histogram<u64>, p: f64| h.value_at_percentile(p) as f64 / 1000.0;
    let overhead = us(&with, 99.0) - us(&without, 99.0);
    report.add(
        "AuditLayer on a trivial handler, per request",
        format!("p50 {:.2} / p99 {:.2} µs", us(&with, 50.0), us(&with, 99.0)),
        format!(
            "without the layer: p50 {:.2} / p99 {:.2} µs",
            us(&without, 50.0),
            us(&without, 99.0)
        ),
        None,
        "< 10 µs p99 added",
        Some(overhead < 10.0),
    );
    Ok(())
}

fn client(
    server: &Server,
    tenant: &str,
    spool: Option<(&std::path::Path, bool)>,
) -> anyhow::Result<AuditClient> {
    let token = token(tenant);
    let mut builder = AuditClient::builder(format!("{}/graphql", server.url))
        .credential(Credential::token(move || {
            let token = token.clone();
            async move { Ok(token) }
        }))
        .batch(1000, Duration::from_millis(20));
    if let Some((dir, sync)) = spool {
        builder = builder.spool(dir, sync);
    }
    Ok(builder.build()?)
}

/// Calls `step` at `PACED_RATE` for `duration` with a copy of the next event, made before
/// the clock starts, timing each call in nanoseconds.
async fn paced<F, Fut>(
    events: &[Event],
    duration: Duration,
    mut step: F,
) -> anyhow::Result<Histogram<u64>>
where
    F: FnMut(Event) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut latency = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / PACED_RATE));
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < duration {
        tick.tick().await;
        let event = events[n % events.len()].clone();
        let t0 = Instant::now();
        step(event).await?;
        latency.record(t0.elapsed().as_nanos() as u64)?;
        n += 1;
    }
    Ok(latency)
}

/// `enqueue()` paced.
async fn paced_enqueue(
    audit: &AuditClient,
    events: &[Event],
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    paced(events, duration, |event| async move {
        Ok(audit.enqueue(event).await?)
    })
    .await
}

/// Calls a service `count` times in a row, timing each call, in nanoseconds.
async fn call_many<S>(mut service: S, count: usize) -> anyhow::Result<Histogram<u64>>
where
    S: Service<http::Request<()>>,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let mut latency = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    for i in 0..count {
        let request = http::Request::builder()
            .uri("/projects/p-1")
            .header("x-project", format!("p-{}", i % 100))
            .header("user-agent", "bench")
            .body(())?;
        let t0 = Instant::now();
        let response = service.ready().await?.call(request).await?;
        latency.record(t0.elapsed().as_nanos() as u64)?;
        drop(response);
    }
    Ok(latency)
}

/// `p50 / p99 / p99.9` of a histogram in nanoseconds, in microseconds.
fn percentiles(latency: &Histogram<u64>) -> String {
    let us = |p: f64| latency.value_at_percentile(p) as f64 / 1000.0;
    format!(
        "p50 {:.2} / p99 {:.2} / p99.9 {:.2} µs",
        us(50.0),
        us(99.0),
        us(99.9)
    )
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("audit-bench-spool-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    )
}
