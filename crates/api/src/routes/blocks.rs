//! `GET /v1/results/blocks`: the per-block metrics of the corpus analyses (activation
//! differences, the differential logit lens) across every succeeded audit of the team.
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use neurodiff_store::{BlockQuery, BLOCK_METRICS};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::AuthTeam;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BlocksQuery {
    /// mean_rel_diff (default), mean_diff_norm, mean_cosine (activations), kl_mean (logit lens)
    pub metric: Option<String>,
    /// The base or fine-tuned reference, exactly as submitted.
    pub model: Option<String>,
    /// `activations` or `logit-lens`
    pub analysis: Option<String>,
    pub layer: Option<i32>,
    /// `hook_resid_pre`, `hook_attn_out`, `hook_resid_mid`, `hook_mlp_out`, `hook_resid_post`,
    /// or `output` (the logit lens at the logits)
    pub hook: Option<String>,
    /// Only blocks whose metric is at least this.
    pub min: Option<f64>,
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockHitView {
    pub audit_id: Uuid,
    pub base: String,
    pub target: String,
    pub audit_created_at: DateTime<Utc>,
    pub analysis: String,
    /// Absent for the logit lens's output row.
    pub layer: Option<i32>,
    pub hook: String,
    pub metric: String,
    pub value: f64,
    pub mean_diff_norm: Option<f64>,
    pub mean_rel_diff: Option<f64>,
    pub mean_cosine: Option<f64>,
    pub kl_mean: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockPage {
    pub results: Vec<BlockHitView>,
}

const ANALYSES: [&str; 2] = ["activations", "logit-lens"];

/// `GET /v1/results/blocks`: blocks across the team's succeeded audits, largest metric first.
#[utoipa::path(get, path = "/v1/results/blocks", tag = "results", params(BlocksQuery),
    responses((status = 200, body = BlockPage), (status = 400, description = "a bad filter, named")),
    security(("bearer" = [])))]
pub async fn query(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    query: Result<Query<BlocksQuery>, QueryRejection>,
) -> Result<Json<BlockPage>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let metric = q.metric.unwrap_or_else(|| "mean_rel_diff".to_string());
    let bad = |m: String| Err(ApiError::BadRequest(m));
    if !BLOCK_METRICS.contains(&metric.as_str()) {
        return bad(format!(
            "query `metric`: `{metric}` is not one of {}",
            BLOCK_METRICS.join(", ")
        ));
    }
    if let Some(a) = q.analysis.as_deref().filter(|a| !ANALYSES.contains(a)) {
        return bad(format!(
            "query `analysis`: `{a}` is not one of {}",
            ANALYSES.join(", ")
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return bad("query `limit`: between 1 and 1000".into());
    }
    if q.layer.is_some_and(|l| l < 0) {
        return bad("query `layer`: must be 0 or more".into());
    }
    if q.min.is_some_and(|m| !m.is_finite()) {
        return bad("query `min`: must be a finite number".into());
    }
    let hits = state
        .db
        .query_blocks(
            &team,
            &BlockQuery {
                metric: metric.clone(),
                model: q.model,
                analysis: q.analysis,
                layer: q.layer,
                hook: q.hook,
                min: q.min,
                limit,
            },
        )
        .await?;
    Ok(Json(BlockPage {
        results: hits
            .into_iter()
            .map(|h| BlockHitView {
                audit_id: h.audit,
                base: h.base,
                target: h.target,
                audit_created_at: h.audit_created_at,
                analysis: h.block.analysis,
                layer: h.block.layer,
                hook: h.block.hook,
                metric: metric.clone(),
                value: h.value,
                mean_diff_norm: h.block.mean_diff_norm,
                mean_rel_diff: h.block.mean_rel_diff,
                mean_cosine: h.block.mean_cosine,
                kl_mean: h.block.kl_mean,
            })
            .collect(),
    }))
}
