//! The web dashboard: a static single-page app (`crates/api/ui/`) embedded in the binary and
//! served under `/ui`. The files hold no data and need no token; every datum comes from the
//! `/v1` API, which the page calls with the bearer token the user types in.
use std::hash::{Hash, Hasher};

use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Scripts only from this origin (no inline script, no eval); ECharts sets inline styles, and
/// the audit's report is shown in a sandboxed frame.
pub const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; \
    style-src 'self' 'unsafe-inline'; frame-src blob: 'self'; script-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its path under `/ui/`, content type and bytes.
#[derive(Debug)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const INDEX: Asset = Asset {
    path: "index.html",
    content_type: "text/html; charset=utf-8",
    bytes: include_bytes!("../ui/index.html"),
};

/// Looked up by exact path, so nothing outside this list (`../`, other files) can be served.
const ASSETS: [Asset; 4] = [
    INDEX,
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../ui/app.js"),
    },
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../ui/app.css"),
    },
    Asset {
        path: "vendor/echarts.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../ui/vendor/echarts.min.js"),
    },
];

/// `GET /ui`, `/ui/` (the app) and `/ui/{*path}` (its files); mount it outside the `/v1` auth.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    file(&headers, &INDEX)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => file(&headers, a),
        None => serve(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"not found\n",
        ),
    }
}

/// A validator for the file's bytes (fixed for one binary), so a revalidation of the 1 MB
/// charting library costs a 304 rather than the file.
fn etag(bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("\"{:016x}-{}\"", h.finish(), bytes.len())
}

fn file(request: &HeaderMap, a: &Asset) -> Response {
    // Hashed once per process, not per request (the charting library is 1 MB).
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| ASSETS.iter().map(|a| etag(a.bytes)).collect());
    let tag = ASSETS
        .iter()
        .position(|x| x.path == a.path)
        .and_then(|i| tags.get(i).cloned())
        .unwrap_or_else(|| etag(a.bytes));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if fresh {
        serve(StatusCode::NOT_MODIFIED, a.content_type, b"")
    } else {
        serve(StatusCode::OK, a.content_type, a.bytes)
    };
    if let Ok(v) = header::HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The file with the dashboard's security headers. `no-cache` makes the browser revalidate,
/// so a new binary's files are picked up at once.
fn serve(status: StatusCode, content_type: &'static str, bytes: &'static [u8]) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn fetch(uri: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
        let response = router::<()>()
            .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }

    #[tokio::test]
    async fn the_app_is_served_with_its_headers() {
        for uri in ["/ui", "/ui/", "/ui/index.html"] {
            let (status, headers, body) = fetch(uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(headers[header::X_FRAME_OPTIONS], "SAMEORIGIN");
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
            let html = String::from_utf8(body).unwrap();
            for src in ["/ui/app.js", "/ui/app.css", "/ui/vendor/echarts.min.js"] {
                assert!(html.contains(src), "{uri} does not load {src}");
            }
        }
    }

    #[tokio::test]
    async fn files_have_their_content_types() {
        for (uri, content_type) in [
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/app.css", "text/css; charset=utf-8"),
            (
                "/ui/vendor/echarts.min.js",
                "text/javascript; charset=utf-8",
            ),
        ] {
            let (status, headers, body) = fetch(uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{uri}");
            assert!(!body.is_empty(), "{uri}");
        }
    }

    #[tokio::test]
    async fn a_revalidation_with_the_etag_is_answered_304() {
        let (_, headers, _) = fetch("/ui/vendor/echarts.min.js").await;
        let tag = headers[header::ETAG].to_str().unwrap().to_string();
        let response = router::<()>()
            .oneshot(
                Request::builder()
                    .uri("/ui/vendor/echarts.min.js")
                    .header(header::IF_NONE_MATCH, &tag)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
        let (_, other, _) = fetch("/ui/app.js").await;
        assert_ne!(other[header::ETAG], tag);
    }

    #[tokio::test]
    async fn anything_else_is_not_found() {
        for uri in [
            "/ui/nope.js",
            "/ui/../Cargo.toml",
            "/ui/vendor/",
            "/ui/vendor/LICENSE-echarts",
        ] {
            let (status, headers, _) = fetch(uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }
}
