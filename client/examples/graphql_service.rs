//! An async-graphql service that records its mutations with `AuditExtension`.
//!
//! `LISTEN` (127.0.0.1:3000), `AUDIT_URL` (http://127.0.0.1:8080/graphql), `AUDIT_API_KEY`
//! (optional). The `x-user-id` header names the signed-in user. At `/graphql`:
//!
//! - `createProject(name: String!): Project!` records `project.created` (target: the new
//!   project);
//! - `rotateApiKey(id: ID!, secret: String!): Boolean!` records `api_key.rotated`, with
//!   `secret` redacted.

use std::net::SocketAddr;
use std::time::Duration;

use async_graphql::{EmptySubscription, ID, Object, Schema, SimpleObject};
use audit_client::{Actor, AuditClient, AuditExtension, Audited, Context};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::post;

#[derive(SimpleObject)]
struct Project {
    id: ID,
    name: String,
}

struct Query;

#[Object]
impl Query {
    /// The service's version (GraphQL needs a query type).
    async fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }
}

struct Mutation;

#[Object]
impl Mutation {
    async fn create_project(&self, name: String) -> Project {
        let id = format!("p-{}", uuid::Uuid::now_v7().simple());
        Project { id: ID(id), name }
    }

    async fn rotate_api_key(&self, id: ID, secret: String) -> bool {
        !id.is_empty() && !secret.is_empty()
    }
}

type AppSchema = Schema<Query, Mutation, EmptySubscription>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let url = std::env::var("AUDIT_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/graphql".into());
    let mut audit = AuditClient::builder(url);
    if let Ok(key) = std::env::var("AUDIT_API_KEY") {
        audit = audit.api_key(key);
    }
    let audit = audit.build()?;

    let schema = Schema::build(Query, Mutation, EmptySubscription)
        .extension(
            AuditExtension::new(&audit)
                .audit(
                    "createProject",
                    Audited::action("project.created").target_from_result("project", "id"),
                )
                .audit(
                    "rotateApiKey",
                    Audited::action("api_key.rotated").target_from_argument("api_key", "id"),
                ),
        )
        .finish();

    let app = Router::new()
        .route("/graphql", post(graphql))
        .with_state(schema);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    let report = audit.shutdown(Duration::from_secs(5)).await;
    println!(
        "audit: {} delivered, {} undelivered",
        report.delivered, report.undelivered
    );
    Ok(())
}

/// GraphQL over HTTP POST; the signed-in user (the `x-user-id` header) and where the
/// request came from go into the request's data, where `AuditExtension` finds them.
async fn graphql(
    State(schema): State<AppSchema>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let request = match serde_json::from_slice::<async_graphql::Request>(&body) {
        Ok(request) => request,
        Err(e) => {
            let error = serde_json::json!({ "errors": [{ "message": e.to_string() }] });
            return (
                [(header::CONTENT_TYPE, "application/json")],
                error.to_string(),
            );
        }
    };
    let user = headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .map(Actor::user);
    let request = match user {
        Some(user) => request.data(user),
        None => request,
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request = request.data(Context {
        ip_address: Some(peer.ip().to_string()),
        user_agent: text("user-agent"),
        request_id: text("x-request-id"),
        trace_id: text("traceparent")
            .as_deref()
            .and_then(Context::trace_id_of),
    });
    let response = schema.execute(request).await;
    let body = serde_json::to_string(&response).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}
