//! The audit log viewer in a real browser: `tests/console/viewer.test.mjs` drives Debian's
//! Chromium (playwright-core) against the real server, at `/console` and embedded as
//! `<audit-log-viewer>` in a page of another origin. Open mode on SQLite; on PostgreSQL,
//! JWTs, signed in through the viewer's form.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::json;

use crate::auth::{claims, hs256, with_jwt};
use crate::helpers::{Backend, spawn_app_with};

const TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console");
const SCREENSHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/console-screenshots");

#[tokio::test]
async fn viewer_in_a_browser_sqlite_open_mode() {
    viewer_in_a_browser(Backend::Sqlite, false).await;
}

#[tokio::test]
async fn viewer_in_a_browser_postgres_signed_in() {
    viewer_in_a_browser(Backend::Postgres, true).await;
}

/// Chromium, or `None` (loudly) where there is none; in CI (`CI` set) a failure.
fn chromium() -> Option<String> {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if Path::new(&path).is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no browser at {path}: CI must run the browser tests (`.ci/run` installs chromium)"
    );
    eprintln!("*** SKIPPED: no browser at {path} (apt-get install chromium, or set CHROMIUM) ***");
    None
}

async fn viewer_in_a_browser(backend: Backend, signed_in: bool) {
    let Some(chromium) = chromium() else {
        return;
    };
    // The embedding page's origin, which the server must allow (CORS).
    let embed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let Some(app) = spawn_app_with(backend, |config| {
        config.cors_origins = vec![format!("http://127.0.0.1:{embed_port}")];
        if signed_in {
            with_jwt(config);
        }
    })
    .await
    else {
        return;
    };
    crate::helpers::node_packages("tests/console", "playwright-core");
    let screenshots = format!("{SCREENSHOTS}/{backend:?}").to_lowercase();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(format!("{TESTS}/viewer.test.mjs"))
        .args(["--base", &app.address])
        .args(["--chromium", &chromium])
        .args(["--screenshots", &screenshots])
        .args(["--embed-port", &embed_port.to_string()]);
    if signed_in {
        command.args(["--token", &hs256(&claims("acme", "audit:read audit:write"))]);
    }
    let output = command.output().await.expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn page_and_component_are_served() {
    let app = crate::helpers::spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite always runs");
    let page = app
        .client
        .get(format!("{}/console", app.address))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.expect("page text");
    assert!(
        page.contains("<audit-log-viewer endpoint=\"graphql\""),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    let script = app
        .client
        .get(format!("{}/console/audit-log-viewer.js", app.address))
        .send()
        .await
        .expect("script");
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let script = script.text().await.expect("script text");
    assert!(
        script.contains("audit-log-viewer"),
        "the bundle was not built"
    );
    let slash = app
        .client
        .get(format!("{}/console/", app.address))
        .send()
        .await
        .expect("redirect");
    assert_eq!(slash.url().path(), "/console");
    // What the viewer asks first: who is signed in.
    let viewer = app
        .graphql(
            "{ auditViewer { subject tenantId scopes open } }",
            json!({}),
        )
        .await;
    assert_eq!(
        viewer["data"]["auditViewer"],
        json!({ "subject": "anonymous", "tenantId": "default",
                "scopes": ["audit:read", "audit:write", "audit:admin", "audit:pii"], "open": true })
    );
    app.cleanup().await;
}
