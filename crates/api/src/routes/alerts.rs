//! `/v1/alerts`: what the team's scans raised, with each webhook delivery's state; acknowledge.
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use neurodiff_store::{AlertRow, DeliveryRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::AuthTeam;
use crate::error::ApiError;
use crate::routes::scans::parse_uuid;
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The `NeuroDiff-Delivery` header: the same on every retry.
    pub id: Uuid,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub gave_up_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AlertView {
    pub id: Uuid,
    pub scan_id: Uuid,
    pub scan_name: String,
    pub audit_id: Option<Uuid>,
    pub checkpoint_id: String,
    pub location: String,
    pub rule: String,
    pub severity: String,
    pub observed: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
    #[schema(value_type = Vec<String>)]
    pub details: Value,
    pub created_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertView>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(d: DeliveryRow) -> Self {
        DeliveryView {
            id: d.id,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            gave_up_at: d.gave_up_at,
            last_status: d.last_status,
            last_error: d.last_error,
        }
    }
}

impl From<AlertRow> for AlertView {
    fn from(a: AlertRow) -> Self {
        AlertView {
            id: a.id,
            scan_id: a.scan_id,
            scan_name: a.scan_name,
            audit_id: a.audit_id,
            checkpoint_id: a.checkpoint_id,
            location: a.location,
            rule: a.rule,
            severity: a.severity,
            observed: a.observed,
            threshold: a.threshold,
            message: a.message,
            details: a.details,
            created_at: a.created_at,
            acknowledged_at: a.acknowledged_at,
            deliveries: a.deliveries.into_iter().map(DeliveryView::from).collect(),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Only this scan's alerts.
    pub scan: Option<String>,
    /// `open` (the default), `acknowledged` or `all`.
    pub state: Option<String>,
    /// At most this many, newest first (1 to 500, default 100).
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", params(AlertQuery),
    responses((status = 200, body = AlertList), (status = 400)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    query: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let acknowledged = match q.state.as_deref().unwrap_or("open") {
        "open" => Some(false),
        "acknowledged" => Some(true),
        "all" => None,
        other => {
            return Err(ApiError::BadRequest(format!(
                "query `state`: `{other}` is not one of open, acknowledged, all"
            )))
        }
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
        alerts: alerts.into_iter().map(AlertView::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = AlertView), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    let alert = state.db.get_alert(&team, parse_uuid("alert", &id)?).await?;
    Ok(Json(alert.into()))
}

/// Acknowledge an alert (a second time changes nothing).
#[utoipa::path(post, path = "/v1/alerts/{id}/ack", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = AlertView), (status = 404)), security(("bearer" = [])))]
pub async fn ack(
    State(state): State<AppState>,
    AuthTeam(team): AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    let alert = state.db.ack_alert(&team, parse_uuid("alert", &id)?).await?;
    Ok(Json(alert.into()))
}
