//! NeuroDiff's HTTP API: `pub fn app(state) -> Router`. Every /v1 route needs a bearer token and
//! sees only its team's audits (another team's audit answers 404).
pub mod auth;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod state;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use axum::Router;

pub use error::ApiError;
pub use state::AppState;

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
        )
        .route("/audits/{id}/results", get(routes::results::results))
        .route("/audits/{id}/artifacts", get(routes::results::artifacts))
        .route(
            "/audits/{id}/artifacts/{name}",
            get(routes::results::artifact),
        )
        .route("/results", get(routes::results::query))
        .route("/results/blocks", get(routes::blocks::query));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::document))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
