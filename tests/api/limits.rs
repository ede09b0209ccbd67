//! Every limit answers with its own clear error, and random input never breaks the server.

use std::time::Duration;

use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::auth::{claims, hs256, with_jwt};
use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::subscriptions::Client;

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn document_limits() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    // Depth: each trail level adds three (pages of one, so complexity stays low).
    let mut deep = "id".to_owned();
    for _ in 0..6 {
        deep = format!("actor {{ auditLogs(first: 1) {{ nodes {{ {deep} }} }} }}");
    }
    let body = app
        .graphql(
            &format!("{{ auditLogs(first: 1) {{ nodes {{ {deep} }} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nested too deep"),
        "{body}"
    );

    // Complexity: 99 aliases of 50-event pages of 25 fields each is far over 25,000.
    let fields = "id tenantId sequence occurredAt recordedAt action outcome reason metadata hash previousHash cursor actor { type id name } target { type id name } context { ipAddress userAgent requestId }";
    let wide: Vec<String> = (0..99)
        .map(|i| format!("a{i}: auditLogs {{ nodes {{ {fields} }} }}"))
        .collect();
    let body = app
        .graphql(&format!("{{ {} }}", wide.join(" ")), json!({}))
        .await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("complex"),
        "{body}"
    );

    // Root fields: at most 100, aliases included.
    let many: Vec<String> = (0..101).map(|i| format!("a{i}: __typename")).collect();
    let body = app
        .graphql(&format!("{{ {} }}", many.join(" ")), json!({}))
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 100 root fields"),
        "{body}"
    );
    let fine: Vec<String> = (0..100).map(|i| format!("a{i}: __typename")).collect();
    assert_eq!(
        app.graphql(&format!("{{ {} }}", fine.join(" ")), json!({}))
            .await["data"]["a99"],
        "Query"
    );

    // Nesting that would exhaust the parser's stack is refused before parsing.
    for document in [
        "{".repeat(200_000),
        format!(
            "{{ auditLogs(filter: {}) {{ totalCount }} }}",
            "[".repeat(100_000)
        ),
    ] {
        let response = app.post(json!({ "query": document })).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    }
    let deep_get = "{".repeat(5_000);
    let get = app
        .client
        .get(format!("{}/graphql", app.address))
        .query(&[("query", deep_get.as_str())])
        .send()
        .await
        .expect("sent");
    assert_eq!(get.status(), 200);
    assert_eq!(
        app.graphql("{ __typename }", json!({})).await["data"]["__typename"],
        "Query"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn introspection_can_be_switched_off() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.introspection = false)
        .await
        .expect("SQLite always runs");
    let body = app
        .graphql("{ __schema { types { name } } }", json!({}))
        .await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(
        app.graphql("{ __typename }", json!({})).await["data"]["__typename"],
        "Query"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn each_credential_is_rate_limited() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        with_jwt(c);
        c.auth.rate_limit = 1;
        c.auth.rate_limit_burst = 3;
    })
    .await
    .expect("SQLite always runs");
    let busy = hs256(&claims("acme", "audit:read"));
    let calm = hs256(&claims("globex", "audit:read"));
    let ask = |token: String| {
        let request = app
            .client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(token)
            .json(&json!({ "query": "{ __typename }" }));
        async move { request.send().await.expect("sent") }
    };
    for _ in 0..3 {
        assert_eq!(ask(busy.clone()).await.status(), 200);
    }
    let limited = ask(busy.clone()).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after));
    let body: Value = limited.json().await.expect("json");
    assert_eq!(code(&body), "RATE_LIMITED");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], retry_after);
    // Another credential is not slowed.
    assert_eq!(ask(calm).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ask(busy).await.status(), 200);
    app.cleanup().await;
}

#[tokio::test]
async fn websocket_limits() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let mut client = Client::init(&app.address, "graphql-transport-ws").await;
    for i in 0..100 {
        client
            .subscribe(
                &i.to_string(),
                "subscription { auditLogCreated { id } }",
                json!({}),
            )
            .await;
    }
    client
        .subscribe("100", "subscription { auditLogCreated { id } }", json!({}))
        .await;
    let refused = client.receive().await;
    assert_eq!(
        (refused["id"].as_str(), refused["type"].as_str()),
        (Some("100"), Some("error")),
        "{refused}"
    );
    assert_eq!(Client::error_code(&refused), "RATE_LIMITED");
    // Ending one makes room for another.
    client.send(json!({ "id": "7", "type": "complete" })).await;
    client
        .subscribe(
            "101",
            "subscription { auditLogCreated { action } }",
            json!({}),
        )
        .await;
    // Every running subscription gets events (they go live as the server gets to them).
    let mut expected: std::collections::BTreeSet<String> =
        (0..100).map(|i| i.to_string()).collect();
    expected.remove("7");
    expected.insert("101".to_owned());
    let mut seen = std::collections::BTreeSet::new();
    while seen != expected {
        app.log(crate::helpers::event("u", "limit.checked")).await;
        while let Ok(message) =
            tokio::time::timeout(Duration::from_millis(300), client.receive()).await
        {
            match message["type"].as_str() {
                Some("next") => {
                    let id = message["id"].as_str().expect("id").to_owned();
                    assert!(expected.contains(&id), "{message}");
                    seen.insert(id);
                }
                _ => assert_eq!(message, json!({ "type": "complete", "id": "7" })),
            }
        }
    }

    // A message over 1 MiB closes the connection.
    let mut big = Client::init(&app.address, "graphql-transport-ws").await;
    let huge = json!({ "id": "x", "type": "subscribe", "payload": { "query": "subscription { auditLogCreated { id } }", "variables": { "pad": "x".repeat(1_100_000) } } });
    let _ = big
        .socket_mut()
        .send(Message::Text(huge.to_string().into()))
        .await;
    let closed = big.receive().await;
    assert_eq!(closed["type"], "close", "{closed}");
    app.cleanup().await;
}

/// Thousands of mutated documents and variables: never a 5xx, never a panic, never a
/// response without an error code, and the server keeps answering.
#[tokio::test]
async fn random_input_never_breaks_the_server() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let corpus = [
        "mutation($i: AuditEventInput!) { logAuditEvent(input: $i) { id sequence hash } }",
        "query($f: AuditLogFilter, $n: Int, $a: String) { auditLogs(filter: $f, first: $n, after: $a) { totalCount edges { cursor node { id actor { auditLogs(first: 2) { totalCount } } } } } }",
        "{ auditLog(id: \"01900000-0000-7000-8000-000000000000\") { id metadata context { ipAddress } } }",
        "{ verifyAuditChain(fromSequence: \"1\") { valid reason } auditChainHead { hash } }",
        "{ _entities(representations: [{ __typename: \"AuditTarget\", type: \"p\", id: \"1\" }]) { ... on AuditTarget { auditLogs { totalCount } } } }",
        "mutation { logAuditEvents(inputs: [{ actor: { type: USER, id: \"u\" }, action: \"a.b\", metadata: { k: [1, 2.5, null, true] } }]) { id } }",
    ];
    let alphabet: Vec<char> = "{}[]()$:!,.\"\\@#=&|0123456789 \n\tabcdefXYZ_-éø😀\u{0}"
        .chars()
        .collect();
    let document = (
        0..corpus.len(),
        proptest::collection::vec((0..400usize, 0..3u8, 0..alphabet.len()), 0..6),
    )
        .prop_map(move |(pick, edits)| {
            let mut chars: Vec<char> = corpus[pick].chars().collect();
            for (at, kind, c) in edits {
                let at = at % (chars.len() + 1);
                match kind {
                    0 => chars.insert(at, alphabet[c]),
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ if at < chars.len() => chars[at] = alphabet[c],
                    _ => {}
                }
            }
            chars.into_iter().collect::<String>()
        });
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-zA-Z0-9 ._:/-]{0,12}".prop_map(Value::from),
        Just(json!("USER")),
        Just(json!("project.created")),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let variables = proptest::collection::btree_map(
        prop_oneof![
            Just("i".to_owned()),
            Just("f".to_owned()),
            Just("n".to_owned()),
            Just("a".to_owned()),
            "[a-z]{1,3}"
        ],
        value,
        0..4,
    );
    let mut runner = TestRunner::new(Config {
        cases: 2500,
        failure_persistence: None,
        ..Config::default()
    });
    let mut cases = Vec::new();
    for _ in 0..2500 {
        let doc = document.new_tree(&mut runner).expect("tree").current();
        let vars = variables.new_tree(&mut runner).expect("tree").current();
        cases.push((doc, Value::Object(vars.into_iter().collect())));
    }
    for (document, variables) in cases {
        check(&app, &document, &variables).await;
    }
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), 200);
    assert_eq!(
        app.graphql("{ __typename }", json!({})).await["data"]["__typename"],
        "Query"
    );
    app.cleanup().await;
}

async fn check(app: &TestApp, document: &str, variables: &Value) {
    let response = app
        .post(json!({ "query": document, "variables": variables }))
        .await;
    let status = response.status();
    assert!(
        status.as_u16() < 500,
        "{status} for {document:?} {variables}"
    );
    let body: Value = response.json().await.expect("a JSON body");
    for error in body["errors"].as_array().into_iter().flatten() {
        assert!(
            error["extensions"]["code"].is_string(),
            "no code: {error} for {document:?} {variables}"
        );
        assert_ne!(
            error["extensions"]["code"], "INTERNAL",
            "{error} for {document:?} {variables}"
        );
    }
}
