//! Access control through the real HTTP and WebSocket interface: credentials, scopes,
//! tenant isolation, refusals on record, and limits.

use std::time::Duration;

use audit_service::config::ServeConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, event, spawn_app_with};
use crate::subscriptions::Client;

pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
pub const ISSUER: &str = "https://auth.platform.test";
pub const AUDIENCE: &str = "audit-service";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Accepts HS256 (shared secret) and RS256/ES256 (the fixture JWKS) tokens.
pub fn with_jwt(config: &mut ServeConfig) {
    config.auth.jwt_hs256_secret = Some(SECRET.to_owned().into());
    config.auth.jwt_jwks_file = Some(format!("{FIXTURES}/jwks.json").into());
    config.auth.jwt_issuer = Some(ISSUER.to_owned());
    config.auth.jwt_audience = Some(AUDIENCE.to_owned());
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a valid token for `tenant` with `scope`, valid for an hour.
pub fn claims(tenant: &str, scope: &str) -> Value {
    json!({ "sub": format!("user-of-{tenant}"), "tenant_id": tenant, "scope": scope,
            "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "nbf": now() - 10 })
}

pub fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signs")
}

fn signed(claims: &Value, alg: Algorithm, kid: &str, key: EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("signs")
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/rsa-private.pem")).expect("key");
    signed(
        claims,
        Algorithm::RS256,
        "test-rsa",
        EncodingKey::from_rsa_pem(&pem).expect("rsa"),
    )
}

fn es256(claims: &Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/ec-private.pem")).expect("key");
    signed(
        claims,
        Algorithm::ES256,
        "test-ec",
        EncodingKey::from_ec_pem(&pem).expect("ec"),
    )
}

/// A token with `"alg": "none"` and no signature.
fn unsigned(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(claims)
    )
}

async fn app_with(backend: Backend, configure: impl FnOnce(&mut ServeConfig)) -> Option<TestApp> {
    spawn_app_with(backend, |config| {
        with_jwt(config);
        configure(config);
    })
    .await
}

/// Every root field and federation entry point, with the scope it needs.
fn entry_points(event_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("audit:write", "mutation { logAuditEvent(input: { actor: { type: USER, id: \"x\" }, action: \"a.b\" }) { id } }".to_owned()),
        ("audit:write", "mutation { logAuditEvents(inputs: [{ actor: { type: USER, id: \"x\" }, action: \"a.b\" }]) { id } }".to_owned()),
        ("audit:read", format!("{{ auditLog(id: \"{event_id}\") {{ id }} }}")),
        ("audit:read", "{ auditLogs { totalCount } }".to_owned()),
        ("audit:read", "{ auditChainHead { sequence } }".to_owned()),
        ("audit:read", "{ verifyAuditChain { valid } }".to_owned()),
        ("audit:read", format!("{{ _entities(representations: [{{ __typename: \"AuditLog\", id: \"{event_id}\" }}]) {{ ... on AuditLog {{ id }} }} }}")),
        ("audit:read", "{ _entities(representations: [{ __typename: \"AuditTarget\", type: \"project\", id: \"p1\" }]) { ... on AuditTarget { id } } }".to_owned()),
        ("audit:read", "{ _entities(representations: [{ __typename: \"AuditActor\", type: \"USER\", id: \"u\" }]) { ... on AuditActor { id } } }".to_owned()),
    ]
}

async fn post_as(app: &TestApp, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut request = app
        .client
        .post(format!("{}/graphql", app.address))
        .json(&json!({ "query": query }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("sent");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

async fn seed(app: &TestApp, tenant: &str) -> Value {
    let mut input = event(&format!("{tenant}-actor"), "project.created");
    input["target"] = json!({ "type": "project", "id": "p1" });
    let token = hs256(&claims(tenant, "audit:write"));
    let (status, body) = post_as(
        app,
        Some(&token),
        &format!(
            "mutation {{ logAuditEvent(input: {}) {{ id tenantId cursor }} }}",
            graphql_literal(&input)
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["logAuditEvent"].clone()
}

/// A JSON value as a GraphQL literal (enums unquoted).
fn graphql_literal(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("type", Value::String(s)) if s.chars().all(|c| c.is_ascii_uppercase()) => {
                        format!("{k}: {s}")
                    }
                    _ => format!("{k}: {}", graphql_literal(v)),
                })
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        other => other.to_string(),
    }
}

#[tokio::test]
async fn bad_credentials_are_refused_everywhere() {
    let app = app_with(Backend::Sqlite, |_| {})
        .await
        .expect("SQLite always runs");
    let stored = seed(&app, "acme").await;
    let id = stored["id"].as_str().expect("id");
    let rsa_public = std::fs::read(format!("{FIXTURES}/rsa-public.pem")).expect("pem");
    let mut confused_header = Header::new(Algorithm::HS256);
    confused_header.kid = Some("test-rsa".to_owned());
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no credential", None),
        ("garbage", Some("not-a-token".to_owned())),
        (
            "bad signature",
            Some(
                jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &claims("acme", "audit:read audit:write"),
                    &EncodingKey::from_secret(b"another-secret-entirely-different"),
                )
                .expect("signs"),
            ),
        ),
        (
            "alg none",
            Some(unsigned(&claims("acme", "audit:read audit:write"))),
        ),
        (
            "algorithm confusion",
            Some(
                jsonwebtoken::encode(
                    &confused_header,
                    &claims("acme", "audit:read audit:write"),
                    &EncodingKey::from_secret(&rsa_public),
                )
                .expect("signs"),
            ),
        ),
        ("expired", Some(hs256(&changed("exp", json!(now() - 120))))),
        (
            "not yet valid",
            Some(hs256(&changed("nbf", json!(now() + 600)))),
        ),
        (
            "wrong audience",
            Some(hs256(&changed("aud", json!("someone-else")))),
        ),
        (
            "wrong issuer",
            Some(hs256(&changed("iss", json!("https://evil.test")))),
        ),
        (
            "unknown API key",
            Some("ak_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()),
        ),
    ];
    for (name, token) in &bad {
        for (_, query) in entry_points(id) {
            let (status, body) = post_as(&app, token.as_deref(), &query).await;
            assert_eq!(status, 401, "{name}: {query}: {body}");
            assert_eq!(
                body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
                "{name}"
            );
            assert!(body.get("data").is_none());
        }
    }
    // The same requests with good credentials of each kind go through.
    for token in [
        rs256(&claims("acme", "audit:read")),
        es256(&claims("acme", "audit:read")),
        hs256(&claims("acme", "audit:read")),
    ] {
        let (status, body) = post_as(
            &app,
            Some(&token),
            &format!("{{ auditLog(id: \"{id}\") {{ id }} }}"),
        )
        .await;
        assert_eq!(
            (status, &body["data"]["auditLog"]["id"]),
            (200, &json!(id)),
            "{body}"
        );
    }
    app.cleanup().await;
}

/// Valid claims for tenant `acme` with one claim changed.
fn changed(claim: &str, value: Value) -> Value {
    let mut claims = claims("acme", "audit:read audit:write");
    claims[claim] = value;
    claims
}

#[tokio::test]
async fn a_missing_scope_is_forbidden_and_recorded() {
    let app = app_with(Backend::Sqlite, |_| {})
        .await
        .expect("SQLite always runs");
    let stored = seed(&app, "acme").await;
    let id = stored["id"].as_str().expect("id");
    for (needed, query) in entry_points(id) {
        let other = if needed == "audit:write" {
            "audit:read"
        } else {
            "audit:write"
        };
        let token = hs256(&claims("acme", other));
        let (status, body) = post_as(&app, Some(&token), &query).await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "FORBIDDEN",
            "{query}: {body}"
        );
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .expect("message")
                .contains(needed)
        );
    }
    // Refusals are on record: in the credential's tenant for a missing scope, in `system`
    // for a bad credential.
    post_as(&app, Some("not-a-token"), "{ auditLogs { totalCount } }").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = hs256(&claims("ops", "audit:admin"));
    let (_, body) = post_as(
        &app,
        Some(&admin),
        "{ auditLogs(filter: { tenantIds: [\"acme\", \"system\"], actions: [\"audit.access.denied\"] }) { totalCount nodes { tenantId outcome actor { id } reason } } }",
    )
    .await;
    let denied = &body["data"]["auditLogs"];
    assert_eq!(denied["totalCount"], 10, "{body}");
    let nodes = denied["nodes"].as_array().expect("nodes");
    assert!(nodes.iter().all(|n| n["outcome"] == "DENIED"));
    assert_eq!(
        nodes.iter().filter(|n| n["tenantId"] == "system").count(),
        1
    );
    assert!(
        nodes
            .iter()
            .any(|n| n["tenantId"] == "acme" && n["actor"]["id"] == "user-of-acme")
    );

    // A flood of refusals is not recorded in full.
    for _ in 0..30 {
        post_as(
            &app,
            Some("still-not-a-token"),
            "{ auditLogs { totalCount } }",
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = post_as(
        &app,
        Some(&admin),
        "{ auditLogs(filter: { tenantIds: [\"system\"] }) { totalCount } }",
    )
    .await;
    assert_eq!(
        body["data"]["auditLogs"]["totalCount"], 10,
        "at most 10 a minute per caller: {body}"
    );
    app.cleanup().await;
}

/// Nothing of tenant B reaches tenant A, through any read path.
async fn tenants_are_isolated(app: &TestApp) {
    let a = seed(app, "tenant-a").await;
    let b = seed(app, "tenant-b").await;
    assert_eq!(a["tenantId"], "tenant-a");
    assert_eq!(b["tenantId"], "tenant-b");
    let reader = hs256(&claims("tenant-a", "audit:read"));
    let b_id = b["id"].as_str().expect("id");
    let b_cursor = b["cursor"].as_str().expect("cursor");
    let checks = [
        (format!("{{ auditLog(id: \"{b_id}\") {{ id }} }}"), json!({ "auditLog": null })),
        ("{ auditLogs { totalCount nodes { tenantId } } }".to_owned(), json!({ "auditLogs": { "totalCount": 1, "nodes": [{ "tenantId": "tenant-a" }] } })),
        // B's cursor is only a position: A sees its own events on either side of it.
        (format!("{{ auditLogs(after: \"{b_cursor}\") {{ nodes {{ tenantId }} }} }}"), json!({ "auditLogs": { "nodes": [{ "tenantId": "tenant-a" }] } })),
        (format!("{{ auditLogs(before: \"{b_cursor}\") {{ nodes {{ tenantId }} }} }}"), json!({ "auditLogs": { "nodes": [] } })),
        (format!("{{ _entities(representations: [{{ __typename: \"AuditLog\", id: \"{b_id}\" }}]) {{ ... on AuditLog {{ id }} }} }}"), json!({ "_entities": [null] })),
        ("{ _entities(representations: [{ __typename: \"AuditTarget\", type: \"project\", id: \"p1\" }]) { ... on AuditTarget { auditLogs { totalCount nodes { tenantId } } } } }".to_owned(),
            json!({ "_entities": [{ "auditLogs": { "totalCount": 1, "nodes": [{ "tenantId": "tenant-a" }] } }] })),
        ("{ _entities(representations: [{ __typename: \"AuditActor\", type: \"USER\", id: \"tenant-b-actor\" }]) { ... on AuditActor { auditLogs { totalCount } } } }".to_owned(),
            json!({ "_entities": [{ "auditLogs": { "totalCount": 0 } }] })),
        ("{ auditChainHead { tenantId sequence } }".to_owned(), json!({ "auditChainHead": { "tenantId": "tenant-a", "sequence": "1" } })),
    ];
    for (query, expected) in checks {
        let (status, body) = post_as(app, Some(&reader), &query).await;
        assert_eq!((status, &body["data"]), (200, &expected), "{query}: {body}");
    }
    for query in [
        "{ auditLogs(filter: { tenantIds: [\"tenant-b\"] }) { totalCount } }",
        "{ auditChainHead(tenantId: \"tenant-b\") { sequence } }",
        "{ verifyAuditChain(tenantId: \"tenant-b\") { valid } }",
    ] {
        let (_, body) = post_as(app, Some(&reader), query).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "FORBIDDEN",
            "{query}: {body}"
        );
        assert!(!body.to_string().contains("tenant-b-actor"));
    }
    // Subscriptions: B's events never reach A; B's cursor is not accepted.
    let mut client = Client::connect(&app.address, "graphql-transport-ws").await;
    client.send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {reader}") } })).await;
    assert_eq!(client.receive().await["type"], "connection_ack");
    client
        .subscribe(
            "t",
            "subscription { auditLogCreated { tenantId actor { id } } }",
            json!({}),
        )
        .await;
    client
        .subscribe(
            "c",
            "subscription($c: String) { auditLogCreated(after: $c) { id } }",
            json!({ "c": b_cursor }),
        )
        .await;
    let refused = client.receive().await;
    assert_eq!(refused["id"], "c", "{refused}");
    assert_eq!(Client::error_code(&refused), "BAD_USER_INPUT", "{refused}");
    assert_eq!(
        client.receive().await,
        json!({ "type": "complete", "id": "c" })
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    seed(app, "tenant-b").await;
    seed(app, "tenant-a").await;
    let delivered = client.next_event("t").await;
    assert_eq!(
        delivered,
        json!({ "tenantId": "tenant-a", "actor": { "id": "tenant-a-actor" } })
    );

    // An admin reads across tenants, when it asks to.
    let admin = hs256(&claims("ops", "audit:admin"));
    let (_, body) = post_as(
        app,
        Some(&admin),
        "{ auditLogs(filter: { tenantIds: [\"tenant-a\", \"tenant-b\"] }) { totalCount } }",
    )
    .await;
    assert_eq!(body["data"]["auditLogs"]["totalCount"], 4, "{body}");
    let (_, body) = post_as(
        app,
        Some(&admin),
        "{ verifyAuditChain(tenantId: \"tenant-b\") { valid checkedCount } }",
    )
    .await;
    assert_eq!(
        body["data"]["verifyAuditChain"],
        json!({ "valid": true, "checkedCount": 2 }),
        "{body}"
    );
}

#[tokio::test]
async fn tenants_are_isolated_sqlite() {
    let app = app_with(Backend::Sqlite, |_| {})
        .await
        .expect("SQLite always runs");
    tenants_are_isolated(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn tenants_are_isolated_postgres() {
    let Some(app) = app_with(Backend::Postgres, |_| {}).await else {
        return;
    };
    tenants_are_isolated(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn api_keys_work_until_revoked() {
    let app = spawn_app_with(Backend::Sqlite, |_| {})
        .await
        .expect("SQLite always runs");
    let output = app.cli(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--scope",
        "audit:write",
        "--scope",
        "audit:read",
        "--name",
        "api-gateway",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(key.starts_with("ak_") && key.len() >= 3 + 43, "{key}");
    let listed = String::from_utf8(app.cli(&["keys", "list"]).stdout).expect("utf-8");
    assert!(
        listed.contains("name=api-gateway") && listed.contains("active") && !listed.contains(&key),
        "{listed}"
    );
    let id = listed.split_whitespace().next().expect("id").to_owned();

    // The first key ends open mode (within seconds).
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (status, _) = post_as(&app, None, "{ auditLogs { totalCount } }").await;
    assert_eq!(status, 401);
    let (status, body) = post_as(&app, Some(&key), "mutation { logAuditEvent(input: { actor: { type: SERVICE, id: \"gw\" }, action: \"route.called\" }) { tenantId } }").await;
    assert_eq!(
        (status, &body["data"]["logAuditEvent"]["tenantId"]),
        (200, &json!("acme")),
        "{body}"
    );

    // On SQLite, a command-line write beside a server that is writing sometimes fails with
    // "database is locked" at once (seen in about one run in ten, before log streams too;
    // the cause is not found yet): the operator runs it again.
    let mut revoked = app.cli(&["keys", "revoke", &id]);
    for _ in 0..5 {
        if revoked.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        revoked = app.cli(&["keys", "revoke", &id]);
    }
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let revoked_at = std::time::Instant::now();
    loop {
        let (status, _) = post_as(&app, Some(&key), "{ auditLogs { totalCount } }").await;
        if status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "a revoked key still works after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !app.cli(&["keys", "revoke", &id]).status.success(),
        "revoking twice fails"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn open_mode_only_listens_on_loopback() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("open.db").display());
    let mut config = crate::helpers::serve_config(&url);
    config.listen = "0.0.0.0:0".parse().expect("address");
    let refused = audit_service::startup::Application::build(&config).await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("loopback"), "{message}");
    with_jwt(&mut config);
    assert!(
        audit_service::startup::Application::build(&config)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn websocket_credentials() {
    let app = app_with(Backend::Sqlite, |_| {})
        .await
        .expect("SQLite always runs");
    let reader = hs256(&claims("acme", "audit:read"));
    // In connection_init.
    let mut client = Client::connect(&app.address, "graphql-transport-ws").await;
    client.send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {reader}") } })).await;
    assert_eq!(client.receive().await["type"], "connection_ack");
    // A bad one closes the connection: 4403 on graphql-transport-ws, connection_error on
    // the legacy protocol.
    let mut client = Client::connect(&app.address, "graphql-transport-ws").await;
    client
        .send(json!({ "type": "connection_init", "payload": { "authorization": "Bearer nope" } }))
        .await;
    assert_eq!(
        client.receive().await,
        json!({ "type": "close", "code": 4403 })
    );
    let mut client = Client::connect(&app.address, "graphql-ws").await;
    client
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    let refused = client.receive().await;
    assert_eq!(refused["type"], "connection_error", "{refused}");
    // A writer may not subscribe.
    let writer = hs256(&claims("acme", "audit:write"));
    let mut client = Client::connect(&app.address, "graphql-transport-ws").await;
    client.send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {writer}") } })).await;
    assert_eq!(client.receive().await["type"], "connection_ack");
    client
        .subscribe("w", "subscription { auditLogCreated { id } }", json!({}))
        .await;
    let refused = client.receive().await;
    assert_eq!(Client::error_code(&refused), "FORBIDDEN", "{refused}");

    // A subscription ends when its credential expires.
    let mut short = claims("acme", "audit:read");
    short["exp"] = json!(now() + 2);
    let short = hs256(&short);
    let mut client = Client::connect(&app.address, "graphql-transport-ws").await;
    client.send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {short}") } })).await;
    assert_eq!(client.receive().await["type"], "connection_ack");
    client
        .subscribe("s", "subscription { auditLogCreated { id } }", json!({}))
        .await;
    // Events may arrive first (the refusal above is one, in this tenant).
    let ended = loop {
        let message = client.receive().await;
        if message["payload"]["errors"].is_array() {
            break message;
        }
    };
    assert_eq!(Client::error_code(&ended), "UNAUTHENTICATED", "{ended}");
    assert_eq!(client.receive().await["type"], "complete");
    app.cleanup().await;
}
