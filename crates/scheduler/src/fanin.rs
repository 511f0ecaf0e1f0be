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
use uuid::Uuid;

use crate::context::SchedulerContext;

#[derive(Debug, thiserror::Error)]
pub enum FanInError {
    /// The audit cannot be finished (a result is missing or unreadable): it fails.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed: the fan-in is tried again later.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Refuses an audit whose shard outputs together are more than the fan-in may hold at once
/// (`--max-fanin-bytes`), before any is read: one audit cannot take the scheduler's memory (and
/// every other audit's fan-in) down with it. (Workers refuse to store a single output over
/// `MAX_SHARD_OUTPUT_BYTES`.)
async fn check_sizes(ctx: &SchedulerContext, f: &Finishing) -> Result<(), FanInError> {
    let mut total = 0u64;
    for (key, attempt) in &f.shards {
        let object = shard_result_key(f.audit.id, key, *attempt);
        let size = match ctx.blobs.head(&object).await {
            Ok(o) => o.size,
            Err(StoreError::NotFound { what }) => {
                return Err(FanInError::Invalid(format!(
                    "shard {key}: its result is missing ({what})"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        total = total.saturating_add(size);
    }
    let max = ctx.settings.max_fanin_bytes;
    if total > max {
        return Err(FanInError::Invalid(format!(
            "the shards' outputs total {total} bytes, more than the fan-in merges at once \
             ({max} bytes, --max-fanin-bytes): audit fewer layers or samples per audit"
        )));
    }
    Ok(())
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
    check_sizes(ctx, &f).await?;
    let shards = read_shards(ctx, &f).await?;
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
    let mut artifacts = upload_report(ctx, audit, rendered).await?;
    artifacts.extend(dictionary_artifacts(ctx, audit, &results).await?);
    let finished = ctx
        .db
        .finish_audit(
            audit,
            f.claim,
            &artifacts,
            &results.analyses.block_rows(),
            &latent_rows(&results),
        )
        .await?;
    if finished {
        tracing::info!(%audit, artifacts = artifacts.len(), "audit succeeded");
    }
    Ok(finished)
}

/// Every shard's stored output, at the attempt that finished it.
async fn read_shards(
    ctx: &SchedulerContext,
    f: &Finishing,
) -> Result<Vec<ShardOutput>, FanInError> {
    let mut shards = Vec::with_capacity(f.shards.len());
    for (key, attempt) in &f.shards {
        let object = shard_result_key(f.audit.id, key, *attempt);
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
    Ok(shards)
}

/// The rendered report's files uploaded under `audits/{id}/report/`, as artifact rows.
async fn upload_report(
    ctx: &SchedulerContext,
    audit: Uuid,
    rendered: Vec<ReportFile>,
) -> Result<Vec<ArtifactRow>, FanInError> {
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
    Ok(artifacts)
}

/// The dictionaries the training shards left in the team's space, as artifact rows; one
/// outside the team's space fails the fan-in.
async fn dictionary_artifacts(
    ctx: &SchedulerContext,
    audit: Uuid,
    results: &AuditResults,
) -> Result<Vec<ArtifactRow>, FanInError> {
    let dictionaries = results.analyses.dictionaries();
    let mut artifacts = Vec::new();
    if dictionaries.is_empty() {
        return Ok(artifacts);
    }
    let team = ctx.db.team_of(audit).await?;
    for d in dictionaries {
        let name = d.section;
        let Some(file) = &d.report.dictionary else {
            continue;
        };
        let key = format!("teams/{team}/{}", file.key);
        if !file.key.starts_with("dictionaries/") || file.key.contains("..") || file.location != key
        {
            return Err(FanInError::Invalid(format!(
                "the {name} dictionary is not in the team's space: {}",
                file.location
            )));
        }
        artifacts.push(ArtifactRow {
            name: format!("{name}.safetensors"),
            object_key: key,
            size_bytes: file.bytes as i64,
            sha256: file.sha256.clone(),
            content_type: "application/octet-stream".into(),
        });
    }
    Ok(artifacts)
}

/// The per-latent rows of the dictionary analyses (every latent results.json lists).
pub fn latent_rows(results: &AuditResults) -> Vec<neurodiff_store::LatentRow> {
    let mut rows = Vec::new();
    for section in results.analyses.dictionaries() {
        let (analysis, d) = (section.analysis, section.report);
        for l in &d.latents {
            rows.push(neurodiff_store::LatentRow {
                analysis,
                layer: d.layer as i32,
                latent: l.id as i32,
                class: l.class,
                delta_norm: l.delta_norm,
                nu_eps: l.nu_eps,
                nu_r: l.nu_r,
                frequency: l.frequency,
                max_activation: l.max_activation,
                top_tokens: l.top_tokens.iter().map(|t| t.token.clone()).collect(),
                example_tokens: l.examples.iter().map(|e| e.token.clone()).collect(),
                domain_hit: l.domain_hit,
            });
        }
    }
    rows
}
