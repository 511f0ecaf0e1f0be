//! Results: an audit's results.json and artifacts (streamed from object storage), and the
//! team-wide query across audits (`GET /v1/results`).
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use neurodiff_protocol::TensorMetric;
use neurodiff_store::{ArtifactRow, ResultQuery};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::AuthTeam;
use crate::error::ApiError;
use crate::routes::audits::parse_id;
use crate::state::AppState;
pub use neurodiff_protocol::views::{ArtifactList, ArtifactView, ResultHitView, ResultPage};

/// The artifacts of a finished audit; before it succeeds the answer says why there are none.
async fn finished_artifacts(
    state: &AppState,
    team: &neurodiff_store::Team,
    id: Uuid,
) -> Result<Vec<ArtifactRow>, ApiError> {
    let audit = state.db.get_audit(team, id).await?;
    if audit.status != neurodiff_protocol::AuditStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "audit {id} is {}; results exist once it has succeeded{}",
            audit.status,
            audit.error.map(|e| format!(" ({e})")).unwrap_or_default()
        )));
    }
    Ok(state.db.artifacts(team, id).await?)
}

async fn stream(state: &AppState, artifact: &ArtifactRow) -> Result<Response, ApiError> {
    let body = state.blobs.stream(&artifact.object_key).await?;
    let plain = !artifact.name.is_empty()
        && artifact
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let disposition = if plain {
        format!("attachment; filename=\"{}\"", artifact.name)
    } else {
        "attachment".to_string()
    };
    Ok((
        [
            (header::CONTENT_TYPE, artifact.content_type.clone()),
            (header::CONTENT_LENGTH, artifact.size_bytes.to_string()),
            (header::ETAG, format!("\"{}\"", artifact.sha256)),
            // An HTML report holds text from the models (tokens, generations): opened
            // directly, it is a download, never a page of this origin that runs scripts.
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_string()),
        ],
        Body::from_stream(body.map_err(std::io::Error::other)),
    )
        .into_response())
}

/// `GET /v1/audits/{id}/results`: results.json, the embedded audit's schema.
#[utoipa::path(get, operation_id = "get_audit_results", path = "/v1/audits/{id}/results", tag = "results",
    params(("id" = String, Path, description = "audit id")),
    responses((status = 200, description = "results.json (docs/results-schema.md)", content_type = "application/json"),
        (status = 404, description = "no such audit for this team"),
        (status = 409, description = "the audit has not succeeded")),
    security(("bearer" = [])))]
pub async fn results(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let artifacts = finished_artifacts(&state, &team, id).await?;
    let results = artifacts
        .iter()
        .find(|a| a.name == "results.json")
        .ok_or_else(|| ApiError::NotFound(format!("results.json of audit {id}")))?;
    stream(&state, results).await
}

/// `GET /v1/audits/{id}/artifacts`
#[utoipa::path(get, operation_id = "list_audit_artifacts", path = "/v1/audits/{id}/artifacts", tag = "results",
    params(("id" = String, Path, description = "audit id")),
    responses((status = 200, body = ArtifactList), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn artifacts(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<ArtifactList>, ApiError> {
    let id = parse_id(&id)?;
    let artifacts = finished_artifacts(&state, &team, id)
        .await?
        .into_iter()
        .map(|a| ArtifactView {
            url: format!("/v1/audits/{id}/artifacts/{}", a.name),
            name: a.name,
            size_bytes: a.size_bytes,
            sha256: a.sha256,
            content_type: a.content_type,
        })
        .collect();
    Ok(Json(ArtifactList { artifacts }))
}

/// `GET /v1/audits/{id}/artifacts/{name}`, streamed from object storage.
#[utoipa::path(get, operation_id = "get_audit_artifact", path = "/v1/audits/{id}/artifacts/{name}", tag = "results",
    params(("id" = String, Path, description = "audit id"), ("name" = String, Path, description = "artifact name")),
    responses((status = 200, description = "the artifact's bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn artifact(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let artifacts = finished_artifacts(&state, &team, id).await?;
    let found = artifacts
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("artifact `{name}` of audit {id}")))?;
    stream(&state, found).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    /// rel_fro (default), fro, cosine, max_abs, spectral, nuclear, stable_rank, effective_rank,
    /// rank_90, rank_99, numerical_rank, base_fro
    pub metric: Option<String>,
    /// The base or fine-tuned reference, exactly as submitted.
    pub model: Option<String>,
    pub layer: Option<i32>,
    /// Module name, e.g. `attn.c_attn`, `self_attn.q_proj`.
    pub module: Option<String>,
    /// Only tensors whose metric is at least this.
    pub min: Option<f64>,
    pub limit: Option<i64>,
}

/// `GET /v1/results`: tensors across every succeeded audit of the team, largest metric first.
#[utoipa::path(get, operation_id = "query_results", path = "/v1/results", tag = "results", params(ResultsQuery),
    responses((status = 200, body = ResultPage), (status = 400, description = "a bad filter, named")),
    security(("bearer" = [])))]
pub async fn query(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    query: Result<Query<ResultsQuery>, QueryRejection>,
) -> Result<Json<ResultPage>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let metric = match q.metric.as_deref().map(str::parse::<TensorMetric>) {
        None => TensorMetric::RelFro,
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(ApiError::BadRequest(format!("query `metric`: {e}"))),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "query `limit`: between 1 and 1000".into(),
        ));
    }
    if q.layer.is_some_and(|l| l < 0) {
        return Err(ApiError::BadRequest(
            "query `layer`: must be 0 or more".into(),
        ));
    }
    if q.min.is_some_and(|m| !m.is_finite()) {
        return Err(ApiError::BadRequest(
            "query `min`: must be a finite number".into(),
        ));
    }
    let hits = state
        .db
        .query_results(
            &team,
            &ResultQuery {
                metric,
                model: q.model,
                layer: q.layer,
                module: q.module,
                min: q.min,
                limit,
            },
        )
        .await?;
    Ok(Json(ResultPage { results: hits }))
}
