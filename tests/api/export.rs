//! `GET /export` and `audit-service export`: what a filter matches, streamed as NDJSON or
//! CSV, equal to what the query API returns, scoped to the caller's tenants, on record.

use serde_json::{Value, json};

use crate::auth::{claims, hs256, with_jwt};
use crate::helpers::{Backend, TestApp, event, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    exports_equal_the_query,
    csv_round_trips_awkward_values,
    bad_requests_fail_before_the_first_byte,
    the_cli_exports_csv_with_a_filter,
);

/// Events seeded for the large comparison.
const MANY: usize = 100_000;

/// GETs `/export` with a query string; returns the status, content type and body.
async fn export(
    app: &TestApp,
    token: Option<&str>,
    query: &[(&str, &str)],
) -> (u16, String, String) {
    let mut request = app
        .client
        .get(format!("{}/export", app.address))
        .query(query);
    if let Some(token) = token.or(app.token.as_deref()) {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.expect("body"))
}

/// Every event `auditLogs` returns for a filter, oldest first, paged through.
async fn query_all(app: &TestApp, filter: &Value) -> Vec<Value> {
    let mut after: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let body = app
            .graphql(
                "query($f: AuditLogFilter, $after: String) {
                   auditLogs(filter: $f, first: 500, after: $after, orderBy: OCCURRED_AT_ASC) {
                     nodes { id sequence tenantId action actor { id name } metadata hash }
                     pageInfo { hasNextPage endCursor }
                   }
                 }",
                json!({ "f": filter, "after": after }),
            )
            .await;
        let page = &body["data"]["auditLogs"];
        all.extend(page["nodes"].as_array().expect("nodes").iter().cloned());
        if page["pageInfo"]["hasNextPage"] != true {
            return all;
        }
        after = page["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
}

async fn exports_equal_the_query(app: &TestApp) {
    let actions = ["project.created", "project.deleted", "member.added"];
    for batch in 0..MANY / 1000 {
        let inputs: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                let mut input = event(&format!("u{}", n % 37), actions[n % 3]);
                input["metadata"] = json!({ "n": n });
                input
            })
            .collect();
        let body = app
            .graphql(
                "mutation($i: [AuditEventInput!]!) { logAuditEvents(inputs: $i) { id } }",
                json!({ "i": inputs }),
            )
            .await;
        assert_eq!(body["errors"], Value::Null, "{body}");
    }
    let filter = json!({ "actions": ["project.*"] });
    let expected = query_all(app, &filter).await;
    assert_eq!(
        expected.len(),
        MANY / 3 * 2 + 1,
        "project.* events of {MANY}"
    );

    let filter_text = filter.to_string();
    let (status, content_type, ndjson) =
        export(app, None, &[("format", "ndjson"), ("filter", &filter_text)]).await;
    assert_eq!(status, 200, "{ndjson}");
    assert_eq!(content_type, "application/x-ndjson");
    assert!(ndjson.ends_with('\n'), "a whole export ends with a newline");
    let lines: Vec<Value> = ndjson
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), expected.len());
    for (line, node) in lines.iter().zip(&expected) {
        assert_eq!(line["id"], node["id"]);
        assert_eq!(line["seq"], node["sequence"]);
        assert_eq!(line["action"], node["action"]);
        assert_eq!(line["actor_id"], node["actor"]["id"]);
        assert_eq!(line["metadata"], node["metadata"]);
        assert_eq!(line["hash"], node["hash"]);
    }

    let (status, content_type, text) = export(
        app,
        None,
        &[
            ("format", "csv"),
            ("filter", &filter_text),
            ("orderBy", "OCCURRED_AT_DESC"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/csv; charset=utf-8");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().expect("a header row").clone();
    let column = |name: &str| header.iter().position(|h| h == name).expect(name);
    let (id, seq, metadata) = (column("id"), column("sequence"), column("metadata"));
    let records: Vec<csv::StringRecord> =
        reader.records().map(|r| r.expect("a CSV record")).collect();
    assert_eq!(records.len(), expected.len());
    for (record, node) in records.iter().zip(expected.iter().rev()) {
        assert_eq!(record[id], node["id"]);
        assert_eq!(record[seq], node["sequence"]);
        let stored: Value = serde_json::from_str(&record[metadata]).expect("metadata JSON");
        assert_eq!(stored, node["metadata"]);
    }

    // Both exports are on record, with their filter, and how many rows each sent.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let on_record = query_all(app, &json!({ "actions": ["audit.export.*"] })).await;
    let kinds: Vec<&str> = on_record
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        kinds,
        [
            "audit.export.requested",
            "audit.export.finished",
            "audit.export.requested",
            "audit.export.finished"
        ]
    );
    assert_eq!(on_record[0]["metadata"]["format"], "ndjson");
    // As text: as JSON it would nest deeper than the filter may itself.
    let recorded = on_record[0]["metadata"]["filter"].as_str().expect("text");
    assert_eq!(
        serde_json::from_str::<Value>(recorded).expect("JSON"),
        filter
    );
    assert_eq!(on_record[0]["metadata"]["filterCut"], false);
    assert_eq!(on_record[1]["metadata"]["rowCount"], expected.len());
    assert_eq!(on_record[1]["metadata"]["complete"], true);
    assert_eq!(
        on_record[1]["metadata"]["requestedEventId"],
        on_record[0]["id"]
    );
    assert_eq!(on_record[2]["metadata"]["format"], "csv");
    assert_eq!(on_record[3]["metadata"]["rowCount"], expected.len());
}

async fn csv_round_trips_awkward_values(app: &TestApp) {
    let awkward = [
        "plain",
        "comma, inside",
        "quote \" inside",
        "line\nbreak and\r\ncarriage return",
        "non-ASCII: é ü 中文 😀",
    ];
    for (i, text) in awkward.iter().enumerate() {
        let mut input = event(&format!("actor {i}, \"quoted\""), "settings.updated");
        input["actor"]["name"] = json!(text);
        input["target"] = json!({ "type": "doc", "id": "d1", "name": text });
        input["reason"] = json!(format!("why: {text}"));
        input["metadata"] = json!({ "text": text, "list": [text, 1, null] });
        app.log(input).await;
    }
    let filter = json!({ "actions": ["settings.updated"] }).to_string();
    let (status, _, text) = export(app, None, &[("format", "csv"), ("filter", &filter)]).await;
    assert_eq!(status, 200, "{text}");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[0], "sequence");
    assert!(header.contains(&"prev_hash".to_owned()));
    let column = |name: &str| header.iter().position(|h| h == name).expect(name);
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    assert_eq!(records.len(), awkward.len());
    for (i, (record, text)) in records.iter().zip(awkward).enumerate() {
        assert_eq!(record[column("actor_id")], format!("actor {i}, \"quoted\""));
        assert_eq!(&record[column("target_name")], text);
        // Personal values are never exported (docs/privacy.md).
        assert_eq!(&record[column("actor_name")], "[redacted]");
        assert_eq!(record[column("reason")], format!("why: {text}"));
        assert_eq!(&record[column("outcome")], "success");
        assert_eq!(&record[column("actor_type")], "user");
        let metadata: Value = serde_json::from_str(&record[column("metadata")]).expect("JSON");
        assert_eq!(metadata, json!({ "text": text, "list": [text, 1, null] }));
    }
}

async fn bad_requests_fail_before_the_first_byte(app: &TestApp) {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("format", "xml")], "format"),
        (&[("orderBy", "SEQUENCE")], "orderBy"),
        (&[("filter", "{not json")], "filter"),
        (&[("filter", r#"{"actorTypes": ["ROBOT"]}"#)], "filter"),
        (&[("filter", r#"{"actions": []}"#)], "filter.actions"),
        (&[("filter", r#"{"actorId": ["u1"]}"#)], "filter.actorId"),
    ];
    for (query, field) in cases {
        let (status, content_type, body) = export(app, None, query).await;
        assert_eq!(status, 400, "{query:?}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let body: Value = serde_json::from_str(&body).expect("a JSON error");
        let error = &body["errors"][0];
        assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{body}");
        assert_eq!(error["extensions"]["field"], field, "{body}");
    }
    // What SQLite cannot filter on is refused before the first byte, not found empty.
    let quoted_key = json!({ "metadata": { "a\"b": 1 } }).to_string();
    let (status, _, body) = export(app, None, &[("filter", &quoted_key)]).await;
    match app.backend {
        Backend::Sqlite => {
            assert_eq!(status, 400, "{body}");
            let body: Value = serde_json::from_str(&body).expect("a JSON error");
            assert_eq!(body["errors"][0]["extensions"]["field"], "filter.metadata");
        }
        Backend::Postgres => assert_eq!(status, 200, "{body}"),
    }
    let (status, _, body) = export(app, None, &[("colour", "blue")]).await;
    assert_eq!(status, 400, "unknown parameters are refused: {body}");
    // Only what was exported is on record (on PostgreSQL, the metadata filter's export).
    let body = app
        .graphql(
            r#"{ auditLogs(filter: { actions: ["audit.export.requested"] }) { nodes { id } } }"#,
            json!({}),
        )
        .await;
    let exported = usize::from(app.backend == Backend::Postgres);
    assert_eq!(
        body["data"]["auditLogs"]["nodes"].as_array().map(Vec::len),
        Some(exported),
        "{body}"
    );
}

async fn the_cli_exports_csv_with_a_filter(app: &TestApp) {
    for i in 0..5 {
        app.log(event(
            &format!("u{i}"),
            if i % 2 == 0 {
                "role.assigned"
            } else {
                "role.revoked"
            },
        ))
        .await;
    }
    let output = app.cli(&[
        "export",
        "--tenant",
        "default",
        "--format",
        "csv",
        "--filter",
        r#"{"actions": ["role.assigned"]}"#,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let mut reader = csv::Reader::from_reader(output.stdout.as_slice());
    let sequences: Vec<String> = reader
        .records()
        .map(|r| r.expect("record")[0].to_owned())
        .collect();
    assert_eq!(
        sequences,
        ["1", "3", "5"],
        "in sequence order, only role.assigned"
    );

    let refused = app.cli(&[
        "export",
        "--tenant",
        "default",
        "--filter",
        r#"{"outcomes": ["MAYBE"]}"#,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("filter"));
}

/// With credentials: a tenant exports only its own events, asking for another's is refused
/// before anything is sent, and a credential without `audit:read` cannot export.
#[tokio::test]
async fn exports_are_scoped_to_the_caller_sqlite() {
    scoped(Backend::Sqlite).await;
}

#[tokio::test]
async fn exports_are_scoped_to_the_caller_postgres() {
    scoped(Backend::Postgres).await;
}

async fn scoped(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_jwt).await else {
        return;
    };
    let writer = |tenant: &str| hs256(&claims(tenant, "audit:write audit:read"));
    for tenant in ["acme", "globex"] {
        let token = writer(tenant);
        for i in 0..3 {
            let body = crate::helpers::post_json(
                &app.client,
                &format!("{}/graphql", app.address),
                Some(&token),
                json!({
                    "query": "mutation($i: AuditEventInput!) { logAuditEvent(input: $i) { id } }",
                    "variables": { "i": event(&format!("{tenant}-{i}"), "project.created") },
                }),
            )
            .await;
            assert_eq!(body["errors"], Value::Null, "{body}");
        }
    }
    let acme = writer("acme");
    let (status, _, text) = export(&app, Some(&acme), &[]).await;
    assert_eq!(status, 200, "{text}");
    let tenants: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON")["tenant_id"].to_string())
        .collect();
    assert!(tenants.len() >= 3, "{text}");
    assert!(tenants.iter().all(|t| t == "\"acme\""), "{text}");

    let globex_filter = json!({ "tenantIds": ["globex"] }).to_string();
    let (status, _, body) = export(&app, Some(&acme), &[("filter", &globex_filter)]).await;
    assert_eq!(status, 403, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );

    // An admin's export of several tenants: one tenant after another, as asked.
    let admin = hs256(&claims("acme", "audit:read audit:admin"));
    let both = json!({ "tenantIds": ["globex", "acme"] }).to_string();
    let (status, _, text) = export(&app, Some(&admin), &[("filter", &both)]).await;
    assert_eq!(status, 200, "{text}");
    let tenants: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON")["tenant_id"].to_string())
        .collect();
    let globex = tenants.iter().filter(|t| *t == "\"globex\"").count();
    assert_eq!(globex, 3, "{text}");
    assert!(
        tenants[..globex].iter().all(|t| t == "\"globex\""),
        "{text}"
    );
    assert!(tenants[globex..].iter().all(|t| t == "\"acme\""), "{text}");

    let write_only = hs256(&claims("acme", "audit:write"));
    let (status, _, body) = export(&app, Some(&write_only), &[]).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = export(&app, Some("not-a-token"), &[]).await;
    assert_eq!(status, 401);
    app.cleanup().await;
}
