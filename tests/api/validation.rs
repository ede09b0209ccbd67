//! Bad input gets a clear error with a code and a field path, and nothing partial is stored.

use serde_json::{Value, json};

use crate::helpers::{TestApp, event};
use crate::on_both_backends;

on_both_backends!(
    bad_events_are_refused_with_their_path,
    bad_read_arguments_are_refused,
    oversized_requests_are_refused
);

fn with(field: &str, value: Value) -> Value {
    let mut input = event("u1", "project.created");
    let mut slot = &mut input;
    let parts: Vec<&str> = field.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if slot[*part].is_null() {
            slot[*part] = json!({});
        }
        slot = &mut slot[*part];
    }
    slot[parts[parts.len() - 1]] = value;
    input
}

async fn bad_events_are_refused_with_their_path(app: &TestApp) {
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cases: Vec<(Value, &str)> = vec![
        (with("action", json!("Project.Created")), "action"),
        (with("action", json!("project")), "action"),
        (with("action", json!("a.b.c.d.e")), "action"),
        (
            with("action", json!(format!("a.{}", "b".repeat(130)))),
            "action",
        ),
        (with("actor.id", json!("")), "actor.id"),
        (with("actor.id", json!("   ")), "actor.id"),
        (with("actor.id", json!("x".repeat(257))), "actor.id"),
        (with("actor.name", json!("x".repeat(257))), "actor.name"),
        (
            with("target", json!({ "type": "", "id": "p1" })),
            "target.type",
        ),
        (
            with("target", json!({ "type": "project", "id": "" })),
            "target.id",
        ),
        (with("reason", json!("x".repeat(4097))), "reason"),
        (with("reason", json!("nul\u{0}byte")), "reason"),
        (with("metadata", json!([1, 2])), "metadata"),
        (with("metadata", json!("text")), "metadata"),
        (
            with("metadata", json!({ "big": "x".repeat(70_000) })),
            "metadata",
        ),
        (with("metadata", json!({ "k": "nul\u{0}" })), "metadata"),
        (with("occurredAt", json!(in_an_hour)), "occurredAt"),
        (
            with("occurredAt", json!("1969-12-31T23:59:59Z")),
            "occurredAt",
        ),
        (
            with("occurredAt", json!("2016-12-31T23:59:60.5Z")),
            "occurredAt",
        ),
        (
            with("metadata", json!({ "big": 9007199254740992u64 })),
            "metadata",
        ),
        (
            with("metadata", json!({ "small": [-9007199254740992i64] })),
            "metadata",
        ),
        (
            with("context.ipAddress", json!("10.0.0.1/24")),
            "context.ipAddress",
        ),
        (
            with("context.ipAddress", json!("999.1.1.1")),
            "context.ipAddress",
        ),
        (
            with("context.ipAddress", json!("localhost")),
            "context.ipAddress",
        ),
        (
            with("context.userAgent", json!("x".repeat(1025))),
            "context.userAgent",
        ),
        (with("context.requestId", json!("")), "context.requestId"),
        (with("idempotencyKey", json!("")), "idempotencyKey"),
        (with("occurredAt", json!("yesterday")), "occurredAt"),
        (with("actor.type", json!("ROBOT")), "actor.type"),
        (with("outcome", json!("MAYBE")), "outcome"),
    ];
    for (input, field) in cases {
        // Alone, as `input`.
        let body = app
            .graphql(
                "mutation($i: AuditEventInput!) { logAuditEvent(input: $i) { id } }",
                json!({ "i": input }),
            )
            .await;
        let error = &body["errors"][0];
        assert_eq!(
            error["extensions"]["code"], "BAD_USER_INPUT",
            "{field}: {body}"
        );
        assert_eq!(
            error["extensions"]["field"],
            format!("input.{field}"),
            "{body}"
        );
        assert!(
            body.get("data")
                .is_none_or(|d| d["logAuditEvent"].is_null()),
            "{body}"
        );

        // Third in a batch: the path names it, and the valid events before it are not stored.
        let batch = json!([
            event("u1", "project.created"),
            event("u2", "project.created"),
            input
        ]);
        let body = app
            .graphql(
                "mutation($i: [AuditEventInput!]!) { logAuditEvents(inputs: $i) { id } }",
                json!({ "i": batch }),
            )
            .await;
        let error = &body["errors"][0];
        assert_eq!(
            error["extensions"]["code"], "BAD_USER_INPUT",
            "{field}: {body}"
        );
        assert_eq!(
            error["extensions"]["field"],
            format!("inputs[2].{field}"),
            "{body}"
        );
    }
    assert_eq!(app.stored_rows().await, 0);

    let too_many: Vec<Value> = (0..1001)
        .map(|i| event(&format!("u{i}"), "project.created"))
        .collect();
    let body = app
        .graphql(
            "mutation($i: [AuditEventInput!]!) { logAuditEvents(inputs: $i) { id } }",
            json!({ "i": too_many }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    assert_eq!(body["errors"][0]["extensions"]["field"], "inputs");
    let body = app
        .graphql("mutation { logAuditEvents(inputs: []) { id } }", json!({}))
        .await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "inputs", "{body}");
    assert_eq!(app.stored_rows().await, 0);
}

async fn bad_read_arguments_are_refused(app: &TestApp) {
    app.log(event("u1", "project.created")).await;
    let cases = [
        (
            "{ auditLogs(after: \"not-a-cursor\") { totalCount } }",
            "after",
        ),
        ("{ auditLogs(before: \"djEKMQ\") { totalCount } }", "before"),
        ("{ auditLogs(first: 501) { totalCount } }", "first"),
        ("{ auditLogs(first: -1) { totalCount } }", "first"),
        ("{ auditLogs(last: 1000) { totalCount } }", "last"),
        ("{ auditLogs(first: 1, last: 1) { totalCount } }", "last"),
        (
            "{ auditLogs(filter: { actions: [\"Project.*\"] }) { totalCount } }",
            "filter.actions[0]",
        ),
        (
            "{ auditLogs(filter: { actions: [\"project.created\", \"*\"] }) { totalCount } }",
            "filter.actions[1]",
        ),
        (
            "{ auditLogs(filter: { actorIds: [] }) { totalCount } }",
            "filter.actorIds",
        ),
        (
            "{ auditLogs(filter: { targetIds: [\"p1\"] }) { totalCount } }",
            "filter.targetIds",
        ),
        (
            "{ auditLogs(filter: { metadata: [1] }) { totalCount } }",
            "filter.metadata",
        ),
        ("{ auditLog(id: \"42\") { id } }", "id"),
    ];
    for (query, field) in cases {
        let body = app.graphql(query, json!({})).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{query}: {body}"
        );
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{query}: {body}"
        );
    }
}

async fn oversized_requests_are_refused(app: &TestApp) {
    let huge = "x".repeat(1024 * 1024 + 1);
    let response = app
        .post(json!({ "query": "{ auditLogs { totalCount } }", "variables": { "pad": huge } }))
        .await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(app.stored_rows().await, 0);
}
