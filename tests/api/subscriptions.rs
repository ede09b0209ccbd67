//! Live tail over a real WebSocket client, with both subprotocols.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{Backend, TestApp, event, post_json, spawn_app, spawn_app_with, start_server};
use crate::on_both_backends;

on_both_backends!(
    filtered_delivery_over_graphql_transport_ws,
    filtered_delivery_over_legacy_graphql_ws,
    resume_after_a_cursor_has_no_gap_and_no_duplicate,
);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A GraphQL WebSocket client speaking `protocol`.
pub struct Client {
    socket: Socket,
    legacy: bool,
}

impl Client {
    pub async fn connect(address: &str, protocol: &str) -> Client {
        let mut request = format!("{}/graphql", address.replacen("http", "ws", 1))
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).expect("header"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connects");
        assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
        Client {
            socket,
            legacy: protocol == "graphql-ws",
        }
    }

    pub async fn init(address: &str, protocol: &str) -> Client {
        let mut client = Client::connect(address, protocol).await;
        client
            .send(json!({ "type": "connection_init", "payload": {} }))
            .await;
        assert_eq!(client.receive().await["type"], "connection_ack");
        client
    }

    pub fn socket_mut(&mut self) -> &mut Socket {
        &mut self.socket
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("sent");
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = if self.legacy { "start" } else { "subscribe" };
        self.send(json!({ "id": id, "type": kind, "payload": { "query": query, "variables": variables } })).await;
    }

    /// The next protocol message, answering pings and skipping keep-alives.
    pub async fn receive(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
                .await
                .expect("a message within 20 s")
                .expect("socket open")
                .expect("frame");
            let text = match message {
                Message::Text(text) => text.to_string(),
                Message::Close(frame) => {
                    return json!({ "type": "close", "code": frame.map(|f| u16::from(f.code)) });
                }
                _ => continue,
            };
            let value: Value = serde_json::from_str(&text).expect("json");
            match value["type"].as_str() {
                Some("ka") => continue,
                Some("ping") => self.send(json!({ "type": "pong" })).await,
                _ => return value,
            }
        }
    }

    /// The code of an error message: `error` messages carry a list, `next` ones `errors`.
    pub fn error_code(message: &Value) -> String {
        let errors = if message["payload"].is_array() {
            &message["payload"]
        } else {
            &message["payload"]["errors"]
        };
        errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The next event delivered to subscription `id`.
    pub async fn next_event(&mut self, id: &str) -> Value {
        let message = self.receive().await;
        assert_eq!(message["id"], id, "{message}");
        assert!(
            matches!(message["type"].as_str(), Some("next" | "data")),
            "{message}"
        );
        assert_eq!(message["payload"]["errors"], Value::Null, "{message}");
        message["payload"]["data"]["auditLogCreated"].clone()
    }
}

const TAIL: &str = "subscription($filter: AuditLogFilter, $after: String) {
  auditLogCreated(filter: $filter, after: $after) { sequence action actor { id } cursor }
}";

async fn filtered_delivery(app: &TestApp, protocol: &str) {
    let mut client = Client::init(&app.address, protocol).await;
    client
        .subscribe(
            "1",
            TAIL,
            json!({ "filter": { "actions": ["project.*"], "actorIds": ["ann", "bob"] } }),
        )
        .await;
    // The subscription is live once the server has subscribed; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.log(event("ann", "project.created")).await;
    app.log(event("ann", "role.assigned")).await;
    app.log(event("eve", "project.created")).await;
    app.log_batch(json!([
        event("bob", "project.member.added"),
        event("bob", "project.deleted")
    ]))
    .await;
    let first = client.next_event("1").await;
    assert_eq!(
        (first["action"].as_str(), first["sequence"].as_str()),
        (Some("project.created"), Some("1"))
    );
    for (action, seq) in [("project.member.added", "4"), ("project.deleted", "5")] {
        let e = client.next_event("1").await;
        assert_eq!(
            (e["action"].as_str(), e["sequence"].as_str()),
            (Some(action), Some(seq)),
            "{e}"
        );
    }
    // Nothing else was delivered: the next message is the answer to a stop.
    let stop = if protocol == "graphql-ws" {
        "stop"
    } else {
        "complete"
    };
    client.send(json!({ "id": "1", "type": stop })).await;
    let done = client.receive().await;
    assert_eq!(done["type"], "complete", "{done}");

    // Bad input is refused with a code.
    client
        .subscribe("2", TAIL, json!({ "after": "garbage" }))
        .await;
    let error = client.receive().await;
    assert_eq!(Client::error_code(&error), "BAD_USER_INPUT", "{error}");
}

async fn filtered_delivery_over_graphql_transport_ws(app: &TestApp) {
    filtered_delivery(app, "graphql-transport-ws").await;
}

async fn filtered_delivery_over_legacy_graphql_ws(app: &TestApp) {
    filtered_delivery(app, "graphql-ws").await;
}

async fn resume_after_a_cursor_has_no_gap_and_no_duplicate(app: &TestApp) {
    let first: Vec<Value> = (0..20)
        .map(|i| event(&format!("u{i}"), "project.created"))
        .collect();
    app.log_batch(json!(first)).await;
    let page = app.graphql("{ auditLogs(last: 1, before: null, orderBy: OCCURRED_AT_ASC, filter: { actorIds: [\"u9\"] }) { edges { cursor } } }", json!({})).await;
    let cursor = page["data"]["auditLogs"]["edges"][0]["cursor"].clone();

    // A writer keeps logging while the subscriber replays and switches to live delivery.
    let writer = {
        let client = app.client.clone();
        let url = format!("{}/graphql", app.address);
        tokio::spawn(async move {
            for i in 20..120 {
                let body = post_json(&client, &url, None, json!({ "query": "mutation($e: AuditEventInput!) { logAuditEvent(input: $e) { id } }", "variables": { "e": event(&format!("u{i}"), "project.created") } })).await;
                assert_eq!(body["errors"], Value::Null);
            }
        })
    };
    let mut client = Client::init(&app.address, "graphql-transport-ws").await;
    client
        .subscribe("r", TAIL, json!({ "after": cursor }))
        .await;
    let mut sequences = Vec::new();
    let mut last_cursor = Value::Null;
    while sequences.len() < 110 {
        let e = client.next_event("r").await;
        sequences.push(
            e["sequence"]
                .as_str()
                .expect("seq")
                .parse::<i64>()
                .expect("number"),
        );
        last_cursor = e["cursor"].clone();
    }
    writer.await.expect("writer");
    assert_eq!(sequences, (11..=120).collect::<Vec<_>>());

    // The last cursor resumes after the last event: nothing more until a new one.
    let mut again = Client::init(&app.address, "graphql-transport-ws").await;
    again
        .subscribe("s", TAIL, json!({ "after": last_cursor }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.log(event("late", "project.created")).await;
    assert_eq!(again.next_event("s").await["sequence"], "121");
}

#[tokio::test]
async fn a_lagging_subscriber_is_dropped() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.subscriber_buffer = 10)
        .await
        .expect("SQLite always runs");
    let mut slow = Client::init(&app.address, "graphql-transport-ws").await;
    slow.subscribe("slow", TAIL, json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One commit of 100 events overflows a 10-event buffer at once.
    let batch: Vec<Value> = (0..100)
        .map(|i| event(&format!("u{i}"), "project.created"))
        .collect();
    app.log_batch(json!(batch)).await;
    let mut lagged = None;
    for _ in 0..20 {
        let message = slow.receive().await;
        if message["payload"]["errors"].is_array() {
            lagged = Some(message);
            break;
        }
    }
    let lagged = lagged.expect("an error before 20 events");
    assert_eq!(
        lagged["payload"]["errors"][0]["extensions"]["code"], "SUBSCRIBER_LAGGED",
        "{lagged}"
    );
    assert_eq!(slow.receive().await["type"], "complete");
    app.cleanup().await;
}

#[tokio::test]
async fn a_connection_without_init_is_closed_with_4408() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut client = Client::connect(&app.address, protocol).await;
        let closed = client.receive().await;
        assert_eq!(
            closed,
            json!({ "type": "close", "code": 4408 }),
            "{protocol}"
        );
    }
    app.cleanup().await;
}

/// An event logged through instance A reaches a subscriber on instance B, even while B's
/// listener connection is killed.
#[tokio::test]
async fn events_cross_instances_and_survive_a_listener_restart() {
    use sea_orm::ConnectionTrait;
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let b = start_server(&app.database_url).await;
    let mut client = Client::init(&b, "graphql-transport-ws").await;
    client.subscribe("x", TAIL, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.log(event("via-a", "project.created")).await;
    assert_eq!(client.next_event("x").await["actor"]["id"], "via-a");

    let writer = {
        let client = app.client.clone();
        let url = format!("{}/graphql", app.address);
        tokio::spawn(async move {
            for i in 0..60 {
                let body = post_json(&client, &url, None, json!({ "query": "mutation($e: AuditEventInput!) { logAuditEvent(input: $e) { id } }", "variables": { "e": event(&format!("w{i}"), "project.created") } })).await;
                assert_eq!(body["errors"], Value::Null);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut kills = 0;
    for _ in 0..200 {
        if kills == 3 || writer.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Kills the listeners of both instances whenever they are connected.
        let killed = app
            .db
            .execute_unprepared(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{}' AND datname = current_database()",
                audit_service::service::live::listener::LISTENER_NAME
            ))
            .await
            .expect("terminate");
        if killed.rows_affected() > 0 {
            kills += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    assert_eq!(
        kills, 3,
        "the listener was not killed three times while events were written"
    );
    writer.await.expect("writer");
    let mut sequences = Vec::new();
    while sequences.len() < 60 {
        let e = client.next_event("x").await;
        sequences.push(
            e["sequence"]
                .as_str()
                .expect("seq")
                .parse::<i64>()
                .expect("number"),
        );
    }
    assert_eq!(sequences, (2..=61).collect::<Vec<_>>());
    app.cleanup().await;
}
