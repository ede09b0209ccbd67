//! The audit log viewer: a page at `GET /console`, and the same viewer as the web component
//! `<audit-log-viewer>` at `GET /console/audit-log-viewer.js` for other consoles to embed.
//! `build.rs` builds the script from `console/` and embeds it, so it works offline.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{Html, Redirect};
use axum::routing::get;

const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/audit-log-viewer.js"));

/// The page runs nothing but the viewer's script from this server, talks to this server only
/// (`'self'` covers its WebSocket too), and may not be framed by other sites.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("console.html").replace("{{version}}", env!("CONSOLE_ASSETS_VERSION"))
});

/// Routes for the page and the component's script; merge into the application router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // The page is revalidated so that it picks up a new script version after an upgrade. The
    // script is cached for an hour only: embedding consoles load it without a version.
    let page = get(|| async {
        let headers = [
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ];
        (headers, Html(PAGE.as_str()))
    });
    let script = get(|| async {
        let headers = [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=3600"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ];
        (headers, SCRIPT)
    });
    Router::new()
        .route("/console", page)
        // Relative asset URLs need the page without a trailing slash.
        .route(
            "/console/",
            get(|| async { Redirect::permanent("../console") }),
        )
        .route("/console/audit-log-viewer.js", script)
}
