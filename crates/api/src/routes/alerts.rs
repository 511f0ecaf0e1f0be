//! `/v1/alerts`: what the team's scans raised, with each webhook delivery's state; acknowledge.
use axum::extract::{Path, Query, State};
use axum::Json;
use neurodiff_protocol::scan::AlertFilter;
use serde::Deserialize;

use crate::auth::AuthTeam;
use crate::error::ApiError;
use crate::routes::scans::parse_uuid;
use crate::state::AppState;
pub use neurodiff_protocol::views::{AlertList, AlertView, DeliveryView};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Only this scan's alerts.
    pub scan: Option<String>,
    /// `open` (the default), `acknowledged` or `all`.
    pub state: Option<String>,
    /// At most this many, newest first (1 to 500, default 100).
    pub limit: Option<i64>,
}

#[utoipa::path(get, operation_id = "list_alerts", path = "/v1/alerts", tag = "alerts", params(AlertQuery),
    responses((status = 200, body = AlertList), (status = 400)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    query: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let filter = match q.state.as_deref().map(str::parse::<AlertFilter>) {
        None => AlertFilter::Open,
        Some(Ok(f)) => f,
        Some(Err(e)) => return Err(ApiError::BadRequest(format!("query `state`: {e}"))),
    };
    let acknowledged = match filter {
        AlertFilter::Open => Some(false),
        AlertFilter::Acknowledged => Some(true),
        AlertFilter::All => None,
    };
    let scan = q
        .scan
        .as_deref()
        .map(|s| parse_uuid("scan", s))
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "query `limit`: between 1 and 500".into(),
        ));
    }
    let alerts = state
        .db
        .list_alerts(&team, scan, acknowledged, limit)
        .await?;
    Ok(Json(AlertList {
        alerts: alerts.into_iter().collect(),
    }))
}

#[utoipa::path(get, operation_id = "get_alert", path = "/v1/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = AlertView), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    let alert = state.db.get_alert(&team, parse_uuid("alert", &id)?).await?;
    Ok(Json(alert))
}

/// Acknowledge an alert (a second time changes nothing).
#[utoipa::path(post, operation_id = "ack_alert", path = "/v1/alerts/{id}/ack", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = AlertView), (status = 404)), security(("bearer" = [])))]
pub async fn ack(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    let alert = state.db.ack_alert(&team, parse_uuid("alert", &id)?).await?;
    Ok(Json(alert))
}
