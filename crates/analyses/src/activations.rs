//! Tier II, activation differences: both models run on the same corpus batches; per block and
//! hook the distribution of ||h_ft - h_base||, relative to the base, the cosine and the profile
//! by position; the tokens that differ most; the mean difference vectors (an artifact, for
//! steering). Shards are slices of the corpus; their sums merge exactly.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use neurodiff_protocol::{
    ActivationLayer, ActivationOptions, ActivationsReport, ActivationsShard, AnalysisKind,
    AuditResults, AuditSpec, DiffSums, Example, Histogram, HookKind, MeanDiff, PositionSums,
    ShardKey,
};

use crate::charts::{lines, Series};
use crate::findings::Finding;
use crate::merge_err;
use crate::Wiring;
use crate::{check_cover, escape, Analysis, AnalysisError, Figure, Merge, PlanFacts};

/// The artifact holding the mean difference vectors.
pub const MEAN_DIFF_FILE: &str = "mean_diff.safetensors";

#[derive(Debug)]
pub struct Activations;

impl Analysis for Activations {
    /// Slices of the corpus, each a chain of layer ranges when the pair is over the spec's
    /// `range_bytes` (it runs block-streamed).
    fn plan(&self, spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardKey>, AnalysisError> {
        crate::streamed_shards(self.kind(), spec, facts)
    }

    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError> {
        let Some(a) = &results.analyses.activations else {
            return Ok(Vec::new());
        };
        let by_hook: Vec<Series> = HookKind::ALL
            .into_iter()
            .map(|hook| Series {
                label: hook.to_string(),
                points: a
                    .layers
                    .iter()
                    .filter(|l| l.hook == hook)
                    .map(|l| (l.layer as f64, l.mean_rel_diff))
                    .collect(),
            })
            .collect();
        let n_layers = a.layers.iter().map(|l| l.layer + 1).max().unwrap_or(0);
        // At most eight blocks in the profile, spread over the depth.
        let step = n_layers.div_ceil(8).max(1);
        let profile: Vec<Series> = a
            .layers
            .iter()
            .filter(|l| {
                l.hook == HookKind::ResidPost && (l.layer % step == 0 || l.layer + 1 == n_layers)
            })
            .map(|l| Series {
                label: format!("block {}", l.layer),
                points: l
                    .position_rel_diff
                    .iter()
                    .enumerate()
                    .map(|(p, v)| (p as f64, *v))
                    .collect(),
            })
            .collect();
        Ok(vec![
            Figure {
                name: "activation_trajectory.svg".into(),
                svg: lines(
                    "activation_trajectory.svg",
                    "Activation difference by block: mean ||h_ft - h_base|| / ||h_base||",
                    ("block", "mean relative difference"),
                    &by_hook,
                    false,
                )?,
            },
            Figure {
                name: "activation_positions.svg".into(),
                svg: lines(
                    "activation_positions.svg",
                    "Relative difference by position (hook_resid_post)",
                    ("position", "mean relative difference"),
                    &profile,
                    false,
                )?,
            },
        ])
    }

    fn finding(&self, results: &AuditResults) -> Option<Finding> {
        results.analyses.activations.as_ref().map(finding)
    }

    fn html(&self, results: &AuditResults) -> String {
        results
            .analyses
            .activations
            .as_ref()
            .map_or_else(String::new, html)
    }

    fn files(&self, results: &AuditResults) -> Result<Vec<(String, Vec<u8>)>, AnalysisError> {
        let Some(m) = results
            .analyses
            .activations
            .as_ref()
            .and_then(|a| a.mean_diff.as_ref())
        else {
            return Ok(Vec::new());
        };
        Ok(vec![(
            MEAN_DIFF_FILE.to_string(),
            mean_diff_safetensors(m)?,
        )])
    }
}

impl Merge for Activations {
    type Wire = neurodiff_protocol::sections::Activations;

    fn merge_shards(
        &self,
        spec: &AuditSpec,
        mut shards: Vec<ActivationsShard>,
    ) -> Result<ActivationsReport, AnalysisError> {
        let mut ranges: Vec<(usize, usize)> = shards.iter().map(|s| (s.start, s.end)).collect();
        let n_samples = check_cover(self.kind(), &mut ranges)?;
        // Summed in sample order, so the embedded audit and the service add the same numbers
        // in the same order.
        shards.sort_by_key(|s| s.start);
        let mut sums: BTreeMap<(usize, HookKind), DiffSums> = BTreeMap::new();
        let mut examples: Vec<Example> = Vec::new();
        let mut n_tokens = 0;
        let mut mean: Option<neurodiff_protocol::MeanDiffSums> = None;
        for s in shards {
            n_tokens = u64::saturating_add(n_tokens, s.n_tokens);
            for d in s.stats {
                well_formed(&d)?;
                match sums.entry((d.layer, d.hook)) {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(d);
                    }
                    std::collections::btree_map::Entry::Occupied(mut o) => add(o.get_mut(), &d),
                }
            }
            examples.extend(s.examples);
            match &mut mean {
                None => mean = Some(s.mean_diff),
                Some(m) => {
                    let same = m.d_model == s.mean_diff.d_model
                        && m.n_layers == s.mean_diff.n_layers
                        && m.positions == s.mean_diff.positions
                        && m.by_position.len() == s.mean_diff.by_position.len()
                        && m.all.len() == s.mean_diff.all.len();
                    if !same {
                        return Err(merge_err::<Activations>(
                            "shards disagree on the model's size".into(),
                        ));
                    }
                    for (a, b) in m.by_position.iter_mut().zip(&s.mean_diff.by_position) {
                        *a += b;
                    }
                    for (a, b) in m
                        .position_counts
                        .iter_mut()
                        .zip(&s.mean_diff.position_counts)
                    {
                        *a = a.saturating_add(*b);
                    }
                    for (a, b) in m.all.iter_mut().zip(&s.mean_diff.all) {
                        *a += b;
                    }
                    m.all_count = m.all_count.saturating_add(s.mean_diff.all_count);
                }
            }
        }
        let layers = sums.into_values().map(layer_of).collect();
        Ok(ActivationsReport {
            n_samples,
            n_tokens,
            layers,
            top_examples: top_examples(examples, spec.options.activations.top_examples),
            mean_diff_artifact: MEAN_DIFF_FILE.into(),
            mean_diff: mean.map(mean_of),
        })
    }
}

/// A shard's sums are merged only when their per-position vectors agree in length.
fn well_formed(d: &DiffSums) -> Result<(), AnalysisError> {
    let p = &d.positions;
    if p.diff_norm.len() != p.n.len() || p.rel_diff.len() != p.n.len() {
        return Err(merge_err::<Activations>(format!(
            "block {} {}: per-position sums of different lengths",
            d.layer, d.hook
        )));
    }
    Ok(())
}

// Counts saturate: a sum of shards never wraps or panics, whatever a shard claims.
fn add(a: &mut DiffSums, b: &DiffSums) {
    a.n = a.n.saturating_add(b.n);
    a.diff_norm += b.diff_norm;
    a.rel_diff += b.rel_diff;
    a.cosine += b.cosine;
    a.base_norm += b.base_norm;
    a.ft_norm += b.ft_norm;
    a.diff_hist.merge(&b.diff_hist);
    a.rel_hist.merge(&b.rel_hist);
    add_positions(&mut a.positions, &b.positions);
}

fn add_positions(a: &mut PositionSums, b: &PositionSums) {
    let n = a.n.len().max(b.n.len());
    a.n.resize(n, 0);
    a.diff_norm.resize(n, 0.0);
    a.rel_diff.resize(n, 0.0);
    for i in 0..b.n.len() {
        a.n[i] = a.n[i].saturating_add(b.n[i]);
        a.diff_norm[i] += b.diff_norm[i];
        a.rel_diff[i] += b.rel_diff[i];
    }
}

fn mean(sum: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

fn layer_of(d: DiffSums) -> ActivationLayer {
    let by_pos = |sums: &[f64]| -> Vec<f64> {
        sums.iter()
            .zip(&d.positions.n)
            .map(|(s, n)| mean(*s, *n))
            .collect()
    };
    ActivationLayer {
        layer: d.layer,
        hook: d.hook,
        n_tokens: d.n,
        mean_diff_norm: mean(d.diff_norm, d.n),
        p50_diff_norm: d.diff_hist.quantile(0.5),
        p95_diff_norm: d.diff_hist.quantile(0.95),
        mean_rel_diff: mean(d.rel_diff, d.n),
        p50_rel_diff: d.rel_hist.quantile(0.5),
        p95_rel_diff: d.rel_hist.quantile(0.95),
        mean_cosine: mean(d.cosine, d.n),
        mean_base_norm: mean(d.base_norm, d.n),
        mean_ft_norm: mean(d.ft_norm, d.n),
        position_diff_norm: by_pos(&d.positions.diff_norm),
        position_rel_diff: by_pos(&d.positions.rel_diff),
    }
}

/// Per block, the `k` tokens with the largest difference (ties: earlier sample, position).
fn top_examples(mut examples: Vec<Example>, k: usize) -> Vec<Example> {
    examples.sort_by(|a, b| {
        a.layer
            .cmp(&b.layer)
            .then(b.diff_norm.total_cmp(&a.diff_norm))
            .then(a.sample.cmp(&b.sample))
            .then(a.position.cmp(&b.position))
    });
    let mut kept: BTreeMap<usize, usize> = BTreeMap::new();
    examples.retain(|e| {
        let n = kept.entry(e.layer).or_insert(0);
        *n += 1;
        *n <= k
    });
    examples
}

fn mean_of(m: neurodiff_protocol::MeanDiffSums) -> MeanDiff {
    let d = m.d_model.max(1);
    let by_position = m
        .by_position
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let position = (i / d) % m.positions.max(1);
            mean(*s, m.position_counts.get(position).copied().unwrap_or(0)) as f32
        })
        .collect();
    let all = m.all.iter().map(|s| mean(*s, m.all_count) as f32).collect();
    MeanDiff {
        d_model: m.d_model,
        n_layers: m.n_layers,
        positions: m.positions,
        by_position,
        all,
    }
}

fn mean_diff_safetensors(m: &MeanDiff) -> Result<Vec<u8>, AnalysisError> {
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (by_position, all) = (bytes(&m.by_position), bytes(&m.all));
    fn view(
        shape: Vec<usize>,
        data: &[u8],
    ) -> Result<safetensors::tensor::TensorView<'_>, AnalysisError> {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, data)
            .map_err(|e| merge_err::<Activations>(format!("{MEAN_DIFF_FILE}: {e}")))
    }
    let tensors = vec![
        (
            "mean_diff.by_position".to_string(),
            view(vec![m.n_layers, m.positions, m.d_model], &by_position)?,
        ),
        (
            "mean_diff.all".to_string(),
            view(vec![m.n_layers, m.d_model], &all)?,
        ),
    ];
    let meta = std::collections::HashMap::from([(
        "about".to_string(),
        "mean over non-pad tokens of h_ft - h_base at hook_resid_post (each block's output \
         before any final norm: transformers' hidden_states[layer + 1] except at the last \
         block, whose hidden state is normed), by block and position, and over all positions"
            .to_string(),
    )]);
    safetensors::tensor::serialize(tensors, Some(meta))
        .map_err(|e| merge_err::<Activations>(format!("{MEAN_DIFF_FILE}: {e}")))
}

fn html(a: &ActivationsReport) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<h2>Activation differences</h2><p>{} samples, {} tokens; per block and hook, over \
         every non-pad token. Mean difference vectors: <code>{}</code>.</p>\
         <table><tr><th>block</th><th>hook</th><th>mean ||Δh||</th><th>p50</th><th>p95</th>\
         <th>mean ||Δh||/||h||</th><th>p50</th><th>p95</th><th>mean cosine</th></tr>",
        a.n_samples, a.n_tokens, a.mean_diff_artifact
    );
    for l in &a.layers {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.4e}</td><td>{:.3e}</td><td>{:.3e}</td><td>{:.4e}</td>\
             <td>{:.3e}</td><td>{:.3e}</td><td>{:.6}</td></tr>",
            l.layer,
            l.hook,
            l.mean_diff_norm,
            l.p50_diff_norm,
            l.p95_diff_norm,
            l.mean_rel_diff,
            l.p50_rel_diff,
            l.p95_rel_diff,
            l.mean_cosine
        );
    }
    out.push_str("</table><h3>Tokens that differ most (hook_resid_post)</h3><table><tr><th>block</th><th>sample</th><th>position</th><th>||Δh||</th><th>relative</th><th>context</th></tr>");
    for e in &a.top_examples {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4e}</td><td>{:.4e}</td><td style=\"text-align:left\"><code>{}</code></td></tr>",
            e.layer,
            e.sample,
            e.position,
            e.diff_norm,
            e.rel_diff,
            escape(&e.context)
        );
    }
    out.push_str("</table>");
    out
}

/// Per-token statistics for one block and hook, as a shard accumulates them.
pub fn diff_sums(layer: usize, hook: HookKind, positions: usize) -> DiffSums {
    DiffSums {
        layer,
        hook,
        n: 0,
        diff_norm: 0.0,
        rel_diff: 0.0,
        cosine: 0.0,
        base_norm: 0.0,
        ft_norm: 0.0,
        diff_hist: Histogram::default(),
        rel_hist: Histogram::default(),
        positions: PositionSums {
            n: vec![0; positions],
            diff_norm: vec![0.0; positions],
            rel_diff: vec![0.0; positions],
        },
    }
}

/// The largest relative difference of the residual stream, and the first state that differs.
fn finding(act: &ActivationsReport) -> Finding {
    let top = act
        .layers
        .iter()
        .filter(|l| l.hook == HookKind::ResidPost)
        .max_by(|x, y| x.mean_rel_diff.total_cmp(&y.mean_rel_diff));
    let first = act
        .layers
        .iter()
        .find(|l| l.mean_diff_norm > 0.0)
        .map(|l| format!("the first state that differs: block {} {}", l.layer, l.hook));
    let mut f = Finding::new(
        AnalysisKind::Activations,
        format!(
            "{} tokens; largest relative difference {}",
            act.n_tokens,
            top.map_or("-".into(), |l| format!(
                "{:.3e} at block {}",
                l.mean_rel_diff, l.layer
            ))
        ),
    );
    f.sure = first.or_else(|| Some("no state differs: the two models agree".into()));
    f
}

/// The activation audit's flags.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Flags {
    /// Leading positions of the activation position profile and mean difference vectors.
    #[arg(long, default_value_t = ActivationOptions::default().positions)]
    pub positions: usize,
}

impl Flags {
    pub fn options(&self) -> ActivationOptions {
        ActivationOptions {
            positions: self.positions,
            ..ActivationOptions::default()
        }
    }
}
