//! `/v1/scans`: scheduled scans of a team (create, list, show with runs, pause, resume, run
//! now, delete). What a scan watches and compares with is checked against the same reference
//! policy as an audit's models, when it is created and again at every poll.
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use neurodiff_protocol::scan::{check_webhook_url, ScanRequest};
use neurodiff_store::{ScanCreated, ScanRow};
use uuid::Uuid;

use crate::auth::AuthTeam;
use crate::error::ApiError;
use crate::state::AppState;
pub use neurodiff_protocol::views::{RunView, ScanList, ScanView};

/// Runs shown with a scan.
const RUNS_SHOWN: i64 = 200;

/// A scan as the API shows it (without its runs).
fn scan_view(s: ScanRow) -> ScanView {
    let r = s.request;
    ScanView {
        id: s.id,
        base_mode: r.base_mode.unwrap_or_default(),
        target: r.target.unwrap_or_default(),
        rules: r.rules,
        name: r.name,
        source: r.source,
        base: r.base,
        audit: r.audit,
        every_s: r.every_s,
        cron: r.cron,
        webhook_url: r.webhook_url,
        paused: s.paused,
        next_run_at: s.next_run_at,
        last_polled_at: s.last_polled_at,
        last_error: s.last_error,
        created_at: s.created_at,
        runs_total: s.runs_total,
        alerts_open: s.alerts_open,
        webhook_secret: None,
        runs: None,
    }
}

pub(crate) fn parse_uuid(what: &str, id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("path `id`: `{id}` is not a {what} id (a UUID)")))
}

/// A secret for signing: 244 random bits from the operating system's generator.
fn new_secret() -> String {
    format!(
        "whsec_{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    )
}

/// Create a scan; 201 with the scan and, once, its webhook secret. It is due at once.
#[utoipa::path(post, operation_id = "create_scan", path = "/v1/scans", tag = "scans", request_body = ScanRequest,
    responses((status = 201, body = ScanView), (status = 400, description = "a bad field, named, or a source the policy refuses"),
        (status = 401), (status = 409, description = "the team has a scan of that name")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    body: Result<Json<ScanRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ScanView>), ApiError> {
    let Json(req) = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(crate::MAX_BODY_BYTES),
        _ => ApiError::BadRequest(rejection.body_text()),
    })?;
    req.validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut refs = vec![("source", req.source.as_str())];
    refs.extend(req.base.as_deref().map(|b| ("base", b)));
    for (field, reference) in refs {
        state
            .policy
            .check(&team.name, field, reference)
            .map_err(|e| ApiError::BadRequest(e.0))?;
    }
    if let Some(url) = &req.webhook_url {
        check_webhook_url(url, state.webhook_allow_internal)
            .map_err(|e| ApiError::BadRequest(format!("field `webhook_url`: {e}")))?;
    }
    let secret = req.webhook_secret.clone().unwrap_or_else(new_secret);
    let scan = match state
        .db
        .create_scan(&team, &req, &secret, state.quota.max_scans)
        .await?
    {
        ScanCreated::Created(scan) => *scan,
        ScanCreated::NameTaken => {
            return Err(ApiError::Conflict(format!(
                "field `name`: the team already has a scan called `{}`",
                req.name
            )))
        }
        ScanCreated::TooMany { limit } => {
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "the team has {limit} scans, as many as a team may have (--quota-scans); \
                     delete one first"
                ),
                retry_after_s: 3600,
            })
        }
    };
    let mut view = scan_view(scan);
    view.webhook_secret = Some(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, operation_id = "list_scans", path = "/v1/scans", tag = "scans",
    responses((status = 200, body = ScanList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
) -> Result<Json<ScanList>, ApiError> {
    let scans = state.db.list_scans(&team).await?;
    Ok(Json(ScanList {
        scans: scans.into_iter().map(scan_view).collect(),
    }))
}

/// One scan with its runs, newest first (each with the values its rules observed).
#[utoipa::path(get, operation_id = "get_scan", path = "/v1/scans/{id}", tag = "scans",
    params(("id" = String, Path, description = "scan id")),
    responses((status = 200, body = ScanView), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<ScanView>, ApiError> {
    let scan = state.db.get_scan(&team, parse_uuid("scan", &id)?).await?;
    let runs = state.db.scan_runs(scan.id, RUNS_SHOWN).await?;
    let mut view = scan_view(scan);
    view.runs = Some(runs.into_iter().collect());
    Ok(Json(view))
}

async fn update(
    state: &AppState,
    team: &neurodiff_store::Team,
    id: &str,
    paused: Option<bool>,
    run_now: bool,
) -> Result<Json<ScanView>, ApiError> {
    let scan = state
        .db
        .update_scan(team, parse_uuid("scan", id)?, paused, run_now)
        .await?;
    Ok(Json(scan_view(scan)))
}

#[utoipa::path(post, operation_id = "pause_scan", path = "/v1/scans/{id}/pause", tag = "scans",
    params(("id" = String, Path, description = "scan id")),
    responses((status = 200, body = ScanView), (status = 404)), security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<ScanView>, ApiError> {
    update(&state, &team, &id, Some(true), false).await
}

#[utoipa::path(post, operation_id = "resume_scan", path = "/v1/scans/{id}/resume", tag = "scans",
    params(("id" = String, Path, description = "scan id")),
    responses((status = 200, body = ScanView), (status = 404)), security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<ScanView>, ApiError> {
    update(&state, &team, &id, Some(false), false).await
}

/// Makes the scan due now (its schedule goes on from there).
#[utoipa::path(post, operation_id = "trigger_scan", path = "/v1/scans/{id}/trigger", tag = "scans",
    params(("id" = String, Path, description = "scan id")),
    responses((status = 200, body = ScanView), (status = 404)), security(("bearer" = [])))]
pub async fn trigger(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<ScanView>, ApiError> {
    update(&state, &team, &id, None, true).await
}

/// Deletes the scan with its runs and alerts; the audits it started stay.
#[utoipa::path(delete, operation_id = "delete_scan", path = "/v1/scans/{id}", tag = "scans",
    params(("id" = String, Path, description = "scan id")),
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .db
        .delete_scan(&team, parse_uuid("scan", &id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
