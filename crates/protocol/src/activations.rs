//! Activation differences: options, what one shard (a slice of the corpus) returns, and the
//! `activations` section of results.json.
use serde::{Deserialize, Serialize};

use crate::error::{within, SpecError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationOptions {
    /// Leading positions of the position profile and of the mean difference vectors.
    #[serde(default = "default_positions")]
    pub positions: usize,
    /// Tokens with the largest difference kept per block (at `hook_resid_post`).
    #[serde(default = "default_top")]
    pub top_examples: usize,
    /// Tokens of context shown on each side of an example.
    #[serde(default = "default_context")]
    pub context: usize,
}

fn default_positions() -> usize {
    32
}

pub(crate) fn default_top() -> usize {
    16
}

fn default_context() -> usize {
    8
}

pub(crate) fn default_top_tokens() -> usize {
    20
}

impl Default for ActivationOptions {
    fn default() -> Self {
        ActivationOptions {
            positions: default_positions(),
            top_examples: default_top(),
            context: default_context(),
        }
    }
}

impl ActivationOptions {
    pub fn validate(&self) -> Result<(), SpecError> {
        within("activations.positions", self.positions, 1, 1024)?;
        within("activations.top_examples", self.top_examples, 0, 1000)?;
        within("activations.context", self.context, 0, 64)
    }
}

/// Counts of positive values in logarithmic bins (100 per decade from 1e-9 to 1e9), with the
/// values at or below 1e-9 (exact zeros included) in bin 0 and those above 1e9 in the last:
/// quantiles merge exactly across shards and read back within 2.4% of the value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// `[bin, count]` for the bins that are not empty, in bin order.
    pub bins: Vec<[u64; 2]>,
}

const HIST_LO: f64 = -9.0;

const HIST_PER_DECADE: f64 = 100.0;

const HIST_BINS: u64 = 1802;

impl Histogram {
    pub fn bin(v: f64) -> u64 {
        if v.is_nan() || v <= 10f64.powf(HIST_LO) {
            return 0;
        }
        let b = ((v.log10() - HIST_LO) * HIST_PER_DECADE).floor() as i64 + 1;
        b.clamp(1, HIST_BINS as i64 - 1) as u64
    }

    /// A representative value of a bin: 0 for the lowest, the geometric middle otherwise.
    fn value(bin: u64) -> f64 {
        if bin == 0 {
            return 0.0;
        }
        10f64.powf(HIST_LO + (bin as f64 - 0.5) / HIST_PER_DECADE)
    }

    /// Counts `values` (unsorted bins are merged in order).
    pub fn from_values(values: impl IntoIterator<Item = f64>) -> Histogram {
        let mut counts = std::collections::BTreeMap::new();
        for v in values {
            *counts.entry(Self::bin(v)).or_insert(0u64) += 1;
        }
        Histogram {
            bins: counts.into_iter().map(|(b, c)| [b, c]).collect(),
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        let mut counts: std::collections::BTreeMap<u64, u64> =
            self.bins.iter().map(|[b, c]| (*b, *c)).collect();
        for [b, c] in &other.bins {
            let n = counts.entry(*b).or_insert(0);
            *n = n.saturating_add(*c);
        }
        self.bins = counts.into_iter().map(|(b, c)| [b, c]).collect();
    }

    pub fn count(&self) -> u64 {
        self.bins
            .iter()
            .fold(0u64, |n, [_, c]| n.saturating_add(*c))
    }

    /// The value below which a share `q` of the counts lie (0 when empty).
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for [b, c] in &self.bins {
            seen = u64::saturating_add(seen, *c);
            if seen >= rank {
                return Self::value(*b);
            }
        }
        0.0
    }
}

/// Sums of one statistic over tokens, by position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PositionSums {
    pub n: Vec<u64>,
    pub diff_norm: Vec<f64>,
    pub rel_diff: Vec<f64>,
}

/// One block and hook of one shard: sums over its non-pad tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffSums {
    pub layer: usize,
    pub hook: crate::HookKind,
    pub n: u64,
    pub diff_norm: f64,
    pub rel_diff: f64,
    pub cosine: f64,
    pub base_norm: f64,
    pub ft_norm: f64,
    pub diff_hist: Histogram,
    pub rel_hist: Histogram,
    pub positions: PositionSums,
}

/// A token where the two models' states differ most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub layer: usize,
    pub hook: crate::HookKind,
    /// The sample's index in the corpus and the token's position in it.
    pub sample: usize,
    pub position: usize,
    pub diff_norm: f64,
    pub rel_diff: f64,
    pub token: String,
    /// The text around the token, with the token itself in `[[...]]`.
    pub context: String,
}

/// Sums of h_ft - h_base at `hook_resid_post` per block: by position for the first
/// `positions`, and over all tokens; row-major `[layer][position][d_model]` and
/// `[layer][d_model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanDiffSums {
    pub d_model: usize,
    pub n_layers: usize,
    pub positions: usize,
    pub by_position: Vec<f64>,
    pub position_counts: Vec<u64>,
    pub all: Vec<f64>,
    pub all_count: u64,
}

/// What one shard of the activation analysis returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationsShard {
    pub start: usize,
    pub end: usize,
    pub n_tokens: u64,
    pub stats: Vec<DiffSums>,
    pub examples: Vec<Example>,
    pub mean_diff: MeanDiffSums,
    pub elapsed_s: f64,
}

/// `analyses.activations.layers[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationLayer {
    pub layer: usize,
    pub hook: crate::HookKind,
    pub n_tokens: u64,
    /// Mean over non-pad tokens of ||h_ft - h_base||_2.
    pub mean_diff_norm: f64,
    pub p50_diff_norm: f64,
    pub p95_diff_norm: f64,
    /// Mean of ||h_ft - h_base|| / ||h_base||.
    pub mean_rel_diff: f64,
    pub p50_rel_diff: f64,
    pub p95_rel_diff: f64,
    /// Mean of cos(h_ft, h_base).
    pub mean_cosine: f64,
    pub mean_base_norm: f64,
    pub mean_ft_norm: f64,
    /// By position (0, 1, ...): the mean difference norm and relative difference.
    pub position_diff_norm: Vec<f64>,
    pub position_rel_diff: Vec<f64>,
}

/// The mean difference vectors, kept out of results.json and written as an artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanDiff {
    pub d_model: usize,
    pub n_layers: usize,
    pub positions: usize,
    /// `[n_layers, positions, d_model]`, row-major; a position no sample reaches is zero.
    pub by_position: Vec<f32>,
    /// `[n_layers, d_model]`
    pub all: Vec<f32>,
}

/// `analyses.activations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationsReport {
    pub n_samples: usize,
    pub n_tokens: u64,
    /// Blocks in order, each with its hooks in forward order.
    pub layers: Vec<ActivationLayer>,
    /// Per block, the tokens with the largest difference at `hook_resid_post`.
    pub top_examples: Vec<Example>,
    /// The artifact holding the mean difference vectors (`mean_diff.by_position`,
    /// `mean_diff.all`), for steering.
    pub mean_diff_artifact: String,
    #[serde(skip)]
    pub mean_diff: Option<MeanDiff>,
}

impl crate::AnalysisOptions for ActivationOptions {
    fn check(&mut self, _field: &str) -> Result<(), SpecError> {
        self.validate()
    }
}

/// The scan's block rules and the team database read each block and hook.
impl crate::rows::Rows for ActivationsReport {
    const BLOCKS: &'static [&'static str] = &["/layers"];

    fn block_rows(&self, kind: crate::AnalysisKind) -> Vec<crate::rows::BlockRow> {
        let row = |l: &ActivationLayer| crate::rows::BlockRow {
            mean_diff_norm: Some(l.mean_diff_norm),
            mean_rel_diff: Some(l.mean_rel_diff),
            mean_cosine: Some(l.mean_cosine),
            ..crate::rows::BlockRow::new(kind, Some(l.layer), l.hook.into())
        };
        self.layers.iter().map(row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_merge_and_stay_close() {
        let values: Vec<f64> = (1..=1000).map(|i| i as f64 * 0.01).collect();
        let (a, b) = values.split_at(300);
        let mut h = Histogram::from_values(a.iter().copied());
        h.merge(&Histogram::from_values(b.iter().copied()));
        assert_eq!(h, Histogram::from_values(values.iter().copied()));
        for (q, exact) in [(0.5, 5.0), (0.95, 9.5)] {
            let got = h.quantile(q);
            assert!((got - exact).abs() / exact < 0.024, "{q}: {got} vs {exact}");
        }
        let zeros = Histogram::from_values([0.0, 0.0, 1.0]);
        assert_eq!(zeros.quantile(0.5), 0.0);
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
    }
}
