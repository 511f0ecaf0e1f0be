//! The HTTP API's request and response bodies, shared by the API (which serves them) and the
//! CLI (which sends and reads them), and the one conversion of a request into a checked spec
//! that the API and the embedded audit both use.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::SpecError;
use crate::spec::{AuditSpec, Target};
use crate::AnalysisKind;
use crate::{CorpusOptions, RequestOptions};

/// The body of `POST /v1/audits` (and what `neurodiff audit` builds from its flags).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRequest {
    /// The base model (required; a scan's audit template leaves it out, the scan sets it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub base: String,
    /// The fine-tuned checkpoint; give this or `adapter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetuned: Option<String>,
    /// A PEFT LoRA adapter on `base`; give this or `finetuned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Analyses to run: `weights`, `activations`, `logit-lens`, `traces`, `cmap`,
    /// `stitching`, `steering`, `crosscoder`, `sae-diff`; default `["weights"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub analyses: Option<Vec<AnalysisKind>>,
    /// Blocks of the weight audit; default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    /// `{"source": "s3://bucket/text.jsonl", "seq_len": 128, "max_samples": 256,
    /// "batch_size": 16, "shard_samples": 128}`; no source: the built-in corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub corpus: Option<CorpusOptions>,
    /// The dtype the corpus analyses hold the weights in: `auto` (default: the checkpoint's
    /// dtype on a GPU, fp32 on the CPU), `fp32`, `bf16` or `fp16`. The residual stream and
    /// the statistics stay in fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<crate::Dtype>,
    /// The most bytes of both models' block weights one shard of the activations or the
    /// logit lens holds: a larger pair runs as chains of layer-range shards (blocks [a, b)
    /// each, handing the residual streams on through object storage, on any worker).
    /// Default: every shard runs every block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_bytes: Option<u64>,
    /// Each analysis's options, under its name (`weights`, `activations`, `logit_lens`,
    /// `traces`, `cmap`, `steering`, `crosscoder`, `sae_diff`).
    #[serde(flatten)]
    pub options: RequestOptions,
    /// Refuses any other field by name, as the request is read.
    #[serde(flatten, skip_serializing)]
    #[schema(ignore)]
    pub rest: NoOtherFields,
}

/// What is left of a request once its fields and its analyses' options are read: nothing, or
/// the request is refused naming the first field left (a struct with a flattened part cannot
/// deny unknown fields itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoOtherFields;

impl<'de> Deserialize<'de> for NoOtherFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Refuse;
        impl<'de> serde::de::Visitor<'de> for Refuse {
            type Value = NoOtherFields;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("no other fields")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                match map.next_key::<String>()? {
                    None => Ok(NoOtherFields),
                    Some(key) => Err(serde::de::Error::custom(format!(
                        "unknown field `{key}`, expected one of `{}`",
                        AuditRequest::FIELDS
                            .iter()
                            .chain(RequestOptions::FIELDS)
                            .copied()
                            .collect::<Vec<_>>()
                            .join("`, `")
                    ))),
                }
            }
        }
        d.deserialize_map(Refuse)
    }
}

impl AuditRequest {
    /// The request's own fields (besides its analyses' options).
    const FIELDS: &'static [&'static str] = &[
        "base",
        "finetuned",
        "adapter",
        "analyses",
        "layers",
        "corpus",
    ];

    /// The spec this request asks for, its fields checked (`AuditSpec::validate`); what it
    /// names is checked against the reference policy by the caller.
    pub fn into_spec(self) -> Result<AuditSpec, SpecError> {
        let field = |f: &str, m: &str| Err(SpecError::Field(f.into(), m.into()));
        if self.base.trim().is_empty() {
            return field("base", "must name a model");
        }
        let target = match (self.finetuned, self.adapter) {
            (Some(f), None) if !f.trim().is_empty() => Target::Checkpoint { reference: f },
            (None, Some(a)) if !a.trim().is_empty() => Target::Adapter { reference: a },
            (Some(_), Some(_)) => return field("finetuned` and `adapter", "give one, not both"),
            _ => return field("finetuned` (or `adapter`", "must name a model"),
        };
        let analyses = self.analyses.unwrap_or_else(|| vec![AnalysisKind::DEFAULT]);
        let mut spec = AuditSpec::new(self.base, target, analyses);
        spec.layers = self.layers;
        spec.corpus = self.corpus.unwrap_or_default();
        spec.dtype = self.dtype.unwrap_or_default();
        spec.range_bytes = self.range_bytes;
        spec.options = self.options.into_options();
        spec.validate()?;
        Ok(spec)
    }
}

/// Where an audit (or one of its shards) stands.
impl AuditRequest {
    /// The one admission check of an audit, for the API and for scans alike: a valid spec,
    /// every model and corpus reference allowed to `team` by the policy (lexically: nothing is
    /// opened), and within the deployment's limits. The error names the field.
    pub fn admit(
        self,
        team: &str,
        policy: &crate::ReferencePolicy,
        limits: &crate::Limits,
    ) -> Result<AuditSpec, String> {
        let spec = self.into_spec().map_err(|e| e.to_string())?;
        let target_field = match spec.target {
            Target::Checkpoint { .. } => "finetuned",
            Target::Adapter { .. } => "adapter",
        };
        let corpus = spec
            .corpus
            .source
            .as_deref()
            .filter(|_| spec.needs_corpus());
        for (field, reference) in [
            ("base", Some(spec.base.as_str())),
            (target_field, Some(spec.target.reference())),
            ("corpus.source", corpus),
        ] {
            if let Some(reference) = reference {
                policy.check(team, field, reference).map_err(|e| e.0)?;
            }
        }
        spec.check_limits(limits).map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

crate::vocab::named_enum! {
    /// Where an audit stands, as stored in the database and shown by the API.
    AuditStatus, "status" {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl AuditStatus {
    /// Whether nothing will change it any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            AuditStatus::Succeeded | AuditStatus::Failed | AuditStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Progress {
    pub shards_done: i32,
    pub shards_total: i32,
}

/// One shard of an audit as the API shows it: where it ran and what it cost (the same status
/// values as an audit's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ShardView {
    /// `layer-0003`, `activations/samples-000000-000064`,
    /// `logit-lens/samples-000000-000064/blocks-0004-0008`, …
    pub shard: String,
    pub status: AuditStatus,
    /// Times it was handed to a worker.
    pub attempt: i32,
    /// The worker of its latest attempt.
    pub worker: Option<String>,
    /// How long its task waited on the queue before a worker took it.
    pub queue_wait_ms: Option<f64>,
    /// Seconds its worker spent loading the models (0 when they were warm).
    pub load_s: Option<f64>,
    /// Whether its worker already held the models.
    pub warm: Option<bool>,
    /// Seconds the analysis ran.
    pub elapsed_s: Option<f64>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An audit's shards, in plan order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ShardList {
    pub shards: Vec<ShardView>,
}

/// An audit as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AuditView {
    pub id: Uuid,
    pub status: AuditStatus,
    pub progress: Progress,
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub spec: AuditSpec,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_become_checked_specs() {
        let req: AuditRequest = serde_json::from_str(
            r#"{"base": "b", "finetuned": "f", "analyses": ["logit-lens", "weights", "weights"],
                "corpus": {"seq_len": 64}}"#,
        )
        .unwrap();
        let spec = req.clone().into_spec().unwrap();
        assert_eq!(
            spec.analyses,
            [AnalysisKind::Weights, AnalysisKind::LogitLens]
        );
        assert_eq!((spec.corpus.seq_len, spec.corpus.max_samples), (64, 256));
        // What the CLI sends reads back as the same request.
        let again: AuditRequest =
            serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        assert_eq!(again, req);
        for (body, field) in [
            (r#"{"base": "b"}"#, "finetuned"),
            (
                r#"{"base": "b", "finetuned": "f", "adapter": "a"}"#,
                "adapter",
            ),
            (r#"{"base": " ", "finetuned": "f"}"#, "base"),
            (
                r#"{"base": "b", "finetuned": "f", "analyses": []}"#,
                "analyses",
            ),
            (
                r#"{"base": "b", "finetuned": "f", "corpus": {"seq_len": 0}}"#,
                "corpus.seq_len",
            ),
            (
                r#"{"base": "b", "finetuned": "f", "weights": {"top_k": 0}}"#,
                "weights.top_k",
            ),
            (r#"{"base": "b", "finetuned": "f", "layers": []}"#, "layers"),
        ] {
            let req: AuditRequest = serde_json::from_str(body).unwrap();
            let e = req.into_spec().unwrap_err().to_string();
            assert!(e.contains(field), "{body}: {e}");
        }
        // The weights' dtype: auto unless named, and only the known ones.
        assert_eq!(spec.dtype, crate::Dtype::Auto);
        let half: AuditRequest =
            serde_json::from_str(r#"{"base": "b", "finetuned": "f", "dtype": "bf16"}"#).unwrap();
        assert_eq!(half.into_spec().unwrap().dtype, crate::Dtype::Bf16);
        let e = serde_json::from_str::<AuditRequest>(r#"{"base": "b", "dtype": "fp8"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fp8") && e.contains("bf16"), "{e}");
        assert!(serde_json::from_str::<AuditRequest>(r#"{"base": "b", "extra": 1}"#).is_err());
        let e = serde_json::from_str::<AuditRequest>(r#"{"base": "b", "extra": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
        // The analyses' options are read from the request's top level, and checked.
        let req: AuditRequest = serde_json::from_str(
            r#"{"base": "b", "finetuned": "f", "cmap": {"samples": 3}, "sae_diff": {"k": 7}}"#,
        )
        .unwrap();
        let spec = req.into_spec().unwrap();
        assert_eq!((spec.options.cmap.samples, spec.options.sae_diff.k), (3, 7));
        assert_eq!(spec.options.traces, crate::TraceOptions::default());
        assert!(
            serde_json::from_str::<AuditRequest>(r#"{"base": "b", "cmap": {"extra": 1}}"#).is_err()
        );
        assert_eq!("failed".parse(), Ok(AuditStatus::Failed));
        assert!("done".parse::<AuditStatus>().is_err());
    }
}
