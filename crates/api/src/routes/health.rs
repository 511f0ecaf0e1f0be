//! Liveness (`/healthz`: the process answers), readiness (`/readyz`: its stores answer), and
//! the API's fixed vocabularies (`/v1/vocabulary`), which need no team.
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health", responses((status = 200, description = "the process answers")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "health",
    responses((status = 200, description = "database and queue answer"), (status = 503, description = "a store does not answer")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = sqlx_ping(&state).await;
    let queue = match &state.tasks {
        Some(q) => q.ensure_group().await.is_ok(),
        None => true,
    };
    let status = if database && queue {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "database": database, "queue": queue })),
    )
}

async fn sqlx_ping(state: &AppState) -> bool {
    state.db.ping().await.is_ok()
}

/// Every fixed list a client offers (analyses, statuses, metrics, hooks, severities), as the
/// API accepts them.
#[utoipa::path(get, operation_id = "get_vocabulary", path = "/v1/vocabulary", tag = "health",
    responses((status = 200, body = neurodiff_protocol::Vocabulary)))]
pub async fn vocabulary() -> Json<neurodiff_protocol::Vocabulary> {
    Json(neurodiff_protocol::Vocabulary::current())
}
