//! Bearer-token authentication: the extractor every /v1 handler takes.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use neurodiff_store::Team;

use crate::error::ApiError;
use crate::state::AppState;

/// The team the request's bearer token belongs to.
#[derive(Debug, Clone)]
pub struct AuthTeam(pub Team);

impl FromRequestParts<AppState> for AuthTeam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        match state.db.authenticate(token.trim()).await? {
            Some(team) => Ok(AuthTeam(team)),
            None => Err(ApiError::Unauthorized),
        }
    }
}
