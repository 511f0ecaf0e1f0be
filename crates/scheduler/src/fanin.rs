//! The fan-in of a finished audit: the shard results its workers stored are merged into one
//! results.json (the embedded audit's schema), plots and report.html are rendered, everything
//! is uploaded under `audits/{id}/report/`, recorded as artifacts, and the audit succeeds.
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use neurodiff_protocol::{
    Analyses, AuditResults, PlanRecord, ShardResult, WeightsReport, RESULTS_SCHEMA_VERSION,
};
use neurodiff_store::{artifact_key, shard_result_key, ArtifactRow, Finishing, StoreError};

use crate::service::SchedulerContext;

#[derive(Debug, thiserror::Error)]
pub enum FanInError {
    /// The audit cannot be finished (a result is missing or unreadable): it fails.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed: the fan-in is tried again later.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The content type of a report file, by extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Returns false when the audit was cancelled meanwhile.
pub async fn finish(ctx: &SchedulerContext, f: Finishing) -> Result<bool, FanInError> {
    let audit = f.audit.id;
    let record: PlanRecord = f
        .models
        .clone()
        .ok_or_else(|| FanInError::Invalid("the audit has no model records from planning".into()))
        .and_then(|m| {
            serde_json::from_value(m)
                .map_err(|e| FanInError::Invalid(format!("model records: {e}")))
        })?;
    let mut shards = Vec::with_capacity(f.shards.len());
    for (key, attempt) in &f.shards {
        let object = shard_result_key(audit, key, *attempt);
        let bytes = match ctx.blobs.get(&object).await {
            Ok(b) => b,
            Err(StoreError::NotFound { what }) => {
                return Err(FanInError::Invalid(format!(
                    "shard {key}: its result is missing ({what})"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let shard: ShardResult = serde_json::from_slice(&bytes)
            .map_err(|e| FanInError::Invalid(format!("shard {key} ({object}): {e}")))?;
        shards.push(shard);
    }
    let results = AuditResults {
        schema_version: RESULTS_SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        // Fixed by the data, not by when this fan-in ran: a fan-in that is taken over renders
        // the same bytes, so the stored sha256 always matches the object.
        created_unix: f
            .shards_finished_at
            .map(|t| t.timestamp().max(0) as u64)
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
        base: record.base,
        finetuned: record.finetuned,
        target: f.audit.spec.target.clone(),
        analyses: Analyses {
            weights: Some(WeightsReport::from_shards(shards)),
        },
    };
    let rendered = tokio::task::spawn_blocking(move || render(&results))
        .await
        .map_err(|e| FanInError::Invalid(format!("rendering thread: {e}")))??;
    let mut artifacts = Vec::with_capacity(rendered.len());
    for (name, bytes) in rendered {
        let stored = ctx
            .blobs
            .put(
                &artifact_key(&audit.to_string(), "report", &name),
                Bytes::from(bytes),
            )
            .await?;
        artifacts.push(ArtifactRow {
            content_type: content_type(&name).to_string(),
            name,
            object_key: stored.key,
            size_bytes: stored.size as i64,
            sha256: stored.sha256,
        });
    }
    let finished = ctx.db.finish_audit(audit, f.claim, &artifacts).await?;
    if finished {
        tracing::info!(%audit, artifacts = artifacts.len(), "audit succeeded");
    }
    Ok(finished)
}

/// The report files by artifact name: results.json, report.html and the plots.
fn render(results: &AuditResults) -> Result<Vec<(String, Vec<u8>)>, FanInError> {
    let dir = tempfile::tempdir().map_err(|e| FanInError::Invalid(format!("temp dir: {e}")))?;
    let files =
        crate::write_report(results, dir.path()).map_err(|e| FanInError::Invalid(e.to_string()))?;
    let mut out = Vec::new();
    for path in [files.results, files.html].into_iter().chain(files.plots) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(&path)
            .map_err(|e| FanInError::Invalid(format!("report file {name}: {e}")))?;
        out.push((name, bytes));
    }
    Ok(out)
}
