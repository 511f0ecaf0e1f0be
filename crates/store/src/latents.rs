//! Per-latent rows of the dictionary analyses in PostgreSQL, and the team-wide query over them
//! ("every fine-tune-only latent whose top tokens include X").
use neurodiff_protocol::views::LatentHitView;
use neurodiff_protocol::{AnalysisKind, LatentClass, LatentRow};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Db, Result, Team};

/// How tokens are matched: lowercased, without surrounding whitespace.
pub fn match_form(token: &str) -> String {
    token.trim().to_lowercase()
}

pub(crate) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    audit: Uuid,
    rows: &[LatentRow],
) -> Result<()> {
    for l in rows {
        let mut matching: Vec<String> = l
            .top_tokens
            .iter()
            .chain(&l.example_tokens)
            .map(|t| match_form(t))
            .filter(|t| !t.is_empty())
            .collect();
        matching.sort();
        matching.dedup();
        sqlx::query(
            "INSERT INTO latent_results (audit_id, analysis, layer, latent, class, delta_norm, nu_eps, \
             nu_r, frequency, max_activation, top_tokens, example_tokens, match_tokens, domain_hit) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING",
        )
        .bind(audit)
        .bind(l.analysis.as_str())
        .bind(l.layer)
        .bind(l.latent)
        .bind(l.class.as_str())
        .bind(l.delta_norm)
        .bind(l.nu_eps)
        .bind(l.nu_r)
        .bind(l.frequency)
        .bind(l.max_activation)
        .bind(&l.top_tokens)
        .bind(&l.example_tokens)
        .bind(&matching)
        .bind(l.domain_hit)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A query over the team's latent rows.
#[derive(Debug, Clone, Default)]
pub struct LatentQuery {
    pub analysis: Option<AnalysisKind>,
    pub class: Option<LatentClass>,
    /// A token among the decoder lens's or the top examples' (matched by [`match_form`]).
    pub token: Option<String>,
    /// The base or fine-tuned reference, exactly as submitted.
    pub model: Option<String>,
    /// Only latents whose |ν_ε| and |ν_r| are below these (real fine-tune-only latents: 0.2,
    /// 0.5; `protocol::real_ft_only`).
    pub max_nu_eps: Option<f64>,
    pub max_nu_r: Option<f64>,
    pub limit: i64,
}

impl Db {
    /// Latents across the team's succeeded audits, most frequent first.
    pub async fn query_latents(&self, team: &Team, q: &LatentQuery) -> Result<Vec<LatentHitView>> {
        let hits = sqlx::query_as::<_, LatentHitView>(
            "SELECT l.*, a.base_ref, a.target_ref, a.created_at AS audit_created_at \
             FROM latent_results l JOIN audits a ON a.id = l.audit_id \
             WHERE a.team_id = $1 AND a.status = 'succeeded' \
             AND ($2::text IS NULL OR l.analysis = $2) \
             AND ($3::text IS NULL OR l.class = $3) \
             AND ($4::text IS NULL OR l.match_tokens @> ARRAY[$4::text]) \
             AND ($5::text IS NULL OR a.base_ref = $5 OR a.target_ref = $5) \
             AND ($6::double precision IS NULL OR abs(l.nu_eps) < $6) \
             AND ($7::double precision IS NULL OR abs(l.nu_r) < $7) \
             ORDER BY l.frequency DESC, a.created_at DESC, l.latent LIMIT $8",
        )
        .bind(team.id)
        .bind(q.analysis.map(AnalysisKind::as_str))
        .bind(q.class.map(LatentClass::as_str))
        .bind(q.token.as_deref().map(match_form))
        .bind(&q.model)
        .bind(q.max_nu_eps)
        .bind(q.max_nu_r)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(hits)
    }
}
