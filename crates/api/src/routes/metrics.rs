//! `/metrics` in Prometheus's text format, and the middleware that counts and times every
//! request for it.
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::metrics::allowed;
use crate::state::AppState;

/// Counts and times every request under its route template (not its raw path, so ids do not
/// explode the label space).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // Any token is a valid HTTP method: an unknown one must not mint a new series.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let started = Instant::now();
    let response = next.run(req).await;
    state.metrics.observe_request(
        &method,
        &route,
        response.status().as_str(),
        started.elapsed().as_secs_f64(),
    );
    response
}

pub async fn render(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Err(refused) = allowed(&state.metrics_access, &headers) {
        return refused.into_response();
    }
    let m = &state.metrics;
    match state.db.status_counts().await {
        Ok(counts) => m.set_audits(counts),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count audits"),
    }
    if let Some(tasks) = &state.tasks {
        match tasks.stats().await {
            Ok(s) => m.set_queue([
                ("stream", s.length),
                ("pending", s.pending),
                ("delayed", s.delayed),
                ("dead", s.dead),
            ]),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the queue"),
        }
    }
    match m.encode() {
        Ok(out) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: cannot encode");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
