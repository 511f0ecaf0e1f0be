//! NeuroDiff's HTTP API: `pub fn app(state) -> Router`. Every /v1 route needs a bearer token and
//! sees only its team's audits (another team's audit answers 404).
pub mod auth;
pub mod error;
pub mod routes;
pub mod state;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

pub use error::ApiError;
pub use state::{AppState, AUDITS_STREAM};

/// Audit specs are small; anything bigger is refused with 413 before it is parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/audits",
            get(routes::audits::list).post(routes::audits::create),
        )
        .route(
            "/audits/{id}",
            get(routes::audits::get).delete(routes::audits::cancel),
        );
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
