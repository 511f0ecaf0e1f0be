//! The scan rules' evaluator: a rule checked when its scan is created, and evaluated on an
//! audit's results.json when the audit ends (the scheduler), reading each analysis's rows where
//! its section says they are ([`crate::rows::Rows`]).
use serde_json::Value;

use super::{field, Observation, Op, Rule, Scope, MAX_WATCHED_TOKENS, TRACE_TOP};
use crate::error::SpecError;
use crate::rows::TokenPointers;
use crate::{AnalysisKind, HookKind};

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
            if a.block_rows().is_empty() {
                return Err(field(
                    &at("analysis"),
                    named(&AnalysisKind::with_block_rows()),
                ));
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
            Scope::Tensor => with_tensors().map(|(k, _)| k).collect(),
            Scope::Block => match self.analysis {
                Some(a) => vec![a],
                None => AnalysisKind::with_block_rows(),
            },
            Scope::TraceTokens => with_tokens().map(|(k, _)| k).collect(),
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
        let mut read_any = false;
        for (kind, (positions, lists)) in with_tokens() {
            let positions = section(results, kind, positions).and_then(Value::as_array);
            for (j, p) in positions.into_iter().flatten().enumerate() {
                for list in lists {
                    let tokens = p.pointer(list).and_then(Value::as_array);
                    for t in tokens.into_iter().flatten().take(TRACE_TOP) {
                        read_any = true;
                        let Some(token) = t.get("token").and_then(Value::as_str) else {
                            continue;
                        };
                        let n = normalise(token);
                        let seen = found.iter().any(|f| f.ends_with(&format!("`{n}`")));
                        if watched.contains(&n) && !seen {
                            found.push(format!("position {j}: `{n}`"));
                        }
                    }
                }
            }
        }
        let need = self.value.unwrap_or(1.0);
        let count = found.len() as f64;
        let message = if !read_any {
            let kinds: Vec<AnalysisKind> = with_tokens().map(|(k, _)| k).collect();
            format!(
                "this audit has no readable traces (add the {} analysis)",
                named(&kinds)
            )
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

/// The analyses with per-tensor rows, and where they are in their sections.
fn with_tensors() -> impl Iterator<Item = (AnalysisKind, &'static str)> {
    AnalysisKind::ALL
        .into_iter()
        .filter_map(|k| Some((k, k.tensor_rows()?)))
}

/// The analyses with readable tokens, and where they are in their sections.
fn with_tokens() -> impl Iterator<Item = (AnalysisKind, TokenPointers)> {
    AnalysisKind::ALL
        .into_iter()
        .filter_map(|k| Some((k, k.token_rows()?)))
}

/// Analyses by their wire names, as a message lists them: "`a` or `b`".
fn named(kinds: &[AnalysisKind]) -> String {
    let names: Vec<String> = kinds.iter().map(|k| format!("`{}`", k.as_str())).collect();
    names.join(" or ")
}

/// The value at `pointer` inside `kind`'s section of results.json.
fn section<'a>(results: &'a Value, kind: AnalysisKind, pointer: &str) -> Option<&'a Value> {
    results.pointer(&format!("/analyses/{}{pointer}", kind.field()))
}

fn tensor_rows<'a>(
    results: &'a Value,
    module: Option<&str>,
) -> Vec<(String, &'a serde_json::Map<String, Value>)> {
    with_tensors()
        .filter_map(|(kind, rows)| section(results, kind, rows)?.as_array())
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
    let sample = crate::TensorMetrics::from_norms("w", vec![1, 1], 0.0, 1.0, 1.0, "none");
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
    for kind in AnalysisKind::with_block_rows() {
        // A pointer to an array gives its rows; to an object, that one row.
        let rows = kind
            .block_rows()
            .iter()
            .filter_map(|p| section(results, kind, p));
        let rows: Vec<&Value> = rows
            .flat_map(|v| match v.as_array() {
                Some(a) => a.iter().collect(),
                None => vec![v],
            })
            .collect();
        take(kind, rows, HookKind::ResidPost.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::scan::tests::rule;
    use serde_json::json;

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
