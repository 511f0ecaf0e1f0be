//! Scheduled scans: what a scan watches, against which base, how often, which audit it runs on
//! each new checkpoint and the rules that turn that audit's results into alerts; the rules are
//! evaluated here, on results.json, so the scheduler, the API and tests share one definition.
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::SpecError;
use crate::wire::AuditRequest;
use crate::AnalysisKind;
use crate::HookKind;

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

impl Rule {
    pub fn validate(&self, i: usize) -> Result<(), SpecError> {
        let at = |f: &str| format!("rules[{i}].{f}");
        if self.name.trim().is_empty() || self.name.len() > 64 {
            return Err(field(&at("name"), "1 to 64 characters"));
        }
        let numeric = matches!(
            self.scope,
            Scope::Tensor | Scope::Block | Scope::Audit | Scope::Rows
        );
        if numeric && (self.op.is_none() || self.value.is_none()) {
            return Err(field(&at("op"), "`op` and `value` are required"));
        }
        match self.scope {
            Scope::Tensor | Scope::Block | Scope::Rows if self.metric.is_none() => {
                return Err(field(
                    &at("metric"),
                    "required for tensor, block and rows rules",
                ))
            }
            Scope::Audit | Scope::Rows
                if self.pointer.as_deref().is_none_or(|p| !p.starts_with('/')) =>
            {
                return Err(field(
                    &at("pointer"),
                    "a JSON pointer into results.json, such as /analyses/logit_lens/output/kl_mean",
                ))
            }
            Scope::TraceTokens
                if self.tokens.is_empty() || self.tokens.len() > MAX_WATCHED_TOKENS =>
            {
                return Err(field(
                    &at("tokens"),
                    format!("1 to {MAX_WATCHED_TOKENS} watched tokens"),
                ))
            }
            _ => {}
        }
        if self
            .tokens
            .iter()
            .any(|t| t.trim().is_empty() || t.len() > 64)
        {
            return Err(field(&at("tokens"), "each token 1 to 64 characters"));
        }
        if let Some(a) = self.analysis {
            if ![AnalysisKind::Activations, AnalysisKind::LogitLens].contains(&a) {
                return Err(field(&at("analysis"), "`activations` or `logit-lens`"));
            }
        }
        if let Some(Err(section)) = self.pointer_analysis() {
            return Err(field(
                &at("pointer"),
                format!("`/analyses/{section}` is no analysis's section of results.json"),
            ));
        }
        if self.and.len() > 8 {
            return Err(field(&at("and"), "at most 8 conditions"));
        }
        if self.scope == Scope::Tensor {
            // A misspelt metric would observe nothing, silently, for ever.
            let known = tensor_metric_names();
            let named = self.metric.iter().chain(self.and.iter().map(|c| &c.metric));
            for m in named {
                if !known.iter().any(|k| k == m) {
                    return Err(field(
                        &at("metric"),
                        format!("`{m}` is not a tensor metric (one of {})", known.join(", ")),
                    ));
                }
            }
        }
        let finite =
            self.value.is_none_or(f64::is_finite) && self.and.iter().all(|c| c.value.is_finite());
        if !finite {
            return Err(field(&at("value"), "must be a finite number"));
        }
        Ok(())
    }

    /// Evaluates the rule on an audit's results.json.
    pub fn evaluate(&self, results: &Value) -> Observation {
        match self.scope {
            Scope::Tensor => self.rows(tensor_rows(results, self.module.as_deref())),
            Scope::Block => self.rows(block_rows(results, self.analysis, self.hook)),
            Scope::Audit => {
                let pointer = self.pointer.as_deref().unwrap_or("");
                let value = results.pointer(pointer).and_then(Value::as_f64);
                let (op, threshold) = (self.op.unwrap_or(Op::Gt), self.value.unwrap_or(0.0));
                let fired = value.is_some_and(|v| op.holds(v, threshold));
                let message = match value {
                    Some(v) => format!("{pointer} = {v:.6} ({} {threshold})", op.symbol()),
                    None => format!("{pointer}: no number there in this audit"),
                };
                Observation {
                    value,
                    fired,
                    message,
                    details: Vec::new(),
                }
            }
            Scope::TraceTokens => self.trace_tokens(results),
            Scope::Rows => self.rows(pointed_rows(results, self.pointer.as_deref())),
        }
    }

    /// The analyses whose results this rule reads, any one of which is enough (empty: none in
    /// particular, such as a pointer to `/grades`).
    pub fn reads(&self) -> Vec<AnalysisKind> {
        match self.scope {
            Scope::Tensor => vec![AnalysisKind::Weights],
            Scope::Block => match self.analysis {
                Some(a) => vec![a],
                None => vec![AnalysisKind::Activations, AnalysisKind::LogitLens],
            },
            Scope::TraceTokens => vec![AnalysisKind::Traces],
            Scope::Audit | Scope::Rows => self
                .pointer_analysis()
                .and_then(Result::ok)
                .into_iter()
                .collect(),
        }
    }

    /// The analysis a pointer into `/analyses/...` reads (its section's name, as results.json
    /// spells it), or the name it gives that is no analysis's.
    fn pointer_analysis(&self) -> Option<Result<AnalysisKind, String>> {
        let section = self
            .pointer
            .as_deref()?
            .strip_prefix("/analyses/")?
            .split('/')
            .next()?;
        Some(
            section
                .replace('_', "-")
                .parse::<AnalysisKind>()
                .map_err(|_| section.to_string()),
        )
    }

    fn rows(&self, rows: Vec<(String, &serde_json::Map<String, Value>)>) -> Observation {
        let metric = self.metric.as_deref().unwrap_or("");
        let (op, threshold) = (self.op.unwrap_or(Op::Gt), self.value.unwrap_or(0.0));
        let number =
            |row: &serde_json::Map<String, Value>, m: &str| row.get(m).and_then(Value::as_f64);
        let mut value: Option<f64> = None;
        let mut hits = Vec::new();
        for (label, row) in &rows {
            let meets_and = self
                .and
                .iter()
                .all(|c| number(row, &c.metric).is_some_and(|x| c.op.holds(x, c.value)));
            let Some(x) = number(row, metric) else {
                continue;
            };
            if !meets_and {
                continue;
            }
            value = Some(value.map_or(x, |v| op.worst(v, x)));
            if op.holds(x, threshold) {
                hits.push((label.clone(), x));
            }
        }
        let also: String = self
            .and
            .iter()
            .map(|c| format!(" and {} {} {}", c.metric, c.op.symbol(), c.value))
            .collect();
        let message = match (&hits[..], value) {
            ([], Some(v)) => format!(
                "no row has {metric} {} {threshold}{also} (the nearest: {v:.6})",
                op.symbol()
            ),
            ([], None) => format!("no row with {metric}{also} in this audit"),
            (hits, _) => format!(
                "{} rows have {metric} {} {threshold}{also}; the first: {} ({metric} = {:.6})",
                hits.len(),
                op.symbol(),
                hits[0].0,
                hits[0].1
            ),
        };
        Observation {
            value,
            fired: !hits.is_empty(),
            message,
            details: hits.into_iter().take(10).map(|(l, _)| l).collect(),
        }
    }

    fn trace_tokens(&self, results: &Value) -> Observation {
        let watched: Vec<String> = self.tokens.iter().map(|t| normalise(t)).collect();
        let mut found: Vec<String> = Vec::new();
        let positions = results
            .pointer("/analyses/traces/positions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut read_any = false;
        for (j, p) in positions.iter().enumerate() {
            for list in ["/logit_lens/top_tokens", "/patchscope/top_tokens"] {
                let tokens = p.pointer(list).and_then(Value::as_array);
                for t in tokens.into_iter().flatten().take(TRACE_TOP) {
                    read_any = true;
                    let Some(token) = t.get("token").and_then(Value::as_str) else {
                        continue;
                    };
                    let n = normalise(token);
                    if watched.contains(&n) && !found.iter().any(|f| f.ends_with(&format!("`{n}`")))
                    {
                        found.push(format!("position {j}: `{n}`"));
                    }
                }
            }
        }
        let need = self.value.unwrap_or(1.0);
        let count = found.len() as f64;
        let message = if !read_any {
            "this audit has no readable traces (add the `traces` analysis)".to_string()
        } else if found.is_empty() {
            "no watched token in the traces' top 20".to_string()
        } else {
            format!(
                "{} watched tokens in the traces' top 20: {}",
                found.len(),
                found.join(", ")
            )
        };
        Observation {
            value: read_any.then_some(count),
            fired: read_any && count >= need && count > 0.0,
            message,
            details: found.into_iter().take(10).collect(),
        }
    }
}

/// Tokens as a person writes them: no BPE space markers, no case.
fn normalise(token: &str) -> String {
    token
        .trim_start_matches(['Ġ', '▁', 'Ċ'])
        .trim()
        .to_lowercase()
}

fn tensor_rows<'a>(
    results: &'a Value,
    module: Option<&str>,
) -> Vec<(String, &'a serde_json::Map<String, Value>)> {
    let rows = results
        .pointer("/analyses/weights/tensors")
        .and_then(Value::as_array);
    rows.into_iter()
        .flatten()
        .filter_map(|t| {
            let row = t.as_object()?;
            let name = row.get("name").and_then(Value::as_str)?.to_string();
            module
                .is_none_or(|m| name.contains(m))
                .then_some((name, row))
        })
        .collect()
}

/// The numeric fields of a tensor's metrics, as results.json names them.
fn tensor_metric_names() -> Vec<String> {
    let sample = crate::results::TensorMetrics::from_norms("w", vec![1, 1], 0.0, 1.0, 1.0, "none");
    match serde_json::to_value(sample) {
        Ok(Value::Object(m)) => m
            .into_iter()
            .filter(|(_, v)| v.is_number() || v.is_null())
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

/// The fields that name a row in results.json's arrays (a CMAP cell is a layer, a component
/// and a direction).
const LABEL_FIELDS: [&str; 8] = [
    "name",
    "layer",
    "block",
    "component",
    "direction",
    "k",
    "id",
    "alpha",
];

/// The objects of the array at `pointer`, each named by its naming fields, else by its index.
fn pointed_rows<'a>(
    results: &'a Value,
    pointer: Option<&str>,
) -> Vec<(String, &'a serde_json::Map<String, Value>)> {
    let rows = pointer
        .and_then(|p| results.pointer(p))
        .and_then(Value::as_array);
    rows.into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, r)| {
            let row = r.as_object()?;
            let named: Vec<String> = LABEL_FIELDS
                .iter()
                .filter_map(|k| {
                    let v = row.get(*k)?;
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    Some(format!("{k} {v}"))
                })
                .collect();
            let label = if named.is_empty() {
                format!("row {i}")
            } else {
                named.join(" ")
            };
            Some((label, row))
        })
        .collect()
}

fn block_rows<'a>(
    results: &'a Value,
    analysis: Option<AnalysisKind>,
    hook: Option<HookKind>,
) -> Vec<(String, &'a serde_json::Map<String, Value>)> {
    let mut out = Vec::new();
    let hook = hook.map(HookKind::as_str);
    let mut take = |kind: AnalysisKind, rows: Vec<&'a Value>, default_hook: &str| {
        if analysis.is_some_and(|a| a != kind) {
            return;
        }
        let name = kind.as_str();
        for r in rows {
            let Some(row) = r.as_object() else { continue };
            let h = row
                .get("hook")
                .and_then(Value::as_str)
                .unwrap_or(default_hook);
            if hook.is_some_and(|want| want != h) {
                continue;
            }
            let layer = match row.get("layer").and_then(Value::as_i64) {
                Some(l) => format!("block {l}"),
                None => "output".to_string(),
            };
            out.push((format!("{name} {layer} {h}"), row));
        }
    };
    let activations = results
        .pointer("/analyses/activations/layers")
        .and_then(Value::as_array);
    take(
        AnalysisKind::Activations,
        activations.into_iter().flatten().collect(),
        HookKind::ResidPost.as_str(),
    );
    let lens = results.pointer("/analyses/logit_lens");
    let mut lens_rows: Vec<&Value> = lens
        .and_then(|l| l.get("layers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    lens_rows.extend(lens.and_then(|l| l.get("output")));
    take(
        AnalysisKind::LogitLens,
        lens_rows,
        HookKind::ResidPost.as_str(),
    );
    out
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
    #[schema(value_type = Option<String>)]
    pub base_mode: Option<BaseMode>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
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

/// A scan's schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Every(u64),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    pub fn parse(every_s: Option<u64>, cron: Option<&str>) -> Result<Schedule, SpecError> {
        match (every_s, cron) {
            (Some(s), None) if (MIN_EVERY_S..=MAX_EVERY_S).contains(&s) => Ok(Schedule::Every(s)),
            (Some(_), None) => Err(field(
                "every_s",
                format!("{MIN_EVERY_S} to {MAX_EVERY_S} seconds"),
            )),
            (None, Some(c)) => {
                // Five fields as crontab(5) has them (nicknames such as `@daily` too): croner
                // would also take seconds and years, which a scan has no use for.
                let parser = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Disallowed)
                    .year(croner::parser::Year::Disallowed)
                    .build();
                let cron = parser.parse(c).map_err(|e| {
                    field(
                        "cron",
                        format!("`{c}`: {e} (five fields: minute hour day month weekday)"),
                    )
                })?;
                if cron.find_next_occurrence(&Utc::now(), false).is_err() {
                    return Err(field("cron", format!("`{c}` never fires")));
                }
                Ok(Schedule::Cron(Box::new(cron)))
            }
            (Some(_), Some(_)) => Err(field("every_s` and `cron", "give one, not both")),
            (None, None) => Err(field("every_s` or `cron", "a scan needs a schedule")),
        }
    }

    /// The first run strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Every(s) => now + chrono::Duration::seconds(*s as i64),
            Schedule::Cron(c) => c
                .find_next_occurrence(&now, false)
                .unwrap_or(now + chrono::Duration::days(1)),
        }
    }
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

/// Whether an address is one a tenant's webhook must not reach: loopback, private, link-local,
/// unique-local, unspecified, multicast or documentation ranges (the deployment's own network).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // Addresses that carry an IPv4 one: NAT64 (64:ff9b::/96), IPv4-compatible (::/96),
            // 6to4 (2002::/16) reach that IPv4 address.
            // So do IPv4-translated addresses (SIIT, ::ffff:0:a.b.c.d).
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || s[..6] == [0, 0, 0, 0, 0xffff, 0]
                || (s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified())
            {
                return is_internal(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_internal(embedded(s[1], s[2]));
            }
            // Teredo (2001::/32) tunnels to an IPv4 address obfuscated in its last bits and
            // relayed by a server named in the address: refused whole, as are documentation
            // (2001:db8::/32) and discard-only (100::/64) addresses.
            v6.is_loopback()
                || (s[0] == 0x2001 && (s[1] == 0 || s[1] == 0x0db8))
                || s[..4] == [0x100, 0, 0, 0]
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                || (s[0] & 0xffc0) == 0xfec0
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// How errors and logs name a webhook target: its scheme, host and port only. A URL's path and
/// query may carry a secret (a token in `?key=`), which must not reach an error column, the
/// alerts API or a log line.
pub fn shown_target(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let scheme: String = scheme
        .chars()
        .take(8)
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host_port: String = host_port
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        .take(260)
        .collect();
    let has_port = host_port.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with(':')
            && !p.is_empty()
            && p.chars().all(|c| c.is_ascii_digit())
            && (!h.starts_with('[') || h.ends_with(']'))
    });
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    if has_port {
        format!("{scheme}://{host_port}")
    } else {
        format!("{scheme}://{host_port}{default_port}")
    }
}

/// The host and port of a webhook URL, checked lexically: http or https, no credentials, and,
/// unless `allow_internal`, no internal address literal or `localhost`. Names are resolved and
/// checked again at each delivery.
pub fn check_webhook_url(url: &str, allow_internal: bool) -> Result<(String, u16), String> {
    if url.len() > 2048 {
        return Err("at most 2048 characters".into());
    }
    let (rest, default_port) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else {
        return Err(format!(
            "`{}`: an http:// or https:// URL",
            shown_target(url)
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials in the URL are not accepted".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an unclosed [ in the host")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("port `{p}`"))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(format!("`{}`: no host", shown_target(url)));
    }
    // Plain names and address literals only: a backslash, a percent escape or a non-ASCII name
    // is read differently by different URL parsers, and the host checked must be the host used.
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(format!(
            "`{host}`: a host name of letters, digits, dots and dashes"
        ));
    }
    if !allow_internal {
        let internal = match host.parse::<IpAddr>() {
            Ok(ip) => is_internal(ip),
            Err(_) => {
                let h = host.to_ascii_lowercase();
                h == "localhost" || h.ends_with(".localhost") || h.ends_with(".internal")
            }
        };
        if internal {
            return Err(format!(
                "`{host}` is an internal address; this deployment delivers webhooks only to public hosts"
            ));
        }
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        serde_json::from_value(v).expect("rule")
    }

    #[test]
    fn a_tensor_rule_needs_one_row_to_meet_every_condition() {
        let results = json!({"analyses": {"weights": {"tensors": [
            {"name": "a", "rel_fro": 0.5, "stable_rank": 30.0},
            {"name": "b", "rel_fro": 0.2, "stable_rank": 1.2},
            {"name": "c", "rel_fro": 0.01, "stable_rank": 1.0}
        ]}}});
        let low_rank = rule(json!({"name": "r", "severity": "high", "scope": "tensor",
            "metric": "rel_fro", "op": ">", "value": 0.1,
            "and": [{"metric": "stable_rank", "op": "<", "value": 2.0}]}));
        let o = low_rank.evaluate(&results);
        assert!(o.fired);
        assert_eq!(o.details, vec!["b".to_string()]);
        assert_eq!(o.value, Some(0.2));
        let big = rule(json!({"name": "r", "severity": "high", "scope": "tensor",
            "metric": "rel_fro", "op": ">", "value": 0.6}));
        let o = big.evaluate(&results);
        assert!(!o.fired);
        assert_eq!(o.value, Some(0.5));
    }

    #[test]
    fn audit_block_and_token_rules_read_their_rows() {
        let results = json!({"analyses": {
            "logit_lens": {"layers": [{"layer": 0, "kl_mean": 0.1}], "output": {"layer": null, "kl_mean": 2.0}},
            "traces": {"positions": [{"logit_lens": {"top_tokens": [{"token": "ĠPlanet"}, {"token": "the"}]},
                                       "patchscope": {"top_tokens": [{"token": "orbit"}]}}]}
        }});
        let kl = rule(json!({"name": "kl", "severity": "medium", "scope": "audit",
            "pointer": "/analyses/logit_lens/output/kl_mean", "op": ">=", "value": 2.0}));
        assert!(kl.evaluate(&results).fired);
        let block = rule(json!({"name": "b", "severity": "low", "scope": "block",
            "analysis": "logit-lens", "metric": "kl_mean", "op": ">", "value": 1.0}));
        let o = block.evaluate(&results);
        assert!(o.fired);
        assert_eq!(
            o.details,
            vec!["logit-lens output hook_resid_post".to_string()]
        );
        let words = rule(
            json!({"name": "w", "severity": "high", "scope": "trace_tokens",
            "tokens": ["planet", "Orbit", "recipe"]}),
        );
        let o = words.evaluate(&results);
        assert!(o.fired);
        assert_eq!(o.value, Some(2.0));
        let none = rule(
            json!({"name": "w", "severity": "high", "scope": "trace_tokens", "tokens": ["x"]}),
        );
        assert!(!none.evaluate(&results).fired);
        assert!(!words.evaluate(&json!({})).fired);
    }

    #[test]
    fn webhook_urls_are_checked() {
        assert_eq!(
            check_webhook_url("https://hooks.example.com/x", false),
            Ok(("hooks.example.com".into(), 443))
        );
        for bad in [
            "ftp://x",
            "http://user:pw@example.com/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://localhost:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:a00:1::]/",
            "http://[::10.0.0.1]/",
            "http://198.18.0.1/",
            "http://169.254.169.254\\x.example.com/",
            "http://%61.example.com/",
        ] {
            assert!(check_webhook_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_webhook_url("http://127.0.0.1:9/", true).is_ok());
        for ip in [
            "::ffff:0:10.0.0.1",
            "::ffff:0:127.0.0.1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(is_internal(ip.parse().expect("ip")), "{ip}");
        }
        assert!(!is_internal("2001:4860:4860::8888".parse().expect("ip")));
        assert!(!is_internal("2606:4700::1111".parse().expect("ip")));
        assert!(!is_internal("8.8.8.8".parse().expect("ip")));
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

    fn refusal(r: &ScanRequest) -> String {
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

    #[test]
    fn cron_takes_five_fields_and_must_fire() {
        let mut r: ScanRequest = serde_json::from_value(json!({
            "name": "n", "source": "/data/ckpts", "base": "/data/base", "cron": "0 3 * * *"
        }))
        .expect("request");
        assert!(r.validate().is_ok());
        r.cron = Some("@daily".into());
        assert!(r.validate().is_ok());
        for bad in ["*/5 * * * * *", "0 3 * * * 2030", "0 0 31 2 *"] {
            r.cron = Some(bad.into());
            assert!(refusal(&r).contains("cron"), "{bad}");
        }
    }

    #[test]
    fn a_rows_rule_reads_any_array_of_objects() {
        let results = json!({"analyses": {"cmap": {"cells": [
            {"layer": 0, "component": "attn_out", "direction": "ft_into_base", "recovery": 0.02},
            {"layer": 3, "component": "mlp_out", "direction": "ft_into_base", "recovery": 0.46}
        ]}}});
        let r = rule(
            json!({"name": "cmap", "severity": "medium", "scope": "rows",
            "pointer": "/analyses/cmap/cells", "metric": "recovery", "op": ">", "value": 0.3}),
        );
        let o = r.evaluate(&results);
        assert!(o.fired);
        assert_eq!(o.value, Some(0.46));
        assert_eq!(
            o.details,
            vec!["layer 3 component mlp_out direction ft_into_base".to_string()]
        );
        let quiet = rule(
            json!({"name": "cmap", "severity": "medium", "scope": "rows",
            "pointer": "/analyses/cmap/cells", "metric": "recovery", "op": ">", "value": 0.5}),
        );
        assert!(!quiet.evaluate(&results).fired);
        let missing = rule(json!({"name": "x", "severity": "low", "scope": "rows",
            "pointer": "/analyses/stitching/points", "metric": "kl", "op": ">", "value": 0.0}));
        assert_eq!(missing.evaluate(&results).value, None);
    }
}
