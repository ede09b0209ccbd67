//! The Apollo Federation subgraph: its SDL, composition with another subgraph, a real
//! gateway in front of both, and batched entity resolution.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, post_json, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(a_gateway_query_crosses_both_subgraphs);

/// Batches form within a time window after their first key; tests run unoptimized and in
/// parallel, so they get a wide window (the default, 2 ms, is for release builds).
#[tokio::test]
async fn entities_cost_a_constant_number_of_statements_sqlite() {
    let mut app = spawn_app_with(Backend::Sqlite, batched)
        .await
        .expect("SQLite always runs");
    app.token = Some(crate::auth::hs256(&crate::auth::claims(
        "default",
        "audit:read audit:write",
    )));
    entities_cost_a_constant_number_of_statements(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn entities_cost_a_constant_number_of_statements_postgres() {
    let Some(mut app) = spawn_app_with(Backend::Postgres, batched).await else {
        return;
    };
    app.token = Some(crate::auth::hs256(&crate::auth::claims(
        "default",
        "audit:read audit:write",
    )));
    entities_cost_a_constant_number_of_statements(&app).await;
    app.cleanup().await;
}

const FEDERATION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/federation");

#[tokio::test]
async fn the_subgraph_sdl_is_served_and_committed() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let served = app.graphql("{ _service { sdl } }", json!({})).await;
    let served = served["data"]["_service"]["sdl"]
        .as_str()
        .expect("sdl")
        .to_owned();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema.subgraph.graphql"
    ))
    .expect("schema.subgraph.graphql");
    assert_eq!(served, audit_service::graphql::subgraph_sdl());
    assert!(
        served == committed,
        "schema.subgraph.graphql is stale: run `cargo run -- schema --subgraph > schema.subgraph.graphql`"
    );
    assert!(
        served.contains("url: \"https://specs.apollo.dev/federation/v2."),
        "{served}"
    );
    for key in [
        "type AuditLog @key(fields: \"id\")",
        "type AuditActor @key(fields: \"type id\")",
        "type AuditTarget @key(fields: \"type id\")",
        "type PageInfo @shareable",
    ] {
        assert!(served.contains(key), "missing {key}");
    }
    app.cleanup().await;
}

#[test]
fn the_subgraph_composes_with_another() {
    crate::helpers::node_packages("tests/federation", "@apollo/gateway");
    let output = Command::new("node")
        .arg(format!("{FEDERATION}/compose.mjs"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schema.subgraph.graphql"
        ))
        .output()
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "composition failed:\n{stderr}");
    let supergraph = String::from_utf8_lossy(&output.stdout);
    assert!(
        supergraph.contains("auditTrail: AuditTarget!"),
        "{supergraph}"
    );
    assert!(
        supergraph.contains("auditLogs(filter: AuditLogFilter"),
        "{supergraph}"
    );
}

/// A gateway child process, killed when dropped.
struct Gateway {
    child: Child,
    url: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(audit_url: &str) -> Gateway {
    crate::helpers::node_packages("tests/federation", "@apollo/gateway");
    let mut child = Command::new("node")
        .arg(format!("{FEDERATION}/gateway.mjs"))
        .env("AUDIT_URL", audit_url)
        .env("PROJECTS_PORT", "0")
        .env("GATEWAY_PORT", "0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a line from the gateway");
    let url = line
        .trim()
        .strip_prefix("READY gateway=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the gateway did not start: {line:?}"))
        .to_owned();
    Gateway { child, url }
}

async fn a_gateway_query_crosses_both_subgraphs(app: &TestApp) {
    let target = |id: &str| json!({ "type": "project", "id": id });
    let mut events = Vec::new();
    for (i, (actor, action, project)) in [
        ("ann", "project.created", "p1"),
        ("bob", "project.member.added", "p1"),
        ("ann", "project.created", "p2"),
        ("ann", "project.renamed", "p1"),
    ]
    .into_iter()
    .enumerate()
    {
        events.push(json!({
            "actor": { "type": "USER", "id": actor }, "action": action, "target": target(project),
            "occurredAt": format!("2026-05-01T00:00:0{i}Z"),
        }));
    }
    app.log_batch(json!(events)).await;

    let address = app.address.clone();
    let gateway = tokio::task::spawn_blocking(move || start_gateway(&format!("{address}/graphql")))
        .await
        .expect("gateway starts");
    let body = post_json(&app.client, &gateway.url, None, json!({ "query": "{ projects { id name auditTrail { type id auditLogs(first: 2) { totalCount nodes { action actor { id } } pageInfo { hasNextPage } } } } }" })).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    let projects = &body["data"]["projects"];
    assert_eq!(projects[0]["id"], "p1");
    assert_eq!(projects[0]["name"], "Apollo");
    assert_eq!(
        projects[0]["auditTrail"]["auditLogs"],
        json!({
            "totalCount": 3,
            "nodes": [
                { "action": "project.renamed", "actor": { "id": "ann" } },
                { "action": "project.member.added", "actor": { "id": "bob" } },
            ],
            "pageInfo": { "hasNextPage": true },
        })
    );
    assert_eq!(projects[1]["auditTrail"]["auditLogs"]["totalCount"], 1);
    assert_eq!(
        projects[2]["auditTrail"],
        json!({ "type": "project", "id": "p3", "auditLogs": { "totalCount": 0, "nodes": [], "pageInfo": { "hasNextPage": false } } })
    );
}

/// A wide batch window, and a JWT-authenticated server, so that requests run no statement
/// but their own (open mode checks for API keys now and then).
fn batched(config: &mut audit_service::config::ServeConfig) {
    config.batch_window_ms = 100;
    crate::auth::with_jwt(config);
}

async fn statements(app: &TestApp) -> u64 {
    let scrape = crate::metrics::scrape(app).await;
    crate::metrics::value(&scrape, "audit_sql_statements_total", &[]) as u64
}

const ENTITIES: &str = "query($r: [_Any!]!) { _entities(representations: $r) {
  ... on AuditTarget { id auditLogs(first: 2) { totalCount nodes { action target { id } } pageInfo { hasNextPage } } }
  ... on AuditActor { id auditLogs(first: 1) { totalCount nodes { actor { id } } } }
  ... on AuditLog { id action }
} }";

async fn entities_cost_a_constant_number_of_statements(app: &TestApp) {
    let mut events = Vec::new();
    for p in 0..40 {
        for n in 0..3 {
            events.push(json!({
                "actor": { "type": "USER", "id": format!("u{p}") }, "action": format!("project.step{n}"),
                "target": { "type": "project", "id": format!("p{p}") },
                "occurredAt": format!("2026-05-01T00:{p:02}:0{n}Z"),
            }));
        }
    }
    let stored = app.log_batch(json!(events)).await;
    // Let the PostgreSQL listener load the new events for live subscribers: those
    // statements are not this request's.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let mut costs = Vec::new();
    for n in [5, 40] {
        let mut representations = Vec::new();
        for p in 0..n {
            representations.push(
                json!({ "__typename": "AuditTarget", "type": "project", "id": format!("p{p}") }),
            );
            representations
                .push(json!({ "__typename": "AuditActor", "type": "USER", "id": format!("u{p}") }));
            representations.push(json!({ "__typename": "AuditLog", "id": stored[p * 3]["id"] }));
        }
        let before = statements(app).await;
        let body = app.graphql(ENTITIES, json!({ "r": representations })).await;
        costs.push(statements(app).await - before);
        assert_eq!(body["errors"], Value::Null, "{body}");
        let entities = body["data"]["_entities"].as_array().expect("entities");
        assert_eq!(entities.len(), 3 * n);
        for p in 0..n {
            let target = &entities[3 * p];
            assert_eq!(target["id"], format!("p{p}"));
            assert_eq!(
                target["auditLogs"],
                json!({
                    "totalCount": 3,
                    "nodes": [
                        { "action": "project.step2", "target": { "id": format!("p{p}") } },
                        { "action": "project.step1", "target": { "id": format!("p{p}") } },
                    ],
                    "pageInfo": { "hasNextPage": true },
                })
            );
            assert_eq!(
                entities[3 * p + 1]["auditLogs"]["nodes"][0]["actor"]["id"],
                format!("u{p}")
            );
            assert_eq!(entities[3 * p + 2]["action"], "project.step0");
        }
    }
    // Trails of targets and actors, their counts, and the events: one statement each,
    // however many entities.
    assert_eq!(
        costs[0], costs[1],
        "statements grew with the number of entities: {costs:?}"
    );
    assert!(costs[1] <= 5, "{costs:?}");

    let unknown = app
        .graphql(ENTITIES, json!({ "r": [{ "__typename": "AuditLog", "id": "01900000-0000-7000-8000-000000000000" }, { "__typename": "AuditLog", "id": "nope" }] }))
        .await;
    assert_eq!(
        unknown["data"]["_entities"],
        json!([null, null]),
        "{unknown}"
    );
}
