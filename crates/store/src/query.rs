//! The team-wide result query: tensors across every audit of a team, filtered by model, layer
//! and a lower bound on one metric, largest first.
use neurodiff_protocol::views::{BlockHitView, HitAudit, ResultHitView};
use neurodiff_protocol::{AnalysisKind, BlockMetric, BlockSite, TensorMetric};
use sqlx::{FromRow, Row};

use crate::pg::{tensor_from_row, Db};
use crate::{Result, Team};

#[derive(Debug, Clone)]
pub struct ResultQuery {
    pub metric: TensorMetric,
    /// Matches the base or the fine-tuned reference exactly.
    pub model: Option<String>,
    pub layer: Option<i32>,
    pub module: Option<String>,
    pub min: Option<f64>,
    pub limit: i64,
}

impl Db {
    pub async fn query_results(&self, team: &Team, q: &ResultQuery) -> Result<Vec<ResultHitView>> {
        // The column name is interpolated: the enum's own spelling, never text from a request.
        let metric = q.metric.as_str();
        let rows = sqlx::query(&format!(
            "SELECT t.*, t.{metric}::double precision AS metric_value, a.base_ref, a.target_ref, \
             a.created_at AS audit_created_at FROM tensor_results t JOIN audits a ON a.id = t.audit_id \
             WHERE a.team_id = $1 AND a.status = 'succeeded' \
             AND ($2::text IS NULL OR a.base_ref = $2 OR a.target_ref = $2) \
             AND ($3::int IS NULL OR t.layer = $3) \
             AND ($4::text IS NULL OR t.module = $4) \
             AND ($5::double precision IS NULL OR t.{metric} >= $5) \
             ORDER BY t.{metric} DESC NULLS LAST, a.created_at DESC, t.name LIMIT $6"
        ))
        .bind(team.id)
        .bind(&q.model)
        .bind(q.layer)
        .bind(&q.module)
        .bind(q.min)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ResultHitView {
                    audit: HitAudit::from_row(r)?,
                    metric: q.metric,
                    value: r.try_get("metric_value")?,
                    tensor: tensor_from_row(r)?,
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct BlockQuery {
    pub metric: BlockMetric,
    pub model: Option<String>,
    /// `activations` or `logit-lens`.
    pub analysis: Option<AnalysisKind>,
    pub layer: Option<i32>,
    /// A hook, or the output (the logit lens at the logits).
    pub hook: Option<BlockSite>,
    pub min: Option<f64>,
    pub limit: i64,
}

impl Db {
    /// Per-block metrics of the corpus analyses across the team's succeeded audits, largest
    /// first (rows without the metric, such as KL on an activation row, are left out).
    pub async fn query_blocks(&self, team: &Team, q: &BlockQuery) -> Result<Vec<BlockHitView>> {
        // A column name from the enum's own spelling: never text from the request.
        let metric = q.metric.as_str();
        let hits = sqlx::query_as::<_, BlockHitView>(&format!(
            "SELECT b.*, b.{metric} AS metric_value, '{metric}'::text AS metric, a.base_ref, a.target_ref, \
             a.created_at AS audit_created_at FROM block_results b JOIN audits a ON a.id = b.audit_id \
             WHERE a.team_id = $1 AND a.status = 'succeeded' AND b.{metric} IS NOT NULL \
             AND ($2::text IS NULL OR a.base_ref = $2 OR a.target_ref = $2) \
             AND ($3::text IS NULL OR b.analysis = $3) \
             AND ($4::int IS NULL OR b.layer = $4) \
             AND ($5::text IS NULL OR b.hook = $5) \
             AND ($6::double precision IS NULL OR b.{metric} >= $6) \
             ORDER BY b.{metric} DESC, a.created_at DESC, b.layer NULLS LAST, b.hook LIMIT $7"
        ))
        .bind(team.id)
        .bind(&q.model)
        .bind(q.analysis.map(AnalysisKind::as_str))
        .bind(q.layer)
        .bind(q.hook.map(BlockSite::as_str))
        .bind(q.min)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(hits)
    }
}
