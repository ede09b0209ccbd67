//! Events linked to traces: `context.traceId` from the input or the request's W3C
//! `traceparent`, validated, covered by the chain (version 2), not compared on retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, Binary, TestApp, event, new_database};
use crate::on_both_backends;

on_both_backends!(events_carry_the_trace_id);

const LOG: &str = "mutation($input: AuditEventInput!) {
  logAuditEvent(input: $input) { sequence chainVersion context { traceId requestId } }
}";

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// POSTs `LOG` with a `traceparent` header.
async fn log_in_trace(app: &TestApp, traceparent: &str, input: Value) -> Value {
    app.client
        .post(format!("{}/graphql", app.address))
        .header("traceparent", traceparent)
        .json(&json!({ "query": LOG, "variables": { "input": input } }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json")
}

async fn events_carry_the_trace_id(app: &TestApp) {
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let body = log_in_trace(app, &traceparent, event("u1", "project.created")).await;
    let stored = &body["data"]["logAuditEvent"];
    assert_eq!(stored["context"]["traceId"], TRACE, "{body}");
    assert_eq!(stored["chainVersion"], 3);

    // The input's own trace id wins over the header's.
    let own = "0af7651916cd43dd8448eb211c80319c";
    let mut input = event("u1", "project.updated");
    input["context"] = json!({ "traceId": own, "requestId": "r-1" });
    let body = log_in_trace(app, &traceparent, input).await;
    assert_eq!(
        body["data"]["logAuditEvent"]["context"]["traceId"], own,
        "{body}"
    );

    // A malformed header links nothing; a request without one neither.
    for header in [
        format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
        format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-0000000000000000-01"),
        format!("ff-{TRACE}-00f067aa0ba902b7-01"),
        format!("00-{TRACE}-00f067aa0ba902b7-01-extra"),
        "garbage".to_owned(),
    ] {
        let body = log_in_trace(app, &header, event("u2", "project.viewed")).await;
        let context = &body["data"]["logAuditEvent"]["context"];
        assert_eq!(context["traceId"], Value::Null, "{header}: {body}");
    }
    let plain = app
        .graphql(LOG, json!({ "input": event("u2", "project.viewed") }))
        .await;
    assert_eq!(
        plain["data"]["logAuditEvent"]["context"]["traceId"],
        Value::Null
    );

    // A trace id that is not one is refused with its path, and nothing is stored.
    let before = app.stored_rows().await;
    for bad in [
        "4BF92F3577B34DA6A3CE929D0E0E4736",
        "abc",
        &"0".repeat(32),
        &"g".repeat(32),
    ] {
        let mut input = event("u3", "project.created");
        input["context"] = json!({ "traceId": bad });
        let body = app.graphql(LOG, json!({ "input": input })).await;
        let error = &body["errors"][0];
        assert_eq!(
            error["extensions"]["code"], "BAD_USER_INPUT",
            "{bad}: {body}"
        );
        assert_eq!(
            error["extensions"]["field"], "input.context.traceId",
            "{body}"
        );
    }
    assert_eq!(app.stored_rows().await, before);

    // A retry in another trace is the same event, and keeps the first trace id.
    let mut keyed = event("u4", "role.assigned");
    keyed["idempotencyKey"] = json!("retry-1");
    let first = log_in_trace(app, &traceparent, keyed.clone()).await;
    let other = format!("00-{own}-b7ad6b7169203331-01");
    let retry = log_in_trace(app, &other, keyed).await;
    assert_eq!(retry["errors"], Value::Null, "{retry}");
    assert_eq!(first["data"], retry["data"]);
    assert_eq!(retry["data"]["logAuditEvent"]["context"]["traceId"], TRACE);

    let verified = app
        .graphql("{ verifyAuditChain { valid checkedCount } }", json!({}))
        .await;
    assert_eq!(
        verified["data"]["verifyAuditChain"]["valid"], true,
        "{verified}"
    );
}

crate::with_each_backend!(spans_reach_an_otlp_receiver);

/// What an OTLP/HTTP receiver got: every span of every `/v1/traces` body.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Value>>>);

impl Receiver {
    /// Starts an OTLP/HTTP (JSON) receiver; returns its address.
    async fn start(&self) -> String {
        let spans = self.0.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let body: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                let mut spans = spans.lock().expect("lock");
                for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                        for span in scope["spans"].as_array().into_iter().flatten() {
                            let mut span = span.clone();
                            span["resource"] = resource["resource"].clone();
                            spans.push(span);
                        }
                    }
                }
                ([("content-type", "application/json")], "{}")
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    /// Waits until a span matches `wanted`, and returns it.
    async fn span(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let found = self
                .0
                .lock()
                .expect("lock")
                .iter()
                .find(|s| wanted(s))
                .cloned();
            if let Some(span) = found {
                return span;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let names: Vec<_> = self
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s["name"].clone())
            .collect();
        panic!("no {what} span within 10 s; spans: {names:?}");
    }
}

fn attribute<'s>(span: &'s Value, key: &str) -> &'s Value {
    span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .map_or(&Value::Null, |a| &a["value"])
}

/// With an OTLP endpoint configured, a mutation and a query carrying a `traceparent` give
/// spans in that trace (request, GraphQL operation, SQL), the group commit's span links to
/// the mutation, the stored event names the trace, and JSON log lines carry the trace id and
/// the request id.
async fn spans_reach_an_otlp_receiver(backend: Backend) {
    let Some((database_url, cleanup)) = new_database(backend).await else {
        return;
    };
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let server = Binary::start(
        &database_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "audit-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("AUDIT_LOG_FORMAT", "json"),
            ("AUDIT_LOG", "info"),
            ("AUDIT_JWT_HS256_SECRET", crate::auth::SECRET),
            ("AUDIT_JWT_ISSUER", crate::auth::ISSUER),
            ("AUDIT_JWT_AUDIENCE", crate::auth::AUDIENCE),
        ],
    )
    .await;
    let token = crate::auth::hs256(&crate::auth::claims("acme", "audit:write audit:read"));
    let client = reqwest::Client::new();
    let parent_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{TRACE}-{parent_span}-01");
    let post = |query: &str, variables: Value, token: Option<&str>| {
        let mut request = client
            .post(format!("{}/graphql", server.base))
            .header("traceparent", &traceparent)
            .header("x-request-id", "req-traced")
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let logged = post(
        "mutation Log($input: AuditEventInput!) { logAuditEvent(input: $input) { context { traceId } } }",
        json!({ "input": event("u1", "project.created") }),
        Some(&token),
    )
    .await
    .expect("sent");
    assert_eq!(logged.headers()["x-request-id"], "req-traced");
    let logged: Value = logged.json().await.expect("json");
    assert_eq!(
        logged["data"]["logAuditEvent"]["context"]["traceId"], TRACE,
        "{logged}"
    );
    let read: Value = post(
        "query Read { auditLogs { totalCount } }",
        json!({}),
        Some(&token),
    )
    .await
    .expect("sent")
    .json()
    .await
    .expect("json");
    assert_eq!(read["data"]["auditLogs"]["totalCount"], 1, "{read}");
    let refused = post(
        "{ auditLogs { totalCount } }",
        json!({}),
        Some("not-a-token"),
    )
    .await
    .expect("sent");
    assert_eq!(refused.status(), 401);

    // The request span is the caller's child; the operation's is the request's.
    let in_trace = |span: &Value| span["traceId"] == TRACE;
    let request = receiver
        .span("request", |s| in_trace(s) && s["name"] == "POST /graphql")
        .await;
    assert_eq!(request["parentSpanId"], parent_span, "{request}");
    assert_eq!(attribute(&request, "http.route")["stringValue"], "/graphql");
    let service = request["resource"]["attributes"]
        .as_array()
        .expect("resource")
        .iter()
        .find(|a| a["key"] == "service.name")
        .map(|a| a["value"]["stringValue"].clone());
    assert_eq!(service, Some(json!("audit-under-test")));
    let mutation = receiver
        .span("mutation", |s| in_trace(s) && s["name"] == "mutation Log")
        .await;
    assert_eq!(
        attribute(&mutation, "graphql.operation.type")["stringValue"],
        "mutation"
    );
    let query = receiver
        .span("query", |s| in_trace(s) && s["name"] == "query Read")
        .await;
    // The query's statements are its children.
    let sql = receiver
        .span("sql", |s| {
            in_trace(s) && s["name"] == "sql" && s["parentSpanId"] == query["spanId"]
        })
        .await;
    let text = attribute(&sql, "db.query.text")["stringValue"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("audit_logs"), "{sql}");
    // The group commit runs in a trace of its own, linked to the mutation.
    let commit = receiver
        .span("ingest.commit", |s| {
            s["name"] == "ingest.commit"
                && s["links"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| l["traceId"] == TRACE)
        })
        .await;
    assert_ne!(commit["traceId"], TRACE);
    let link = &commit["links"][0];
    assert_eq!(link["spanId"], mutation["spanId"], "{commit}");
    let commit_sql = receiver
        .span("the commit's sql", |s| {
            s["name"] == "sql" && s["parentSpanId"] == commit["spanId"]
        })
        .await;
    assert!(
        attribute(&commit_sql, "db.query.text")["stringValue"].is_string(),
        "{commit_sql}"
    );

    // JSON log lines, with the request's trace and request ids on the refusal.
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "audit-service listening"),
        "{log}"
    );
    let denied = lines
        .iter()
        .find(|l| l["fields"]["message"] == "access denied")
        .unwrap_or_else(|| panic!("no refusal in {log}"));
    assert_eq!(denied["span"]["trace_id"], TRACE, "{denied}");
    assert_eq!(denied["span"]["request_id"], "req-traced", "{denied}");
    drop(server);
    cleanup.run().await;
}
