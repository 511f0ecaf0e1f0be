//! Scheduled scans: what a scan watches, against which base, how often, which audit it runs on
//! each new checkpoint and the rules that turn that audit's results into alerts. The rules'
//! evaluator ([`rules`]), the schedule ([`schedule`]) and the webhook's address checks
//! ([`webhook`]) are modules of their own, shared by the scheduler, the API and tests.
use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::wire::AuditRequest;
use crate::AnalysisKind;
use crate::HookKind;

pub mod rules;
pub mod schedule;
pub mod webhook;

pub use schedule::Schedule;
pub use webhook::{check_webhook_url, is_internal, shown_target};

/// Bounds on what one scan may ask for.
pub const MAX_RULES: usize = 32;
pub const MAX_WATCHED_TOKENS: usize = 100;
pub const MIN_EVERY_S: u64 = 1;
pub const MAX_EVERY_S: u64 = 30 * 24 * 3600;
/// The traces' tokens a `trace_tokens` rule reads at each position (the precision-at-20 cut).
pub const TRACE_TOP: usize = 20;

crate::vocab::named_enum! {
    /// How much an alert matters, least first.
    Severity, "severity" {
        Info = "info",
        Low = "low",
        Medium = "medium",
        High = "high",
        Critical = "critical",
    }
}

crate::vocab::named_enum! {
    /// Where one checkpoint of a scan stands.
    RunState, "run state" {
        /// Its audit was started; the rules are evaluated when it ends.
        Audited = "audited",
        /// The first checkpoint of a scan whose base is the previous checkpoint: nothing to
        /// compare it with, so it is only recorded.
        Baseline = "baseline",
        /// Its audit ended and the rules were evaluated on its results.
        Evaluated = "evaluated",
        /// It was refused or its audit failed: no base for the next checkpoint.
        Failed = "failed",
    }
}

crate::vocab::named_enum! {
    /// Which alerts a listing shows.
    AlertFilter, "alert state" {
        /// Not acknowledged yet (the default).
        Open = "open",
        Acknowledged = "acknowledged",
        All = "all",
    }
}

/// Which rows of results.json a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `analyses.weights.tensors[]`: fires when one tensor meets every condition.
    Tensor,
    /// `analyses.activations.layers[]` and `analyses.logit_lens.layers[]` + `.output`.
    Block,
    /// One number at a JSON pointer (`/analyses/logit_lens/output/kl_mean`).
    Audit,
    /// The readable traces' top tokens (logit lens and Patchscope) against a watch list.
    TraceTokens,
    /// The objects of any array at a JSON pointer (`/analyses/cmap/cells`,
    /// `/analyses/crosscoder/latents`, `/analyses/weights/layers`): fires when one row meets
    /// every condition, as tensor rules do.
    Rows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    pub fn holds(self, x: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => x > threshold,
            Op::Ge => x >= threshold,
            Op::Lt => x < threshold,
            Op::Le => x <= threshold,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }

    /// The observed value of many rows is the one nearest to breaking the rule.
    fn worst(self, a: f64, b: f64) -> f64 {
        match self {
            Op::Gt | Op::Ge => a.max(b),
            Op::Lt | Op::Le => a.min(b),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub metric: String,
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    pub scope: Scope,
    /// The watched metric (tensor and block rules), compared with `op` and `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    /// The threshold; for `trace_tokens`, how many watched tokens must appear (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Further conditions the same row must meet (a change that is large *and* low-rank).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub and: Vec<Condition>,
    /// Tensor rules: only tensors whose name contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Block rules: `activations` or `logit-lens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisKind>,
    /// Block rules: only this hook (`hook_resid_post`, ...; the logit lens's output row counts
    /// as `hook_resid_post`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookKind>,
    /// Audit rules: an RFC 6901 pointer into results.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Trace-token rules: the watch list (compared case-insensitively, word pieces trimmed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
}

/// What one rule saw in one audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The number the rule compares (None: the audit has no such rows).
    pub value: Option<f64>,
    pub fired: bool,
    pub message: String,
    /// The rows that met the rule (tensor names, blocks, tokens), at most ten.
    pub details: Vec<String>,
}

fn field(name: &str, msg: impl Into<String>) -> SpecError {
    SpecError::Field(name.into(), msg.into())
}

crate::vocab::named_enum! {
    /// How a scan chooses the base of each checkpoint's audit.
    #[derive(Default)]
    BaseMode, "base mode" {
        /// Always `base`.
        #[default]
        Fixed = "fixed",
        /// The previous checkpoint of the same source (`base` for the first, or no audit of
        /// it).
        Previous = "previous",
    }
}

crate::vocab::named_enum! {
    /// What the scan's checkpoints are.
    #[derive(Default)]
    TargetKind, "target kind" {
        #[default]
        Checkpoint = "checkpoint",
        Adapter = "adapter",
    }
}

/// `POST /v1/scans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    pub name: String,
    /// A directory whose subdirectories are checkpoints, an `s3://bucket/prefix/` whose
    /// sub-prefixes are, or a hub repository `org/name[@branch]` whose commits are.
    pub source: String,
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub base_mode: Option<BaseMode>,
    #[serde(default)]
    pub target: Option<TargetKind>,
    /// The audit to run, as the body of `POST /v1/audits` without `base`, `finetuned` and
    /// `adapter`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub audit: Option<AuditRequest>,
    #[serde(default)]
    pub every_s: Option<u64>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Signs the webhook bodies; generated when absent and shown once, at creation.
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

impl ScanRequest {
    /// Checks everything but the policy (the API adds that): the name, the schedule, the rules,
    /// the webhook, and that the audit template makes a valid audit.
    pub fn validate(&self) -> Result<Schedule, SpecError> {
        if self.name.trim().is_empty() || self.name.len() > 128 {
            return Err(field("name", "1 to 128 characters"));
        }
        crate::policy::classify(&self.source).map_err(|e| {
            field(
                "source",
                format!(
                    "`{}`: {} (an absolute directory, an s3://bucket/prefix or a hub repository org/name[@branch])",
                    self.source, e.0
                ),
            )
        })?;
        if self.base_mode.unwrap_or_default() == BaseMode::Fixed && self.base.is_none() {
            return Err(field("base", "required unless base_mode is `previous`"));
        }
        if self.base_mode == Some(BaseMode::Previous) && self.target == Some(TargetKind::Adapter) {
            return Err(field(
                "base_mode",
                "`previous` compares checkpoints; an adapter scan needs a fixed `base`",
            ));
        }
        let schedule = Schedule::parse(self.every_s, self.cron.as_deref())?;
        if self.rules.len() > MAX_RULES {
            return Err(field("rules", format!("at most {MAX_RULES}")));
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(i)?;
            if self.rules[..i].iter().any(|o| o.name == r.name) {
                return Err(field(
                    &format!("rules[{i}].name"),
                    format!("`{}` appears twice", r.name),
                ));
            }
        }
        if let Some(url) = &self.webhook_url {
            check_webhook_url(url, true).map_err(|e| field("webhook_url", e))?;
        }
        if let Some(s) = &self.webhook_secret {
            if !(16..=256).contains(&s.len()) {
                return Err(field("webhook_secret", "16 to 256 characters"));
            }
        }
        let spec = self
            .audit_request(
                self.base.as_deref().unwrap_or("/placeholder"),
                "/placeholder",
            )?
            .into_spec()?;
        for (i, r) in self.rules.iter().enumerate() {
            // A rule on an analysis the audit does not run would observe nothing, for ever.
            let needs = r.reads();
            if !needs.is_empty() && !spec.analyses.iter().any(|a| needs.contains(a)) {
                return Err(field(
                    &format!("rules[{i}]"),
                    format!(
                        "`{}` reads the `{}` analysis, which the scan's audit does not run (add it to audit.analyses)",
                        r.name,
                        needs.iter().map(|a| a.as_str()).collect::<Vec<_>>().join("` or `")
                    ),
                ));
            }
        }
        Ok(schedule)
    }

    /// The audit of checkpoint `target` against `base`.
    pub fn audit_request(&self, base: &str, target: &str) -> Result<AuditRequest, SpecError> {
        audit_request(
            self.audit.as_ref(),
            self.target.unwrap_or_default(),
            base,
            target,
        )
    }
}

/// The audit of checkpoint `target` against `base`, from a scan's template (the body of
/// `POST /v1/audits` without the models, which the scan sets for each checkpoint).
pub fn audit_request(
    template: Option<&AuditRequest>,
    kind: TargetKind,
    base: &str,
    target: &str,
) -> Result<AuditRequest, SpecError> {
    let mut request = template.cloned().unwrap_or_default();
    let models = [
        ("base", !request.base.is_empty()),
        ("finetuned", request.finetuned.is_some()),
        ("adapter", request.adapter.is_some()),
    ];
    if let Some((key, _)) = models.into_iter().find(|(_, set)| *set) {
        return Err(field(
            &format!("audit.{key}"),
            "the scan sets it for each checkpoint",
        ));
    }
    request.base = base.to_string();
    match kind {
        TargetKind::Checkpoint => request.finetuned = Some(target.to_string()),
        TargetKind::Adapter => request.adapter = Some(target.to_string()),
    }
    Ok(request)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::{json, Value};

    pub(crate) fn rule(v: Value) -> Rule {
        serde_json::from_value(v).expect("rule")
    }

    #[test]
    fn scans_are_validated() {
        let ok: ScanRequest = serde_json::from_value(json!({
            "name": "n", "source": "/data/ckpts", "base": "/data/base", "every_s": 60,
            "audit": {"analyses": ["weights"]},
            "rules": [{"name": "big", "severity": "high", "scope": "tensor", "metric": "rel_fro", "op": ">", "value": 0.1}]
        })).expect("request");
        assert!(ok.validate().is_ok());
        let mut cron = ok.clone();
        cron.every_s = None;
        cron.cron = Some("*/5 * * * *".into());
        let s = cron.validate().expect("cron");
        let now = Utc::now();
        assert!(s.next_after(now) > now);
        let mut bad = ok.clone();
        bad.audit = Some(serde_json::from_value(json!({"base": "/x"})).unwrap());
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.cron = Some("not a cron".into());
        bad.every_s = None;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.base = None;
        assert!(bad.validate().is_err());
    }

    pub(crate) fn refusal(r: &ScanRequest) -> String {
        match r.validate() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {r:?}"),
        }
    }

    #[test]
    fn rules_that_could_never_fire_are_refused_at_creation() {
        let ok: ScanRequest = serde_json::from_value(json!({
            "name": "n", "source": "/data/ckpts", "base": "/data/base", "every_s": 60,
            "audit": {"analyses": ["weights"]},
            "rules": [{"name": "big", "severity": "high", "scope": "tensor", "metric": "rel_fro", "op": ">", "value": 0.1}]
        })).expect("request");
        let mut typo = ok.clone();
        typo.rules[0].metric = Some("relfro".into());
        assert!(refusal(&typo).contains("`relfro` is not a tensor metric"));
        let mut typo = ok.clone();
        typo.rules[0].and = vec![Condition {
            metric: "stable-rank".into(),
            op: Op::Lt,
            value: 2.0,
        }];
        assert!(refusal(&typo).contains("stable-rank"));
        let mut traces = ok.clone();
        traces.rules = vec![rule(
            json!({"name": "t", "severity": "low", "scope": "trace_tokens", "tokens": ["planet"]}),
        )];
        assert!(refusal(&traces).contains("reads the `traces` analysis"));
        traces.audit =
            Some(serde_json::from_value(json!({"analyses": ["weights", "traces"]})).unwrap());
        assert!(traces.validate().is_ok());
        let mut pointer = ok.clone();
        pointer.rules = vec![rule(
            json!({"name": "kl", "severity": "low", "scope": "audit",
            "pointer": "/analyses/logit_lens/output/kl_mean", "op": ">", "value": 1.0}),
        )];
        assert!(refusal(&pointer).contains("`logit-lens`"));
        pointer.rules[0].pointer = Some("/grades/mean_patchscope_p20".into());
        assert!(pointer.validate().is_ok());
        let mut adapter = ok.clone();
        adapter.base_mode = Some(BaseMode::Previous);
        adapter.target = Some(TargetKind::Adapter);
        assert!(refusal(&adapter).contains("base_mode"));
    }
}
