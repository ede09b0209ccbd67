//! Bounded cost (issue 30): no caller can make the server spend CPU, memory or shared slots
//! without bound. Documents that expand to too many selections are refused at once over
//! every transport; metadata that would swell in memory is refused at ingest; exports are
//! shared fairly between tenants and dropped when their client stops reading; and the
//! smaller findings of the same probe stay fixed.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::auth::{claims, hs256, with_jwt};
use crate::helpers::{Backend, TestApp, event, spawn_app, spawn_app_with};
use crate::hostile::{assert_alive, codes};
use crate::subscriptions::Client;

crate::with_each_backend!(
    fragment_documents_are_refused_at_once,
    metadata_that_swells_in_memory_is_refused,
    exports_are_shared_fairly_and_stalled_ones_dropped,
    smaller_findings,
);

/// What a refusal may take at most, whatever the shape of the document (a debug build on a
/// busy machine; the attack took 8 s of CPU, and 20 levels minutes).
const ANSWERED_WITHIN: Duration = Duration::from_secs(2);

/// A document whose fragments spread each other `fan_out` times, `depth` levels deep,
/// decorated as `shape` says: it expands to `fan_out ^ depth` selections.
fn fragment_document(fan_out: usize, depth: usize, shape: usize) -> String {
    let mut text = "query Q { ...F0 }".to_owned();
    for level in 0..depth {
        let spread = format!("...F{}", level + 1);
        let spread = match shape {
            // Spreads inside inline fragments.
            1 => format!("... on Query {{ {spread} }}"),
            // Every spread with a directive.
            2 => format!("{spread} @include(if: true)"),
            _ => spread,
        };
        let aliases = match shape {
            3 => " a: __typename b: __typename",
            _ => "",
        };
        let spreads = vec![spread; fan_out].join(" ");
        text += &format!(" fragment F{level} on Query {{ __typename{aliases} {spreads} }}");
    }
    text + &format!(" fragment F{depth} on Query {{ __typename }}")
}

/// Every variant: fan-outs 2 to 10, each as deep as it takes to pass the bound (at most 30
/// levels), in four shapes.
fn fragment_documents() -> Vec<String> {
    let mut documents = Vec::new();
    for fan_out in 2..=10usize {
        let depth = (1..=30)
            .find(|&d| fan_out.pow(d as u32) > 20_000)
            .unwrap_or(30);
        for shape in 0..4 {
            documents.push(fragment_document(fan_out, depth, shape));
        }
    }
    // The deepest chain: 2 ^ 30 selections.
    documents.push(fragment_document(2, 30, 1));
    // No fragments, only width: refused from its text, before it is parsed.
    let aliases: Vec<String> = (0..12_000).map(|i| format!("a{i}: __typename")).collect();
    documents.push(format!("query Q {{ {} }}", aliases.join(" ")));
    documents
}

/// The first error's code, message and whether it came within `ANSWERED_WITHIN`.
fn refusal(body: &Value) -> (String, String) {
    let codes = codes(body);
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    (
        codes.first().cloned().unwrap_or_default(),
        message.to_owned(),
    )
}

async fn fragment_documents_are_refused_at_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let documents = fragment_documents();
    let url = format!("{}/graphql", app.address);
    let mut socket = Client::init(&app.address, "graphql-transport-ws").await;
    let mut slowest = Duration::ZERO;
    for (i, document) in documents.iter().enumerate() {
        // POST
        let started = Instant::now();
        let body = app.graphql(document, json!({})).await;
        let (code, message) = refusal(&body);
        assert_eq!(code, "BAD_USER_INPUT", "{message}");
        assert!(message.contains("selections"), "{message:.200}");
        let post = started.elapsed();
        // GET, where the document fits in a URL.
        let started = Instant::now();
        if document.len() < 16 * 1024 {
            let response = app
                .client
                .get(&url)
                .query(&[("query", document.as_str())])
                .send()
                .await
                .expect("answered");
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(refusal(&body).0, "BAD_USER_INPUT", "{body:.300}");
        }
        let get = started.elapsed();
        // WebSocket
        let started = Instant::now();
        socket
            .send(json!({ "id": format!("q{i}"), "type": "subscribe", "payload": { "query": document } }))
            .await;
        let answer = socket.receive().await;
        assert_eq!(Client::error_code(&answer), "BAD_USER_INPUT", "{answer}");
        let ws = started.elapsed();
        assert_eq!(socket.receive().await["type"], "complete");
        slowest = slowest.max(post).max(get).max(ws);
    }
    assert!(
        slowest < ANSWERED_WITHIN,
        "the slowest refusal took {slowest:?}"
    );

    // Many at once: the server's health answers meanwhile.
    let attackers = (0..8).map(|i| {
        let (client, url, document) = (app.client.clone(), url.clone(), documents[i].clone());
        tokio::spawn(async move {
            for _ in 0..10 {
                let body: Value = client
                    .post(&url)
                    .json(&json!({ "query": document }))
                    .send()
                    .await
                    .expect("answered")
                    .json()
                    .await
                    .expect("JSON");
                assert_eq!(refusal(&body).0, "BAD_USER_INPUT");
            }
        })
    });
    let attackers: Vec<_> = attackers.collect();
    let mut healthiest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let health = app
            .client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200);
        healthiest = healthiest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for attacker in attackers {
        attacker.await.expect("attacker");
    }
    assert!(healthiest < ANSWERED_WITHIN, "/healthz took {healthiest:?}");
    eprintln!(
        "fragment documents: {} variants over POST, GET and WebSocket, slowest refusal {slowest:?}, slowest /healthz under attack {healthiest:?}",
        documents.len()
    );

    // A document within the bound still runs, fragments and all.
    let fine = fragment_document(2, 6, 1).replace("query Q", "query Fine");
    let body = app.graphql(&fine, json!({})).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert_eq!(body["data"]["__typename"], "Query");
    assert_alive(&app).await;
    app.cleanup().await;
}

/// Metadata of `values` JSON values in the shapes that take the most memory per byte.
fn swelling(values: usize) -> Vec<(&'static str, Value)> {
    let nested = |n: usize| (0..n).fold(json!(0), |inner, _| json!([inner]));
    vec![
        ("zeros", json!({ "a": vec![0; values - 2] })),
        ("empty objects", json!({ "a": vec![json!({}); values - 2] })),
        ("empty arrays", json!({ "a": vec![json!([]); values - 2] })),
        (
            "one-entry objects",
            json!({ "a": vec![json!({ "": 0 }); (values - 2) / 2] }),
        ),
        (
            "one-element arrays",
            json!({ "a": vec![json!([0]); (values - 2) / 2] }),
        ),
        (
            "nested arrays",
            json!({ "a": vec![nested(28); (values - 2) / 29] }),
        ),
    ]
}

async fn metadata_that_swells_in_memory_is_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let log = "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id metadata } }";
    let batch = "mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { id } }";
    for (shape, metadata) in swelling(4200) {
        let mut input = event("u-1", "project.created");
        input["metadata"] = metadata.clone();
        let body = app.graphql(log, json!({ "input": input })).await;
        assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{shape}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "input.metadata");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("4096")),
            "{shape}: {body}"
        );
        let inputs = json!([event("u-1", "project.created"), input]);
        let body = app.graphql(batch, json!({ "inputs": inputs })).await;
        assert_eq!(
            body["errors"][0]["extensions"]["field"],
            "inputs[1].metadata"
        );
    }
    assert_eq!(app.stored_rows().await, 0, "nothing partial is stored");
    for (shape, metadata) in swelling(4096) {
        let mut input = event("u-1", "project.created");
        input["metadata"] = metadata.clone();
        let body = app.graphql(log, json!({ "input": input })).await;
        assert_eq!(body["errors"], Value::Null, "{shape}: {body}");
        assert_eq!(
            body["data"]["logAuditEvent"]["metadata"], metadata,
            "{shape}"
        );
    }
    assert_alive(&app).await;
    app.cleanup().await;
}

/// An app whose callers are tenants `acme` and `globex`, with tokens for both.
async fn two_tenants(backend: Backend) -> Option<(TestApp, String, String)> {
    let mut app = spawn_app_with(backend, with_jwt).await?;
    let acme = hs256(&claims("acme", "audit:read audit:write"));
    let globex = hs256(&claims("globex", "audit:read audit:write"));
    app.token = Some(acme.clone());
    Some((app, acme, globex))
}

/// Starts an export with `token` and returns its response once the headers are in, its
/// body unread.
async fn export_headers(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/export", app.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("headers")
}

async fn exports_are_shared_fairly_and_stalled_ones_dropped(backend: Backend) {
    let Some((app, acme, globex)) = two_tenants(backend).await else {
        return;
    };
    // 24 MiB of acme's events: far more than socket buffers take unread.
    let filler = "x".repeat(16 * 1024);
    for batch in 0..30 {
        let inputs: Vec<Value> = (0..50)
            .map(|i| {
                let mut input = event(&format!("u-{}", batch * 50 + i), "project.created");
                input["metadata"] = json!({ "filler": filler });
                input
            })
            .collect();
        let body = app.log_batch(json!(inputs)).await;
        assert_eq!(body["errors"], Value::Null, "{body}");
    }
    // acme takes its share (two of the four slots) and reads nothing.
    let stalled = vec![
        export_headers(&app, &acme).await,
        export_headers(&app, &acme).await,
    ];
    assert!(stalled.iter().all(|r| r.status() == 200));
    // A third acme export waits in acme's own queue, and is refused after 5 s ...
    let queued = {
        let (client, url, acme) = (app.client.clone(), app.address.clone(), acme.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client
                .get(format!("{url}/export"))
                .bearer_auth(&acme)
                .send()
                .await
                .expect("answered");
            (response.status().as_u16(), started.elapsed())
        })
    };
    // ... while globex's export runs at once, to the end.
    let started = Instant::now();
    let response = export_headers(&app, &globex).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("globex's export completes");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // globex's only event: this export's own record.
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(body.contains("audit.export.requested"), "{body}");
    let (status, waited) = queued.await.expect("queued");
    assert_eq!(status, 503, "acme's third export past its share");
    assert!(waited >= Duration::from_secs(5), "{waited:?}");

    // The stalled exports are dropped within the send timeout, slots and all: acme can
    // export again, and both are on record as incomplete.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_record = app
            .graphql(
                r#"{ auditLogs(filter: { actions: ["audit.export.finished"] }) { nodes { metadata } } }"#,
                json!({}),
            )
            .await;
        let finished = on_record["data"]["auditLogs"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if finished.len() >= 2 {
            assert!(finished.iter().all(|e| e["metadata"]["complete"] == false));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stalled exports are still running"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let again = app
        .client
        .get(format!("{}/export", app.address))
        .bearer_auth(&acme)
        .send()
        .await
        .expect("answered");
    assert_eq!(again.status(), 200);
    let lines = again.text().await.expect("body").lines().count();
    assert!(lines >= 1500, "{lines} lines");
    drop(stalled);
    app.cleanup().await;
}

async fn smaller_findings(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // A metadata filter nested 31 levels: `auditLogs` takes it, and so does `/export`,
    // whose own record holds the filter as text.
    let deep = (0..30).fold(json!(1), |inner, _| json!({ "k": inner }));
    let filter = json!({ "metadata": deep });
    let body = app
        .graphql(
            "query($f: AuditLogFilter) { auditLogs(filter: $f) { nodes { id } } }",
            json!({ "f": filter }),
        )
        .await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    let response = app
        .client
        .get(format!("{}/export", app.address))
        .query(&[("filter", filter.to_string())])
        .send()
        .await
        .expect("answered");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(status, 200, "{text}");

    // A subscription whose root field sits in a fragment is refused, not ended in silence.
    let mut client = Client::init(&app.address, "graphql-transport-ws").await;
    for query in [
        "subscription { ... on Subscription { auditLogCreated { id } } }",
        "subscription { ...S } fragment S on Subscription { auditLogCreated { id } }",
    ] {
        client.subscribe("s", query, json!({})).await;
        let answer = client.receive().await;
        assert_eq!(Client::error_code(&answer), "BAD_USER_INPUT", "{answer}");
        assert_eq!(client.receive().await["type"], "complete");
    }
    // A message past 1 MiB closes the connection as "message too big".
    let big = format!(
        r#"{{"type":"ping","payload":{{"x":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let _ = client.socket_mut().send(Message::Text(big.into())).await;
    let closed = client.receive().await;
    assert_eq!(closed, json!({ "type": "close", "code": 1009 }));

    if backend == Backend::Sqlite {
        sqlite_lock_held_by_another_process(&app).await;
    }
    assert_alive(&app).await;
    app.cleanup().await;
}

/// While another connection (as another process would) holds SQLite's write lock, writes
/// fail fast with `UNAVAILABLE` and `/readyz` says why; once it is let go, both recover.
async fn sqlite_lock_held_by_another_process(app: &TestApp) {
    let txn = sea_orm::TransactionTrait::begin(&app.db)
        .await
        .expect("begin");
    sea_orm::ConnectionTrait::execute_unprepared(&txn, "CREATE TABLE lock_probe (x INTEGER)")
        .await
        .expect("write lock");
    let started = Instant::now();
    let log = "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }";
    let input = json!({ "input": event("u-1", "project.created") });
    let body = app.graphql(log, input.clone()).await;
    assert_eq!(codes(&body), ["UNAVAILABLE"], "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.expect("body").contains("locked"));
    txn.rollback().await.expect("rollback");
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let body = app.graphql(log, input).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
}
