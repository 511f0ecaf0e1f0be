//! What every handler shares.
use neurodiff_store::{Db, Queue};

/// The Redis stream new audits are announced on (the scheduler plans them into shards).
pub const AUDITS_STREAM: &str = "neurodiff:audits";

#[derive(Debug, Clone)]
pub struct AppState {
    pub db: Db,
    /// None runs the API without announcing audits; the scheduler's reconciler finds them.
    pub queue: Option<Queue>,
}
