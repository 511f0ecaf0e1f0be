//! The HTTP API's response bodies besides an audit's own (`wire`): pages, listings and the
//! scans' and alerts' views. The API serves them and the CLI reads them, so both sides name
//! every field the same; the OpenAPI document is generated from them.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::scan::{AlertFilter, BaseMode, Rule, RunState, Severity, TargetKind};
use crate::{
    AnalysisKind, AuditRequest, AuditStatus, AuditView, BlockMetric, BlockRow, BlockSite,
    LatentClass, LatentRow, TensorMetric, TensorMetrics,
};

// ---- /v1/alerts
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct AlertView {
    pub id: Uuid,
    pub scan_id: Uuid,
    pub scan_name: String,
    pub audit_id: Option<Uuid>,
    pub checkpoint_id: String,
    pub location: String,
    pub rule: String,
    pub severity: Severity,
    pub observed: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
    #[schema(value_type = Vec<String>)]
    pub details: Value,
    pub created_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Read by a second query.
    #[cfg_attr(feature = "sqlx", sqlx(skip))]
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertView>,
}

// ---- /v1/audits
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub audits: Vec<AuditView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

// ---- /v1/results, /v1/results/blocks, /v1/results/latents
/// The audit a hit of the team database comes from (at the top level of every hit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct HitAudit {
    pub audit_id: Uuid,
    #[cfg_attr(feature = "sqlx", sqlx(rename = "base_ref"))]
    pub base: String,
    #[cfg_attr(feature = "sqlx", sqlx(rename = "target_ref"))]
    pub target: String,
    pub audit_created_at: DateTime<Utc>,
}

/// One block of one audit, with the metric the query ranked by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct BlockHitView {
    #[serde(flatten)]
    #[cfg_attr(feature = "sqlx", sqlx(flatten))]
    pub audit: HitAudit,
    pub metric: BlockMetric,
    #[cfg_attr(feature = "sqlx", sqlx(rename = "metric_value"))]
    pub value: f64,
    #[serde(flatten)]
    #[cfg_attr(feature = "sqlx", sqlx(flatten))]
    pub block: BlockRow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockPage {
    pub results: Vec<BlockHitView>,
}

/// One latent of one audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct LatentHitView {
    #[serde(flatten)]
    #[cfg_attr(feature = "sqlx", sqlx(flatten))]
    pub audit: HitAudit,
    #[serde(flatten)]
    #[cfg_attr(feature = "sqlx", sqlx(flatten))]
    pub latent: LatentRow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LatentPage {
    pub results: Vec<LatentHitView>,
}

// ---- /v1/audits/{id}/artifacts and /v1/results
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactView {
    pub name: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub content_type: String,
    /// Where to download it.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultHitView {
    #[serde(flatten)]
    pub audit: HitAudit,
    pub metric: TensorMetric,
    pub value: Option<f64>,
    #[schema(value_type = Object)]
    pub tensor: TensorMetrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultPage {
    pub results: Vec<ResultHitView>,
}

// ---- /v1/scans
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct RunView {
    pub id: Uuid,
    pub checkpoint_id: String,
    pub location: String,
    #[cfg_attr(feature = "sqlx", sqlx(rename = "base_ref"))]
    pub base: Option<String>,
    pub audit_id: Option<Uuid>,
    pub audit_status: Option<AuditStatus>,
    /// `audited` (its audit runs), `baseline`, `evaluated` or `failed`.
    pub state: RunState,
    /// Each rule's observed value: the trend of what the rules watch.
    #[schema(value_type = Object)]
    pub observed: Value,
    pub error: Option<String>,
    pub alerts: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScanView {
    pub id: Uuid,
    pub name: String,
    pub source: String,
    pub base: Option<String>,
    pub base_mode: BaseMode,
    pub target: TargetKind,
    /// The audit each checkpoint gets (`POST /v1/audits` without the models).
    #[schema(value_type = Option<Object>)]
    pub audit: Option<AuditRequest>,
    pub every_s: Option<u64>,
    pub cron: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<Rule>,
    pub webhook_url: Option<String>,
    pub paused: bool,
    pub next_run_at: DateTime<Utc>,
    pub last_polled_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub runs_total: i64,
    pub alerts_open: i64,
    /// Only in the answer to the scan's creation: keep it to verify the signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<RunView>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScanList {
    pub scans: Vec<ScanView>,
}

/// `GET /v1/vocabulary`: every fixed list a client offers, from the enums themselves (the
/// dashboard's menus read it, so they cannot drift from what the API accepts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Vocabulary {
    /// The analyses an audit can run, in report order.
    pub analyses: Vec<AnalysisKind>,
    pub statuses: Vec<AuditStatus>,
    /// `GET /v1/results?metric=`.
    pub tensor_metrics: Vec<TensorMetric>,
    /// `GET /v1/results/blocks?metric=`.
    pub block_metrics: Vec<BlockMetric>,
    /// `GET /v1/results/blocks?hook=`: the hooks, and `output`.
    pub block_sites: Vec<BlockSite>,
    /// Alert severities, least first.
    pub severities: Vec<Severity>,
    pub run_states: Vec<RunState>,
    /// `GET /v1/alerts?state=`.
    pub alert_filters: Vec<AlertFilter>,
    /// `GET /v1/results/blocks?analysis=`: the analyses with per-block rows.
    pub block_analyses: Vec<AnalysisKind>,
    /// `GET /v1/results/latents?analysis=`: the analyses that train a dictionary.
    pub dictionaries: Vec<AnalysisKind>,
    /// `GET /v1/results/latents?class=`.
    pub latent_classes: Vec<LatentClass>,
}

impl Vocabulary {
    pub fn current() -> Vocabulary {
        Vocabulary {
            analyses: AnalysisKind::ALL.to_vec(),
            statuses: AuditStatus::ALL.to_vec(),
            tensor_metrics: TensorMetric::ALL.to_vec(),
            block_metrics: BlockMetric::ALL.to_vec(),
            block_sites: BlockSite::ALL.to_vec(),
            severities: Severity::ALL.to_vec(),
            run_states: RunState::ALL.to_vec(),
            alert_filters: AlertFilter::ALL.to_vec(),
            latent_classes: LatentClass::ALL.to_vec(),
            block_analyses: AnalysisKind::with_block_rows(),
            dictionaries: AnalysisKind::dictionaries(),
        }
    }
}
