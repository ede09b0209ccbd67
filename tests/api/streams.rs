//! Log streams through the real API (docs/streams.md): receivers in the test take what the
//! server delivers: webhooks (signatures checked with the `standardwebhooks` package from
//! PyPI), Splunk HEC, Datadog and syslog; NATS JetStream is the machine's own server. In
//! every scenario, every event arrives at least once, first arrivals come in sequence
//! order, and no other tenant's event ever arrives.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use futures_util::StreamExt;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::auth::{claims, hs256, with_jwt};
use crate::helpers::{Backend, Binary, new_database, post_json, python, spawn_app_with};

const ADMIN: &str = "audit:admin audit:read audit:write";

fn token(tenant: &str, scopes: &str) -> String {
    hs256(&claims(tenant, scopes))
}

/// Environment of a server binary that takes the test's tokens.
const JWT_ENV: [(&str, &str); 3] = [
    ("AUDIT_JWT_HS256_SECRET", crate::auth::SECRET),
    ("AUDIT_JWT_ISSUER", crate::auth::ISSUER),
    ("AUDIT_JWT_AUDIENCE", crate::auth::AUDIENCE),
];

async fn gql(base: &str, token: &str, query: &str, variables: Value) -> Value {
    let client = reqwest::Client::new();
    let body = json!({ "query": query, "variables": variables });
    post_json(&client, &format!("{base}/graphql"), Some(token), body).await
}

async fn data(base: &str, token: &str, query: &str, variables: Value) -> Value {
    let body = gql(base, token, query, variables).await;
    assert_eq!(body["errors"], Value::Null, "{query}: {body}");
    body["data"].clone()
}

/// Logs `count` events as `tenant`, in batches of at most 50; returns their sequences.
async fn log(base: &str, tenant: &str, count: usize) -> Vec<i64> {
    let token = token(tenant, ADMIN);
    let mut sequences = Vec::new();
    let mut left = count;
    while left > 0 {
        let n = left.min(50);
        left -= n;
        let inputs: Vec<Value> = (0..n)
            .map(|i| {
                json!({ "actor": { "type": "USER", "id": format!("{tenant}-user") },
                        "action": "project.created",
                        "target": { "type": "project", "id": format!("p{i}") } })
            })
            .collect();
        let logged = data(
            base,
            &token,
            "mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { sequence } }",
            json!({ "inputs": inputs }),
        )
        .await;
        for event in logged["logAuditEvents"].as_array().expect("events") {
            sequences.push(
                event["sequence"]
                    .as_str()
                    .expect("sequence")
                    .parse()
                    .expect("a number"),
            );
        }
    }
    sequences
}

const STREAM: &str = "id name kind state deliveredSequence lagEvents lagSeconds lastError \
    lastDeliveredAt secret url subject filter";

async fn create(base: &str, tenant: &str, input: Value) -> Value {
    let created = data(
        base,
        &token(tenant, ADMIN),
        &format!("mutation($input: AuditStreamInput!) {{ createAuditStream(input: $input) {{ {STREAM} }} }}"),
        json!({ "input": input }),
    )
    .await;
    created["createAuditStream"].clone()
}

async fn streams(base: &str, tenant: &str) -> Vec<Value> {
    let listed = data(
        base,
        &token(tenant, "audit:read"),
        &format!("{{ auditStreams {{ {STREAM} }} }}"),
        json!({}),
    )
    .await;
    listed["auditStreams"].as_array().expect("streams").clone()
}

/// The tenant's last sequence number.
async fn head(base: &str, tenant: &str) -> i64 {
    let found = data(
        base,
        &token(tenant, "audit:read"),
        "{ auditLogs(first: 1, orderBy: OCCURRED_AT_DESC) { nodes { sequence } } }",
        json!({}),
    )
    .await;
    found["auditLogs"]["nodes"][0]["sequence"]
        .as_str()
        .map_or(0, |s| s.parse().expect("a number"))
}

/// Waits (at most 90 s) until the stream has delivered through the tenant's head and the
/// receiver has seen through it; returns the stream.
async fn caught_up(base: &str, tenant: &str, id: &Value, arrived: impl Fn() -> i64) -> Value {
    let started = std::time::Instant::now();
    loop {
        let head = head(base, tenant).await;
        let stream = streams(base, tenant)
            .await
            .into_iter()
            .find(|s| &s["id"] == id)
            .expect("the stream");
        let delivered: i64 = stream["deliveredSequence"]
            .as_str()
            .expect("a sequence")
            .parse()
            .expect("a number");
        if delivered >= head && arrived() >= head {
            return stream;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not caught up: head {head}, arrived {}, {stream}",
            arrived()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of an unlabelled metric on `/metrics`.
async fn metric(base: &str, name: &str) -> String {
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let prefix = format!("{name} ");
    let value = metrics.lines().find_map(|l| l.strip_prefix(&prefix));
    value.expect("the metric").to_owned()
}

/// How the receiver answers its next requests; after the script, `delay` then 200.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16),
    RetryAfter(u16, u64),
    Redirect,
}

/// A request the receiver acknowledged.
#[derive(Clone, Debug)]
struct Arrival {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    delay: Mutex<Duration>,
    acknowledged: Mutex<Vec<Arrival>>,
    refused: Mutex<usize>,
    /// Requests taken to be acknowledged, the one in flight included.
    taken: Mutex<usize>,
}

/// An HTTP receiver: answers as scripted, records what it acknowledged.
struct Receiver {
    url: String,
    script: Arc<Script>,
}

impl Receiver {
    async fn start(answers: Vec<Answer>, delay: Duration) -> Receiver {
        let script = Arc::new(Script {
            answers: Mutex::new(answers.into()),
            delay: Mutex::new(delay),
            ..Script::default()
        });
        let state = script.clone();
        let app = axum::Router::new().fallback(axum::routing::post(
            move |headers: HeaderMap, body: axum::body::Bytes| {
                let script = state.clone();
                async move {
                    let answer = script.answers.lock().expect("lock").pop_front();
                    if let Some(answer) = answer {
                        *script.refused.lock().expect("lock") += 1;
                        return match answer {
                            Answer::Status(code) => StatusCode::from_u16(code)
                                .expect("a status")
                                .into_response(),
                            Answer::RetryAfter(code, seconds) => (
                                StatusCode::from_u16(code).expect("a status"),
                                [("retry-after", seconds.to_string())],
                            )
                                .into_response(),
                            Answer::Redirect => {
                                (StatusCode::FOUND, [("location", "/again")]).into_response()
                            }
                        };
                    }
                    *script.taken.lock().expect("lock") += 1;
                    let delay = *script.delay.lock().expect("lock");
                    tokio::time::sleep(delay).await;
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                        .collect();
                    script.acknowledged.lock().expect("lock").push(Arrival {
                        headers,
                        body: body.to_vec(),
                    });
                    StatusCode::NO_CONTENT.into_response()
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, script }
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.script.acknowledged.lock().expect("lock").clone()
    }

    /// The events of every acknowledged webhook request, in arrival order.
    fn events(&self) -> Vec<Value> {
        self.arrivals()
            .iter()
            .flat_map(|a| {
                let batch: Vec<Value> = serde_json::from_slice(&a.body).expect("a JSON array");
                batch
            })
            .collect()
    }

    fn last_seq(&self) -> i64 {
        self.events().iter().map(seq).max().unwrap_or(0)
    }
}

fn seq(event: &Value) -> i64 {
    event["seq"]
        .as_str()
        .expect("seq")
        .parse()
        .expect("a number")
}

/// Every expected sequence arrived at least once, first arrivals in sequence order, and
/// nothing of another tenant.
fn check_arrivals(events: &[Value], tenant: &str, expected: impl IntoIterator<Item = i64>) {
    let mut seen = HashSet::new();
    let mut last = 0;
    for event in events {
        assert_eq!(
            event["tenant_id"], tenant,
            "another tenant's event: {event}"
        );
        let id = event["id"].as_str().expect("id").to_owned();
        if seen.insert(id) {
            let seq = seq(event);
            assert!(
                seq > last,
                "first arrivals out of order: {seq} after {last}"
            );
            last = seq;
        }
    }
    let arrived: HashSet<i64> = events.iter().map(seq).collect();
    for seq in expected {
        assert!(arrived.contains(&seq), "event {seq} never arrived");
    }
}

/// Checks every arrival's Standard Webhooks signature with the `standardwebhooks` package
/// from PyPI, an implementation independent of the server's.
fn verify_signatures(secret: &str, arrivals: &[Arrival]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("arrivals.json");
    let recorded: Vec<Value> = arrivals
        .iter()
        .map(|a| {
            let headers: serde_json::Map<String, Value> = a
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({ "headers": headers, "body": String::from_utf8_lossy(&a.body) })
        })
        .collect();
    std::fs::write(&file, serde_json::to_vec(&recorded).expect("json")).expect("write");
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, path = sys.argv[1], sys.argv[2]
arrivals = json.load(open(path))
hook = Webhook(secret)
for a in arrivals:
    hook.verify(a["body"], a["headers"])
try:
    a = arrivals[0]
    hook.verify(a["body"] + " ", a["headers"])
    sys.exit("a changed body verified")
except Exception:
    pass
print(len(arrivals))
"#;
    let output = std::process::Command::new(python())
        .args(["-c", script, secret])
        .arg(&file)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "standardwebhooks refused a signature: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let verified = String::from_utf8_lossy(&output.stdout);
    assert_eq!(verified.trim(), arrivals.len().to_string());
}

/// A webhook stream delivers every event of its tenant, in order, signed, through a
/// receiver that fails with 500s, then 429 with `Retry-After`, then answers slowly; another
/// tenant's events, logged at the same time, never arrive.
async fn webhook_delivers_in_order_through_failures(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_jwt).await else {
        return;
    };
    let base = app.address.clone();
    let receiver = Receiver::start(
        vec![
            Answer::Status(500),
            Answer::Status(500),
            Answer::Status(503),
            Answer::RetryAfter(429, 1),
        ],
        Duration::from_millis(300),
    )
    .await;
    let before = log(&base, "acme", 3).await;
    let stream = create(
        &base,
        "acme",
        json!({ "name": "siem", "kind": "WEBHOOK", "url": receiver.url }),
    )
    .await;
    let secret = stream["secret"].as_str().expect("a secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{stream}");
    assert_eq!(stream["state"], "ACTIVE");
    let (ours, _) = tokio::join!(log(&base, "acme", 120), log(&base, "globex", 60));
    let stream = caught_up(&base, "acme", &stream["id"], || receiver.last_seq()).await;
    assert_eq!(stream["lastError"], Value::Null, "{stream}");
    assert_eq!(stream["lagEvents"], 0);
    assert_eq!(stream["secret"], Value::Null, "a secret is shown only once");
    assert_eq!(*receiver.script.refused.lock().expect("lock"), 4);
    let events = receiver.events();
    // The stream starts with its own record, after the events logged before it.
    let first = seq(&events[0]);
    assert_eq!(first, before[2] + 1);
    assert_eq!(events[0]["action"], "audit.stream.created");
    check_arrivals(&events, "acme", first..=*ours.last().expect("events"));
    for arrival in receiver.arrivals() {
        let batch: Vec<Value> = serde_json::from_slice(&arrival.body).expect("an array");
        assert!(batch.len() <= 500);
        assert!(
            batch
                .iter()
                .all(|e| e["hash"].is_string() && e["prev_hash"].is_string())
        );
    }
    verify_signatures(&secret, &receiver.arrivals());
    // Its failures are on the metrics.
    let failures = metric(&base, "audit_stream_delivery_failures_total").await;
    assert_eq!(failures, "4");
    app.cleanup().await;
}

/// Pausing holds events back with the cursor kept; resuming delivers them; a replay
/// delivers again from a sequence, with the same ids; every change is on record.
async fn pause_resume_and_replay(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_jwt).await else {
        return;
    };
    let base = app.address.clone();
    let admin = token("acme", ADMIN);
    let receiver = Receiver::start(Vec::new(), Duration::ZERO).await;
    let stream = create(
        &base,
        "acme",
        json!({ "name": "pausable", "kind": "WEBHOOK", "url": receiver.url,
                "filter": { "actions": ["project.*", "audit.stream.*"] } }),
    )
    .await;
    let id = stream["id"].clone();
    log(&base, "acme", 5).await;
    caught_up(&base, "acme", &id, || receiver.last_seq()).await;
    let paused = data(
        &base,
        &admin,
        "mutation($id: ID!) { pauseAuditStream(id: $id) { state } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(paused["pauseAuditStream"]["state"], "PAUSED");
    let held = log(&base, "acme", 5).await;
    // Longer than a lease renewal and a scan: a paused stream delivers nothing logged
    // after the pause (a batch in flight at the pause, its record at most, may land).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = receiver.events();
    assert!(
        during.iter().all(|e| seq(e) < held[0]),
        "a paused stream delivered: {during:?}"
    );
    let listed = streams(&base, "acme").await;
    assert_eq!(listed[0]["state"], "PAUSED");
    assert!(listed[0]["lagEvents"].as_i64().expect("lag") >= 5);
    data(
        &base,
        &admin,
        "mutation($id: ID!) { resumeAuditStream(id: $id) { state } }",
        json!({ "id": id }),
    )
    .await;
    caught_up(&base, "acme", &id, || receiver.last_seq()).await;
    let events = receiver.events();
    check_arrivals(&events, "acme", held.clone());
    // Replay from the first held event: it and everything after arrive again.
    let replayed = data(
        &base,
        &admin,
        "mutation($id: ID!, $from: String!) { replayAuditStream(id: $id, fromSequence: $from) { deliveredSequence } }",
        json!({ "id": id, "from": held[0].to_string() }),
    )
    .await;
    assert_eq!(
        replayed["replayAuditStream"]["deliveredSequence"],
        (held[0] - 1).to_string()
    );
    let before = events.len();
    let arrived_again = || {
        let again = receiver.events().split_off(before);
        again.iter().map(seq).max().unwrap_or(0)
    };
    caught_up(&base, "acme", &id, arrived_again).await;
    let again = receiver.events().split_off(before);
    let ids = |events: &[Value], seq_: i64| {
        events
            .iter()
            .find(|e| seq(e) == seq_)
            .map(|e| e["id"].clone())
    };
    assert_eq!(
        ids(&again, held[0]),
        ids(&events, held[0]),
        "the same event id"
    );
    // A replay past the head, or of another tenant's stream, is refused.
    let refused = gql(
        &base,
        &admin,
        "mutation($id: ID!) { replayAuditStream(id: $id, fromSequence: \"99999\") { id } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(refused["errors"][0]["extensions"]["field"], "fromSequence");
    let other = gql(
        &base,
        &token("globex", ADMIN),
        "mutation($id: ID!) { pauseAuditStream(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(other["errors"][0]["extensions"]["code"], "NOT_FOUND");
    assert!(streams(&base, "globex").await.is_empty());
    // Every change is an event, with who asked for it.
    let recorded = data(
        &base,
        &admin,
        "{ auditLogs(first: 20, filter: { actions: [\"audit.stream.*\"] }, orderBy: OCCURRED_AT_ASC) { nodes { action target { id } metadata } } }",
        json!({}),
    )
    .await;
    let actions: Vec<&str> = recorded["auditLogs"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "audit.stream.created",
            "audit.stream.paused",
            "audit.stream.resumed",
            "audit.stream.replayed"
        ]
    );
    let created = &recorded["auditLogs"]["nodes"][0];
    assert_eq!(created["target"]["id"], id);
    assert_eq!(created["metadata"]["requestedBy"], "user-of-acme");
    assert_eq!(created["metadata"]["settings"]["secretSet"], true);
    assert!(!created.to_string().contains("whsec_"), "{created}");
    app.cleanup().await;
}

/// Bad settings get BAD_USER_INPUT at their field, and only admins change streams.
async fn settings_are_checked(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_jwt).await else {
        return;
    };
    let base = app.address.clone();
    let admin = token("acme", ADMIN);
    let create = "mutation($input: AuditStreamInput!) { createAuditStream(input: $input) { id } }";
    let refused = |input: Value, field: &'static str| {
        let base = base.clone();
        let admin = admin.clone();
        async move {
            let body = gql(&base, &admin, create, json!({ "input": input })).await;
            let error = &body["errors"][0];
            assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{body}");
            assert_eq!(error["extensions"]["field"], field, "{body}");
        }
    };
    let hook = |url: &str| json!({ "name": "x", "kind": "WEBHOOK", "url": url });
    refused(hook("ftp://siem.example/"), "input.url").await;
    refused(hook("https://user:pw@siem.example/"), "input.url").await;
    refused(hook("not a url"), "input.url").await;
    refused(
        json!({ "name": "x", "kind": "WEBHOOK", "url": "https://s.example/", "secret": "whsec_c2hvcnQ=" }),
        "input.secret",
    )
    .await;
    refused(
        json!({ "name": "x", "kind": "DATADOG", "url": "https://dd.example/" }),
        "input.secret",
    )
    .await;
    refused(
        json!({ "name": "x", "kind": "SYSLOG", "url": "tcp://127.0.0.1:1" , "subject": "a" }),
        "input.subject",
    )
    .await;
    refused(
        json!({ "name": "x", "kind": "NATS", "url": "nats://127.0.0.1:4222",
                "subject": format!("audit.none.{}", uuid::Uuid::now_v7().simple()) }),
        "input.subject",
    )
    .await;
    refused(
        json!({ "name": "x", "kind": "WEBHOOK", "url": "https://s.example/",
                "filter": { "tenantIds": ["globex"] } }),
        "input.filter.tenantIds",
    )
    .await;
    refused(
        json!({ "name": "x", "kind": "WEBHOOK", "url": "https://s.example/",
                "filter": { "actions": ["bad action"] } }),
        "input.filter.actions[0]",
    )
    .await;
    refused(
        json!({ "name": "x", "kind": "WEBHOOK", "url": "https://s.example/", "fromSequence": "0" }),
        "input.fromSequence",
    )
    .await;
    refused(
        json!({ "name": "x", "kind": "WEBHOOK", "url": "https://s.example/", "fromSequence": "50" }),
        "input.fromSequence",
    )
    .await;
    refused(hook("http://s.example:0/"), "input.url").await;
    // A metadata filter SQLite cannot read is refused at creation, not found by delivery.
    let unreadable = json!({ "name": "x", "kind": "WEBHOOK", "url": "https://s.example/",
                             "filter": { "metadata": { "a\"b": 1 } } });
    if app.backend == Backend::Sqlite {
        refused(unreadable, "input.filter.metadata").await;
    }
    // The URL is stored as parsed, which is where delivery goes.
    let odd = json!({ "name": "odd", "kind": "WEBHOOK", "url": "HTTP://S.Example:80/a/../b" });
    let created = data(
        &base,
        &admin,
        "mutation($input: AuditStreamInput!) { createAuditStream(input: $input) { id url } }",
        json!({ "input": odd }),
    )
    .await;
    assert_eq!(created["createAuditStream"]["url"], "http://s.example/b");
    let id = created["createAuditStream"]["id"].clone();
    data(
        &base,
        &admin,
        "mutation($id: ID!) { deleteAuditStream(id: $id) }",
        json!({ "id": id }),
    )
    .await;
    let ok = json!({ "name": "taken", "kind": "WEBHOOK", "url": "https://s.example/" });
    gql(&base, &admin, create, json!({ "input": ok })).await;
    refused(ok, "input.name").await;
    // Readers list streams but change none.
    let reader = token("acme", "audit:read audit:write");
    let body = gql(
        &base,
        &reader,
        create,
        json!({ "input": { "name": "y", "kind": "WEBHOOK", "url": "https://s.example/" } }),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    let listed = streams(&base, "acme").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["secret"], Value::Null);
    // Nothing of a refused stream was stored, and a stream's record has no secret.
    let rows = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            app.db.get_database_backend(),
            "SELECT count(*) FROM audit_streams",
        ))
        .await
        .expect("count")
        .expect("a row");
    let count: i64 = rows.try_get_by_index(0).expect("a count");
    assert_eq!(count, 1);
    app.cleanup().await;
}

/// A redirecting sink is not followed; the stream shows why it fails, keeps its cursor,
/// reads `FAILING` (and counts on `audit_streams_failing`) once it has failed for longer
/// than the set time, and goes back to `ACTIVE` when the sink acknowledges.
async fn failing_sinks_are_shown(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |config| {
        with_jwt(config);
        config.stream_failing_after = 1;
    })
    .await
    else {
        return;
    };
    let base = app.address.clone();
    let receiver = Receiver::start(vec![Answer::Redirect; 5], Duration::ZERO).await;
    let stream = create(
        &base,
        "acme",
        json!({ "name": "moved", "kind": "WEBHOOK", "url": receiver.url }),
    )
    .await;
    let started = std::time::Instant::now();
    let (mut seen_state, mut seen_metric) = (None, false);
    while seen_state.is_none() || !seen_metric {
        let listed = streams(&base, "acme").await;
        if listed[0]["state"] == "FAILING" {
            seen_state = Some(listed[0].clone());
        }
        seen_metric |= metric(&base, "audit_streams_failing").await == "1";
        assert!(started.elapsed() < Duration::from_secs(30), "{listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failing = seen_state.expect("FAILING");
    let error = failing["lastError"].as_str().expect("an error");
    assert!(
        error.contains("302") && error.contains("redirect"),
        "{error}"
    );
    assert!(!error.contains("127.0.0.1"), "no URL in the error: {error}");
    assert_eq!(failing["deliveredSequence"], stream["deliveredSequence"]);
    let stream = caught_up(&base, "acme", &stream["id"], || receiver.last_seq()).await;
    assert_eq!(stream["lastError"], Value::Null);
    assert_eq!(stream["state"], "ACTIVE");
    assert_eq!(*receiver.script.refused.lock().expect("lock"), 5);
    app.cleanup().await;
}

/// Personal values stay sealed in a stream (null beside their commitments, as in exports)
/// unless it was created with `includePersonal` by a caller with `audit:pii`; then each
/// event carries disclosures that `tools/verify_disclosures.py` checks against the
/// commitments its hash covers.
async fn personal_values_need_permission(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_jwt).await else {
        return;
    };
    let base = app.address.clone();
    let create_query = "mutation($input: AuditStreamInput!) { createAuditStream(input: $input) { id includePersonal } }";
    let sealed = Receiver::start(Vec::new(), Duration::ZERO).await;
    let clear = Receiver::start(Vec::new(), Duration::ZERO).await;
    let refused = gql(
        &base,
        &token("acme", ADMIN),
        create_query,
        json!({ "input": { "name": "pii", "kind": "WEBHOOK", "url": clear.url, "includePersonal": true } }),
    )
    .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    let pii = token("acme", &format!("{ADMIN} audit:pii"));
    let mut ids = Vec::new();
    for (name, receiver, personal) in [("sealed", &sealed, false), ("clear", &clear, true)] {
        let input = json!({ "name": name, "kind": "WEBHOOK", "url": receiver.url,
                            "includePersonal": personal });
        let created = data(&base, &pii, create_query, json!({ "input": input })).await;
        assert_eq!(created["createAuditStream"]["includePersonal"], personal);
        ids.push(created["createAuditStream"]["id"].clone());
    }
    let name = "Ann Example";
    data(
        &base,
        &pii,
        "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }",
        json!({ "input": { "actor": { "type": "USER", "id": "ann", "name": name },
                           "action": "project.created",
                           "context": { "ipAddress": "192.0.2.7" } } }),
    )
    .await;
    caught_up(&base, "acme", &ids[0], || sealed.last_seq()).await;
    caught_up(&base, "acme", &ids[1], || clear.last_seq()).await;
    let logged = |receiver: &Receiver| {
        let events = receiver.events();
        events
            .into_iter()
            .find(|e| e["actor_id"] == "ann")
            .expect("the event")
    };
    let hidden = logged(&sealed);
    assert_eq!(hidden["actor_name"], Value::Null);
    assert!(hidden["personal"].is_object(), "{hidden}");
    assert_eq!(hidden.get("disclosures"), None);
    assert!(
        !String::from_utf8_lossy(&sealed.arrivals().last().expect("a request").body).contains(name)
    );
    let shown = logged(&clear);
    assert_eq!(shown["actor_name"], Value::Null, "the canonical form stays");
    let disclosures = shown["disclosures"].as_array().expect("disclosures");
    let paths: Vec<&str> = disclosures
        .iter()
        .map(|d| d["path"].as_str().expect("a path"))
        .collect();
    assert_eq!(paths, ["actor.name", "context.ipAddress"]);
    assert_eq!(disclosures[0]["value"], name);
    // The independent verifier checks the disclosures against the commitments.
    let dir = tempfile::tempdir().expect("temp dir");
    let export = dir.path().join("events.ndjson");
    let disclosed = dir.path().join("disclosures.json");
    std::fs::write(&export, format!("{shown}\n")).expect("write");
    let with_id: Vec<Value> = disclosures
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d["id"] = shown["id"].clone();
            d
        })
        .collect();
    std::fs::write(&disclosed, serde_json::to_vec(&with_id).expect("json")).expect("write");
    let tools = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/verify_disclosures.py");
    let output = std::process::Command::new("python3")
        .arg(tools)
        .arg(&export)
        .arg(&disclosed)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    app.cleanup().await;
}

crate::with_each_backend!(
    personal_values_need_permission,
    webhook_delivers_in_order_through_failures,
    pause_resume_and_replay,
    settings_are_checked,
    failing_sinks_are_shown
);

/// Splunk HEC, Datadog and syslog receive each event in their own format.
#[tokio::test]
async fn siem_formats() {
    let app = spawn_app_with(Backend::Sqlite, with_jwt)
        .await
        .expect("SQLite always runs");
    let base = app.address.clone();
    let hec = Receiver::start(Vec::new(), Duration::ZERO).await;
    let datadog = Receiver::start(Vec::new(), Duration::ZERO).await;
    let syslog = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let syslog_url = format!("tcp://{}", syslog.local_addr().expect("address"));
    let frames = Arc::new(Mutex::new(Vec::<String>::new()));
    let received = frames.clone();
    tokio::spawn(async move {
        let (mut socket, _) = syslog.accept().await.expect("a connection");
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.expect("read");
            if n == 0 {
                return;
            }
            buffer.extend_from_slice(&chunk[..n]);
            // Octet counting: `<length> <message>`.
            while let Some(space) = buffer.iter().position(|b| *b == b' ') {
                let length: usize = std::str::from_utf8(&buffer[..space])
                    .expect("digits")
                    .parse()
                    .expect("a length");
                if buffer.len() < space + 1 + length {
                    break;
                }
                let message = buffer[space + 1..space + 1 + length].to_vec();
                buffer.drain(..space + 1 + length);
                received
                    .lock()
                    .expect("lock")
                    .push(String::from_utf8(message).expect("UTF-8"));
            }
        }
    });
    create(
        &base,
        "acme",
        json!({ "name": "hec", "kind": "SPLUNK_HEC", "url": hec.url, "secret": "hec-token-1" }),
    )
    .await;
    create(
        &base,
        "acme",
        json!({ "name": "dd", "kind": "DATADOG", "url": datadog.url, "secret": "dd-key-1" }),
    )
    .await;
    create(
        &base,
        "acme",
        json!({ "name": "syslog", "kind": "SYSLOG", "url": syslog_url }),
    )
    .await;
    let logged = log(&base, "acme", 4).await;
    let last = *logged.last().expect("events");
    let started = std::time::Instant::now();
    loop {
        let listed = streams(&base, "acme").await;
        let done = listed
            .iter()
            .all(|s| s["deliveredSequence"].as_str() == Some(&last.to_string()));
        if done {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // HEC: events one after another, each with its time, the token in Authorization.
    let mut hec_events = Vec::new();
    for arrival in hec.arrivals() {
        let auth = arrival.headers.iter().find(|(k, _)| k == "authorization");
        assert_eq!(auth.map(|(_, v)| v.as_str()), Some("Splunk hec-token-1"));
        let text = String::from_utf8(arrival.body).expect("UTF-8");
        for entry in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
            let entry = entry.expect("HEC JSON");
            assert!(entry["time"].is_f64() || entry["time"].is_u64(), "{entry}");
            assert_eq!(entry["sourcetype"], "audit-service:event");
            hec_events.push(entry["event"].clone());
        }
    }
    // Datadog: an array of log entries, the key in DD-API-KEY, the event as the message.
    let mut datadog_events = Vec::new();
    for arrival in datadog.arrivals() {
        let key = arrival.headers.iter().find(|(k, _)| k == "dd-api-key");
        assert_eq!(key.map(|(_, v)| v.as_str()), Some("dd-key-1"));
        let entries: Vec<Value> = serde_json::from_slice(&arrival.body).expect("an array");
        for entry in entries {
            assert_eq!(entry["ddsource"], "audit-service");
            assert!(
                entry["ddtags"]
                    .as_str()
                    .expect("tags")
                    .contains("tenant_id:acme")
            );
            let message = entry["message"].as_str().expect("a message");
            datadog_events.push(serde_json::from_str::<Value>(message).expect("JSON"));
        }
    }
    // Syslog: RFC 5424, facility log audit, the event's fields as structured data.
    let started = std::time::Instant::now();
    while frames.lock().expect("lock").len() < logged.len() {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frames = frames.lock().expect("lock").clone();
    let mut syslog_events = Vec::new();
    for frame in &frames {
        assert!(frame.starts_with("<110>1 "), "{frame}");
        let json_at = frame
            .find("] {")
            .expect("a message after the structured data");
        let event: Value = serde_json::from_str(&frame[json_at + 2..]).expect("JSON");
        assert!(
            frame.contains(&format!("[audit@32473 seq=\"{}\"", seq(&event))),
            "{frame}"
        );
        syslog_events.push(event);
    }
    for events in [&hec_events, &datadog_events, &syslog_events] {
        check_arrivals(events, "acme", logged.clone());
    }
    app.cleanup().await;
}

/// A sink whose answer never ends (200 with an endless chunked body) still acknowledges:
/// the body is never read, so it holds neither the delivery nor memory.
#[tokio::test]
async fn endless_answers_hold_nothing() {
    let app = spawn_app_with(Backend::Sqlite, with_jwt)
        .await
        .expect("SQLite always runs");
    let base = app.address.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/endless", listener.local_addr().expect("address"));
    let requests = Arc::new(Mutex::new(0usize));
    let counted = requests.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        loop {
            let (mut socket, _) = listener.accept().await.expect("a connection");
            let counted = counted.clone();
            tokio::spawn(async move {
                // The request: headers, then as many bytes as its Content-Length says.
                let mut request = Vec::new();
                let mut chunk = [0u8; 8192];
                let complete = |request: &[u8]| {
                    let text = String::from_utf8_lossy(request);
                    let Some(end) = text.find("\r\n\r\n") else {
                        return false;
                    };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    request.len() >= end + 4 + length
                };
                while !complete(&request) {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                *counted.lock().expect("lock") += 1;
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head).await.is_err() {
                    return;
                }
                let piece = [b"4000\r\n".as_slice(), &[b'x'; 0x4000], b"\r\n"].concat();
                while socket.write_all(&piece).await.is_ok() {}
            });
        }
    });
    let stream = create(
        &base,
        "acme",
        json!({ "name": "endless", "kind": "WEBHOOK", "url": url }),
    )
    .await;
    let logged = log(&base, "acme", 20).await;
    let last = *logged.last().expect("events");
    let stream = caught_up(&base, "acme", &stream["id"], || last).await;
    assert_eq!(stream["lastError"], Value::Null, "{stream}");
    assert!(*requests.lock().expect("lock") >= 1);
    app.cleanup().await;
}

/// A JetStream stream capturing `subject`, with a duplicate window of ten minutes.
async fn nats_stream(subject: &str) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS with JetStream runs on 127.0.0.1:4222 (.ci/run starts it)");
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: subject.replace('.', "_"),
            subjects: vec![subject.to_owned()],
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("a JetStream stream")
}

/// kill -9 of the server mid-delivery, on both backends, to NATS JetStream and to a slow
/// webhook: after the restart, delivery resumes from what the sinks acknowledged; every
/// event arrives, first arrivals in order, and JetStream holds each event exactly once.
async fn kill_9_mid_delivery(backend: Backend) {
    let Some((database_url, _cleanup)) = new_database(backend).await else {
        return;
    };
    let subject = format!("audit.test.{}", uuid::Uuid::now_v7().simple());
    let mut nats = nats_stream(&subject).await;
    let receiver = Receiver::start(Vec::new(), Duration::from_secs(1)).await;
    let mut server = Binary::start(&database_url, &JWT_ENV).await;
    let base = server.base.clone();
    let hook = create(
        &base,
        "acme",
        json!({ "name": "hook", "kind": "WEBHOOK", "url": receiver.url }),
    )
    .await;
    let jet = create(
        &base,
        "acme",
        json!({ "name": "jet", "kind": "NATS", "url": "nats://127.0.0.1:4222", "subject": subject }),
    )
    .await;
    // Events are committed a few at a time while the receiver takes a second per request,
    // so that a backlog builds; the kill comes while a request is in flight.
    let mut logged = Vec::new();
    for _ in 0..20 {
        logged.extend(log(&base, "acme", 10).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    loop {
        let acknowledged = receiver.arrivals().len();
        let in_flight = *receiver.script.taken.lock().expect("lock") > acknowledged;
        if acknowledged >= 1 && in_flight {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing arrived: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.child.start_kill().expect("kill -9");
    server.child.wait().await.expect("dead");
    let partial = receiver.last_seq();
    assert!(
        partial < *logged.last().expect("events"),
        "killed after the last delivery"
    );
    let server = Binary::start(&database_url, &JWT_ENV).await;
    let base = server.base.clone();
    logged.extend(log(&base, "acme", 10).await);
    caught_up(&base, "acme", &hook["id"], || receiver.last_seq()).await;
    let starts = |stream: &Value| -> i64 {
        let before: i64 = stream["deliveredSequence"]
            .as_str()
            .expect("seq")
            .parse()
            .expect("n");
        before + 1
    };
    let first = starts(&hook);
    assert_eq!(seq(&receiver.events()[0]), first);
    check_arrivals(
        &receiver.events(),
        "acme",
        first..=*logged.last().expect("events"),
    );
    let first = starts(&jet);
    // JetStream: the stream delivered through the head, each event held once.
    let done = caught_up(&base, "acme", &jet["id"], || i64::MAX).await;
    let through: i64 = done["deliveredSequence"]
        .as_str()
        .expect("seq")
        .parse()
        .expect("n");
    let info = nats.info().await.expect("stream info");
    let expected = through - first + 1;
    assert_eq!(
        info.state.messages, expected as u64,
        "JetStream holds each event once"
    );
    let consumer = nats
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .expect("a consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(expected as usize)
        .messages()
        .await
        .expect("messages");
    let mut events = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.expect("a message");
        let event: Value = serde_json::from_slice(&message.payload).expect("JSON");
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        assert_eq!(msg_id.as_deref(), event["id"].as_str());
        events.push(event);
    }
    assert_eq!(events.len() as i64, expected);
    check_arrivals(&events, "acme", first..=through);
    let seqs: Vec<i64> = events.iter().map(seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "JetStream's order: {seqs:?}"
    );
    nats.purge().await.ok();
}

crate::with_each_backend!(kill_9_mid_delivery);

/// Two instances share the database: one delivers the stream; when it dies (kill -9), the
/// other takes the stream over and every event arrives.
#[tokio::test]
async fn two_instances_one_delivers_and_the_other_takes_over() {
    let Some((database_url, _cleanup)) = new_database(Backend::Postgres).await else {
        return;
    };
    let receiver = Receiver::start(Vec::new(), Duration::from_millis(100)).await;
    let mut first = Binary::start(&database_url, &JWT_ENV).await;
    let stream = create(
        &first.base,
        "acme",
        json!({ "name": "shared", "kind": "WEBHOOK", "url": receiver.url }),
    )
    .await;
    let mut logged = log(&first.base, "acme", 20).await;
    caught_up(&first.base, "acme", &stream["id"], || receiver.last_seq()).await;
    // The first instance holds the lease; the second starts beside it.
    let second = Binary::start(&database_url, &JWT_ENV).await;
    let (a, b) = tokio::join!(
        log(&first.base, "acme", 100),
        log(&second.base, "acme", 100)
    );
    logged.extend(a);
    logged.extend(b);
    first.child.start_kill().expect("kill -9");
    first.child.wait().await.expect("dead");
    logged.extend(log(&second.base, "acme", 20).await);
    caught_up(&second.base, "acme", &stream["id"], || receiver.last_seq()).await;
    logged.sort_unstable();
    let events = receiver.events();
    check_arrivals(&events, "acme", logged);
}
