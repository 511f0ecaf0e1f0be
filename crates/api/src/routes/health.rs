//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: its stores answer).
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = sqlx_ping(&state).await;
    let queue = match &state.queue {
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
