//! An axum service that records its operations with `AuditLayer`.
//!
//! `LISTEN` (127.0.0.1:3000), `AUDIT_URL` (http://127.0.0.1:8080/graphql), `AUDIT_API_KEY`
//! (optional), `AUDIT_FAIL_CLOSED=1` to answer 503 when an event cannot be stored. The
//! `x-user-id` header names the signed-in user.
//!
//! - `POST /projects {"name": ...}` → 201 `{"id": ...}`, records `project.created`.
//! - `DELETE /projects/{id}` → 204, or 404 for an unknown id; records `project.deleted`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_client::layer::{from_path, from_response};
use audit_client::{Actor, AuditClient, AuditDetails, AuditLayer};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

type Projects = Arc<Mutex<HashMap<String, String>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let url = std::env::var("AUDIT_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/graphql".into());
    let mut audit = AuditClient::builder(url).default_actor(Actor::service("axum-service"));
    if let Ok(key) = std::env::var("AUDIT_API_KEY") {
        audit = audit.api_key(key);
    }
    let audit = audit.build()?;
    let fail_closed = std::env::var("AUDIT_FAIL_CLOSED").is_ok_and(|v| v == "1");
    let guard = |layer: AuditLayer| {
        if fail_closed {
            layer.fail_closed()
        } else {
            layer
        }
    };

    let app = Router::new()
        .route(
            "/projects",
            post(create_project).route_layer(guard(
                audit
                    .layer("project.created")
                    .target("project", from_response("id")),
            )),
        )
        .route(
            "/projects/{id}",
            delete(delete_project).route_layer(guard(
                audit
                    .layer("project.deleted")
                    .target("project", from_path("id")),
            )),
        )
        .layer(middleware::from_fn(signed_in_user))
        .with_state(Projects::default());

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

/// The service's own authentication, reduced to a header: it puts the actor where
/// `AuditLayer` looks for it.
async fn signed_in_user(mut request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .map(Actor::user);
    if let Some(user) = user {
        request.extensions_mut().insert(user);
    }
    next.run(request).await
}

async fn create_project(State(projects): State<Projects>, Json(body): Json<Value>) -> Response {
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "name is required"})),
        )
            .into_response();
    };
    let id = format!("p-{}", uuid::Uuid::now_v7().simple());
    projects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), name.to_owned());
    let details = AuditDetails {
        metadata: Some(json!({ "name": name })),
        ..AuditDetails::default()
    };
    (
        StatusCode::CREATED,
        Extension(details),
        Json(json!({ "id": id })),
    )
        .into_response()
}

async fn delete_project(State(projects): State<Projects>, Path(id): Path<String>) -> StatusCode {
    match projects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id)
    {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}
