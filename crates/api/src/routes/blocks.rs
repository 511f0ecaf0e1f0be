//! `GET /v1/results/blocks`: the per-block metrics of the corpus analyses (activation
//! differences, the differential logit lens) across every succeeded audit of the team.
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use neurodiff_protocol::{AnalysisKind, BlockMetric, BlockSite};
use neurodiff_store::BlockQuery;
use serde::Deserialize;

use crate::auth::AuthTeam;
use crate::error::ApiError;
use crate::state::AppState;
pub use neurodiff_protocol::views::{BlockHitView, BlockPage};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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

/// `GET /v1/results/blocks`: blocks across the team's succeeded audits, largest metric first.
#[utoipa::path(get, operation_id = "query_block_results", path = "/v1/results/blocks", tag = "results", params(BlocksQuery),
    responses((status = 200, body = BlockPage), (status = 400, description = "a bad filter, named")),
    security(("bearer" = [])))]
pub async fn query(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    query: Result<Query<BlocksQuery>, QueryRejection>,
) -> Result<Json<BlockPage>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let bad = |m: String| Err(ApiError::BadRequest(m));
    let named = |field: &str, e: &dyn std::fmt::Display| format!("query `{field}`: {e}");
    let metric = match q.metric.as_deref().map(str::parse::<BlockMetric>) {
        None => BlockMetric::MeanRelDiff,
        Some(Ok(m)) => m,
        Some(Err(e)) => return bad(named("metric", &e)),
    };
    // The analyses whose rows the block results hold.
    let with_rows = AnalysisKind::with_block_rows();
    let analysis = match q.analysis.as_deref().map(str::parse::<AnalysisKind>) {
        None => None,
        Some(Ok(a)) if with_rows.contains(&a) => Some(a),
        Some(_) => {
            let known: Vec<&str> = with_rows.iter().map(|k| k.as_str()).collect();
            let known = known.join(", ");
            return bad(named("analysis", &format!("one of {known}")));
        }
    };
    let hook = match q.hook.as_deref().map(str::parse::<BlockSite>) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => return bad(named("hook", &e)),
    };
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
                metric,
                model: q.model,
                analysis,
                layer: q.layer,
                hook,
                min: q.min,
                limit,
            },
        )
        .await?;
    Ok(Json(BlockPage { results: hits }))
}
