//! GraphQL over HTTP as the specification asks, the probes, and GraphiQL.

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, spawn_app};

async fn app() -> TestApp {
    spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite always runs")
}

#[tokio::test]
async fn response_media_type_follows_accept() {
    let app = app().await;
    let url = format!("{}/graphql", app.address);
    let query = json!({ "query": "{ auditLogs { totalCount } }" });
    for (accept, expected) in [
        (None, "application/json"),
        (Some("application/json"), "application/json"),
        (Some("*/*"), "application/json"),
        (
            Some("application/graphql-response+json"),
            "application/graphql-response+json",
        ),
        (
            Some("application/graphql-response+json, application/json;q=0.9"),
            "application/graphql-response+json",
        ),
    ] {
        let mut request = app.client.post(&url).json(&query);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        let response = request.send().await.expect("sent");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            content_type.starts_with(expected),
            "{accept:?} gave {content_type}"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["data"]["auditLogs"]["totalCount"], 0);
    }
}

#[tokio::test]
async fn request_errors_are_400_without_data_for_graphql_response_json() {
    let app = app().await;
    let url = format!("{}/graphql", app.address);
    for document in [
        "{ auditLogs(first: 1 { x }",
        "{ noSuchField }",
        "query($n: Int!) { auditLogs(first: $n) { totalCount } }",
    ] {
        let response = app
            .client
            .post(&url)
            .header(ACCEPT, "application/graphql-response+json")
            .json(&json!({ "query": document }))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 400, "{document}");
        let body: Value = response.json().await.expect("json");
        assert!(body.get("data").is_none(), "{document}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

        // Legacy application/json clients get 200, still without data.
        let response = app
            .client
            .post(&url)
            .json(&json!({ "query": document }))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert!(body.get("data").is_none(), "{body}");
    }

    // A field error is not a request error: 200 with data.
    let response = app
        .client
        .post(&url)
        .header(ACCEPT, "application/graphql-response+json")
        .json(&json!({ "query": "{ auditLogs(first: 9999) { totalCount } }" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["errors"][0]["path"], json!(["auditLogs"]));
}

#[tokio::test]
async fn get_runs_queries_and_refuses_mutations() {
    let app = app().await;
    let url = format!("{}/graphql", app.address);
    let response = app
        .client
        .get(&url)
        .query(&[
            (
                "query",
                "query($n: Int) { auditLogs(first: $n) { totalCount } }",
            ),
            ("variables", "{\"n\": 5}"),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["auditLogs"]["totalCount"], 0);

    let mutation = "mutation { logAuditEvent(input: { actor: { type: USER, id: \"u\" }, action: \"a.b\" }) { id } }";
    let response = app
        .client
        .get(&url)
        .query(&[("query", mutation)])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    // With several operations, the one named decides.
    let both = format!(
        "query q {{ auditLogs {{ totalCount }} }} {}",
        mutation.replacen("mutation", "mutation m", 1)
    );
    let response = app
        .client
        .get(&url)
        .query(&[("query", both.as_str()), ("operationName", "m")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 405);
    let response = app
        .client
        .get(&url)
        .query(&[("query", both.as_str()), ("operationName", "q")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn post_needs_a_json_body() {
    let app = app().await;
    let url = format!("{}/graphql", app.address);
    let response = app
        .client
        .post(&url)
        .header(CONTENT_TYPE, "text/plain")
        .body("{\"query\": \"{ auditLogs { totalCount } }\"}")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 415);
    let response = app
        .client
        .post(&url)
        .header(CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
}

#[tokio::test]
async fn probes_answer() {
    let app = app().await;
    for (path, expected) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("text"), expected);
    }
}

#[tokio::test]
async fn graphiql_loads_without_the_internet() {
    let app = app().await;
    let response = app
        .client
        .get(format!("{}/", app.address))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let page = response.text().await.expect("html");
    assert!(page.contains("graphiql"), "{page}");
    // It opens on an example of this API, whose queries and mutation all run.
    let example = page
        .split("const example = `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("an example document");
    for operation in ["LogOne", "Recent", "Verify"] {
        let body = app
            .post(json!({ "query": example, "operationName": operation }))
            .await
            .json::<Value>()
            .await
            .expect("JSON");
        assert_eq!(body["errors"], Value::Null, "{operation}: {body}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "page reaches out: {page}"
    );
    let scripts: Vec<&str> = page
        .split("src=\"")
        .skip(1)
        .chain(page.split("href=\"").skip(1))
        .filter_map(|rest| rest.split('"').next())
        .filter(|link| !link.starts_with("data:"))
        .collect();
    assert_eq!(scripts.len(), 5, "{scripts:?}");
    for asset in scripts {
        let response = app
            .client
            .get(format!("{}/{}", app.address, asset.trim_start_matches('/')))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{asset}");
        assert!(
            response.bytes().await.expect("body").len() > 1000,
            "{asset} is a placeholder"
        );
    }
}

/// A stopped server stops its background tasks too: its NOTIFY listener connection goes.
#[tokio::test]
async fn stopping_the_server_stops_its_background_tasks() {
    use sea_orm::{ConnectionTrait, Statement};
    let Some((url, cleanup)) = crate::helpers::new_database(Backend::Postgres).await else {
        return;
    };
    let config = crate::helpers::serve_config(&url);
    let application = audit_service::startup::Application::build(&config)
        .await
        .expect("server starts");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async {
        let _ = stopped.await;
    }));
    let db = migration::connect(&url, 1).await.expect("connect");
    let listeners = || async {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE application_name = '{}' \
                     AND datname = current_database()",
                    audit_service::service::live::listener::LISTENER_NAME
                ),
            ))
            .await
            .expect("count")
            .expect("a row");
        row.try_get::<i64>("", "n").expect("n")
    };
    let mut seen = 0;
    for _ in 0..100 {
        seen = listeners().await;
        if seen == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 1, "the listener connects");
    stop.send(()).expect("stop");
    server.await.expect("joins").expect("served");
    for _ in 0..100 {
        seen = listeners().await;
        if seen == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 0, "the listener is gone with its server");
    db.close().await.ok();
    cleanup.run().await;
}
