//! The fan-in of a finished audit: the shard outputs its workers stored are merged into one
//! results.json by the same assembly as the embedded audit's, the report is rendered by the
//! same renderer, everything is uploaded under `audits/{id}/report/`, recorded as artifacts
//! (with the per-block metrics of the corpus analyses, for the team-wide query), and the audit
//! succeeds.
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use neurodiff_protocol::{AuditResults, PlanRecord, ShardOutput};
use neurodiff_report::ReportFile;
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
        let object = shard_result_key(audit, &key.to_string(), *attempt);
        let bytes = match ctx.blobs.get(&object).await {
            Ok(b) => b,
            Err(StoreError::NotFound { what }) => {
                return Err(FanInError::Invalid(format!(
                    "shard {key}: its result is missing ({what})"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let shard: ShardOutput = serde_json::from_slice(&bytes)
            .map_err(|e| FanInError::Invalid(format!("shard {key} ({object}): {e}")))?;
        shards.push(shard);
    }
    // Fixed by the data, not by when this fan-in ran: a fan-in that is taken over renders
    // the same bytes, so the stored sha256 always matches the object.
    let created = f
        .shards_finished_at
        .map(|t| t.timestamp().max(0) as u64)
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let spec = f.audit.spec.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let results = neurodiff_analyses::assemble(&spec, record, shards, created)
            .map_err(|e| FanInError::Invalid(e.to_string()))?;
        let files =
            neurodiff_report::render(&results).map_err(|e| FanInError::Invalid(e.to_string()))?;
        Ok::<_, FanInError>((results, files))
    })
    .await
    .map_err(|e| FanInError::Invalid(format!("rendering thread: {e}")))??;
    let (results, rendered) = rendered;
    let mut artifacts = Vec::with_capacity(rendered.len());
    for ReportFile { name, bytes } in rendered {
        // Artifacts are named flat (`heatmap.svg`, not `plots/heatmap.svg`).
        let name = name.rsplit('/').next().unwrap_or_default().to_string();
        let stored = ctx
            .blobs
            .put(
                &artifact_key(&audit.to_string(), "report", &name),
                Bytes::from(bytes),
            )
            .await?;
        artifacts.push(ArtifactRow {
            content_type: neurodiff_report::content_type(&name).to_string(),
            name,
            object_key: stored.key,
            size_bytes: stored.size as i64,
            sha256: stored.sha256,
        });
    }
    let finished = ctx
        .db
        .finish_audit(audit, f.claim, &artifacts, &block_rows(&results))
        .await?;
    if finished {
        tracing::info!(%audit, artifacts = artifacts.len(), "audit succeeded");
    }
    Ok(finished)
}

/// The per-block metrics of the corpus analyses, as the team-wide query stores them.
pub fn block_rows(results: &AuditResults) -> Vec<neurodiff_store::BlockRow> {
    let mut rows = Vec::new();
    if let Some(a) = &results.analyses.activations {
        for l in &a.layers {
            rows.push(neurodiff_store::BlockRow {
                analysis: "activations".into(),
                layer: Some(l.layer as i32),
                hook: l.hook.clone(),
                mean_diff_norm: Some(l.mean_diff_norm),
                mean_rel_diff: Some(l.mean_rel_diff),
                mean_cosine: Some(l.mean_cosine),
                kl_mean: None,
            });
        }
    }
    if let Some(lens) = &results.analyses.logit_lens {
        for l in lens.layers.iter().chain([&lens.output]) {
            rows.push(neurodiff_store::BlockRow {
                analysis: "logit-lens".into(),
                layer: l.layer.map(|i| i as i32),
                hook: if l.layer.is_some() {
                    "hook_resid_post".into()
                } else {
                    "output".into()
                },
                mean_diff_norm: None,
                mean_rel_diff: None,
                mean_cosine: None,
                kl_mean: Some(l.kl_mean),
            });
        }
    }
    rows
}
