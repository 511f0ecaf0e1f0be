//! `/v1/audits`: submit (idempotently), follow, list and cancel audits of the caller's team.
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
pub use neurodiff_protocol::{AuditRequest, AuditView, Progress, ShardList, ShardView};
use neurodiff_protocol::{AuditSpec, AuditStatus, Event, Limits, ReferencePolicy, EVENTS_MAX_LEN};
use neurodiff_store::{Admission, AuditFilter};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::AuthTeam;
use crate::error::ApiError;
use crate::state::AppState;
pub use neurodiff_protocol::views::AuditPage;

const MAX_KEY: usize = 200;

/// Checks a request against the deployment's policy and limits, for `team`; the spec to store.
/// Model references are checked lexically: nothing is opened, so the answer says nothing about
/// what exists where.
pub fn validate(
    req: AuditRequest,
    team: &str,
    policy: &ReferencePolicy,
    limits: &Limits,
) -> Result<AuditSpec, ApiError> {
    req.admit(team, policy, limits)
        .map_err(ApiError::BadRequest)
}

pub(crate) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("path `id`: `{id}` is not an audit id (a UUID)")))
}

/// Submit an audit; 202 with its id. The same `Idempotency-Key` returns the same audit.
#[utoipa::path(post, operation_id = "create_audit", path = "/v1/audits", tag = "audits", request_body = AuditRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "returns the same audit for the same key")),
    responses((status = 202, body = AuditView), (status = 400, description = "a bad field, named, or a model reference the policy refuses"),
        (status = 401), (status = 409, description = "the Idempotency-Key was used for a different request"),
        (status = 413), (status = 429, description = "over the team's quota; see Retry-After")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    headers: HeaderMap,
    body: Result<Json<AuditRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<AuditView>), ApiError> {
    let Json(req) = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(crate::MAX_BODY_BYTES),
        _ => ApiError::BadRequest(rejection.body_text()),
    })?;
    let key =
        match headers.get("idempotency-key") {
            None => None,
            Some(v) => match v.to_str() {
                // `scan-…` keys are the scans' own: a team must not be able to take one first.
                Ok(k) if k.starts_with("scan-") => return Err(ApiError::BadRequest(
                    "header `Idempotency-Key`: keys starting with `scan-` are reserved for scans"
                        .into(),
                )),
                Ok(k) if !k.is_empty() && k.len() <= MAX_KEY => Some(k.to_string()),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "header `Idempotency-Key`: 1 to {MAX_KEY} visible ASCII characters"
                    )))
                }
            },
        };
    let spec = validate(req, &team.name, &state.policy, &state.limits)?;
    let (audit, created) = match state
        .db
        .insert_audit(&team, &spec, key.as_deref(), &state.quota)
        .await?
    {
        Admission::Created(a) => (a, true),
        Admission::Existing(a) => (a, false),
        Admission::KeyReused(a) => {
            return Err(ApiError::Conflict(format!(
                "header `Idempotency-Key`: already used for audit {} with a different request; use a new key",
                a.id
            )))
        }
        Admission::OverQuota {
            reason,
            retry_after_s,
        } => {
            return Err(ApiError::TooManyRequests {
                message: reason,
                retry_after_s,
            })
        }
    };
    if created {
        if let Some(events) = &state.events {
            // Only a wake-up: the audit is stored, and the scheduler enqueues every stored audit
            // that is not on the queue, so a failure here loses nothing.
            if let Err(e) = events
                .notify(&Event::Submitted { audit: audit.id }, EVENTS_MAX_LEN)
                .await
            {
                tracing::warn!(audit = %audit.id, error = %e, "audit stored; scheduler not woken");
            }
        }
    }
    Ok((StatusCode::ACCEPTED, Json(audit.into())))
}

#[utoipa::path(get, operation_id = "get_audit", path = "/v1/audits/{id}", tag = "audits",
    params(("id" = String, Path, description = "audit id")),
    responses((status = 200, body = AuditView), (status = 404, description = "no such audit for this team")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<AuditView>, ApiError> {
    Ok(Json(
        state.db.get_audit(&team, parse_id(&id)?).await?.into(),
    ))
}

/// The audit's shards in plan order: status, attempts, worker, and where the time went (queue
/// wait, model loading, the analysis).
#[utoipa::path(get, operation_id = "list_audit_shards", path = "/v1/audits/{id}/shards", tag = "audits",
    params(("id" = String, Path, description = "audit id")),
    responses((status = 200, body = ShardList), (status = 404, description = "no such audit for this team")),
    security(("bearer" = [])))]
pub async fn shards(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<ShardList>, ApiError> {
    let shards = state.db.shard_views(&team, parse_id(&id)?).await?;
    Ok(Json(ShardList { shards }))
}

/// Cancel a queued or running audit (a finished one is returned unchanged).
#[utoipa::path(delete, operation_id = "cancel_audit", path = "/v1/audits/{id}", tag = "audits",
    params(("id" = String, Path, description = "audit id")),
    responses((status = 200, body = AuditView), (status = 404)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<AuditView>, ApiError> {
    Ok(Json(
        state.db.cancel_audit(&team, parse_id(&id)?).await?.into(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub model: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

fn encode_cursor(a: &AuditView) -> String {
    format!("{}_{}", a.created_at.timestamp_micros(), a.id)
}

fn decode_cursor(s: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::BadRequest("query `cursor`: not a cursor returned by this API".into());
    let (micros, id) = s.split_once('_').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

/// The team's audits, newest first; filters by status, model and creation time; cursor pages.
#[utoipa::path(get, operation_id = "list_audits", path = "/v1/audits", tag = "audits", params(ListQuery),
    responses((status = 200, body = AuditPage), (status = 400)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<AuditStatus>)
        .transpose()
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "query `status`: `{}` is not one of {}",
                q.status.as_deref().unwrap_or_default(),
                AuditStatus::ALL.map(AuditStatus::as_str).join(", ")
            ))
        })?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "query `limit`: between 1 and 500".into(),
        ));
    }
    let filter = AuditFilter {
        status,
        model: q.model,
        since: q.since,
        until: q.until,
        cursor: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit,
    };
    let audits: Vec<AuditView> = state
        .db
        .list_audits(&team, &filter)
        .await?
        .into_iter()
        .map(AuditView::from)
        .collect();
    let next_cursor = (audits.len() as i64 == limit)
        .then(|| audits.last().map(encode_cursor))
        .flatten();
    Ok(Json(AuditPage {
        audits,
        next_cursor,
    }))
}
