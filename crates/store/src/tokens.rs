//! API tokens: created with an optional expiry and shown once (only their SHA-256 is stored),
//! listed, revoked; a revoked or expired token authenticates nothing.
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::pg::{Db, Team};
use crate::{Result, StoreError};

/// Tokens look like `nd_` + 64 hex characters; only their SHA-256 is stored.
pub const TOKEN_PREFIX: &str = "nd_";

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A token as `token list` shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: Uuid,
    pub team: String,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Db {
    /// A new API token for `team`, valid until `expires_at` if given: (its id, the token).
    /// The token is returned once and stored only as its hash.
    pub async fn create_token(&self, team: &Team, label: &str) -> Result<String> {
        Ok(self.create_token_expiring(team, label, None).await?.1)
    }

    pub async fn create_token_expiring(
        &self,
        team: &Team,
        label: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(Uuid, String)> {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!(
            "{TOKEN_PREFIX}{}",
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO api_tokens (team_id, token_sha256, label, expires_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(team.id)
        .bind(token_hash(&token))
        .bind(label)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok((id, token))
    }

    /// The team a bearer token belongs to, if it is valid, not revoked and not expired.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Team>> {
        let row = sqlx::query(
            "UPDATE api_tokens t SET last_used_at = now() FROM teams WHERE t.token_sha256 = $1 \
             AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()) \
             AND teams.id = t.team_id RETURNING teams.id, teams.name",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Team {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
            })
        })
        .transpose()
    }

    /// Tokens, of one team or all, oldest first.
    pub async fn list_tokens(&self, team: Option<&str>) -> Result<Vec<TokenRow>> {
        self.tokens_where(team, None).await
    }

    async fn tokens_where(&self, team: Option<&str>, id: Option<Uuid>) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query(
            "SELECT t.id, teams.name AS team, t.label, t.created_at, t.last_used_at, t.expires_at, t.revoked_at \
             FROM api_tokens t JOIN teams ON teams.id = t.team_id \
             WHERE ($1::text IS NULL OR teams.name = $1) AND ($2::uuid IS NULL OR t.id = $2) \
             ORDER BY t.created_at, t.id",
        )
        .bind(team)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRow {
                    id: r.try_get("id")?,
                    team: r.try_get("team")?,
                    label: r.try_get("label")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// Revokes a token by id (from then on it authenticates nothing); revoking twice is fine.
    pub async fn revoke_token(&self, id: Uuid) -> Result<TokenRow> {
        let found = sqlx::query(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING id",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                what: format!("token {id}"),
            });
        }
        self.tokens_where(None, Some(id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound {
                what: format!("token {id}"),
            })
    }
}
