//! Enqueues events at a steady rate and prints each idempotency key once `enqueue()` has
//! returned; then flushes, and prints `flushed`. The spool tests kill it mid-run.
//!
//! `AUDIT_URL` (http://127.0.0.1:8080/graphql), `AUDIT_API_KEY` (optional), `SPOOL` (a
//! spool directory; none by default), `COUNT` (1000), `RATE` (events per second, 0 for as
//! fast as possible), `RUN` (the keys' prefix, `run`).

use std::io::Write;
use std::time::Duration;

use audit_client::{Actor, AuditClient};
use serde_json::json;

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url: String = var("AUDIT_URL", "http://127.0.0.1:8080/graphql".to_owned());
    let count: u64 = var("COUNT", 1000);
    let rate: u64 = var("RATE", 0);
    let run: String = var("RUN", "run".to_owned());
    let mut audit =
        AuditClient::builder(url).backoff(Duration::from_millis(50), Duration::from_millis(500));
    if let Ok(key) = std::env::var("AUDIT_API_KEY") {
        audit = audit.api_key(key);
    }
    if let Ok(dir) = std::env::var("SPOOL") {
        audit = audit.spool(dir, false);
    }
    let audit = audit.build()?;
    let mut tick =
        (rate > 0).then(|| tokio::time::interval(Duration::from_micros(1_000_000 / rate)));
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        if let Some(tick) = &mut tick {
            tick.tick().await;
        }
        let key = format!("{run}-{i}");
        audit
            .project(format!("p-{i}"))
            .updated()
            .by(Actor::service("enqueue-load"))
            .metadata(json!({ "run": run, "i": i }))
            .idempotency_key(&key)
            .enqueue()
            .await?;
        writeln!(out, "{key}")?;
        out.flush()?;
    }
    audit.flush().await;
    writeln!(out, "flushed")?;
    Ok(())
}
