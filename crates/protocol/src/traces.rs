//! Readable traces (ADL: the activation difference lens and Patchscope): options, what one shard
//! (one position) returns, and the `traces` section of results.json.
use serde::{Deserialize, Serialize};

use crate::error::{within, within_f, SpecError};
use crate::{Generation, GenerationOptions, GroundTruth, TokenList, TokenProb};

/// Readable traces (ADL and Patchscope).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceOptions {
    /// Samples of the corpus averaged (N); the whole corpus when it has fewer.
    #[serde(default = "default_trace_samples")]
    pub samples: usize,
    /// Leading positions j = 0..positions with a difference vector.
    #[serde(default = "default_trace_positions")]
    pub positions: usize,
    /// The block read; absent: int(0.5 · (n_blocks − 1)).
    #[serde(default)]
    pub layer: Option<usize>,
    /// Tokens kept from the logit lens of each δ_j and −δ_j.
    #[serde(default = "default_trace_top")]
    pub top_k: usize,
    /// Patchscope scales, in units of n̄_ft (s = 1 patches δ at the fine-tune's natural
    /// norm): at most this many of the toolkit's grid within [`min_scale`, `max_scale`].
    #[serde(default = "default_scales")]
    pub scales: usize,
    #[serde(default = "default_min_scale")]
    pub min_scale: f64,
    #[serde(default = "default_max_scale")]
    pub max_scale: f64,
    /// Steered samples with δ_j: strength α of the unit direction × the mean norm.
    #[serde(default = "default_trace_alpha")]
    pub steer_alpha: f64,
    #[serde(default)]
    pub generation: GenerationOptions,
}

fn default_trace_samples() -> usize {
    10_000
}

fn default_trace_positions() -> usize {
    5
}

fn default_trace_top() -> usize {
    100
}

fn default_scales() -> usize {
    30
}

fn default_min_scale() -> f64 {
    0.5
}

fn default_max_scale() -> f64 {
    200.0
}

fn default_trace_alpha() -> f64 {
    1.0
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            samples: default_trace_samples(),
            positions: default_trace_positions(),
            layer: None,
            top_k: default_trace_top(),
            scales: default_scales(),
            min_scale: default_min_scale(),
            max_scale: default_max_scale(),
            steer_alpha: default_trace_alpha(),
            generation: GenerationOptions::default(),
        }
    }
}

impl TraceOptions {
    pub fn validate(&self) -> Result<(), SpecError> {
        within("traces.samples", self.samples, 2, crate::MAX_SAMPLES)?;
        within("traces.positions", self.positions, 1, 64)?;
        within("traces.top_k", self.top_k, 20, 1000)?;
        within("traces.scales", self.scales, 1, 100)?;
        within_f("traces.min_scale", self.min_scale, 1e-3, 1e4)?;
        within_f("traces.max_scale", self.max_scale, self.min_scale, 1e4)?;
        within_f("traces.steer_alpha", self.steer_alpha, 0.0, 100.0)?;
        self.generation.validate("traces.generation")
    }

    /// The Patchscope scales, in units of the fine-tuned model's mean norm n̄_ft: the diffing
    /// toolkit's grid (`auto_patch_scope.py`, `run_auto_patch_scope_for_position`: 0.5 to 2.0
    /// by 0.1, then 3, 4, 5, 10, and 20 to 200 by 20; 30 scales) within
    /// [`min_scale`, `max_scale`], thinned evenly to at most `scales`.
    pub fn scale_grid(&self) -> Vec<f64> {
        let mut grid: Vec<f64> = (0..16).map(|i| (5 + i) as f64 / 10.0).collect();
        grid.extend([3.0, 4.0, 5.0, 10.0]);
        grid.extend((1..=10).map(|i| 20.0 * i as f64));
        grid.retain(|&s| s >= self.min_scale - 1e-9 && s <= self.max_scale + 1e-9);
        if grid.is_empty() {
            return vec![self.min_scale];
        }
        let n = grid.len();
        if self.scales >= n {
            return grid;
        }
        if self.scales <= 1 {
            return vec![grid[0]];
        }
        (0..self.scales)
            .map(|i| grid[(i * (n - 1) + (self.scales - 1) / 2) / (self.scales - 1)])
            .collect()
    }
}

/// How the three identity prompts agreed at one Patchscope scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalePoint {
    pub scale: f64,
    /// Tokens in the top 20 of all three prompts.
    pub agreed: usize,
    /// Of those, tokens not in the unpatched prompts' top 20.
    pub novel: usize,
}

/// `analyses.traces.positions[].patchscope`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patchscope {
    /// The chosen scale, in units of n̄_ft (most novel agreed tokens; the smallest such scale
    /// on ties).
    pub scale: f64,
    /// At `scale`, the 20 tokens of highest mean probability over the three prompts among
    /// those in every prompt's top 16384 (the toolkit's selection).
    pub top_tokens: Vec<TokenProb>,
    pub scales: Vec<ScalePoint>,
}

/// One position's trace (one shard).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracePosition {
    pub position: usize,
    /// Samples long enough to reach the position.
    pub n_samples: u64,
    /// ||δ_j||
    pub delta_norm: f64,
    pub logit_lens: TokenList,
    /// The logit lens of −δ_j: what the fine-tune made less likely.
    pub negative: TokenList,
    pub patchscope: Patchscope,
    /// Top-20 logit-lens ids of δ_j over the even and the odd samples (disjoint halves).
    pub half_top_ids: [Vec<usize>; 2],
    /// |top-20(even) ∩ top-20(odd)| / 20.
    pub half_overlap: f64,
    /// Continuations of the fine-tuned model steered with δ_j (and unsteered).
    pub steered: Vec<Generation>,
}

/// What one shard of the traces returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceShard {
    pub layer: usize,
    /// The fine-tuned model's mean norm at the block over positions ≥ 5 (the first 256 samples).
    pub nbar_ft: f64,
    /// `corpus.skip_first` as resolved (default: the BOS the tokenizer adds).
    #[serde(default)]
    pub skip_first: usize,
    pub trace: TracePosition,
    pub ground_truth: Option<GroundTruth>,
    pub elapsed_s: f64,
}

/// `analyses.traces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracesReport {
    pub layer: usize,
    pub nbar_ft: f64,
    /// Leading positions that read the BOS (the same token in every sample): kept, as the ADL
    /// defines δ_0, but not the position a summary reads.
    #[serde(default)]
    pub skip_first: usize,
    pub positions: Vec<TracePosition>,
    /// `position_overlap[i][j]`: |top-20(δ_i) ∩ top-20(δ_j)| / 20 of the logit lens.
    pub position_overlap: Vec<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ground_truth: Option<GroundTruth>,
}

impl crate::AnalysisOptions for TraceOptions {
    fn check(&mut self, _field: &str) -> Result<(), SpecError> {
        self.validate()
    }

    fn check_seq_len(&self, field: &str, seq_len: usize) -> Result<(), SpecError> {
        if self.positions > seq_len {
            return Err(SpecError::Field(
                format!("{field}.positions"),
                format!(
                    "{} positions but samples are cut to corpus.seq_len = {seq_len}",
                    self.positions
                ),
            ));
        }
        Ok(())
    }

    fn samples(&self) -> Option<usize> {
        Some(self.samples)
    }
}

/// Precision at 20 of one position's trace tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceGrade {
    pub position: usize,
    pub logit_lens_p20: f64,
    pub patchscope_p20: f64,
    /// The domain words among the logit lens's top 20.
    pub hits: Vec<String>,
}

/// The traces' grades: precision at 20 of the domain words, per position and on average.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TracesGrade {
    #[serde(default)]
    pub traces: Vec<TraceGrade>,
    pub mean_logit_lens_p20: Option<f64>,
    pub mean_patchscope_p20: Option<f64>,
}

/// The scan's token rules read each position's logit-lens and Patchscope tokens.
impl crate::rows::Rows for TracesReport {
    const TOKENS: Option<crate::rows::TokenPointers> = Some((
        "/positions",
        &["/logit_lens/top_tokens", "/patchscope/top_tokens"],
    ));
}
