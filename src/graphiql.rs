//! GraphiQL IDE at `GET /`, served from assets that `build.rs` embeds, so it works offline.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::Html;
use axum::routing::get;

/// Route, content type and body of an asset that `build.rs` placed in `OUT_DIR/graphiql/`.
macro_rules! asset {
    ($file:literal, $content_type:expr) => {
        (
            concat!("/graphiql/", $file),
            $content_type,
            include_bytes!(concat!(env!("OUT_DIR"), "/graphiql/", $file)).as_slice(),
        )
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ASSETS: [(&str, &str, &[u8]); 5] = [
    asset!("react.production.min.js", JS),
    asset!("react-dom.production.min.js", JS),
    asset!("graphiql.min.js", JS),
    asset!("graphiql.min.css", CSS),
    asset!("graphql-ws.min.js", JS),
];

static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("graphiql.html").replace("{{version}}", env!("GRAPHIQL_ASSETS_VERSION"))
});

/// Routes for the IDE page and its assets; merge into the application router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // The page must be revalidated so that it picks up new asset versions after an upgrade;
    // the assets are versioned by a `?v=` query string and can be cached forever.
    let page = get(|| async { ([(CACHE_CONTROL, "no-cache")], Html(PAGE.as_str())) });
    ASSETS.into_iter().fold(
        Router::new().route("/", page),
        |router, (path, content_type, body)| {
            let headers = [
                (CONTENT_TYPE, content_type),
                (CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ];
            router.route(path, get(move || async move { (headers, body) }))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn page_loads_every_asset_and_nothing_external() {
        assert!(
            !PAGE.contains("http://") && !PAGE.contains("https://"),
            "page must not load anything from the internet"
        );
        assert!(!PAGE.contains("{{"), "unreplaced template placeholder");
        for (path, _, _) in ASSETS {
            // Relative, as in the page, so it also works under a path prefix.
            let relative = path.trim_start_matches('/');
            assert!(
                PAGE.contains(&format!("\"{relative}?v=")),
                "page does not load {path}"
            );
        }
    }

    #[tokio::test]
    async fn serves_page_and_assets() -> TestResult {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(axum::serve(listener, router()).into_future());
        let client = reqwest::Client::new();

        let page = ("/", "text/html; charset=utf-8");
        let assets = ASSETS.map(|(path, content_type, _)| (path, content_type));
        for (path, content_type) in [page].into_iter().chain(assets) {
            let response = client.get(format!("{base}{path}")).send().await?;
            assert_eq!(response.status(), reqwest::StatusCode::OK, "{path}");
            let actual = response.headers().get(CONTENT_TYPE).map(|v| v.to_str());
            assert_eq!(actual.transpose()?, Some(content_type), "{path}");
        }
        Ok(())
    }
}
