//! The API's errors: each maps to a status and a JSON body `{"error": ...}`; storage details
//! (SQL, connection strings) go to the log, never to the client.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use neurodiff_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Over a quota: answered 429 with `Retry-After`.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        let (status, message) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, self.to_string()),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, self.to_string()),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, self.to_string()),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, self.to_string()),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, self.to_string()),
            ApiError::Store(e) => match e {
                StoreError::NotFound { what } => {
                    (StatusCode::NOT_FOUND, format!("{what} not found"))
                }
                StoreError::StaleAttempt { .. } => {
                    (StatusCode::CONFLICT, "stale shard attempt".to_string())
                }
                StoreError::Queue(detail) => {
                    tracing::error!(%detail, "queue unavailable");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the queue is unavailable; retry later".to_string(),
                    )
                }
                StoreError::Database(detail) => internal("database", detail),
                StoreError::Migrate(detail) => internal("migrations", detail),
                StoreError::Invalid(detail) => internal("stored data", detail),
                StoreError::Blob(detail) => internal("object storage", detail),
                StoreError::Denied(detail) => internal("object storage access", detail),
            },
        };
        let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if let Some(s) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(s),
            );
        }
        response
    }
}

/// A server-side failure: the detail goes to the log, the client gets a plain 500.
fn internal(what: &str, detail: &dyn std::fmt::Display) -> (StatusCode, String) {
    tracing::error!(%detail, "{what} error");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error".to_string(),
    )
}
