//! `/metrics` in Prometheus's text format: request counts and latencies by route (recorded by a
//! middleware), and, read at scrape time, audits by status and the work queue's sizes.
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::state::{AppState, MetricsAccess};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    audits: IntGaugeVec,
    queue: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "neurodiff_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "neurodiff_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method", "route"],
        )?;
        let audits = IntGaugeVec::new(
            Opts::new("neurodiff_audits", "Audits by status"),
            &["status"],
        )?;
        let queue = IntGaugeVec::new(
            Opts::new("neurodiff_queue_tasks", "Tasks on the work queue by state"),
            &["state"],
        )?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(audits.clone()),
            Box::new(queue.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            requests,
            latency,
            audits,
            queue,
        })
    }
}

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
    let m = &state.metrics;
    m.latency
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .inc();
    response
}

/// Whether `headers` may read `/metrics` on this listener.
fn allowed(
    access: &MetricsAccess,
    headers: &axum::http::HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    use sha2::Digest;
    match access {
        MetricsAccess::Open => Ok(()),
        MetricsAccess::Token(want) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| <[u8; 32]>::from(sha2::Sha256::digest(t.as_bytes())));
            // Digests compared whole: no early exit that times a guess.
            let matches = given
                .is_some_and(|g| g.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
            if matches {
                Ok(())
            } else {
                Err((
                    StatusCode::UNAUTHORIZED,
                    "/metrics needs the deployment's metrics token (--metrics-token)",
                ))
            }
        }
        MetricsAccess::Off => Err((
            StatusCode::NOT_FOUND,
            "/metrics is not served on this address (--metrics-bind, --metrics-token)",
        )),
    }
}

pub async fn render(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Err(refused) = allowed(&state.metrics_access, &headers) {
        return refused.into_response();
    }
    let m = &state.metrics;
    match state.db.status_counts().await {
        Ok(counts) => {
            m.audits.reset();
            for (status, n) in counts {
                m.audits.with_label_values(&[status.as_str()]).set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count audits"),
    }
    if let Some(tasks) = &state.tasks {
        match tasks.stats().await {
            Ok(s) => {
                for (label, v) in [
                    ("stream", s.length),
                    ("pending", s.pending),
                    ("delayed", s.delayed),
                    ("dead", s.dead),
                ] {
                    m.queue.with_label_values(&[label]).set(v as i64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the queue"),
        }
    }
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::error!(error = %e, "metrics: cannot encode");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
