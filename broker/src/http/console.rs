//! The web console: plain HTML, JavaScript and CSS compiled into the binary (`include_str!` of the files in
//! `broker/console/`), served at `/` on the management port. No CDN, no build step, no network at run
//! time: the page calls only this API (`/api/...`) with HTTP Basic credentials from its login form. See
//! docs/operations.md ("Web console").

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The files change with the binary: always revalidate, so an upgrade never shows a stale page.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The console's routes (no authentication: the files hold no data; every API call the page makes does).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/console.js", get(script))
        .route("/console.css", get(style))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_self_contained() {
        // No CDN or other origin: every script and stylesheet comes from this server.
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(
                !text.contains("http://"),
                "an absolute http:// URL in a console asset"
            );
            assert!(
                !text.contains("https://"),
                "an absolute https:// URL in a console asset"
            );
        }
        assert!(INDEX.contains("src=\"console.js\""));
        assert!(INDEX.contains("href=\"console.css\""));
    }
}
