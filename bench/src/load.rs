//! Closed-loop load: N workers, each sending its next request when the last is answered,
//! for a fixed time; latencies in an HDR histogram.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// What a load run measured.
pub struct Stats {
    pub requests: u64,
    /// Events (or rows) the requests carried.
    pub items: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
}

impl Stats {
    pub fn per_second(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile, in milliseconds.
    pub fn ms(&self, percentile: f64) -> f64 {
        self.latency.value_at_percentile(percentile) as f64 / 1000.0
    }
}

/// Runs `work` from `workers` tasks for `duration`. `work(worker, n)` returns how many
/// items its request carried.
pub async fn run<F, Fut>(workers: usize, duration: Duration, work: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let work = Arc::new(work);
    let shared = Arc::new(Mutex::new(empty()));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let work = work.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = new_histogram();
            let (mut requests, mut items, mut errors) = (0, 0, 0);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match work(worker, requests).await {
                    Ok(n) => {
                        items += n;
                        let _ = local.record(t0.elapsed().as_micros() as u64);
                    }
                    Err(err) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("request failed: {err:#}");
                        }
                    }
                }
                requests += 1;
            }
            let mut stats = shared.lock().await;
            stats.requests += requests;
            stats.items += items;
            stats.errors += errors;
            let _ = stats.latency.add(&local);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut stats = std::mem::replace(&mut *shared.lock().await, empty());
    stats.elapsed = started.elapsed();
    stats
}

fn empty() -> Stats {
    Stats {
        requests: 0,
        items: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram(),
    }
}

#[expect(clippy::expect_used, reason = "constant bounds that are valid")]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// A GraphQL client for one server and credential.
#[derive(Clone)]
pub struct Graphql {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Graphql {
    pub fn new(base_url: &str, token: String) -> Self {
        Graphql {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap_or_default(),
            url: format!("{base_url}/graphql"),
            token,
        }
    }

    /// Sends a request made earlier with `body`, and only checks it succeeded: the cheapest
    /// way to keep the server busy from the same machine.
    pub async fn send(&self, body: bytes::Bytes) -> anyhow::Result<()> {
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.bytes().await?;
        if !status.is_success() || text.windows(9).any(|w| w == b"\"errors\"") {
            anyhow::bail!(
                "{status}: {}",
                String::from_utf8_lossy(&text[..text.len().min(300)])
            );
        }
        Ok(())
    }

    /// A request body for `send`.
    pub fn body(query: &str, variables: Value) -> bytes::Bytes {
        bytes::Bytes::from(json!({ "query": query, "variables": variables }).to_string())
    }

    /// Sends a request; fails on transport errors and GraphQL errors.
    pub async fn call(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        Ok(self.timed_call(query, variables).await?.0)
    }

    /// `call`, with the time the server says it spent (`Server-Timing: app;dur=`).
    pub async fn timed_call(
        &self,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<(Value, Duration)> {
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?;
        let server = response
            .headers()
            .get("server-timing")
            .and_then(|timing| timing.to_str().ok()?.strip_prefix("app;dur="))
            .and_then(|ms| ms.parse::<f64>().ok())
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .ok_or_else(|| anyhow::anyhow!("no Server-Timing in the response"))?;
        let body: Value = response.json().await?;
        if !body["errors"].is_null() {
            anyhow::bail!("GraphQL errors: {}", body["errors"]);
        }
        Ok((body["data"].clone(), server))
    }
}

/// A token for `tenant` with every scope, valid for a day.
pub fn token(tenant: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 86_400;
    let claims = json!({ "sub": "audit-bench", "tenant_id": tenant, "scope": "audit:read audit:write audit:admin", "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(crate::server::SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// The run with the median throughput.
pub fn median(mut runs: Vec<Stats>) -> Stats {
    runs.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    runs.swap_remove(runs.len() / 2)
}
