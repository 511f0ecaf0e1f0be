//! `GET /v1/results/latents`: the latents of the dictionary analyses (crosscoder, SAE on
//! differences) across every succeeded audit of the team, such as every fine-tune-only latent
//! whose decoder lens or top examples include a token.
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use neurodiff_protocol::{AnalysisKind, LatentClass};
use neurodiff_store::LatentQuery;
use serde::Deserialize;

use crate::auth::AuthTeam;
use crate::error::ApiError;
use crate::state::AppState;
pub use neurodiff_protocol::views::{LatentHitView, LatentPage};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LatentsQuery {
    /// `crosscoder` or `sae-diff`
    pub analysis: Option<String>,
    /// `ft_only`, `base_only`, `shared`, `other` (crosscoders) or `diff` (an SAE's)
    pub class: Option<String>,
    /// A token among the latent's decoder-lens or top-example tokens (case and surrounding
    /// spaces ignored).
    pub token: Option<String>,
    /// The base or fine-tuned reference, exactly as submitted.
    pub model: Option<String>,
    /// Only latents whose |ν_ε| (and |ν_r|) are below this: 0.2 and 0.5 keep the real
    /// fine-tune-only latents, not the sparsity artifacts (a negative ν is bounded by its size).
    pub max_nu_eps: Option<f64>,
    pub max_nu_r: Option<f64>,
    pub limit: Option<i64>,
}

/// `GET /v1/results/latents`: latents across the team's succeeded audits, most frequent first.
#[utoipa::path(get, operation_id = "query_latent_results", path = "/v1/results/latents", tag = "results", params(LatentsQuery),
    responses((status = 200, body = LatentPage), (status = 400, description = "a bad filter, named")),
    security(("bearer" = [])))]
pub async fn query(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    query: Result<Query<LatentsQuery>, QueryRejection>,
) -> Result<Json<LatentPage>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let bad = |m: String| Err(ApiError::BadRequest(m));
    let analysis = match q.analysis.as_deref().map(str::parse::<AnalysisKind>) {
        None => None,
        Some(Ok(a)) if a.is_dictionary() => Some(a),
        Some(_) => {
            let known: Vec<&str> = AnalysisKind::dictionaries()
                .into_iter()
                .map(AnalysisKind::as_str)
                .collect();
            let known = known.join(", ");
            return bad(format!("query `analysis`: one of {known}"));
        }
    };
    let class = match q.class.as_deref().map(str::parse::<LatentClass>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return bad(format!("query `class`: {e}")),
    };
    if q.token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty() || t.len() > 256)
    {
        return bad("query `token`: between 1 and 256 characters".into());
    }
    for (name, v) in [("max_nu_eps", q.max_nu_eps), ("max_nu_r", q.max_nu_r)] {
        if v.is_some_and(|v| !v.is_finite()) {
            return bad(format!("query `{name}`: must be a finite number"));
        }
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return bad("query `limit`: between 1 and 1000".into());
    }
    let hits = state
        .db
        .query_latents(
            &team,
            &LatentQuery {
                analysis,
                class,
                token: q.token,
                model: q.model,
                max_nu_eps: q.max_nu_eps,
                max_nu_r: q.max_nu_r,
                limit,
            },
        )
        .await?;
    Ok(Json(LatentPage { results: hits }))
}
