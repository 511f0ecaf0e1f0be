//! The scheduler: reconciles the database with the queue (plans, enqueues, reclaims, retries,
//! dead-letters), fans finished audits in, and renders reports (also for the embedded audit).
pub mod fanin;
pub mod plots;
pub mod reaper;
pub mod report;
pub mod service;

use std::path::PathBuf;

pub use report::{write_report, ReportFiles};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot draw the plot: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("results.json: {0}")]
    Json(#[from] serde_json::Error),
}
