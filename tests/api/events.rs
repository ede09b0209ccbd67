//! Logging events and reading them back: fields, order, sequences, idempotency.

use serde_json::{Value, json};

use crate::helpers::{EVENT_FIELDS, TestApp, event, post_json};
use crate::on_both_backends;

on_both_backends!(
    an_event_round_trips_every_field,
    a_batch_keeps_input_order_and_gap_free_sequences,
    concurrent_writers_get_gap_free_sequences,
    idempotent_retries_return_the_original,
    a_large_keyed_batch_is_stored_and_retried_whole,
    a_reused_key_with_other_content_is_a_conflict,
    sql_looking_strings_are_stored_verbatim,
    an_unknown_id_is_null,
);

async fn an_event_round_trips_every_field(app: &TestApp) {
    let input = json!({
        "actor": { "type": "SERVICE", "id": "api-gateway", "name": "API Gateway" },
        "action": "project.member.added",
        "target": { "type": "project", "id": "p-42", "name": "Apollo" },
        "outcome": "DENIED",
        "reason": "missing role",
        "occurredAt": "2026-01-02T03:04:05.123456789Z",
        "metadata": { "env": "prod", "nested": { "n": 1.5, "ok": true }, "tags": ["a", "b"] },
        "context": { "ipAddress": "2001:DB8::1", "userAgent": "curl/8", "requestId": "req-1" },
    });
    let stored = app.log(input).await;
    assert_eq!(stored["tenantId"], "default");
    assert_eq!(stored["sequence"], "1");
    assert_eq!(
        stored["actor"],
        json!({ "type": "SERVICE", "id": "api-gateway", "name": "API Gateway" })
    );
    assert_eq!(stored["action"], "project.member.added");
    assert_eq!(
        stored["target"],
        json!({ "type": "project", "id": "p-42", "name": "Apollo" })
    );
    assert_eq!(stored["outcome"], "DENIED");
    assert_eq!(stored["reason"], "missing role");
    // Stored at microsecond precision, the precision of both databases.
    assert_eq!(stored["occurredAt"], "2026-01-02T03:04:05.123456Z");
    assert_eq!(stored["metadata"]["nested"]["ok"], true);
    assert_eq!(stored["metadata"]["tags"], json!(["a", "b"]));
    // IP addresses are stored in canonical form.
    assert_eq!(
        stored["context"],
        json!({ "ipAddress": "2001:db8::1", "userAgent": "curl/8", "requestId": "req-1" })
    );
    assert_ne!(stored["recordedAt"], stored["occurredAt"]);

    // IPv4-compatible IPv6 addresses, which PostgreSQL writes in another form, still verify.
    let mut odd = event("u0", "network.changed");
    odd["context"] = json!({ "ipAddress": "::1.2.3.4" });
    odd["occurredAt"] = json!("1970-01-01T00:00:00.0000009Z");
    odd["metadata"] = json!({ "max": 9007199254740991u64, "min": -9007199254740991i64 });
    let odd = app.log(odd).await;
    assert_eq!(odd["context"]["ipAddress"], "::102:304");
    assert_eq!(odd["occurredAt"], "1970-01-01T00:00:00.000000Z");
    let verified = app
        .graphql("{ verifyAuditChain { valid } }", json!({}))
        .await;
    assert_eq!(
        verified["data"]["verifyAuditChain"]["valid"], true,
        "{verified}"
    );

    let read = app
        .graphql(
            &format!("query($id: ID!) {{ auditLog(id: $id) {{ {EVENT_FIELDS} }} }}"),
            json!({ "id": stored["id"] }),
        )
        .await;
    assert_eq!(
        read["data"]["auditLog"], stored,
        "read back differs: {read}"
    );

    let defaults = app.log(event("u1", "project.created")).await;
    assert_eq!(defaults["outcome"], "SUCCESS");
    assert_eq!(defaults["metadata"], json!({}));
    assert_eq!(defaults["target"], Value::Null);
    assert_eq!(defaults["occurredAt"], defaults["recordedAt"]);
    assert_eq!(defaults["sequence"], "3");
}

async fn a_batch_keeps_input_order_and_gap_free_sequences(app: &TestApp) {
    let inputs: Vec<Value> = (0..250)
        .map(|i| event(&format!("u{i}"), "role.assigned"))
        .collect();
    let stored = app.log_batch(json!(inputs)).await;
    let stored = stored.as_array().expect("list");
    assert_eq!(stored.len(), 250);
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e["actor"]["id"], format!("u{i}"));
        assert_eq!(e["sequence"], (i + 1).to_string());
    }
    assert_eq!(app.stored_rows().await, 250);
}

async fn concurrent_writers_get_gap_free_sequences(app: &TestApp) {
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let client = app.client.clone();
        let url = format!("{}/graphql", app.address);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let (query, variables) = if i % 3 == 0 {
                    let batch: Vec<Value> = (0..5)
                        .map(|j| event(&format!("w{writer}-{i}-{j}"), "project.updated"))
                        .collect();
                    (
                        "mutation($v: [AuditEventInput!]!) { logAuditEvents(inputs: $v) { id } }",
                        json!({ "v": batch }),
                    )
                } else {
                    (
                        "mutation($v: AuditEventInput!) { r: logAuditEvent(input: $v) { id } }",
                        json!({ "v": event(&format!("w{writer}-{i}"), "project.updated") }),
                    )
                };
                let body = post_json(
                    &client,
                    &url,
                    None,
                    json!({ "query": query, "variables": variables }),
                )
                .await;
                assert_eq!(body["errors"], Value::Null, "{body}");
                ids.push(body["data"].to_string());
            }
            ids
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    // 16 writers × (4 batches of 5 + 6 singles) = 416 events.
    let expected = 16 * (4 * 5 + 6);
    assert_eq!(app.stored_rows().await, expected);
    let mut sequences = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = app
            .graphql(
                "query($after: String) { auditLogs(first: 500, after: $after) { nodes { sequence } pageInfo { hasNextPage endCursor } } }",
                json!({ "after": after }),
            )
            .await;
        let conn = &page["data"]["auditLogs"];
        for node in conn["nodes"].as_array().expect("nodes") {
            sequences.push(
                node["sequence"]
                    .as_str()
                    .expect("seq")
                    .parse::<i64>()
                    .expect("number"),
            );
        }
        if conn["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = conn["pageInfo"]["endCursor"].clone();
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=expected).collect::<Vec<_>>());
}

async fn idempotent_retries_return_the_original(app: &TestApp) {
    let mut input = event("u1", "project.created");
    input["idempotencyKey"] = json!("create-p1");
    input["metadata"] = json!({ "a": 1 });
    let first = app.log(input.clone()).await;
    let again = app.log(input.clone()).await;
    assert_eq!(again, first);

    // In a batch: the retry and a duplicate inside the batch both resolve to one row each.
    let mut other = event("u2", "project.created");
    other["idempotencyKey"] = json!("create-p2");
    let batch = app.log_batch(json!([input, other.clone(), other])).await;
    assert_eq!(batch[0], first);
    assert_eq!(batch[1], batch[2]);
    assert_eq!(batch[1]["sequence"], "2");
    assert_eq!(app.stored_rows().await, 2);
}

/// On PostgreSQL a batch this size is written in several statements (rows, keys and rollup
/// buckets in JSON arrays of at most 15 KiB), one event alone exceeding that bound.
async fn a_large_keyed_batch_is_stored_and_retried_whole(app: &TestApp) {
    let inputs: Vec<Value> = (0..400)
        .map(|i| {
            let mut input = event(&format!("u{i}"), &format!("resource{}.updated", i % 50));
            input["idempotencyKey"] = json!(format!("order-{i:04}-{}", "k".repeat(40)));
            input["metadata"] =
                json!({ "i": i, "note": "x".repeat(if i == 200 { 20_000 } else { 60 }) });
            input
        })
        .collect();
    let stored = app.log_batch(json!(inputs)).await;
    let stored = stored.as_array().expect("list").clone();
    assert_eq!(stored.len(), 400);
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e["sequence"], (i + 1).to_string());
        assert_eq!(e["metadata"]["i"], i);
    }
    assert_eq!(app.stored_rows().await, 400);
    let read = app
        .graphql(
            &format!("query($id: ID!) {{ auditLog(id: $id) {{ {EVENT_FIELDS} }} }}"),
            json!({ "id": stored[200]["id"] }),
        )
        .await;
    assert_eq!(read["data"]["auditLog"], stored[200], "{read}");

    // The retry, and a new event behind it: every key was stored, whichever statement held it.
    let mut retry = inputs.clone();
    retry.push(event("u400", "resource0.updated"));
    let again = app.log_batch(json!(retry)).await;
    assert_eq!(again.as_array().map(|a| a[..400].to_vec()), Some(stored));
    assert_eq!(again[400]["sequence"], "401");
    assert_eq!(app.stored_rows().await, 401);
    let stats = app
        .graphql(
            "{ auditLogStats(groupBy: [ACTION]) { action count } }",
            json!({}),
        )
        .await;
    let buckets = stats["data"]["auditLogStats"].as_array().cloned();
    let buckets = buckets.unwrap_or_default();
    let counts = buckets
        .iter()
        .map(|b| b["count"].as_i64().unwrap_or_default());
    assert_eq!(buckets.len(), 50, "{stats}");
    assert_eq!(counts.sum::<i64>(), 401, "{stats}");
}

async fn a_reused_key_with_other_content_is_a_conflict(app: &TestApp) {
    let mut input = event("u1", "project.created");
    input["idempotencyKey"] = json!("k");
    app.log(input.clone()).await;

    input["outcome"] = json!("FAILURE");
    let body = app
        .graphql(
            "mutation($i: AuditEventInput!) { logAuditEvent(input: $i) { id } }",
            json!({ "i": input }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "IDEMPOTENCY_CONFLICT",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"],
        "input.idempotencyKey"
    );

    // The whole batch fails, and none of it is stored.
    let body = app
        .graphql(
            "mutation($i: [AuditEventInput!]!) { logAuditEvents(inputs: $i) { id } }",
            json!({ "i": [event("u9", "project.created"), input] }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "IDEMPOTENCY_CONFLICT",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"],
        "inputs[1].idempotencyKey"
    );
    assert_eq!(app.stored_rows().await, 1);
}

async fn sql_looking_strings_are_stored_verbatim(app: &TestApp) {
    let nasty = "'; DROP TABLE audit_logs; --";
    let mut input = event(nasty, "project.created");
    input["reason"] = json!("Robert'); DELETE FROM chain_heads;--");
    input["target"] = json!({ "type": "project", "id": "\" OR 1=1 --", "name": "ü 😀 \u{202e}" });
    input["metadata"] = json!({ "q": "SELECT * FROM x WHERE y = '1'" });
    let stored = app.log(input).await;
    assert_eq!(stored["actor"]["id"], nasty);
    assert_eq!(stored["reason"], "Robert'); DELETE FROM chain_heads;--");
    assert_eq!(stored["target"]["id"], "\" OR 1=1 --");
    assert_eq!(stored["target"]["name"], "ü 😀 \u{202e}");
    let found = app
        .graphql(
            "query($a: [String!]) { auditLogs(filter: { actorIds: $a }) { totalCount nodes { reason } } }",
            json!({ "a": [nasty] }),
        )
        .await;
    assert_eq!(found["data"]["auditLogs"]["totalCount"], 1, "{found}");
}

async fn an_unknown_id_is_null(app: &TestApp) {
    let body = app
        .graphql(
            "{ auditLog(id: \"01900000-0000-7000-8000-000000000000\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(body, json!({ "data": { "auditLog": null } }));
}
