//! Plans audits into shards, fans shard results in, and renders the report.
//! (Queue reclaiming and scheduled scans arrive with the service issue.)
pub mod plots;
pub mod report;

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
