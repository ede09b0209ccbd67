//! Keyset pages forward and backward, in both orders, and every filter.

use serde_json::{Value, json};

use crate::helpers::{TestApp, event};
use crate::on_both_backends;

on_both_backends!(
    pages_cover_everything_once_in_order,
    every_filter_narrows,
    a_page_reads_what_its_selection_needs
);

const PAGE: &str = "query($first: Int, $after: String, $last: Int, $before: String, $order: AuditLogOrder, $filter: AuditLogFilter) {
  auditLogs(first: $first, after: $after, last: $last, before: $before, orderBy: $order, filter: $filter) {
    totalCount
    edges { cursor node { id occurredAt action } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}";

/// 30 events; pairs share an `occurredAt`, so the id breaks ties.
async fn seed(app: &TestApp) -> Vec<(String, String)> {
    let inputs: Vec<Value> = (0..30)
        .map(|i| {
            let mut e = event(&format!("u{i}"), "project.created");
            e["occurredAt"] = json!(format!("2026-03-01T00:00:{:02}Z", i / 2));
            e
        })
        .collect();
    let stored = app.log_batch(json!(inputs)).await;
    let mut keys: Vec<(String, String)> = stored
        .as_array()
        .expect("list")
        .iter()
        .map(|e| {
            (
                e["occurredAt"].as_str().expect("t").to_owned(),
                e["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys
}

async fn walk(app: &TestApp, order: &str, backward: bool) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    for page_number in 0.. {
        let variables = if backward {
            json!({ "last": 7, "before": cursor, "order": order })
        } else {
            json!({ "first": 7, "after": cursor, "order": order })
        };
        let body = app.graphql(PAGE, variables).await;
        let conn = &body["data"]["auditLogs"];
        assert_eq!(conn["totalCount"], 30, "{body}");
        let edges = conn["edges"].as_array().expect("edges");
        let mut page: Vec<(String, String)> = edges
            .iter()
            .map(|e| {
                (
                    e["node"]["occurredAt"].as_str().expect("t").to_owned(),
                    e["node"]["id"].as_str().expect("id").to_owned(),
                )
            })
            .collect();
        let info = &conn["pageInfo"];
        assert_eq!(info["startCursor"], edges[0]["cursor"]);
        assert_eq!(info["endCursor"], edges[edges.len() - 1]["cursor"]);
        let (more, earlier, next_cursor) = if backward {
            (
                &info["hasPreviousPage"],
                &info["hasNextPage"],
                &info["startCursor"],
            )
        } else {
            (
                &info["hasNextPage"],
                &info["hasPreviousPage"],
                &info["endCursor"],
            )
        };
        assert_eq!(
            *earlier,
            json!(page_number > 0),
            "page {page_number}: {body}"
        );
        if backward {
            page.reverse();
        }
        seen.extend(page);
        if *more != true {
            assert_eq!(seen.len(), 30);
            break;
        }
        cursor = next_cursor.clone();
    }
    if backward {
        seen.reverse();
    }
    seen
}

async fn pages_cover_everything_once_in_order(app: &TestApp) {
    let ascending = seed(app).await;
    let mut descending = ascending.clone();
    descending.reverse();
    assert_eq!(walk(app, "OCCURRED_AT_DESC", false).await, descending);
    assert_eq!(walk(app, "OCCURRED_AT_ASC", false).await, ascending);
    assert_eq!(walk(app, "OCCURRED_AT_DESC", true).await, descending);
    assert_eq!(walk(app, "OCCURRED_AT_ASC", true).await, ascending);

    let body = app.graphql(PAGE, json!({ "first": 0 })).await;
    assert_eq!(body["data"]["auditLogs"]["edges"], json!([]), "{body}");
    assert_eq!(body["data"]["auditLogs"]["pageInfo"]["hasNextPage"], true);
    let body = app
        .graphql("{ auditLogs { nodes { id } } }", json!({}))
        .await;
    assert_eq!(
        body["data"]["auditLogs"]["nodes"]
            .as_array()
            .expect("nodes")
            .len(),
        30
    );
}

async fn every_filter_narrows(app: &TestApp) {
    let events = json!([
        { "actor": { "type": "USER", "id": "alice" }, "action": "project.created",
          "target": { "type": "project", "id": "p1" }, "occurredAt": "2026-02-01T00:00:00Z",
          "metadata": { "env": "prod", "region": { "name": "eu" }, "tags": ["a", "b"], "n": 3, "flag": true },
          "context": { "requestId": "r1" } },
        { "actor": { "type": "USER", "id": "alice" }, "action": "project.member.added",
          "target": { "type": "project", "id": "p2" }, "occurredAt": "2026-02-02T00:00:00Z",
          "metadata": { "env": "dev", "region": { "name": "us" }, "tags": ["b"], "n": 4, "flag": false } },
        { "actor": { "type": "SERVICE", "id": "billing" }, "action": "role.assigned", "outcome": "FAILURE",
          "target": { "type": "role", "id": "p1" }, "occurredAt": "2026-02-03T00:00:00Z",
          "metadata": { "env": "prod", "n": 3.0 }, "context": { "requestId": "r1" } },
        { "actor": { "type": "SYSTEM", "id": "retention" }, "action": "projects.archived", "outcome": "DENIED",
          "occurredAt": "2026-02-04T00:00:00Z", "metadata": { "tags": [] } },
    ]);
    app.log_batch(events).await;
    let cases = [
        (
            json!({ "actorIds": ["alice"] }),
            vec!["project.member.added", "project.created"],
        ),
        (
            json!({ "actorIds": ["alice", "billing"] }),
            vec!["role.assigned", "project.member.added", "project.created"],
        ),
        (
            json!({ "actorTypes": ["SERVICE", "SYSTEM"] }),
            vec!["projects.archived", "role.assigned"],
        ),
        (
            json!({ "actions": ["project.*"] }),
            vec!["project.member.added", "project.created"],
        ),
        (
            json!({ "actions": ["project.member.*", "role.assigned"] }),
            vec!["role.assigned", "project.member.added"],
        ),
        (
            json!({ "actions": ["project.created"] }),
            vec!["project.created"],
        ),
        (
            json!({ "targetType": "project" }),
            vec!["project.member.added", "project.created"],
        ),
        (
            json!({ "targetType": "project", "targetIds": ["p1"] }),
            vec!["project.created"],
        ),
        (
            json!({ "outcomes": ["FAILURE", "DENIED"] }),
            vec!["projects.archived", "role.assigned"],
        ),
        (
            json!({ "occurredAfter": "2026-02-02T00:00:00Z" }),
            vec!["projects.archived", "role.assigned", "project.member.added"],
        ),
        (
            json!({ "occurredBefore": "2026-02-02T00:00:00Z" }),
            vec!["project.created"],
        ),
        (
            json!({ "occurredAfter": "2026-02-02T00:00:00Z", "occurredBefore": "2026-02-04T00:00:00Z" }),
            vec!["role.assigned", "project.member.added"],
        ),
        (
            json!({ "requestId": "r1" }),
            vec!["role.assigned", "project.created"],
        ),
        (
            json!({ "metadata": { "env": "prod" } }),
            vec!["role.assigned", "project.created"],
        ),
        (
            json!({ "metadata": { "region": { "name": "eu" } } }),
            vec!["project.created"],
        ),
        (
            json!({ "metadata": { "tags": ["b"] } }),
            vec!["project.member.added", "project.created"],
        ),
        (
            json!({ "metadata": { "tags": ["a", "b"] } }),
            vec!["project.created"],
        ),
        (
            json!({ "metadata": { "tags": [] } }),
            vec![
                "projects.archived",
                "project.member.added",
                "project.created",
            ],
        ),
        (
            json!({ "metadata": { "n": 3 } }),
            vec!["role.assigned", "project.created"],
        ),
        (
            json!({ "metadata": { "flag": false } }),
            vec!["project.member.added"],
        ),
        (
            json!({ "metadata": { "env": "prod", "n": 3 } }),
            vec!["role.assigned", "project.created"],
        ),
        (json!({ "metadata": { "env": "staging" } }), vec![]),
        (
            json!({ "metadata": {} }),
            vec![
                "projects.archived",
                "role.assigned",
                "project.member.added",
                "project.created",
            ],
        ),
        (
            json!({ "actorIds": ["alice"], "actions": ["project.created"], "targetType": "project", "metadata": { "env": "prod" } }),
            vec!["project.created"],
        ),
    ];
    for (filter, expected) in cases {
        let body = app.graphql(PAGE, json!({ "filter": filter })).await;
        let conn = &body["data"]["auditLogs"];
        let got: Vec<&str> = conn["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("{filter}: {body}"))
            .iter()
            .map(|e| e["node"]["action"].as_str().expect("action"))
            .collect();
        assert_eq!(got, expected, "filter {filter}");
        assert_eq!(conn["totalCount"], expected.len(), "filter {filter}");
    }
}

/// A page whose events select only summary fields reads only their columns; any other
/// field, however it is selected (directly, in a fragment, beside another page), reads the
/// stored values.
async fn a_page_reads_what_its_selection_needs(app: &TestApp) {
    let mut input = event("u-1", "role.assigned");
    input["actor"]["name"] = json!("Ada");
    input["target"] = json!({ "type": "role", "id": "r-1", "name": "admin" });
    input["outcome"] = json!("DENIED");
    input["reason"] = json!("not an owner");
    input["metadata"] = json!({ "k": [1, 2] });
    input["context"] = json!({
        "ipAddress": "10.1.2.3",
        "userAgent": "probe/1",
        "requestId": "req-9",
        "traceId": "0af7651916cd43dd8448eb211c80319c",
    });
    let stored = app.log(input).await;
    let full = app
        .graphql(
            "query($id: ID!) { auditLog(id: $id) { id tenantId cursor sequence occurredAt recordedAt actor { type id name } action target { type id name } outcome reason metadata hash previousHash chainVersion context { ipAddress userAgent requestId traceId } } }",
            json!({ "id": stored["id"] }),
        )
        .await;
    let full = &full["data"]["auditLog"];
    assert_eq!(full["context"]["ipAddress"], "10.1.2.3", "{full}");
    assert_eq!(full["hash"].as_str().map(str::len), Some(64), "{full}");

    // Summary fields, both connection shapes: what they answer is what is stored.
    let summary = app
        .graphql(
            "{ auditLogs { edges { cursor node { id tenantId cursor sequence occurredAt actor { type id name } action target { type id name } outcome metadata } } nodes { __typename id } } }",
            json!({}),
        )
        .await;
    let node = &summary["data"]["auditLogs"]["edges"][0]["node"];
    for field in [
        "id",
        "tenantId",
        "cursor",
        "sequence",
        "occurredAt",
        "actor",
        "action",
        "target",
        "outcome",
        "metadata",
    ] {
        assert_eq!(node[field], full[field], "{field}: {summary}");
    }
    assert_eq!(
        summary["data"]["auditLogs"]["edges"][0]["cursor"],
        full["cursor"]
    );

    // Every other field reads the stored value: selected directly, through a named or an
    // inline fragment, or in the second of two pages.
    let others = [
        ("recordedAt", "recordedAt"),
        ("reason", "reason"),
        ("hash", "hash"),
        ("previousHash", "previousHash"),
        ("chainVersion", "chainVersion"),
        (
            "context",
            "context { ipAddress userAgent requestId traceId }",
        ),
    ];
    for (field, selection) in others {
        let queries = [
            format!("{{ auditLogs {{ nodes {{ id {selection} }} }} }}"),
            format!(
                "{{ auditLogs {{ edges {{ node {{ ...F }} }} }} }} fragment F on AuditLog {{ id {selection} }}"
            ),
            format!("{{ auditLogs {{ nodes {{ id ... on AuditLog {{ {selection} }} }} }} }}"),
            format!(
                "{{ a: auditLogs {{ nodes {{ id }} }} b: auditLogs {{ nodes {{ id {selection} }} }} }}"
            ),
        ];
        for query in queries {
            let body = app.graphql(&query, json!({})).await;
            let data = &body["data"];
            let page = if data["b"].is_null() {
                &data["auditLogs"]
            } else {
                &data["b"]
            };
            let node = match page["nodes"].is_null() {
                true => &page["edges"][0]["node"],
                false => &page["nodes"][0],
            };
            assert_eq!(node[field], full[field], "{query}: {body}");
        }
    }
}
