//! The client kit (`audit-client`) against the real server: typed helpers, the examples'
//! Layer and Extension, fail-closed, rejections, a 30 s outage, and kill -9 with a spool.
//! The examples run as processes (`cargo test --workspace` builds them).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_client::{Actor, AuditClient, CATALOG, Credential, Error as ClientError, Target};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::auth::{claims, hs256, with_jwt};
use crate::helpers::{Backend, TestApp, new_database, spawn_app_with};

const STORED: &str = "{ auditLogs(first: 500) { nodes {
    sequence action actor { type id name } target { type id } outcome reason metadata
    context { ipAddress userAgent requestId } } } }";

fn url(app: &TestApp) -> String {
    format!("{}/graphql", app.address)
}

/// The stored events, oldest first.
async fn stored(app: &TestApp) -> Vec<Value> {
    let body = app.graphql(STORED, json!({})).await;
    let mut events = body["data"]["auditLogs"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {body}"))
        .clone();
    events.sort_by_key(|e| e["sequence"].as_str().and_then(|s| s.parse::<u64>().ok()));
    events
}

/// Waits (up to 15 s) until `count` events are stored, and returns them.
async fn stored_eventually(app: &TestApp, count: usize) -> Vec<Value> {
    for _ in 0..150 {
        let events = stored(app).await;
        if events.len() >= count {
            assert_eq!(
                events.len(),
                count,
                "more events than expected: {events:#?}"
            );
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{count} events were not stored in 15 s: {:#?}",
        stored(app).await
    );
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

crate::on_both_backends!(
    helpers_store_what_they_say,
    examples_record_exact_events,
    fail_closed_answers_503,
    hostile_requests_are_still_audited,
    rejected_events_reach_the_callback,
    spool_survives_kill_9,
);

async fn helpers_store_what_they_say(app: &TestApp) {
    let audit = AuditClient::builder(url(app)).build().expect("client");
    let ann = Actor::user("u-1").named("Ann");
    let helpers = [
        (
            audit.project("p-1").created(),
            "project.created",
            "project",
            "p-1",
            "SUCCESS",
        ),
        (
            audit.member("u-2").added(),
            "member.added",
            "user",
            "u-2",
            "SUCCESS",
        ),
        (
            audit.role("r-1").assigned(),
            "role.assigned",
            "role",
            "r-1",
            "SUCCESS",
        ),
        (
            audit.api_key("k-1").rotated(),
            "api_key.rotated",
            "api_key",
            "k-1",
            "SUCCESS",
        ),
        (
            audit.session("s-1").login(),
            "session.login",
            "session",
            "s-1",
            "SUCCESS",
        ),
        (
            audit.session("s-2").login_failed(),
            "session.login_failed",
            "session",
            "s-2",
            "FAILURE",
        ),
        (
            audit.settings("org-1").updated(),
            "settings.updated",
            "settings",
            "org-1",
            "SUCCESS",
        ),
        (
            audit.policy("pol-1").deleted(),
            "policy.deleted",
            "policy",
            "pol-1",
            "SUCCESS",
        ),
        (
            audit
                .event("billing.invoice.paid")
                .target(Target::new("invoice", "inv-1")),
            "billing.invoice.paid",
            "invoice",
            "inv-1",
            "SUCCESS",
        ),
    ];
    let mut expected = Vec::new();
    for (i, (builder, action, kind, id, outcome)) in helpers.into_iter().enumerate() {
        let recorded = builder
            .by(ann.clone())
            .metadata(json!({ "i": i }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        assert_eq!(recorded.sequence, (i + 1).to_string(), "{action}");
        assert_eq!(recorded.hash.len(), 64);
        expected.push(json!({
            "sequence": (i + 1).to_string(), "action": action,
            "actor": { "type": "USER", "id": "u-1", "name": "Ann" },
            "target": { "type": kind, "id": id }, "outcome": outcome, "reason": null,
            "metadata": { "i": i },
            "context": { "ipAddress": null, "userAgent": null, "requestId": null },
        }));
    }
    assert_eq!(stored(app).await, expected);

    // Every action of the catalog is one the server takes.
    for entry in CATALOG {
        audit
            .event(entry.action)
            .by(Actor::service("catalog"))
            .target(Target::new(entry.target_type, "t-1"))
            .enqueue()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", entry.action));
    }
    audit.flush().await;
    let metrics = audit.metrics();
    assert_eq!(metrics.delivered, CATALOG.len() as u64);
    assert_eq!(
        (metrics.rejected, metrics.dead_lettered, metrics.pending),
        (0, 0, 0)
    );

    // Bad events fail at the call, before anything is sent.
    let before = app.stored_rows().await;
    let bad = audit.event("Project Created").by(ann.clone()).send().await;
    assert!(
        matches!(&bad, Err(ClientError::Invalid { field, .. }) if field == "action"),
        "{bad:?}"
    );
    let bad = audit.project("p-1").created().enqueue().await;
    assert!(
        matches!(&bad, Err(ClientError::Invalid { field, .. }) if field == "actor"),
        "{bad:?}"
    );
    let bad = audit.project(" ").created().by(ann).send().await;
    assert!(
        matches!(&bad, Err(ClientError::Invalid { field, .. }) if field == "target.id"),
        "{bad:?}"
    );
    assert_eq!(audit.metrics().enqueued, CATALOG.len() as u64);
    assert_eq!(app.stored_rows().await, before);
}

mod token_credential {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        let app = spawn_app_with(Backend::Sqlite, with_jwt)
            .await
            .expect("SQLite always runs");
        refreshed_token_is_used(&app).await;
        app.cleanup().await;
    }
}

/// A short-lived token comes from the service's callback, before each request.
async fn refreshed_token_is_used(app: &TestApp) {
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let credential = Credential::token(move || {
        *counted.lock().expect("lock") += 1;
        async { Ok(hs256(&claims("acme", "audit:write"))) }
    });
    let audit = AuditClient::builder(url(app))
        .credential(credential)
        .build()
        .expect("client");
    let recorded = audit
        .project("p-1")
        .created()
        .by(Actor::user("u-1"))
        .send()
        .await;
    assert_eq!(recorded.expect("stored").sequence, "1");
    assert_eq!(*calls.lock().expect("lock"), 1);

    let anonymous = AuditClient::builder(url(app)).build().expect("client");
    let refused = anonymous
        .project("p-1")
        .created()
        .by(Actor::user("u-1"))
        .send()
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Denied { code, .. }) if code == "UNAUTHENTICATED"),
        "{refused:?}"
    );
}

/// An example program of the client crate, started with `LISTEN=127.0.0.1:0`.
struct Example {
    /// Killed when the example is dropped.
    _child: Child,
    address: String,
}

fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace`, which builds the client's examples",
        path.display()
    );
    path
}

impl Example {
    async fn start(name: &str, audit_url: &str, env: &[(&str, &str)]) -> Example {
        let mut child = Command::new(example_path(name))
            .env("LISTEN", "127.0.0.1:0")
            .env("AUDIT_URL", audit_url)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("example starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("example listens in time")
            .expect("reads")
            .expect("a line");
        let address = line
            .strip_prefix("listening on ")
            .expect("address line")
            .to_owned();
        Example {
            _child: child,
            address,
        }
    }
}

async fn examples_record_exact_events(app: &TestApp) {
    let http = reqwest::Client::new();
    let axum = Example::start("axum_service", &url(app), &[]).await;
    let created = http
        .post(format!("{}/projects", axum.address))
        .header("x-user-id", "u-7")
        .header("x-request-id", "req-1")
        .header("user-agent", "test-agent/1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({ "name": "Apollo" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["x-request-id"], "req-1");
    let id = created.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deleted = http
        .delete(format!("{}/projects/{id}", axum.address))
        .header("x-user-id", "u-7")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    let generated = deleted.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let missing = http
        .delete(format!("{}/projects/{id}", axum.address))
        .header("x-user-id", "u-8")
        .header("x-request-id", "req-3")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(missing.status(), 404);

    let context = |request_id: &str, agent: Value| json!({ "ipAddress": "127.0.0.1", "userAgent": agent, "requestId": request_id });
    let events = stored_eventually(app, 3).await;
    assert_eq!(
        events,
        [
            json!({ "sequence": "1", "action": "project.created",
                "actor": { "type": "USER", "id": "u-7", "name": null },
                "target": { "type": "project", "id": id }, "outcome": "SUCCESS", "reason": null,
                "metadata": { "name": "Apollo" }, "context": context("req-1", json!("test-agent/1")) }),
            json!({ "sequence": "2", "action": "project.deleted",
                "actor": { "type": "USER", "id": "u-7", "name": null },
                "target": { "type": "project", "id": id }, "outcome": "SUCCESS", "reason": null,
                "metadata": {}, "context": context(&generated, Value::Null) }),
            json!({ "sequence": "3", "action": "project.deleted",
                "actor": { "type": "USER", "id": "u-8", "name": null },
                "target": { "type": "project", "id": id }, "outcome": "FAILURE",
                "reason": "HTTP 404", "metadata": {}, "context": context("req-3", Value::Null) }),
        ]
    );
    // The Layer links the event to the request's trace, not to its own delivery's.
    let traces = app
        .graphql(
            "{ auditLogs(orderBy: OCCURRED_AT_ASC) { nodes { context { traceId } } } }",
            json!({}),
        )
        .await;
    let traces: Vec<_> = traces["data"]["auditLogs"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["context"]["traceId"].clone())
        .collect();
    assert_eq!(
        traces,
        [
            json!("4bf92f3577b34da6a3ce929d0e0e4736"),
            Value::Null,
            Value::Null
        ]
    );
    drop(axum);

    let graphql = Example::start("graphql_service", &url(app), &[]).await;
    let answer: Value = http
        .post(format!("{}/graphql", graphql.address))
        .header("x-user-id", "u-9")
        .json(&json!({ "query": r#"mutation {
            createProject(name: "Gemini") { id name }
            rotateApiKey(id: "k-42", secret: "hunter2") }"# }))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("json");
    let project = answer["data"]["createProject"]["id"].as_str().expect("id");
    assert_eq!(answer["data"]["rotateApiKey"], true, "{answer}");
    let events = stored_eventually(app, 5).await;
    let context = json!({ "ipAddress": "127.0.0.1", "userAgent": null, "requestId": null });
    assert_eq!(
        events[3..],
        [
            json!({ "sequence": "4", "action": "project.created",
                "actor": { "type": "USER", "id": "u-9", "name": null },
                "target": { "type": "project", "id": project }, "outcome": "SUCCESS",
                "reason": null, "metadata": { "name": "Gemini" }, "context": context }),
            json!({ "sequence": "5", "action": "api_key.rotated",
                "actor": { "type": "USER", "id": "u-9", "name": null },
                "target": { "type": "api_key", "id": "k-42" }, "outcome": "SUCCESS",
                "reason": null, "metadata": { "id": "k-42", "secret": "[redacted]" },
                "context": context }),
        ]
    );
    let everything = app.graphql(STORED, json!({})).await.to_string();
    assert!(!everything.contains("hunter2"), "the secret was stored");
}

/// A request cannot keep its own event out of the log with values the server refuses:
/// they are recorded, made acceptable.
async fn hostile_requests_are_still_audited(app: &TestApp) {
    let axum = Example::start("axum_service", &url(app), &[]).await;
    let response = reqwest::Client::new()
        .delete(format!("{}/projects/%01%0A", axum.address))
        .header("x-user-id", "u\t1")
        .header("x-request-id", "a\tb")
        .header("user-agent", "u".repeat(5000))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 404);
    let events = stored_eventually(app, 1).await;
    let event = &events[0];
    assert_eq!(event["actor"]["id"], "u\u{FFFD}1");
    assert_eq!(
        event["target"],
        json!({ "type": "project", "id": "\u{FFFD}\u{FFFD}" })
    );
    assert_eq!(event["outcome"], "FAILURE");
    assert_eq!(event["context"]["requestId"], "a\u{FFFD}b");
    let agent = event["context"]["userAgent"].as_str().expect("user agent");
    assert_eq!(agent.len(), 1024);

    // Details the server refuses (NUL, integers past 2^53) are recorded, made acceptable.
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/projects", axum.address))
        .header("x-user-id", "u-2")
        .json(&json!({ "name": "a\u{0}b" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(created.status(), 201);
    let events = stored_eventually(app, 2).await;
    assert_eq!(events[1]["metadata"], json!({ "name": "a\u{FFFD}b" }));

    let graphql = Example::start("graphql_service", &url(app), &[]).await;
    let answer: Value = http
        .post(format!("{}/graphql", graphql.address))
        .header("x-user-id", "u-3")
        .json(&json!({ "query": r#"mutation {
            createProject(name: "p-VICTIM") { id: name realId: id }
            rotateApiKey(id: 9007199254740993, secret: "s") }"# }))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("json");
    let real = answer["data"]["createProject"]["realId"]
        .as_str()
        .expect("id");
    let events = stored_eventually(app, 4).await;
    // An alias cannot name the target: it is the project's real id.
    assert_eq!(
        events[2]["target"],
        json!({ "type": "project", "id": real })
    );
    assert_eq!(
        events[3]["target"],
        json!({ "type": "api_key", "id": "9007199254740993" })
    );
    assert_eq!(events[3]["metadata"]["id"], "9007199254740993");
}

async fn fail_closed_answers_503(app: &TestApp) {
    let http = reqwest::Client::new();
    let post = |address: &str| {
        http.post(format!("{address}/projects"))
            .header("x-user-id", "u-1")
            .json(&json!({ "name": "Apollo" }))
            .send()
    };
    // Up: the event is stored before the response leaves.
    let guarded = Example::start("axum_service", &url(app), &[("AUDIT_FAIL_CLOSED", "1")]).await;
    let response = post(&guarded.address).await.expect("POST");
    assert_eq!(response.status(), 201);
    assert_eq!(app.stored_rows().await, 1);
    drop(guarded);

    // Down: the response says the operation is not audited.
    let port = dead_port();
    let down = format!("http://127.0.0.1:{port}/graphql");
    let guarded = Example::start("axum_service", &down, &[("AUDIT_FAIL_CLOSED", "1")]).await;
    // A caller that hangs up first: its event must not go with its response.
    let hasty = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let gone = hasty
        .post(format!("{}/projects", guarded.address))
        .header("x-user-id", "u-hasty")
        .json(&json!({ "name": "Hasty" }))
        .send()
        .await;
    assert!(gone.is_err(), "{gone:?}");
    let response = post(&guarded.address).await.expect("POST");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-audit-status"], "not-audited");
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "AUDIT_UNAVAILABLE", "{body}");
    assert_eq!(body["error"]["status"], 201, "{body}");

    // The same route without fail-closed lets the response out.
    let open = Example::start("axum_service", &down, &[]).await;
    assert_eq!(post(&open.address).await.expect("POST").status(), 201);

    // Once audit-service is back, the unaudited operations are recorded after all.
    let server = Server::start(&app.database_url, port).await;
    let events = stored_eventually(app, 4).await;
    let mut actors: Vec<&str> = events
        .iter()
        .filter_map(|e| e["actor"]["id"].as_str())
        .collect();
    actors.sort_unstable();
    assert_eq!(actors, ["u-1", "u-1", "u-1", "u-hasty"]);
    server.kill().await;
}

async fn rejected_events_reach_the_callback(app: &TestApp) {
    let dir = tempfile::tempdir().expect("temp dir");
    let dead_letter = dir.path().join("dead.jsonl");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let audit = AuditClient::builder(url(app))
        .batch(3, Duration::from_secs(2))
        .dead_letter(&dead_letter)
        .on_error(move |event, error| {
            let entry = (
                event.action.clone(),
                error.code().to_owned(),
                error.field().map(str::to_owned),
            );
            sink.lock().expect("lock").push(entry);
        })
        .build()
        .expect("client");
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let user = Actor::user("u-1");
    audit
        .project("p-1")
        .created()
        .by(user.clone())
        .enqueue()
        .await
        .expect("accepted");
    // Valid as far as the client can tell; the server refuses a time an hour ahead.
    audit
        .project("p-2")
        .created()
        .by(user.clone())
        .occurred_at(future)
        .enqueue()
        .await
        .expect("accepted");
    audit
        .project("p-3")
        .created()
        .by(user)
        .enqueue()
        .await
        .expect("accepted");
    audit.flush().await;

    assert_eq!(
        *seen.lock().expect("lock"),
        [(
            "project.created".to_owned(),
            "BAD_USER_INPUT".to_owned(),
            Some("inputs[1].occurredAt".to_owned())
        )]
    );
    let metrics = audit.metrics();
    assert_eq!(
        (metrics.delivered, metrics.rejected, metrics.dead_lettered),
        (2, 1, 1)
    );
    assert_eq!(metrics.retries, 0, "a rejection is never retried");
    let targets: Vec<Value> = stored(app)
        .await
        .iter()
        .map(|e| e["target"]["id"].clone())
        .collect();
    assert_eq!(targets, [json!("p-1"), json!("p-3")]);
    let lines = std::fs::read_to_string(&dead_letter).expect("dead-letter file");
    let dead: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["code"], "BAD_USER_INPUT");
    assert_eq!(dead[0]["field"], "inputs[1].occurredAt");
    assert_eq!(dead[0]["event"]["target"]["id"], "p-2");
}

/// `enqueue_load` with a spool, reading the keys it reports as enqueued.
async fn load(
    audit_url: &str,
    spool: &std::path::Path,
    run: &str,
    count: u32,
    rate: u32,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(example_path("enqueue_load"))
        .env("AUDIT_URL", audit_url)
        .env("SPOOL", spool)
        .env("RUN", run)
        .env("COUNT", count.to_string())
        .env("RATE", rate.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("enqueue_load starts");
    let stdout = child.stdout.take().expect("stdout");
    (child, BufReader::new(stdout).lines())
}

/// Reads `count` keys, then kills the process with SIGKILL.
async fn kill_after(
    mut child: Child,
    lines: &mut Lines<BufReader<ChildStdout>>,
    count: usize,
    keys: &mut Vec<String>,
) {
    for _ in 0..count {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("keys in time")
            .expect("reads")
            .expect("a key");
        keys.push(line);
    }
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
}

async fn spool_survives_kill_9(app: &TestApp) {
    let spool = tempfile::tempdir().expect("temp dir");
    let mut keys = Vec::new();
    // Down: everything stays in the spool.
    let down = format!("http://127.0.0.1:{}/graphql", dead_port());
    let (child, mut lines) = load(&down, spool.path(), "a", 300, 0).await;
    kill_after(child, &mut lines, 300, &mut keys).await;
    assert_eq!(app.stored_rows().await, 0);
    // Up: the backlog goes first; the process is killed mid-run.
    let (child, mut lines) = load(&url(app), spool.path(), "b", 5000, 2000).await;
    kill_after(child, &mut lines, 1000, &mut keys).await;
    // A last run delivers what is left, and says so.
    let (mut child, mut lines) = load(&url(app), spool.path(), "c", 0, 0).await;
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("flushed in time")
        .expect("reads");
    assert_eq!(line.as_deref(), Some("flushed"));
    assert!(child.wait().await.expect("exits").success());

    let counts = key_counts(&app.db).await;
    for key in &keys {
        assert_eq!(
            counts.get(key),
            Some(&1),
            "{key} stored {:?} times",
            counts.get(key)
        );
    }
    let extra: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(extra.is_empty(), "stored more than once: {extra:?}");
}

/// How many events each idempotency key has, read behind the API's back.
async fn key_counts(db: &DatabaseConnection) -> HashMap<String, i64> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT idempotency_key AS k, COUNT(*) AS n FROM audit_logs GROUP BY idempotency_key",
        ))
        .await
        .expect("counts");
    rows.iter()
        .map(|row| {
            let key: Option<String> = row.try_get("", "k").expect("k");
            (key.unwrap_or_default(), row.try_get("", "n").expect("n"))
        })
        .collect()
}

/// audit-service as a process of its own, so it can be killed and started again.
struct Server {
    child: Child,
}

impl Server {
    async fn start(database_url: &str, port: u16) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_audit-service"))
            .env("DATABASE_URL", database_url)
            .env("AUDIT_PRIVACY_KEY_FILE", crate::helpers::privacy_key_file())
            .env("AUDIT_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("audit-service starts");
        let health = format!("http://127.0.0.1:{port}/healthz");
        for _ in 0..300 {
            if reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Server { child };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("audit-service did not start in 30 s");
    }

    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reaped");
    }
}

mod outage {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        thirty_second_outage(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        thirty_second_outage(Backend::Postgres).await;
    }
}

/// audit-service is killed for 30 s while a client enqueues 500 events/s: once it is back,
/// every event is stored exactly once and the chain verifies.
async fn thirty_second_outage(backend: Backend) {
    const RATE: u64 = 500;
    const SECONDS: u64 = 40;
    let Some((database_url, cleanup)) = new_database(backend).await else {
        return;
    };
    let port = dead_port();
    let audit_url = format!("http://127.0.0.1:{port}/graphql");
    let server = Server::start(&database_url, port).await;
    let audit = AuditClient::builder(&audit_url)
        .backoff(Duration::from_millis(50), Duration::from_secs(1))
        .build()
        .expect("client");
    let producer = {
        let audit = audit.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            for i in 0..RATE * SECONDS {
                tick.tick().await;
                audit
                    .project(format!("p-{i}"))
                    .updated()
                    .by(Actor::service("outage-test"))
                    .metadata(json!({ "i": i }))
                    .enqueue()
                    .await
                    .expect("accepted");
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.kill().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let server = Server::start(&database_url, port).await;
    producer.await.expect("producer");
    tokio::time::timeout(Duration::from_secs(120), audit.flush())
        .await
        .expect("delivered within 2 minutes of the restart");

    let total = RATE * SECONDS;
    let metrics = audit.metrics();
    assert_eq!(
        (metrics.enqueued, metrics.delivered),
        (total, total),
        "{metrics:?}"
    );
    assert_eq!(
        (metrics.dropped, metrics.dead_lettered, metrics.pending),
        (0, 0, 0)
    );
    assert!(metrics.retries > 0, "the outage was noticed: {metrics:?}");
    let db = migration::connect(&database_url, 1).await.expect("connect");
    let counts = key_counts(&db).await;
    assert_eq!(counts.len() as u64, total, "0 lost");
    assert!(counts.values().all(|&n| n == 1), "0 duplicated");
    let verified: Value = reqwest::Client::new()
        .post(&audit_url)
        .json(&json!({ "query": "{ verifyAuditChain { valid checkedCount } }" }))
        .send()
        .await
        .expect("verify")
        .json()
        .await
        .expect("json");
    assert_eq!(
        verified["data"]["verifyAuditChain"],
        json!({ "valid": true, "checkedCount": total })
    );
    server.kill().await;
    db.close().await.ok();
    cleanup.run().await;
}

/// At the shutdown deadline, events stuck behind a server that never answers are written
/// to the dead-letter file and reported undelivered, not dropped.
#[tokio::test]
async fn shutdown_gives_up_on_a_server_that_never_answers() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            connections.push(socket); // read nothing, answer nothing
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let dead_letter = dir.path().join("dead.jsonl");
    let audit = AuditClient::builder(format!("http://127.0.0.1:{port}/graphql"))
        .batch(2, Duration::from_millis(5))
        .dead_letter(&dead_letter)
        .build()
        .expect("client");
    for i in 0..12 {
        audit
            .project(format!("p-{i}"))
            .created()
            .by(Actor::user("u-1"))
            .enqueue()
            .await
            .expect("accepted");
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // requests in flight, hanging
    let started = std::time::Instant::now();
    let report = audit.shutdown(Duration::from_secs(1)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (report.delivered, report.undelivered),
        (0, 12),
        "{report:?}"
    );
    let lines = std::fs::read_to_string(&dead_letter).expect("dead-letter file");
    assert_eq!(lines.lines().count(), 12);
    assert!(
        lines.lines().all(|l| l.contains("\"code\":\"SHUTDOWN\"")),
        "{lines}"
    );
    held.abort();
}

/// An unreadable spool record is settled (as lost), so `flush()` returns.
#[tokio::test]
async fn an_unreadable_spool_record_does_not_hold_up_flush() {
    let spool = tempfile::tempdir().expect("temp dir");
    std::fs::write(spool.path().join("spool.jsonl"), "this is not json\n").expect("write");
    let audit = AuditClient::builder(format!("http://127.0.0.1:{}/graphql", dead_port()))
        .spool(spool.path(), false)
        .build()
        .expect("client");
    assert_eq!(audit.metrics().enqueued, 1);
    tokio::time::timeout(Duration::from_secs(5), audit.flush())
        .await
        .expect("flush returns");
    assert_eq!(audit.metrics().pending, 0);
}
