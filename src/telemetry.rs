//! Logging: `RUST_LOG`-style filtering (`AUDIT_LOG`), human-readable lines on stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `AUDIT_LOG` overrides the default `info` level.
pub fn init() {
    let filter = EnvFilter::try_from_env("AUDIT_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`), when
/// the header is well-formed.
pub fn trace_id(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && crate::service::event::is_trace_id(trace_id)
        && hex(span_id, 16)
        && span_id.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| trace_id.to_owned())
}
