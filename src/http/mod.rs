//! The HTTP surface: routes, probes and fallbacks. GraphQL over HTTP is in `transport`,
//! the WebSocket upgrade in `websocket`, authentication in `admit`, errors answered outside
//! GraphQL in `errors`.

mod caller;
mod errors;
mod export;
mod listener;
mod state;
mod tlog;
mod transport;
mod upgrade;

use std::time::{Duration, Instant};

use async_graphql::parser::types::OperationType;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::Error;
use crate::service::ingest;
use crate::telemetry;

use errors::{ErrorCodes, error_response};
pub use listener::{Peer, TimedListener, WRITE_TIMEOUT};
use state::BODY_TIMEOUT;
pub use state::{AppState, MAX_BODY_BYTES};
use transport::{graphql_get, graphql_post};

/// The whole HTTP application.
pub fn app(state: AppState, cors_origins: &[HeaderValue]) -> Router {
    let mut router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/export", get(export::export))
        .route("/tlog/{tenant}/checkpoint", get(tlog::checkpoint))
        .route("/tlog/{tenant}/tile/{*path}", get(tlog::tile))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::graphiql::router())
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(TraceLayer::new_for_http().make_span_with(telemetry::request_span::<Body>))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(NewRequestId));
    if !cors_origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(cors_origins.iter().cloned()))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT])
                // An embedded viewer names its download as `/export` does.
                .expose_headers([
                    header::CONTENT_DISPOSITION,
                    HeaderName::from_static("server-timing"),
                    HeaderName::from_static("x-request-id"),
                ]),
        );
    }
    router
}

/// A request id (`x-request-id`) for requests that come without one: a UUID v7.
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::now_v7().to_string();
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the NOTIFY listener may be without a connection before the instance is not
/// ready: its reconnections back off to 5 s, and live events stop while it is down.
const LISTENER_WINDOW: Duration = Duration::from_secs(10);

/// 200 `ready`, or 503 naming every check that failed: the database answers within
/// 500 ms, the ingest committer runs, the NOTIFY listener (PostgreSQL) is connected or was
/// within the last 10 s, and the server is not shutting down.
async fn ready(State(state): State<AppState>) -> Response {
    let context = &state.context;
    let mut problems = Vec::new();
    if *context.stopping.borrow() {
        problems.push("shutting down".to_owned());
    }
    match tokio::time::timeout(READY_TIMEOUT, context.db.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness check failed");
            problems.push("database unavailable".to_owned());
        }
        Err(_) => problems.push("database did not answer within 500 ms".to_owned()),
    }
    if let Err(err) = ingest::writable(&context.db, READY_TIMEOUT / 2).await {
        tracing::warn!(error = %err, "readiness check: no write can begin");
        problems.push("the database is locked by another process".to_owned());
    }
    if !context.ingestor.is_running() {
        problems.push("the ingest committer is not running".to_owned());
    }
    if let Some(down) = context.feed.listener_down_for()
        && down > LISTENER_WINDOW
    {
        problems.push(format!(
            "the notification listener has been disconnected for {} s",
            down.as_secs()
        ));
    }
    match problems.is_empty() {
        true => "ready".into_response(),
        false => (StatusCode::SERVICE_UNAVAILABLE, problems.join("; ")).into_response(),
    }
}

/// The Prometheus text of this instance (see `metrics.rs`).
async fn metrics(State(state): State<AppState>) -> String {
    let context = &state.context;
    let queued = context.ingestor.queued();
    let live = (state.fanout.subscribers(), context.feed.subscribers());
    context.metrics.render(&context.db, queued, live)
}

/// Counts and times every routed request, says how long it took in `Server-Timing`, and
/// counts the error codes it answered with (which `transport` and `errors` leave in the
/// response's extensions).
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |path| path.as_str())
        .to_owned();
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    let timing = format!("app;dur={:.3}", elapsed.as_secs_f64() * 1000.0);
    if let Ok(timing) = HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", timing);
    }
    let metrics = &state.context.metrics;
    let operation = response
        .extensions()
        .get::<OperationType>()
        .map_or("", |op| operation_label(*op));
    metrics.request(&route, response.status().as_u16(), operation, elapsed);
    if let Some(ErrorCodes(codes)) = response.extensions().get::<ErrorCodes>() {
        codes.iter().for_each(|code| metrics.error(code));
    }
    response
}

fn operation_label(operation: OperationType) -> &'static str {
    match operation {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    tracing::debug!(path = %uri.path(), "no such route");
    error_response(StatusCode::NOT_FOUND, Error::NotFound)
}

/// 405 with the methods the path takes.
async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    let allow = if uri.path() == "/graphql" {
        "GET, POST"
    } else {
        "GET"
    };
    let error = Error::bad_input("", format!("{} takes {allow}", uri.path()));
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, error);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
