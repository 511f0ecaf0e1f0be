//! What the API tests share: a harness on a real PostgreSQL (a database per test) and a real
//! Redis (a stream per test), and requests through `tower::ServiceExt::oneshot`.
#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)]

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use neurodiff_api::{app, AppState};
use neurodiff_protocol::ReferencePolicy;
use neurodiff_store::{Blobs, Db, Queue};
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;

pub struct Harness {
    pub state: AppState,
    pub token_a: String,
    pub token_b: String,
}

pub async fn harness(pool: PgPool) -> Harness {
    let db = Db { pool };
    let (a, b) = (
        db.ensure_team("team-a").await.unwrap(),
        db.ensure_team("team-b").await.unwrap(),
    );
    let token_a = db.create_token(&a, "test").await.unwrap();
    let token_b = db.create_token(&b, "test").await.unwrap();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let queue = Queue::connect(&url, &format!("neurodiff-test:{}", uuid::Uuid::new_v4()), 3)
        .await
        .unwrap();
    Harness {
        state: AppState::new(
            db,
            Some(queue.clone()),
            Some(queue),
            Blobs::from_url("memory://").unwrap(),
        )
        .unwrap()
        .with_policy(policy()),
        token_a,
        token_b,
    }
}

pub async fn call(
    h: &Harness,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let (status, _, json) = call_with_headers(h, method, uri, token, body, key).await;
    (status, json)
}

/// `POST /v1/audits` with `body` as team `token`: (status, headers, JSON).
pub async fn submit(
    h: &Harness,
    token: &str,
    body: String,
    key: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    call_with_headers(h, "POST", "/v1/audits", Some(token), Some(body), key).await
}

/// Like [`call`], with the response's headers.
pub async fn call_with_headers(
    h: &Harness,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
    key: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = app(h.state.clone())
        .oneshot(
            req.body(body.map(Body::from).unwrap_or_else(Body::empty))
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    )
}

pub fn audit_body(base: &str) -> String {
    json!({"base": base, "finetuned": "org/ft", "layers": [0, 1]}).to_string()
}

/// The test deployment's reference policy: hub ids of any organisation, local checkpoints
/// under /models and each team's own /teams/{team}, and one shared S3 prefix whose
/// `artifacts` folder is where audits write (never readable as a model).
pub fn policy() -> ReferencePolicy {
    let mut p = ReferencePolicy::from_json(
        r#"{"local_roots": ["/models", "/teams/{team}"], "s3": ["s3://models/shared"],
            "hub": {"enabled": true, "orgs": ["*"]}}"#,
    )
    .unwrap();
    p.deny("s3://models/shared/artifacts").unwrap();
    p
}
