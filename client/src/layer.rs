//! `AuditLayer`: a tower Layer that records an event for each request of the routes it
//! wraps, the Rust form of an audit middleware.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use crate::client::AuditClient;
use crate::error::Error;
use crate::event::{Actor, Context, Event, Outcome, Target};
pub use crate::forwarded::IpNet;
use crate::forwarded::client_ip;

/// The request id header, read and echoed (and generated when missing).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest response body read for a target id taken from the response.
const MAX_RESPONSE_READ: usize = 1 << 20;

/// Where a route's target id comes from.
#[derive(Clone)]
pub enum IdFrom {
    /// A path parameter of the matched route (`/projects/{id}`), with the `axum` feature.
    Path(String),
    /// A JSON pointer into a 2xx JSON response (`/id`).
    Response(String),
    /// A request header.
    Header(HeaderName),
}

/// The target id from the route's path parameter `name` (needs the `axum` feature).
#[cfg(feature = "axum")]
pub fn from_path(name: &str) -> IdFrom {
    IdFrom::Path(name.to_owned())
}

/// The target id from the JSON response: `from_response("id")` or a pointer (`/project/id`).
pub fn from_response(pointer: &str) -> IdFrom {
    let pointer = if pointer.starts_with('/') {
        pointer.to_owned()
    } else {
        format!("/{pointer}")
    };
    IdFrom::Response(pointer)
}

/// The target id from a request header.
pub fn from_header(name: HeaderName) -> IdFrom {
    IdFrom::Header(name)
}

/// What a handler adds to its own event: put it in the response's extensions (in axum,
/// return `Extension(AuditDetails { .. })` as part of the response).
#[derive(Clone, Debug, Default)]
pub struct AuditDetails {
    /// Replaces the event's metadata.
    pub metadata: Option<Value>,
    /// Replaces the event's target.
    pub target: Option<Target>,
    /// Replaces the reason recorded with a failure.
    pub reason: Option<String>,
}

/// Records `action` for each request of the routes it wraps. Build with
/// [`AuditClient::layer`].
#[derive(Clone)]
pub struct AuditLayer {
    config: Arc<LayerConfig>,
}

#[derive(Clone)]
struct LayerConfig {
    client: AuditClient,
    action: String,
    target: Option<(String, IdFrom)>,
    fail_closed: bool,
    trusted_proxies: Vec<IpNet>,
    anonymous: Actor,
}

impl AuditClient {
    /// A tower Layer recording `action` for every request of the routes it wraps.
    pub fn layer(&self, action: impl Into<String>) -> AuditLayer {
        AuditLayer {
            config: Arc::new(LayerConfig {
                client: self.clone(),
                action: action.into(),
                target: None,
                fail_closed: false,
                trusted_proxies: Vec::new(),
                anonymous: Actor::user("anonymous"),
            }),
        }
    }
}

impl AuditLayer {
    fn with(mut self, change: impl FnOnce(&mut LayerConfig)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The target: its type, and where its id comes from.
    pub fn target(self, kind: impl Into<String>, id: IdFrom) -> Self {
        self.with(|c| c.target = Some((kind.into(), id)))
    }

    /// Answers 503 when the request's event cannot be stored (within the client's send
    /// timeout) instead of letting the response out unaudited. The handler has run by
    /// then: the 503 says its effect is not audited (the event is still queued).
    pub fn fail_closed(self) -> Self {
        self.with(|c| c.fail_closed = true)
    }

    /// Peers whose `X-Forwarded-For` is believed (none by default).
    pub fn trusted_proxies(self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.with(|c| c.trusted_proxies = proxies.into_iter().collect())
    }

    /// The actor recorded when the request carries none (`USER anonymous`).
    pub fn anonymous(self, actor: Actor) -> Self {
        self.with(|c| c.anonymous = actor)
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`AuditLayer`] wraps around a route.
#[derive(Clone)]
pub struct AuditService<S> {
    inner: S,
    config: Arc<LayerConfig>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AuditService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = self.config.clone();
        let request_id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = HeaderValue::from_str(&crate::client::new_key(chrono::Utc::now()))
                    .unwrap_or(HeaderValue::from_static("-"));
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let (mut parts, body) = request.into_parts();
        let seen = Seen::of(&config, &mut parts, &request_id);
        let request = Request::from_parts(parts, body);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            let mut response = record(&config, seen, response).await;
            response.headers_mut().insert(REQUEST_ID, request_id);
            Ok(response)
        })
    }
}

/// What the layer takes from the request before the handler consumes it.
struct Seen {
    actor: Actor,
    context: Context,
    target_id: Option<String>,
}

impl Seen {
    fn of(config: &LayerConfig, request: &mut Parts, request_id: &HeaderValue) -> Self {
        let actor = request
            .extensions
            .get::<Actor>()
            .cloned()
            .unwrap_or_else(|| config.anonymous.clone());
        let headers = &request.headers;
        let context = Context {
            ip_address: client_ip(&config.trusted_proxies, request).map(|ip| ip.to_string()),
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            request_id: request_id.to_str().ok().map(str::to_owned),
            trace_id: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(Context::trace_id_of),
        };
        let target_id = match &config.target {
            Some((_, IdFrom::Header(name))) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            #[cfg(feature = "axum")]
            Some((_, IdFrom::Path(name))) => path_param(request, name),
            _ => None,
        };
        Seen {
            actor,
            context,
            target_id,
        }
    }
}

/// The route's path parameter `name`, as axum's router left it in the request.
#[cfg(feature = "axum")]
fn path_param(request: &mut Parts, name: &str) -> Option<String> {
    use axum::extract::{FromRequestParts, RawPathParams};
    // The extractor reads request extensions and completes on its first poll.
    let extract = std::pin::pin!(RawPathParams::from_request_parts(request, &()));
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    let Poll::Ready(Ok(params)) = std::future::Future::poll(extract, &mut cx) else {
        return None;
    };
    params
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Records the event of a finished request, and answers 503 in its place when fail-closed
/// and the event could not be stored.
async fn record<B>(
    config: &LayerConfig,
    seen: Seen,
    response: Response<B>,
) -> Response<Either<B, Full<Bytes>>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let details = response
        .extensions()
        .get::<AuditDetails>()
        .cloned()
        .unwrap_or_default();
    let (response, response_id) = match &config.target {
        Some((_, IdFrom::Response(pointer))) if status.is_success() && readable(&response) => {
            read_id(response, pointer).await
        }
        _ => (response.map(Either::Left), None),
    };
    let target = details.target.or_else(|| {
        let (kind, _) = config.target.as_ref()?;
        Some(Target::new(kind.clone(), seen.target_id.or(response_id)?))
    });
    let (outcome, reason) = match status.as_u16() {
        200..=299 => (Outcome::Success, None),
        401 | 403 => (
            Outcome::Denied,
            Some(details.reason.unwrap_or_else(|| status_reason(status))),
        ),
        _ => (
            Outcome::Failure,
            Some(details.reason.unwrap_or_else(|| status_reason(status))),
        ),
    };
    let mut event = Event::new(seen.actor, config.action.clone());
    event.target = target;
    event.outcome = Some(outcome);
    event.reason = reason;
    event.metadata = details.metadata;
    event.context = Some(seen.context);
    let event = event.sanitized();
    if !config.fail_closed {
        if let Err(error) = config.client.try_enqueue(event) {
            tracing::error!(action = %config.action, "audit event not enqueued: {error}");
        }
        return response;
    }
    // On a task of its own: a caller hanging up cancels this future, not the record.
    let client = config.client.clone();
    let recorded = tokio::spawn(async move {
        let event = client.prepare(event)?;
        match client.send(event.clone()).await {
            Ok(_) => Ok(()),
            Err(error) => {
                // Stored late rather than never, under the same idempotency key.
                if !matches!(error, Error::Rejected { .. }) {
                    let _ = client.try_enqueue(event);
                }
                Err(error)
            }
        }
    });
    match recorded.await {
        Ok(Ok(())) => response,
        Ok(Err(error)) => not_audited(status, &error),
        Err(_) => not_audited(status, &Error::Closed),
    }
}

fn status_reason(status: StatusCode) -> String {
    format!("HTTP {}", status.as_u16())
}

/// Whether a response is small enough, and said to be, to be read for its target id;
/// anything else passes through untouched (and its event has no target).
fn readable<B: http_body::Body>(response: &Response<B>) -> bool {
    let upper = response.body().size_hint().upper();
    upper.is_some_and(|len| len <= MAX_RESPONSE_READ as u64)
}

/// Reads a JSON response to take the target id from it, and puts the body back.
async fn read_id<B>(
    response: Response<B>,
    pointer: &str,
) -> (Response<Either<B, Full<Bytes>>>, Option<String>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let bytes = match Limited::new(body, MAX_RESPONSE_READ).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::error!("audit layer could not read the response: {error}");
            let mut failed = Response::new(Either::Right(Full::default()));
            *failed.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return (failed, None);
        }
    };
    let id = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|json| match json.pointer(pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    (
        Response::from_parts(parts, Either::Right(Full::new(bytes))),
        id,
    )
}

/// The fail-closed answer: the operation ran, its audit event is not stored.
fn not_audited<B>(status: StatusCode, error: &Error) -> Response<Either<B, Full<Bytes>>> {
    let body = serde_json::json!({
        "error": {
            "code": "AUDIT_UNAVAILABLE",
            "message": "the operation was carried out but its audit event could not be recorded, so it is not audited",
            "status": status.as_u16(),
            "cause": error.code(),
        }
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert("x-audit-status", HeaderValue::from_static("not-audited"));
    response
}
