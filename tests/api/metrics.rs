//! `/metrics`: the Prometheus text parses, and after a little traffic it has the request
//! and ingest histograms, the pool gauges, live subscribers and error codes, with the values
//! the traffic implies.

use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::json;

use crate::helpers::{TestApp, event};
use crate::on_both_backends;
use crate::subscriptions::Client;

on_both_backends!(metrics_after_a_little_traffic);

/// `/metrics`, parsed.
pub async fn scrape(app: &TestApp) -> Scrape {
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The samples of `name` whose labels include `labels`.
fn samples<'s>(scrape: &'s Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'s Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect()
}

/// The one sample's value: a counter or gauge's number, a histogram's count.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, name, labels);
    assert_eq!(
        found.len(),
        1,
        "one {name} {labels:?} in {:#?}",
        scrape.samples
    );
    match &found[0].value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
        Metric::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Metric::Summary(_) => panic!("{name} is a summary, not a histogram"),
    }
}

async fn metrics_after_a_little_traffic(app: &TestApp) {
    // Two subscribers of the same subscription share its execution.
    let mut subscriber = Client::init(&app.address, "graphql-transport-ws").await;
    let mut other = Client::init(&app.address, "graphql-ws").await;
    for client in [&mut subscriber, &mut other] {
        client
            .subscribe("live", "subscription { auditLogCreated { id } }", json!({}))
            .await;
    }
    // Subscribed once the gauges say so; events committed before would not be delivered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let scrape = scrape(app).await;
        let executions = value(&scrape, "audit_live_executions", &[]);
        if value(&scrape, "audit_live_subscribers", &[]) == 2.0 && executions == 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Three requests: two single events and a batch of five.
    app.log(event("u1", "project.created")).await;
    app.log(event("u1", "project.updated")).await;
    let batch: Vec<_> = (0..5)
        .map(|i| event(&format!("u{i}"), "role.assigned"))
        .collect();
    app.log_batch(json!(batch)).await;
    for _ in 0..7 {
        assert_eq!(subscriber.receive().await["type"], "next");
        assert_eq!(other.receive().await["type"], "data");
    }
    let query = app
        .graphql("{ auditLogs(first: 3) { nodes { id } } }", json!({}))
        .await;
    assert_eq!(
        query["data"]["auditLogs"]["nodes"].as_array().map(Vec::len),
        Some(3)
    );
    let bad = app
        .graphql("{ auditLogs(first: -1) { nodes { id } } }", json!({}))
        .await;
    assert_eq!(bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let missing = app.client.get(format!("{}/nope", app.address)).send().await;
    let missing = missing.expect("sent");
    assert_eq!(missing.status(), 404);
    // Every response says how long the server took.
    let timing = missing.headers()["server-timing"].to_str().expect("ascii");
    let ms: f64 = timing
        .strip_prefix("app;dur=")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("server-timing: {timing}"));
    assert!((0.0..1000.0).contains(&ms), "{timing}");

    let scrape = scrape(app).await;
    let graphql = [("route", "/graphql"), ("status", "200")];
    let requests = |operation| {
        let labels = [graphql[0], graphql[1], ("operation", operation)];
        value(&scrape, "audit_http_requests_total", &labels)
    };
    assert_eq!(requests("mutation"), 3.0);
    assert_eq!(requests("query"), 2.0);
    let scrapes = value(
        &scrape,
        "audit_http_requests_total",
        &[("route", "/metrics")],
    );
    assert!(scrapes >= 1.0, "{scrapes} scrapes");
    assert_eq!(
        value(
            &scrape,
            "audit_http_requests_total",
            &[("route", "other"), ("status", "404")]
        ),
        1.0
    );
    let latency = [("route", "/graphql"), ("operation", "mutation")];
    assert_eq!(
        value(&scrape, "audit_http_request_duration_seconds", &latency),
        3.0
    );
    let bucketed = samples(&scrape, "audit_http_request_duration_seconds", &latency);
    let Metric::Histogram(buckets) = &bucketed[0].value else {
        panic!("a histogram: {bucketed:?}")
    };
    assert!(buckets.len() > 10, "latency buckets: {buckets:?}");

    // Three transactions at most (group commit may join the single events), seven events.
    let commits = value(&scrape, "audit_ingest_commit_duration_seconds", &[]);
    assert!((1.0..=3.0).contains(&commits), "{commits} commits");
    assert_eq!(
        value(&scrape, "audit_ingest_transaction_events", &[]),
        commits
    );
    assert_eq!(value(&scrape, "audit_ingest_events_total", &[]), 7.0);
    assert_eq!(value(&scrape, "audit_ingest_queue_depth", &[]), 0.0);

    assert_eq!(value(&scrape, "audit_db_pool_max_connections", &[]), 5.0);
    let open = value(&scrape, "audit_db_pool_connections", &[]);
    let idle = value(&scrape, "audit_db_pool_idle_connections", &[]);
    assert!(
        (1.0..=5.0).contains(&open) && idle <= open,
        "{open} open, {idle} idle"
    );

    assert_eq!(value(&scrape, "audit_live_subscribers", &[]), 2.0);
    assert_eq!(value(&scrape, "audit_live_executions", &[]), 1.0);
    assert_eq!(value(&scrape, "audit_live_deliveries_total", &[]), 14.0);
    assert_eq!(
        value(&scrape, "audit_errors_total", &[("code", "BAD_USER_INPUT")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "audit_errors_total", &[("code", "NOT_FOUND")]),
        1.0
    );
    assert!(value(&scrape, "audit_sql_statements_total", &[]) > 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&scrape, "audit_build_info", &[("version", version)]),
        1.0
    );

    // No label names a tenant, an actor or anything else without bounds.
    let allowed = ["route", "status", "operation", "code", "version", "le"];
    for sample in &scrape.samples {
        for (label, _) in sample.labels.iter() {
            assert!(
                allowed.contains(&label.as_str()),
                "{label} on {}",
                sample.metric
            );
        }
    }
    // The Grafana dashboard in docs/ only charts metrics the server has.
    let dashboard = include_str!("../../docs/grafana-dashboard.json");
    let mut charted = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("audit_") {
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            let name = format!("audit_{name}");
            assert!(
                scrape.docs.contains_key(&name),
                "the dashboard charts {name}"
            );
            charted += 1;
        }
    }
    assert!(charted > 20, "{charted} metric references in the dashboard");
    // Every metric is documented.
    for sample in &scrape.samples {
        // A histogram's `_sum` and `_count` come apart from its buckets.
        let name = &sample.metric;
        let name = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"));
        let name = name.unwrap_or(&sample.metric);
        assert!(
            scrape.docs.contains_key(name),
            "no HELP for {}",
            sample.metric
        );
    }
}
