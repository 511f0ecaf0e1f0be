//! The service's Prometheus metrics: request counts and latencies by route, and, read at scrape
//! time, audits by status and the work queue's sizes; and who may read them. (The middleware
//! and the `/metrics` handler are `routes::metrics`.)
use axum::http::{header, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

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

impl Metrics {
    /// One request: its method and route template, its status and how long it took.
    pub fn observe_request(&self, method: &str, route: &str, status: &str, seconds: f64) {
        self.latency
            .with_label_values(&[method, route])
            .observe(seconds);
        self.requests
            .with_label_values(&[method, route, status])
            .inc();
    }

    /// Audits by status, as counted now.
    pub fn set_audits(&self, counts: impl IntoIterator<Item = (String, i64)>) {
        self.audits.reset();
        for (status, n) in counts {
            self.audits.with_label_values(&[status.as_str()]).set(n);
        }
    }

    /// The work queue's sizes by state.
    pub fn set_queue(&self, sizes: [(&str, u64); 4]) {
        for (label, v) in sizes {
            self.queue.with_label_values(&[label]).set(v as i64);
        }
    }

    /// Everything, in Prometheus's text format.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// Who may read `/metrics` on a listener: it counts every team's audits and the queue, which no
/// team should see, so a deployment either gives it a token or serves it on an address of its
/// own (`--metrics-bind`, for the operator's network only).
#[derive(Clone, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Anyone who reaches this listener (a listener for metrics alone; tests).
    Open,
    /// A bearer token the operator set (`--metrics-token`), compared by its SHA-256.
    Token([u8; 32]),
    /// Not served on this listener.
    Off,
}

impl MetricsAccess {
    pub fn token(token: &str) -> MetricsAccess {
        use sha2::Digest;
        MetricsAccess::Token(sha2::Sha256::digest(token.as_bytes()).into())
    }
}

impl std::fmt::Debug for MetricsAccess {
    // The token's hash is not printed either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MetricsAccess::Open => "Open",
            MetricsAccess::Token(_) => "Token(..)",
            MetricsAccess::Off => "Off",
        })
    }
}

/// Whether `headers` may read `/metrics` on this listener.
pub fn allowed(
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
