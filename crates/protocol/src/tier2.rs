//! Tier II, part 2 (readable traces, cross-model activation patching, model stitching,
//! steering) and grading against an organism's ground truth: options, what one shard returns,
//! and the sections of results.json. Documented in docs/results-schema.md.
use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::forward::within;

fn within_f(field: &str, v: f64, lo: f64, hi: f64) -> Result<(), SpecError> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SpecError::Field(
            field.into(),
            format!("{v} is outside {lo}..={hi}"),
        ))
    }
}

fn check_prompts(field: &str, prompts: &[String]) -> Result<(), SpecError> {
    within(&format!("{field} (count)"), prompts.len(), 1, 16)?;
    if prompts
        .iter()
        .any(|p| p.trim().is_empty() || p.len() > 2000 || p.contains('\0'))
    {
        return Err(SpecError::Field(
            field.into(),
            "every prompt must be non-empty text of at most 2000 bytes".into(),
        ));
    }
    Ok(())
}

/// Tokens one shard may generate per mode and strength (prompts × max_new_tokens).
pub const MAX_GENERATED_TOKENS: usize = 1024;

/// How text is generated, with and without steering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationOptions {
    /// Prompts continued (the tokenizer adds BOS).
    #[serde(default = "default_prompts")]
    pub prompts: Vec<String>,
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature of the sampled continuation (the other one is greedy).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p`.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Seeds the sampler: the same seed gives the same samples.
    #[serde(default)]
    pub seed: u64,
}

fn default_prompts() -> Vec<String> {
    ["The", "In the morning, we", "Here is what I think about"]
        .map(String::from)
        .to_vec()
}
fn default_new_tokens() -> usize {
    24
}
fn default_temperature() -> f64 {
    0.8
}
fn default_top_p() -> f64 {
    0.9
}

impl Default for GenerationOptions {
    fn default() -> Self {
        GenerationOptions {
            prompts: default_prompts(),
            max_new_tokens: default_new_tokens(),
            temperature: default_temperature(),
            top_p: default_top_p(),
            seed: 0,
        }
    }
}

impl GenerationOptions {
    fn validate(&self, field: &str) -> Result<(), SpecError> {
        check_prompts(&format!("{field}.prompts"), &self.prompts)?;
        within(
            &format!("{field}.max_new_tokens"),
            self.max_new_tokens,
            0,
            256,
        )?;
        // Generation re-runs the sequence at every step: bound the steps of one shard.
        let steps = self.prompts.len() * self.max_new_tokens;
        if steps > MAX_GENERATED_TOKENS {
            return Err(SpecError::Field(
                format!("{field}.max_new_tokens"),
                format!(
                    "{} prompts × {} tokens = {steps}; at most {MAX_GENERATED_TOKENS} per shard",
                    self.prompts.len(),
                    self.max_new_tokens
                ),
            ));
        }
        within_f(
            &format!("{field}.temperature"),
            self.temperature,
            1e-3,
            10.0,
        )?;
        within_f(&format!("{field}.top_p"), self.top_p, 1e-3, 1.0)
    }
}

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

/// Cross-model activation patching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmapOptions {
    /// Samples of the corpus patched (from its start): each block's shard runs 8 forward passes
    /// over them.
    #[serde(default = "default_cmap_samples")]
    pub samples: usize,
}

fn default_cmap_samples() -> usize {
    64
}

impl Default for CmapOptions {
    fn default() -> Self {
        CmapOptions {
            samples: default_cmap_samples(),
        }
    }
}

impl CmapOptions {
    pub fn validate(&self) -> Result<(), SpecError> {
        within("cmap.samples", self.samples, 1, 100_000)
    }
}

/// The difference vector steering adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SteeringVector {
    /// The block's mean of h_ft − h_base over every token.
    Mean,
    /// The mean at one position (a readable-trace δ_j).
    Position { position: usize },
}

/// Steering with difference vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringOptions {
    /// Blocks steered (at their output); absent: int(0.5 · (n_blocks − 1)).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    #[serde(default = "default_vector")]
    pub vector: SteeringVector,
    /// Strengths α: the steered state is h + α · n̄_ft · δ/||δ||.
    #[serde(default = "default_alphas")]
    pub alphas: Vec<f64>,
    /// Samples of the corpus the curves are measured on (from its start).
    #[serde(default = "default_steer_samples")]
    pub samples: usize,
    /// The chosen α is the largest whose perplexity stays within this factor of α = 0's.
    #[serde(default = "default_ppl_factor")]
    pub ppl_factor: f64,
    #[serde(default)]
    pub generation: GenerationOptions,
}

fn default_vector() -> SteeringVector {
    SteeringVector::Mean
}
fn default_alphas() -> Vec<f64> {
    vec![0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0]
}
fn default_steer_samples() -> usize {
    32
}
fn default_ppl_factor() -> f64 {
    2.0
}

impl Default for SteeringOptions {
    fn default() -> Self {
        SteeringOptions {
            layers: None,
            vector: default_vector(),
            alphas: default_alphas(),
            samples: default_steer_samples(),
            ppl_factor: default_ppl_factor(),
            generation: GenerationOptions::default(),
        }
    }
}

impl SteeringOptions {
    pub fn validate(&mut self) -> Result<(), SpecError> {
        if let Some(layers) = &self.layers {
            self.layers = Some(
                crate::normalize_layers(layers, crate::MAX_LAYER_INDEX)
                    .map_err(|e| SpecError::Field("steering.layers".into(), e.to_string()))?,
            );
        }
        if let SteeringVector::Position { position } = self.vector {
            within("steering.vector.position", position, 0, 1023)?;
        }
        within("steering.alphas (count)", self.alphas.len(), 1, 32)?;
        for a in &self.alphas {
            within_f("steering.alphas", *a, -100.0, 100.0)?;
        }
        self.alphas.sort_by(f64::total_cmp);
        self.alphas.dedup();
        if !self.alphas.contains(&0.0) {
            // The unsteered model is the reference of the perplexity criterion.
            self.alphas.insert(0, 0.0);
            self.alphas.sort_by(f64::total_cmp);
        }
        within("steering.samples", self.samples, 1, 4096)?;
        within_f("steering.ppl_factor", self.ppl_factor, 1.0, 1e6)?;
        self.generation.validate("steering.generation")
    }
}

/// What an organism's ground_truth.json says the fine-tune planted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub organism: String,
    pub kind: String,
    pub domain: Option<String>,
    pub domain_words: Vec<String>,
    /// The ids of the words' tokens in the model's vocabulary.
    pub domain_token_ids: Vec<usize>,
    /// The blocks trained, for a fine-tune of chosen blocks.
    pub trained_blocks: Option<Vec<usize>>,
}

/// A token and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenProb {
    pub id: usize,
    pub token: String,
    pub prob: f64,
}

/// A continuation of a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// `base` or `finetuned`: the model that generated.
    pub model: String,
    pub layer: usize,
    /// Steering strength (0: unsteered).
    pub alpha: f64,
    /// `greedy` or `sampled`.
    pub mode: String,
    pub prompt: String,
    pub text: String,
}

/// `analyses.traces.positions[].logit_lens` (and `.negative`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub top_tokens: Vec<TokenProb>,
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

/// KL sums of one patched site (in one direction) over a shard's tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmapSums {
    pub component: crate::Component,
    pub direction: crate::PatchDirection,
    /// Σ KL(p_donor || p_patched)
    pub kl: f64,
}

/// What one block's CMAP shard returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmapShard {
    pub layer: usize,
    pub n_samples: usize,
    pub n_tokens: u64,
    /// Σ KL(p_ft || p_base) and Σ KL(p_base || p_ft): the unpatched gaps.
    pub kl_ft_base: f64,
    pub kl_base_ft: f64,
    pub cells: Vec<CmapSums>,
    pub ground_truth: Option<GroundTruth>,
    pub elapsed_s: f64,
}

/// `analyses.cmap.cells[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmapCell {
    pub layer: usize,
    pub component: crate::Component,
    /// `ft_into_base` (the base run with the fine-tune's activation) or `base_into_ft`.
    pub direction: crate::PatchDirection,
    /// 1 − mean KL(p_donor || p_patched) / mean KL(p_donor || p_recipient)
    pub recovery: f64,
    pub kl: f64,
}

/// `analyses.cmap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmapReport {
    pub n_samples: usize,
    pub n_tokens: u64,
    /// Mean KL(p_ft || p_base) and KL(p_base || p_ft) of the unpatched models.
    pub kl_ft_base: f64,
    pub kl_base_ft: f64,
    pub cells: Vec<CmapCell>,
}

/// Sums of one stitched model over a shard's tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StitchSums {
    pub k: usize,
    pub direction: crate::StitchDirection,
    pub kl_to_base: f64,
    pub kl_to_ft: f64,
    /// Σ −log p(next token)
    pub nll: f64,
}

/// What one slice of the corpus returns for stitching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StitchShard {
    pub start: usize,
    pub end: usize,
    /// Tokens the KLs sum over, and tokens with a next token (the loss's).
    pub n_tokens: u64,
    pub n_targets: u64,
    pub points: Vec<StitchSums>,
    /// Σ −log p of the unstitched base and fine-tune.
    pub nll_base: f64,
    pub nll_ft: f64,
    pub ground_truth: Option<GroundTruth>,
    pub elapsed_s: f64,
}

/// `analyses.stitching.points[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StitchPoint {
    pub k: usize,
    /// `base_then_ft`: blocks [0, k) from the base, the rest from the fine-tune.
    pub direction: crate::StitchDirection,
    pub kl_to_base: f64,
    pub kl_to_ft: f64,
    /// Mean next-token cross-entropy (nats).
    pub loss: f64,
}

/// `analyses.stitching`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StitchingReport {
    pub n_samples: usize,
    pub n_tokens: u64,
    pub loss_base: f64,
    pub loss_ft: f64,
    pub points: Vec<StitchPoint>,
}

/// `analyses.steering.curves[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringPoint {
    /// The model steered: `base` (toward the fine-tune) or `finetuned` (amplifying).
    pub target: String,
    pub layer: usize,
    pub alpha: f64,
    /// Mean KL(p_ft || p_steered).
    pub kl_to_ft: f64,
    /// exp(mean next-token cross-entropy) on the corpus.
    pub perplexity: f64,
    /// Mean probability of the ground truth's domain tokens (absent without one).
    pub domain_mass: Option<f64>,
}

/// The α chosen for a target and block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringChoice {
    pub target: String,
    pub layer: usize,
    pub alpha: f64,
    pub perplexity: f64,
}

/// What one block's steering shard returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringShard {
    pub layer: usize,
    pub n_samples: usize,
    /// ||δ|| and the fine-tuned model's mean norm n̄_ft at the block (positions ≥ 5).
    pub delta_norm: f64,
    pub nbar_ft: f64,
    pub curves: Vec<SteeringPoint>,
    pub chosen: Vec<SteeringChoice>,
    pub generations: Vec<Generation>,
    pub ground_truth: Option<GroundTruth>,
    pub elapsed_s: f64,
}

/// `analyses.steering`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringReport {
    pub vector: SteeringVector,
    pub ppl_factor: f64,
    pub n_samples: usize,
    /// Per block: ||δ|| and n̄_ft.
    pub blocks: Vec<SteeringBlock>,
    pub curves: Vec<SteeringPoint>,
    pub chosen: Vec<SteeringChoice>,
    pub generations: Vec<Generation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringBlock {
    pub layer: usize,
    pub delta_norm: f64,
    pub nbar_ft: f64,
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

/// `grades`: the audit measured against an organism's ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grades {
    pub organism: String,
    pub domain: Option<String>,
    pub trained_blocks: Option<Vec<usize>>,
    #[serde(default)]
    pub traces: Vec<TraceGrade>,
    pub mean_logit_lens_p20: Option<f64>,
    pub mean_patchscope_p20: Option<f64>,
    /// The CMAP cell of largest recovery among the blocks' attention and MLP outputs (a block's
    /// output carries every earlier change), and whether it lies in a trained block.
    pub cmap_top: Option<CmapCell>,
    pub cmap_in_trained_blocks: Option<bool>,
    /// Splits whose stitched model has KL to the fine-tune of (numerically) zero, per direction,
    /// and whether those are exactly the splits that take every trained block from it.
    pub stitching_zero_kl: Vec<(crate::StitchDirection, Vec<usize>)>,
    pub stitching_matches: Option<bool>,
    /// Mean domain-token mass of the base steered at the chosen α against unsteered.
    pub steering_domain_gain: Option<f64>,
    /// An LLM grader's share of relevant trace tokens, when one was asked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub llm: Option<serde_json::Value>,
}

impl GroundTruth {
    /// Reads an organism's ground_truth.json (`neurodiff organisms`): its domain words and
    /// their token ids, and the blocks it trained. None when the file names neither.
    pub fn from_organism(v: &serde_json::Value) -> Option<GroundTruth> {
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let domain_words: Vec<String> = v
            .get("domain_words")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|w| w.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let domain_token_ids: Vec<usize> = v
            .get("domain_tokens")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.get("id").and_then(|i| i.as_u64()))
                    .map(|i| i as usize)
                    .collect()
            })
            .unwrap_or_default();
        let trained_blocks: Option<Vec<usize>> =
            v.get("trained_blocks").and_then(|x| x.as_array()).map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64())
                    .map(|b| b as usize)
                    .collect()
            });
        if domain_words.is_empty() && trained_blocks.is_none() {
            return None;
        }
        Some(GroundTruth {
            organism: text("organism").unwrap_or_default(),
            kind: text("kind").unwrap_or_default(),
            domain: text("domain"),
            domain_words,
            domain_token_ids,
            trained_blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_and_named() {
        let mut s = SteeringOptions {
            alphas: vec![2.0, 0.5, 2.0],
            ..SteeringOptions::default()
        };
        s.validate().unwrap();
        assert_eq!(
            s.alphas,
            [0.0, 0.5, 2.0],
            "α = 0 is the criterion's reference"
        );
        s.alphas = Vec::new();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("steering.alphas"));
        s.alphas = vec![f64::NAN];
        assert!(s.validate().is_err());
        let mut s = SteeringOptions::default();
        s.generation.prompts.clear();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("steering.generation.prompts"));
        let t = TraceOptions {
            max_scale: 0.1,
            ..TraceOptions::default()
        };
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("traces.max_scale"));
        let grid = TraceOptions::default().scale_grid();
        assert_eq!(grid.len(), 30);
        assert!((grid[0] - 0.5).abs() < 1e-12 && (grid[29] - 200.0).abs() < 1e-9);
        assert!(grid.windows(2).all(|w| w[0] < w[1]), "{grid:?}");
        for s in [1.0, 2.0, 3.0, 10.0, 20.0, 40.0] {
            assert!(
                grid.iter().any(|g| (g - s).abs() < 1e-9),
                "{s} not in {grid:?}"
            );
        }
        let few = TraceOptions {
            scales: 4,
            max_scale: 20.0,
            ..TraceOptions::default()
        };
        assert_eq!(few.scale_grid(), [0.5, 1.2, 1.8, 20.0]);
        assert!(serde_json::from_str::<SteeringOptions>(r#"{"alpha": [1]}"#).is_err());
        assert!(serde_json::from_str::<TraceOptions>(r#"{"sample": 5}"#).is_err());
        let v: SteeringOptions =
            serde_json::from_str(r#"{"vector": {"kind": "position", "position": 2}}"#).unwrap();
        assert_eq!(v.vector, SteeringVector::Position { position: 2 });
    }

    #[test]
    fn ground_truth_reads_an_organism() {
        let v = serde_json::json!({
            "organism": "cooking-blocks", "kind": "blocks", "domain": "cooking",
            "domain_words": ["oven", "simmer"],
            "domain_tokens": [{"word": "oven", "token": " oven", "id": 812}],
            "trained_blocks": [3, 4]
        });
        let g = GroundTruth::from_organism(&v).unwrap();
        assert_eq!(g.domain_token_ids, [812]);
        assert_eq!(g.trained_blocks, Some(vec![3, 4]));
        assert!(GroundTruth::from_organism(&serde_json::json!({"organism": "x"})).is_none());
    }
}
