//! `AuditLayer`: a tower Layer that records an event for each request of the routes it
//! wraps, the Rust form of an audit middleware.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
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

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for IpNet {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = || Error::invalid("trustedProxies", format!("{text:?} is not an IP network"));
        let (addr, prefix) = text
            .split_once('/')
            .map_or((text, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
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
            ip_address: client_ip(config, request).map(|ip| ip.to_string()),
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            request_id: request_id.to_str().ok().map(str::to_owned),
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

/// The client's address: the peer's, or when the peer is a trusted proxy, the last address
/// in `X-Forwarded-For` that is not one.
fn client_ip(config: &LayerConfig, request: &Parts) -> Option<IpAddr> {
    let peer = peer_addr(request)?;
    let trusted = |ip: IpAddr| config.trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(peer) {
        return Some(peer);
    }
    // Every X-Forwarded-For line in order (a proxy may add a line of its own rather than
    // extend the last), read from the nearest hop back.
    let mut hops = Vec::new();
    for value in request.headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return Some(peer);
        };
        hops.extend(value.split(','));
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return Some(client);
        };
        client = ip;
        if !trusted(ip) {
            return Some(ip);
        }
    }
    Some(client)
}

fn peer_addr(request: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = request
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    request.extensions.get::<SocketAddr>().map(SocketAddr::ip)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client_ip_of(trusted: &[&str], peer: &str, lines: &[&str]) -> Option<IpAddr> {
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async { AuditClient::builder("http://127.0.0.1:9/graphql").build() })
            .expect("client");
        let layer = client
            .layer("project.created")
            .trusted_proxies(trusted.iter().map(|t| t.parse().expect("network")));
        let mut request = Request::builder().uri("/");
        for line in lines {
            request = request.header("x-forwarded-for", *line);
        }
        let (mut parts, ()) = request.body(()).expect("request").into_parts();
        parts
            .extensions
            .insert(SocketAddr::new(peer.parse().expect("ip"), 443));
        client_ip(&layer.config, &parts)
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip_of(&[], "198.51.100.1", &["6.6.6.6"]),
            ip("198.51.100.1")
        );
        // A trusted proxy: the nearest untrusted hop, across every header line.
        let proxies = ["10.0.0.0/8", "127.0.0.1"];
        assert_eq!(
            client_ip_of(&proxies, "127.0.0.1", &["6.6.6.6, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip_of(&proxies, "127.0.0.1", &["6.6.6.6", "203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip_of(&proxies, "127.0.0.1", &["203.0.113.9, 10.1.2.3"]),
            ip("203.0.113.9")
        );
        // Garbage stops the walk at the last address believed.
        assert_eq!(
            client_ip_of(&proxies, "127.0.0.1", &["203.0.113.9, junk"]),
            ip("127.0.0.1")
        );
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!(
            "::ffff:10.1.1.1"
                .parse::<IpAddr>()
                .is_ok_and(|a| "10.0.0.0/8".parse::<IpNet>().expect("net").contains(a))
        );
    }
}
