//! Hostile input: every way a single request was found to crash, poison or exhaust the
//! server, as regression tests on both backends, with generated variants. After each
//! attack the server must still answer, every error must carry a code, none `INTERNAL`,
//! and the log must still read, verify and export.

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::auth::{claims, hs256, with_jwt};
use sea_orm::ConnectionTrait;

use crate::helpers::{Backend, TestApp, event, spawn_app, spawn_app_with};
use crate::subscriptions::Client;

crate::with_each_backend!(
    deep_documents,
    poisoned_metadata,
    fan_out,
    nul_and_out_of_range_values,
    one_requests_bad_key_does_not_fail_another,
    idempotent_retry_of_large_numbers,
    odd_requests_get_coded_answers,
    a_subscription_does_not_use_up_a_budget,
    tokens_naming_impossible_tenants_are_refused,
    entity_fan_out_is_priced_per_representation,
    sequence_arguments_and_websocket_edges,
);

/// Every error has a code, none is `INTERNAL`; returns the codes.
pub fn codes(body: &Value) -> Vec<String> {
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    errors
        .iter()
        .map(|e| {
            let code = e["extensions"]["code"].as_str().unwrap_or_default();
            assert!(!code.is_empty(), "error without a code: {body}");
            assert_ne!(code, "INTERNAL", "{body}");
            code.to_owned()
        })
        .collect()
}

/// The first error's code and field, after checking every error with `codes`.
fn first_error(body: &Value) -> (String, String) {
    let codes = codes(body);
    assert!(!codes.is_empty(), "expected an error: {body}");
    let field = body["errors"][0]["extensions"]["field"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (codes[0].clone(), field)
}

/// The first error's message.
fn message(body: &Value) -> &str {
    body["errors"][0]["message"].as_str().unwrap_or_default()
}

/// The server still answers, reads its log and verifies its chain.
pub async fn assert_alive(app: &TestApp) {
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("the server still answers");
    assert_eq!(health.status(), 200);
    let body = app
        .graphql(
            "{ auditLogs(first: 500) { nodes { id metadata } } verifyAuditChain { valid } }",
            json!({}),
        )
        .await;
    assert_eq!(body["errors"], Value::Null, "{body}");
}

async fn jwt_app(backend: Backend) -> Option<TestApp> {
    let mut app = spawn_app_with(backend, with_jwt).await?;
    app.token = Some(hs256(&claims("acme", "audit:read audit:write")));
    Some(app)
}

/// `[[[…"x"…]]]`, `{a: {a: …}}` and `{ a { a … } }` in many disguises: a block string with
/// an odd number of quotes (the attack that got past the first guard), escapes, comments,
/// unicode, an unterminated block string.
fn deep_documents_of(depth: usize) -> Vec<String> {
    let disguises = [
        r#"requestId: """a"b""", "#,
        r#"requestId: """a\"""b""", "#,
        r#"requestId: "a\"b{[(", "#,
        "requestId: \"é☃\\u00e9\", ",
        "# \" \"\"\" {{{\n",
        "",
    ];
    let mut documents = Vec::new();
    for disguise in disguises {
        let list = format!("{}\"x\"{}", "[".repeat(depth), "]".repeat(depth));
        documents.push(format!(
            "{{ auditLogs(filter: {{{disguise}actorIds: {list}}}) {{ totalCount }} }}"
        ));
        let object = format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth));
        documents.push(format!(
            "{{ auditLogs(filter: {{{disguise}metadata: {object}}}) {{ totalCount }} }}"
        ));
        let selections = format!("{}id{}", "a { ".repeat(depth), " }".repeat(depth));
        documents.push(format!("{{ {disguise} {selections} }}"));
    }
    documents.push(format!("{}{}", r#"{ a(x: """"#, "[".repeat(depth)));
    documents
}

async fn deep_documents(backend: Backend) {
    let Some(app) = jwt_app(backend).await else {
        return;
    };
    let mut tried = 0;
    for document in deep_documents_of(3000) {
        // Without a credential, refused before anything is parsed, over GET and POST.
        let get = app
            .client
            .get(format!("{}/graphql", app.address))
            .query(&[("query", &document)])
            .send()
            .await
            .expect("answered");
        assert_eq!(get.status(), 401);
        let body: Value = get.json().await.expect("JSON");
        assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
        // With a credential, over POST and GET: a clear error, no crash.
        let body = app.graphql(&document, json!({})).await;
        assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
        let body: Value = app
            .client
            .get(format!("{}/graphql", app.address))
            .query(&[("query", &document)])
            .bearer_auth(app.token.as_deref().unwrap_or_default())
            .send()
            .await
            .expect("answered")
            .json()
            .await
            .expect("JSON");
        assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
        tried += 3;
    }
    // A token without scopes, and a WebSocket subscription, get the same answer.
    let no_scopes = hs256(&claims("acme", ""));
    let deep = &deep_documents_of(5000)[0];
    let body = crate::helpers::post_json(
        &app.client,
        &format!("{}/graphql", app.address),
        Some(&no_scopes),
        json!({ "query": deep }),
    )
    .await;
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
    let mut client = Client::connect(&app.address, "graphql-transport-ws").await;
    let token = format!("Bearer {}", app.token.as_deref().unwrap_or_default());
    client
        .send(json!({ "type": "connection_init", "payload": { "authorization": token } }))
        .await;
    assert_eq!(client.receive().await["type"], "connection_ack");
    client.subscribe("1", deep, json!({})).await;
    let answer = client.receive().await;
    assert_eq!(answer["id"], "1", "{answer}");
    assert_eq!(Client::error_code(&answer), "BAD_USER_INPUT", "{answer}");
    assert!(tried >= 57);
    assert_alive(&app).await;
    app.cleanup().await;
}

/// `{"a": {"a": … 1 …}}`, `depth` objects deep.
fn nested_json(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
}

async fn poisoned_metadata(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // Inline, 200 deep: refused before parsing.
    let inline = format!("{}1{}", "{a: ".repeat(200), "}".repeat(200));
    let body = app
        .graphql(
            &format!(
                "mutation {{ logAuditEvent(input: {{actor: {{type: USER, id: \"u\"}}, action: \"a.b\", metadata: {inline}}}) {{ id }} }}"
            ),
            json!({}),
        )
        .await;
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
    // Through variables: one limit, 32 levels, whatever the path.
    for (depth, accepted) in [(100, false), (33, false), (32, true)] {
        let mut input = event("u-1", "project.created");
        input["metadata"] = nested_json(depth);
        let body = app
            .graphql(
                "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }",
                json!({ "input": input }),
            )
            .await;
        if accepted {
            assert_eq!(body["errors"], Value::Null, "{body}");
        } else {
            assert_eq!(
                first_error(&body),
                ("BAD_USER_INPUT".to_owned(), "input.metadata".to_owned())
            );
        }
        let mut filter = json!({ "metadata": nested_json(depth) });
        filter["actorIds"] = json!(["u-1"]);
        let body = app
            .graphql(
                "query($f: AuditLogFilter) { auditLogs(filter: $f) { totalCount } }",
                json!({ "f": filter }),
            )
            .await;
        if !accepted {
            assert_eq!(
                first_error(&body),
                ("BAD_USER_INPUT".to_owned(), "filter.metadata".to_owned())
            );
        }
    }
    assert_eq!(app.stored_rows().await, 1);

    // A row an older server let in, nested deeper than serde_json reads (planted behind
    // the API's back): readers show it as unreadable instead of failing.
    app.log(event("u-2", "project.updated")).await;
    let poison = serde_json::to_string(&nested_json(200)).expect("JSON");
    app.tamper(&format!(
        "UPDATE audit_logs SET metadata = '{poison}' WHERE seq = 2"
    ))
    .await;
    let body = app
        .graphql(
            "{ auditLogs(orderBy: OCCURRED_AT_ASC) { nodes { sequence metadata } } verifyAuditChain { valid firstInvalidSequence reason } }",
            json!({}),
        )
        .await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    let nodes = body["data"]["auditLogs"]["nodes"]
        .as_array()
        .expect("nodes");
    assert_eq!(nodes.len(), 2);
    assert!(nodes[1]["metadata"]["$unreadable"].is_string(), "{body}");
    let verification = &body["data"]["verifyAuditChain"];
    assert_eq!(verification["valid"], false);
    assert_eq!(verification["firstInvalidSequence"], "2");
    let verify = app.cli(&["verify"]);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    let export = app.cli(&["export", "--tenant", "default"]);
    assert!(export.status.success(), "{export:?}");
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 2);

    if backend == Backend::Postgres {
        // The live feed carries on past such a row: plant one more as a newly committed
        // event, announce it as the ingest path would, then log a real one.
        let mut client = Client::init(&app.address, "graphql-transport-ws").await;
        client
            .subscribe(
                "live",
                "subscription { auditLogCreated { sequence metadata } }",
                json!({}),
            )
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        app.tamper(&format!(
            "INSERT INTO audit_logs (id, tenant_id, seq, occurred_at, recorded_at, actor_type, \
             actor_id, action, outcome, metadata, prev_hash, hash) \
             SELECT gen_random_uuid(), tenant_id, 3, occurred_at, recorded_at, actor_type, \
             actor_id, action, outcome, '{poison}', hash, hash FROM audit_logs WHERE seq = 2; \
             UPDATE chain_heads SET seq = 3 WHERE tenant_id = 'default'; \
             SELECT pg_notify('audit_events', '[[\"default\",3,3]]')"
        ))
        .await;
        let planted = client.next_event("live").await;
        assert_eq!(planted["sequence"], "3");
        assert!(planted["metadata"]["$unreadable"].is_string());
        app.log(event("u-3", "project.deleted")).await;
        assert_eq!(client.next_event("live").await["sequence"], "4");
    }
    let body = app.graphql("{ auditLogs { totalCount } }", json!({})).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    app.cleanup().await;
}

async fn fan_out(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let inputs: Vec<Value> = (0..150)
        .map(|i| event(&format!("u-{}", i % 3), "project.created"))
        .collect();
    app.log_batch(json!(inputs)).await;
    // 141 bytes that once grew memory without bound: trails within trails.
    let nested = "{ auditLogs { nodes { id actor { auditLogs { nodes { id actor { auditLogs { nodes { id actor { auditLogs { nodes { id } } } } } } } } } } } }";
    let body = app.graphql(nested, json!({})).await;
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
    assert!(message(&body).contains("complex"), "{body}");
    // 90 aliases of the largest page.
    let wide: Vec<String> = (0..90)
        .map(|i| format!("a{i}: auditLogs(first: 500) {{ nodes {{ id metadata }} }}"))
        .collect();
    let body = app
        .graphql(&format!("{{ {} }}", wide.join(" ")), json!({}))
        .await;
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
    // The largest page alone, with every field, is fine.
    let body = app
        .graphql(
            &format!(
                "{{ auditLogs(first: 500) {{ edges {{ cursor node {{ {} hash previousHash }} }} }} }}",
                crate::helpers::EVENT_FIELDS
            ),
            json!({}),
        )
        .await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert_eq!(
        body["data"]["auditLogs"]["edges"].as_array().map(Vec::len),
        Some(150)
    );
    // Entities multiply what static complexity sees: the event budget stops them.
    let representations: Vec<Value> = (0..250)
        .map(|i| json!({ "__typename": "AuditActor", "type": "USER", "id": format!("u-{i}") }))
        .collect();
    let body = app
        .graphql(
            "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditActor { auditLogs(first: 500) { nodes { id } } } } }",
            json!({ "r": representations }),
        )
        .await;
    let codes = codes(&body);
    assert!(codes.iter().any(|c| c == "BAD_USER_INPUT"), "{body}");
    assert_alive(&app).await;
    app.cleanup().await;
}

async fn nul_and_out_of_range_values(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.log(event("u-1", "project.created")).await;
    let page = "query($f: AuditLogFilter) { auditLogs(filter: $f) { nodes { id } } }";
    let ancient = {
        use base64::Engine;
        let raw = format!(
            "v1\n1\n-210866803200000001\n{}\ndefault",
            uuid::Uuid::now_v7()
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    let cases = [
        (
            page,
            json!({ "f": { "actorIds": ["u\u{0}"] } }),
            "filter.actorIds[0]",
        ),
        (
            page,
            json!({ "f": { "requestId": "r\u{0}" } }),
            "filter.requestId",
        ),
        (
            page,
            json!({ "f": { "targetType": "p\u{0}" } }),
            "filter.targetType",
        ),
        (
            page,
            json!({ "f": { "targetType": "p", "targetIds": ["ok", "p\u{0}"] } }),
            "filter.targetIds[1]",
        ),
        (
            page,
            json!({ "f": { "metadata": { "k\u{0}": 1 } } }),
            "filter.metadata",
        ),
        (
            page,
            json!({ "f": { "metadata": { "k": "v\u{0}" } } }),
            "filter.metadata",
        ),
        (
            page,
            json!({ "f": { "metadata": { "k": ["v\u{0}"] } } }),
            "filter.metadata",
        ),
        (
            page,
            json!({ "f": { "tenantIds": ["t\u{0}"] } }),
            "filter.tenantIds[0]",
        ),
        (
            page,
            json!({ "f": { "tenantIds": [] } }),
            "filter.tenantIds",
        ),
        (
            "query($t: String) { auditChainHead(tenantId: $t) { sequence } }",
            json!({ "t": "t\u{0}" }),
            "tenantId",
        ),
        (
            "query($t: String) { verifyAuditChain(tenantId: $t) { valid } }",
            json!({ "t": "t\u{0}" }),
            "tenantId",
        ),
        (
            "query($a: String) { auditLogs(after: $a) { nodes { id } } }",
            json!({ "a": ancient }),
            "after",
        ),
        (
            "{ verifyAuditChain(fromSequence: \"5\", toSequence: \"2\") { valid } }",
            json!({}),
            "toSequence",
        ),
        (
            "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditActor { auditLogs { nodes { id } } } } }",
            json!({ "r": [{ "__typename": "AuditActor", "type": "USER", "id": "x\u{0}" }] }),
            "id",
        ),
        (
            "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditTarget { auditLogs { nodes { id } } } } }",
            json!({ "r": [{ "__typename": "AuditTarget", "type": "p\u{0}", "id": "x" }] }),
            "type",
        ),
    ];
    for (query, variables, field) in cases {
        let body = app.graphql(query, variables.clone()).await;
        assert_eq!(
            first_error(&body),
            ("BAD_USER_INPUT".to_owned(), field.to_owned()),
            "{query} {variables}: {body}"
        );
    }
    // Every string of an event, with NUL: refused, nothing stored.
    let paths = [
        "actor.id",
        "actor.name",
        "target.type",
        "target.id",
        "target.name",
        "context.userAgent",
        "context.requestId",
        "context.ipAddress",
        "action",
        "reason",
        "idempotencyKey",
    ];
    for path in paths {
        let mut input = event("u-1", "project.created");
        input["target"] = json!({ "type": "project", "id": "p-1" });
        input["context"] = json!({});
        let slot = path
            .split('.')
            .fold(&mut input, |value, key| &mut value[key]);
        *slot = json!("x\u{0}");
        let body = app
            .graphql(
                "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }",
                json!({ "input": input }),
            )
            .await;
        assert_eq!(
            first_error(&body),
            ("BAD_USER_INPUT".to_owned(), format!("input.{path}")),
        );
    }
    assert_eq!(app.stored_rows().await, 1);
    assert_alive(&app).await;
    app.cleanup().await;
}

async fn one_requests_bad_key_does_not_fail_another(backend: Backend) {
    let Some(mut app) = jwt_app(backend).await else {
        return;
    };
    app.token = Some(hs256(&claims("globex", "audit:read audit:write")));
    app.log(event("u-1", "project.created")).await;
    let attacker = hs256(&claims("acme", "audit:read"));
    let url = format!("{}/graphql", app.address);
    let trail = "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditActor { auditLogs { nodes { action } } } } }";
    let bad = json!({ "query": trail, "variables": { "r": [{ "__typename": "AuditActor", "type": "USER", "id": "x\u{0}" }] } });
    let good = json!({ "query": trail, "variables": { "r": [{ "__typename": "AuditActor", "type": "USER", "id": "u-1" }] } });
    let requests = (0..100).map(|i| {
        let (token, body) = if i % 2 == 0 {
            (attacker.as_str(), bad.clone())
        } else {
            (app.token.as_deref().unwrap_or_default(), good.clone())
        };
        let (client, url) = (app.client.clone(), url.clone());
        async move {
            let body = crate::helpers::post_json(&client, &url, Some(token), body).await;
            (i % 2 == 0, body)
        }
    });
    for (bad, body) in join_all(requests).await {
        if bad {
            assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
        } else {
            assert_eq!(body["errors"], Value::Null, "{body}");
            assert_eq!(
                body["data"]["_entities"][0]["auditLogs"]["nodes"][0]["action"],
                "project.created"
            );
        }
    }
    app.cleanup().await;
}

async fn idempotent_retry_of_large_numbers(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut input = event("u-1", "project.created");
    input["idempotencyKey"] = json!("retry-1");
    // 1.66e62 read back one bit off before serde_json parsed floats exactly (found by
    // fuzzing): its hash no longer matched.
    input["metadata"] =
        json!({ "v": 1e16, "w": 1.5, "x": -0.0, "y": 1e300, "z": [2.5e-7], "f": 1.66e62 });
    input["context"] = json!({ "ipAddress": "::ffff:1.2.3.4" });
    let first = app.log(input.clone()).await;
    let again = app.log(input.clone()).await;
    assert_eq!(first["id"], again["id"]);
    input["metadata"]["v"] = json!(2e16);
    let body = app
        .graphql(
            "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }",
            json!({ "input": input }),
        )
        .await;
    assert_eq!(first_error(&body).0, "IDEMPOTENCY_CONFLICT");
    assert_eq!(app.stored_rows().await, 1);
    let body = app
        .graphql(
            "{ auditLogs { nodes { metadata } } verifyAuditChain { valid } }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["verifyAuditChain"]["valid"], true, "{body}");
    assert_eq!(
        body["data"]["auditLogs"]["nodes"][0]["metadata"]["f"],
        1.66e62
    );
    app.cleanup().await;
}

async fn odd_requests_get_coded_answers(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let graphql = format!("{}/graphql", app.address);
    for method in ["PUT", "DELETE", "PATCH"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = app
            .client
            .request(method, &graphql)
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], "GET, POST");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    }
    // A default value of an unknown type once panicked in async-graphql's validation
    // (found by fuzzing).
    let body = app.graphql("query($a: [X] = 1) { a }", json!({})).await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    let response = app
        .client
        .get(format!("{}/no/such/page", app.address))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(codes(&body), ["NOT_FOUND"]);
    // An upgrade request that is not a WebSocket handshake.
    let response = app
        .client
        .get(&graphql)
        .header("Connection", "upgrade")
        .header("Upgrade", "websocket")
        .send()
        .await
        .expect("answered");
    assert!(response.status().is_client_error());
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    app.cleanup().await;
}

/// A subscription lives as long as its client likes: the per-response budgets apply to
/// each event on its own, and the memory it loads is not held for its lifetime.
async fn a_subscription_does_not_use_up_a_budget(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut client = Client::init(&app.address, "graphql-transport-ws").await;
    client
        .subscribe(
            "trails",
            "subscription { auditLogCreated { sequence actor { auditLogs(first: 500) { nodes { id } } } } }",
            json!({}),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // 25 pages of 500 are more than one response may hold; across events, that is fine.
    for i in 1..=25 {
        app.log(event("u-1", "project.updated")).await;
        let delivered = client.next_event("trails").await;
        assert_eq!(delivered["sequence"], i.to_string());
        assert_eq!(
            delivered["actor"]["auditLogs"]["nodes"]
                .as_array()
                .map(Vec::len),
            Some(i)
        );
    }
    app.cleanup().await;
}

async fn tokens_naming_impossible_tenants_are_refused(backend: Backend) {
    let Some(app) = jwt_app(backend).await else {
        return;
    };
    let long = "t".repeat(10_000);
    for tenant in ["ta\u{0}", "ta\ntb", "", "  ", long.as_str()] {
        let token = hs256(&claims(tenant, "audit:read audit:write"));
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .bearer_auth(token)
            .json(&json!({ "query": "mutation { logAuditEvent(input: {actor: {type: USER, id: \"u\"}, action: \"a.b\"}) { id } }" }))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 401, "{tenant:.20}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    }
    let mut sub = claims("acme", "audit:read");
    sub["sub"] = json!("u\u{0}");
    let body = crate::helpers::post_json(
        &app.client,
        &format!("{}/graphql", app.address),
        Some(&hs256(&sub)),
        json!({ "query": "{ auditLogs { totalCount } }" }),
    )
    .await;
    assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    // Only the refusals were recorded (in tenant `system`).
    let logged = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            app.db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM audit_logs WHERE action <> 'audit.access.denied'",
        ))
        .await
        .expect("count")
        .expect("a row");
    assert_eq!(logged.try_get::<i64>("", "n").expect("n"), 0);
    app.cleanup().await;
}

/// `_entities` resolves its selection once per representation: complexity counts it so,
/// and a request takes at most 1,000 of them.
async fn entity_fan_out_is_priced_per_representation(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let query = "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditTarget { a0: auditLogs(first: 0) { totalCount } a1: auditLogs(first: 0) { totalCount } a2: auditLogs(first: 0) { totalCount } } } }";
    let representations = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({ "__typename": "AuditTarget", "type": "p", "id": format!("{i:x}") }))
            .collect()
    };
    let started = std::time::Instant::now();
    let body = app
        .graphql(query, json!({ "r": representations(18_000) }))
        .await;
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT");
    assert!(
        message(&body).contains("at most 1000 representations"),
        "{body}"
    );
    // Each representation costs its selection: a thousand pages of 50 are too many.
    let pages = "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditTarget { auditLogs { nodes { id action } } } } }";
    let body = app
        .graphql(pages, json!({ "r": representations(1000) }))
        .await;
    assert!(
        message(&body).contains("too complex"),
        "{:.300}",
        body.to_string()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The largest allowed fetch answers, its counts batched.
    let body = app
        .graphql(query, json!({ "r": representations(1000) }))
        .await;
    assert_eq!(body["errors"], Value::Null, "{:.300}", body.to_string());
    assert_eq!(body["data"]["_entities"][999]["a2"]["totalCount"], 0);
    app.cleanup().await;
}

async fn sequence_arguments_and_websocket_edges(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for _ in 0..3 {
        app.log(event("u-1", "project.created")).await;
    }
    for (from, field) in [
        ("100", "fromSequence"),
        ("9223372036854775807", "fromSequence"),
        ("+1", "fromSequence"),
        ("01", "fromSequence"),
    ] {
        let body = app
            .graphql(
                "query($f: String) { verifyAuditChain(fromSequence: $f) { valid } }",
                json!({ "f": from }),
            )
            .await;
        assert_eq!(
            first_error(&body),
            ("BAD_USER_INPUT".to_owned(), field.to_owned()),
            "{from}"
        );
    }
    let body = app
        .graphql(
            "{ verifyAuditChain(fromSequence: \"4\") { valid checkedCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"]["verifyAuditChain"],
        json!({ "valid": true, "checkedCount": 0 })
    );

    // A subscription selects exactly one root field.
    let mut client = Client::init(&app.address, "graphql-transport-ws").await;
    client
        .subscribe(
            "two",
            "subscription { a: auditLogCreated { id } b: auditLogCreated { id } }",
            json!({}),
        )
        .await;
    let answer = client.receive().await;
    assert_eq!(Client::error_code(&answer), "BAD_USER_INPUT", "{answer}");
    // An id in use closes the connection with 4409, as graphql-transport-ws says (on a
    // connection of its own: the refused subscription above may still send `complete`).
    let mut client = Client::init(&app.address, "graphql-transport-ws").await;
    client
        .subscribe("same", "subscription { auditLogCreated { id } }", json!({}))
        .await;
    client
        .subscribe("same", "subscription { auditLogCreated { id } }", json!({}))
        .await;
    assert_eq!(
        client.receive().await,
        json!({ "type": "close", "code": 4409 })
    );
    // A close reason that repeats a long client string still fits a control frame.
    let mut client = Client::init(&app.address, "graphql-transport-ws").await;
    client
        .send(json!({ "id": "1", "type": format!("bogus{}", "x".repeat(300)) }))
        .await;
    let closed = client.receive().await;
    assert_eq!(closed["type"], "close", "{closed}");
    app.cleanup().await;
}

/// When expensive work fills a tenant's share of the server's capacity, its further
/// requests wait at most 2 s and are then shed with 503 and `UNAVAILABLE`; the work in
/// flight still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_shed_with_503_when_capacity_is_full() {
    // Capacity for 4 requests of complexity 2, half of it for one tenant: two event
    // mutations fill the share of the open mode's one tenant.
    let Some(app) = spawn_app_with(Backend::Postgres, |config| config.max_complexity = 2).await
    else {
        return;
    };
    let log = "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }";
    let body = app
        .graphql(log, json!({ "input": event("u-0", "project.created") }))
        .await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    // Lock the tenant's chain head, so that the mutations wait in the middle of their work.
    let txn = sea_orm::TransactionTrait::begin(&app.db)
        .await
        .expect("begin");
    txn.execute_unprepared("SELECT * FROM chain_heads WHERE tenant_id = 'default' FOR UPDATE")
        .await
        .expect("row lock");
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let (client, url) = (app.client.clone(), format!("{}/graphql", app.address));
            tokio::spawn(async move {
                let body = json!({
                    "query": "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }",
                    "variables": { "input": event(&format!("u-{i}"), "project.created") },
                });
                crate::helpers::post_json(&client, &url, None, body).await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let started = std::time::Instant::now();
    let shed = app.post(json!({ "query": "{ __typename }" })).await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: Value = shed.json().await.expect("JSON");
    assert_eq!(codes(&body), ["UNAVAILABLE"]);
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    txn.rollback().await.expect("rollback");
    for writer in writers {
        let body = writer.await.expect("writer");
        assert_eq!(body["errors"], Value::Null, "{body}");
    }
    let body = app.graphql("{ __typename }", json!({})).await;
    assert_eq!(body["data"]["__typename"], "Query");
    app.cleanup().await;
}

/// A client that subscribes with `after` many times and then stops reading once held a
/// database connection per stalled replay, locking every tenant out (found by an attack
/// probe). Replays now query on tasks of their own, and a client that does not read for
/// 10 s is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_nothing() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let filler = "x".repeat(60_000);
    for _ in 0..20 {
        let inputs: Vec<Value> = (0..15)
            .map(|_| {
                let mut input = event("big", "project.created");
                input["metadata"] = json!({ "filler": filler });
                input
            })
            .collect();
        app.log_batch(json!(inputs)).await;
    }
    let first = app
        .graphql(
            "{ auditLogs(orderBy: OCCURRED_AT_ASC, first: 1) { nodes { cursor } } }",
            json!({}),
        )
        .await;
    let after = first["data"]["auditLogs"]["nodes"][0]["cursor"].clone();
    let mut stalled = Client::init(&app.address, "graphql-transport-ws").await;
    for id in 0..12 {
        stalled
            .subscribe(
                &id.to_string(),
                "subscription($a: String) { auditLogCreated(after: $a) { sequence metadata } }",
                json!({ "a": after }),
            )
            .await;
    }
    // `stalled` is never read from again.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let body = app
            .graphql("{ auditLogs(first: 5) { nodes { sequence } } }", json!({}))
            .await;
        assert_eq!(body["errors"], Value::Null, "{body}");
        // Not the second a pool timeout takes (with room for a busy test machine).
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        app.log(event("u-1", "project.updated")).await;
    }
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready.status(), 200);
    drop(stalled);
    app.cleanup().await;
}
