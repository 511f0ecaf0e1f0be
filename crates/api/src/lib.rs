//! NeuroDiff's HTTP API: `pub fn app(state) -> Router`. Every /v1 route needs a bearer token and
//! sees only its team's audits, scans and alerts (another team's answer 404). The dashboard is
//! served under `/ui` and reads the same API with the same tokens.
pub mod auth;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod ui;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;
pub use metrics::MetricsAccess;
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
        .route("/audits/{id}/shards", get(routes::audits::shards))
        .route("/audits/{id}/results", get(routes::results::results))
        .route("/audits/{id}/artifacts", get(routes::results::artifacts))
        .route(
            "/audits/{id}/artifacts/{name}",
            get(routes::results::artifact),
        )
        .route("/results", get(routes::results::query))
        .route("/results/blocks", get(routes::blocks::query))
        .route("/results/latents", get(routes::latents::query))
        .route(
            "/scans",
            get(routes::scans::list).post(routes::scans::create),
        )
        .route(
            "/scans/{id}",
            get(routes::scans::get).delete(routes::scans::delete),
        )
        .route("/scans/{id}/pause", post(routes::scans::pause))
        .route("/scans/{id}/resume", post(routes::scans::resume))
        .route("/scans/{id}/trigger", post(routes::scans::trigger))
        .route("/alerts", get(routes::alerts::list))
        .route("/alerts/{id}", get(routes::alerts::get))
        .route("/alerts/{id}/ack", post(routes::alerts::ack))
        .route("/vocabulary", get(routes::health::vocabulary));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::metrics::render))
        .route("/openapi.json", get(openapi::document))
        .merge(ui::router())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `/metrics` alone, for a listener on an address of the operator's (`--metrics-bind`): open to
/// whoever reaches that address.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(routes::metrics::render))
        .with_state(state.with_metrics(MetricsAccess::Open))
}
