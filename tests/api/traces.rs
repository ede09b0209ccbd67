//! Events linked to traces: `context.traceId` from the input or the request's W3C
//! `traceparent`, validated, covered by the chain (version 2), not compared on retries.

use serde_json::{Value, json};

use crate::helpers::{TestApp, event};
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
    assert_eq!(stored["chainVersion"], 2);

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
