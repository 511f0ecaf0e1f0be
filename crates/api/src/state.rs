//! What every handler shares.
use std::sync::Arc;

use neurodiff_store::{Blobs, Db, Queue};

use crate::metrics::Metrics;

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
        })
    }
}
