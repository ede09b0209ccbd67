//! Logs and traces. Logs: `RUST_LOG`-style filtering (`AUDIT_LOG`), human-readable lines on
//! stderr, or JSON lines with `AUDIT_LOG_FORMAT=json`. Traces: OpenTelemetry over OTLP/HTTP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, off otherwise.
//!
//! Spans: `request` (one per HTTP request, the child of the caller's W3C `traceparent`),
//! `graphql` (the operation), `ingest.commit` (a group-commit transaction, in a trace of
//! its own, linked to every request it carried) and `sql` (one per statement).

use std::sync::OnceLock;
use std::time::SystemTime;

use axum::http::{HeaderMap, Request};
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The tracer, once tracing is on; `None` means off and costs nothing.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Most bytes of a statement's text a `sql` span carries (a multi-row INSERT is long).
const MAX_STATEMENT: usize = 2048;

/// Longest request id copied into the request's span.
const MAX_REQUEST_ID: usize = 128;

/// What `init` set up; `shutdown` sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (at exit).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "could not export the last spans");
        }
    }
}

/// Installs the global subscriber: the log layer (`AUDIT_LOG`, default `info`;
/// `AUDIT_LOG_FORMAT=json` for JSON lines) and, when an OTLP endpoint is configured, the
/// OpenTelemetry layer.
pub fn init() -> Telemetry {
    let filter = || {
        EnvFilter::try_from_env("AUDIT_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"))
    };
    let json = std::env::var("AUDIT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = match json {
        true => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        false => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let (provider, error) = match tracer_provider() {
        Ok(provider) => (provider, None),
        Err(err) => (None, Some(err)),
    };
    let traces = provider.as_ref().map(|provider| {
        let tracer = provider.tracer("audit-service");
        let _ = TRACER.set(tracer.clone());
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(EnvFilter::new(
                "info,sqlx=off,sea_orm=off,h2=off,hyper=off,reqwest=off",
            ))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if let Some(err) = error {
        tracing::error!(error = %err, "tracing is off: the OTLP exporter could not be set up");
    }
    Telemetry { provider }
}

/// The OTLP/HTTP exporter the standard variables describe, if any.
fn tracer_provider() -> anyhow::Result<Option<SdkTracerProvider>> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".to_owned());
    let protocol = match protocol.trim() {
        "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => {
            anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: use http/protobuf or http/json")
        }
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("audit-service");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok(Some(provider))
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The span of one HTTP request (tower-http's `make_span_with`): a child of the caller's
/// `traceparent`, with the request id, and the trace id for the log.
pub fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |path| path.as_str());
    // The caller's own request id is kept (and echoed) if it is short; a long one is not
    // copied into every log line.
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| id.len() <= MAX_REQUEST_ID)
        .unwrap_or("(too long)");
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        request_id,
        trace_id = tracing::field::Empty,
    );
    if enabled() {
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        let _ = span.set_parent(parent);
        let trace = span.context().span().span_context().trace_id();
        span.record("trace_id", trace.to_string());
    } else if let Some(trace) = traceparent_trace_id(request.headers()) {
        span.record("trace_id", trace);
    }
    span
}

/// Renames a span that has started (recording `otel.name` only names spans not started yet).
pub fn rename(span: &Span, name: &str) {
    if enabled() {
        span.context().span().update_name(name.to_owned());
    }
}

/// The trace a request belongs to, for the events it logs: with tracing on, the trace of
/// the current span (the caller's, or a new one); otherwise the caller's `traceparent`.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    if enabled() {
        let context = Span::current().context();
        let span = context.span();
        let span = span.span_context();
        if span.is_valid() {
            return Some(span.trace_id().to_string());
        }
    }
    traceparent_trace_id(headers)
}

/// The span context of the current span, for a link from work done on its behalf
/// elsewhere (the group commit); `None` while tracing is off.
pub fn current_span_context() -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let context = Span::current().context();
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The span of a group-commit transaction: a root, linked to the spans of the requests it
/// carried; `events` is recorded once committed.
pub fn commit_span(links: Vec<SpanContext>) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "ingest.commit",
        requests = links.len(),
        events = tracing::field::Empty,
    );
    for link in links {
        span.add_link(link);
    }
    span
}

/// A `sql` span for a statement that just ran, a child of the current span (sea-orm reports
/// statements after they ran, so the span is made with their start and end times).
pub fn statement(info: &sea_orm::metric::Info<'_>) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let parent = Span::current().context();
    if !parent.span().span_context().is_valid() {
        return;
    }
    let end = SystemTime::now();
    let start = end.checked_sub(info.elapsed).unwrap_or(end);
    let mut text = info.statement.sql.as_str();
    if text.len() > MAX_STATEMENT {
        let mut cut = MAX_STATEMENT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text = &text[..cut];
    }
    let system = match info.statement.db_backend {
        sea_orm::DbBackend::Postgres => "postgresql",
        sea_orm::DbBackend::Sqlite => "sqlite",
        _ => "other",
    };
    let mut attributes = vec![
        KeyValue::new("db.system.name", system),
        KeyValue::new("db.query.text", text.to_owned()),
    ];
    if info.failed {
        attributes.push(KeyValue::new("error.type", "database"));
    }
    let mut span = tracer
        .span_builder("sql")
        .with_kind(SpanKind::Client)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
}

/// HTTP headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`), when
/// the header is well-formed.
fn traceparent_trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && audit_contract::rules::is_trace_id(trace_id)
        && hex(span_id, 16)
        && span_id.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| trace_id.to_owned())
}
