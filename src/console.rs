//! The audit log viewer: a page at `GET /console`, and the same viewer as the web component
//! `<audit-log-viewer>` at `GET /console/audit-log-viewer.js` for other consoles to embed.
//! `build.rs` builds the script from `console/` and embeds it, so it works offline.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, Redirect};
use axum::routing::get;

const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/audit-log-viewer.js"));

static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("console.html").replace("{{version}}", env!("CONSOLE_ASSETS_VERSION"))
});

/// Routes for the page and the component's script; merge into the application router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // The page is revalidated so that it picks up a new script version after an upgrade. The
    // script is cached for an hour only: embedding consoles load it without a version.
    let page = get(|| async { ([(CACHE_CONTROL, "no-cache")], Html(PAGE.as_str())) });
    let script = get(|| async {
        let headers = [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=3600"),
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
