//! What every handler shares.
use std::sync::Arc;

use neurodiff_protocol::{Limits, ReferencePolicy};
use neurodiff_store::{Blobs, Db, Queue, Quota};

use crate::metrics::{Metrics, MetricsAccess};

#[derive(Debug, Clone)]
pub struct AppState {
    pub db: Db,
    /// Where new audits are announced, to wake the scheduler. None: the scheduler's next pass
    /// finds them in the database anyway.
    pub events: Option<Queue>,
    /// The work stream, read for its sizes on /metrics and /readyz.
    pub tasks: Option<Queue>,
    /// Where the scheduler stored the audits' reports.
    pub blobs: Blobs,
    pub metrics: Arc<Metrics>,
    /// Which model references each team may name (checked at submission, lexically).
    pub policy: Arc<ReferencePolicy>,
    /// Bounds checked at submission (layer indices).
    pub limits: Limits,
    pub quota: Quota,
    /// Scans' webhooks may name loopback and private addresses (tests, single-tenant setups).
    pub webhook_allow_internal: bool,
    /// Who may read `/metrics` here (it counts every team's audits).
    pub metrics_access: MetricsAccess,
}

impl AppState {
    pub fn new(
        db: Db,
        events: Option<Queue>,
        tasks: Option<Queue>,
        blobs: Blobs,
    ) -> Result<AppState, prometheus::Error> {
        Ok(AppState {
            db,
            events,
            tasks,
            blobs,
            metrics: Arc::new(Metrics::new()?),
            policy: Arc::new(ReferencePolicy::default()),
            limits: Limits::default(),
            quota: Quota::default(),
            webhook_allow_internal: false,
            metrics_access: MetricsAccess::Open,
        })
    }

    /// The deployment's reference policy (the default allows no model source at all).
    pub fn with_policy(mut self, policy: ReferencePolicy) -> AppState {
        self.policy = Arc::new(policy);
        self
    }

    pub fn with_metrics(mut self, access: MetricsAccess) -> AppState {
        self.metrics_access = access;
        self
    }

    pub fn with_webhooks(mut self, allow_internal: bool) -> AppState {
        self.webhook_allow_internal = allow_internal;
        self
    }

    pub fn with_limits(mut self, limits: Limits, quota: Quota) -> AppState {
        self.limits = limits;
        self.quota = quota;
        self
    }
}
