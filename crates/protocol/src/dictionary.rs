//! Tier III wire types: the options of the BatchTopK crosscoder and of the SAE on activation
//! differences, and their section of results.json (`analyses.crosscoder`, `analyses.sae_diff`;
//! docs/results-schema.md and docs/crosscoder.md).
use serde::{Deserialize, Serialize};

use crate::error::{within, SpecError};
use crate::{GroundTruth, TokenProb};

/// Options of a dictionary analysis (defaults: the anchors', scaled to a small model where the
/// anchors' would not fit a laptop run; every one can be set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DictionaryOptions {
    /// The block whose output (resid_post) is encoded; absent: int(0.5 · (n_blocks − 1)).
    #[serde(default)]
    pub layer: Option<usize>,
    /// Dictionary size as a multiple of the model width (the anchors: 32).
    #[serde(default = "default_expansion")]
    pub expansion: usize,
    /// Latents kept per token on average (BatchTopK).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Anneal k from this down to `k` over `k_anneal_steps` (the toolkit: 1024 over 2000).
    #[serde(default)]
    pub k_max: Option<usize>,
    #[serde(default)]
    pub k_anneal_steps: usize,
    /// Tokens per training batch.
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Adam's learning rate; absent: the anchors' 2e-4 / sqrt(F / 2^14).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Linear warm-up (capped at a tenth of the steps).
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    /// Corpus samples whose activations are collected (from its start); the last
    /// `holdout_percent` of them are held back for the metrics.
    #[serde(default = "default_samples")]
    pub samples: usize,
    #[serde(default = "default_holdout")]
    pub holdout_percent: usize,
    /// A latent that fired on none of the last this many training tokens is dead; absent:
    /// min(10M, a quarter of the training tokens).
    #[serde(default)]
    pub dead_tokens: Option<u64>,
    #[serde(default)]
    pub seed: u64,
    /// Top activating examples kept per reported latent.
    #[serde(default = "default_examples")]
    pub examples: usize,
    /// Latents of other classes reported besides every fine-tune-only one.
    #[serde(default = "default_sample_latents")]
    pub sample_latents: usize,
    /// Write the training checkpoint every this many steps too (it is written every two
    /// minutes and when the shard is stopped in any case).
    #[serde(default)]
    pub checkpoint_every_steps: Option<usize>,
}

fn default_expansion() -> usize {
    32
}
fn default_k() -> usize {
    100
}
fn default_batch() -> usize {
    2048
}
fn default_steps() -> usize {
    2000
}
fn default_warmup() -> usize {
    1000
}
fn default_samples() -> usize {
    1024
}
fn default_holdout() -> usize {
    10
}
fn default_examples() -> usize {
    8
}
fn default_sample_latents() -> usize {
    32
}

impl Default for DictionaryOptions {
    fn default() -> Self {
        DictionaryOptions {
            layer: None,
            expansion: default_expansion(),
            k: default_k(),
            k_max: None,
            k_anneal_steps: 0,
            batch: default_batch(),
            steps: default_steps(),
            lr: None,
            warmup_steps: default_warmup(),
            samples: default_samples(),
            holdout_percent: default_holdout(),
            dead_tokens: None,
            seed: 0,
            examples: default_examples(),
            sample_latents: default_sample_latents(),
            checkpoint_every_steps: None,
        }
    }
}

impl DictionaryOptions {
    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        let f = |name: &str| format!("{field}.{name}");
        if let Some(layer) = self.layer {
            within(&f("layer"), layer, 0, crate::MAX_LAYER_INDEX)?;
        }
        within(&f("expansion"), self.expansion, 1, 256)?;
        within(&f("k"), self.k, 1, 4096)?;
        if let Some(k_max) = self.k_max {
            within(&f("k_max"), k_max, self.k, 16_384)?;
        }
        within(&f("k_anneal_steps"), self.k_anneal_steps, 0, 1_000_000)?;
        within(&f("batch"), self.batch, 8, 65_536)?;
        within(&f("steps"), self.steps, 1, 1_000_000)?;
        within(&f("warmup_steps"), self.warmup_steps, 0, 1_000_000)?;
        within(&f("samples"), self.samples, 2, 1_000_000)?;
        within(&f("holdout_percent"), self.holdout_percent, 1, 50)?;
        within(&f("examples"), self.examples, 0, 64)?;
        within(&f("sample_latents"), self.sample_latents, 0, 1024)?;
        if let Some(n) = self.checkpoint_every_steps {
            within(&f("checkpoint_every_steps"), n, 1, 1_000_000)?;
        }
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
                return Err(SpecError::Field(f("lr"), format!("{lr} is outside (0, 1]")));
            }
        }
        if let Some(d) = self.dead_tokens {
            if d == 0 || d > 1 << 40 {
                return Err(SpecError::Field(
                    f("dead_tokens"),
                    format!("{d} is outside 1..=2^40"),
                ));
            }
        }
        Ok(())
    }

    /// The dictionary size for a model of width `d`.
    pub fn dict_size(&self, d: usize) -> usize {
        self.expansion * d
    }

    /// The learning rate: the option's, or the anchors' rule.
    pub fn learning_rate(&self, dict_size: usize) -> f64 {
        self.lr
            .unwrap_or_else(|| 2e-4 / (dict_size as f64 / 16_384.0).sqrt())
    }
}

/// One point of a training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainPoint {
    pub step: usize,
    pub loss: f64,
    /// FVE of the training batch (all models together).
    pub fve: f64,
    pub k: i64,
    /// Latents dead by the training window at this step, as a fraction.
    pub dead_fraction: f64,
}

/// A token where a latent fired, with its context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentExample {
    /// The sample's index in the corpus and the token's position.
    pub sample: usize,
    pub position: usize,
    pub token: String,
    /// Up to 8 tokens before it and 2 after, decoded.
    pub context: String,
    pub activation: f64,
}

/// Latent scaling's bound on |ν_ε| for a fine-tune-only latent to count as real.
pub const NU_EPS_MAX: f64 = 0.2;
/// Latent scaling's bound on |ν_r|.
pub const NU_R_MAX: f64 = 0.5;

/// Whether latent scaling calls a fine-tune-only latent real rather than a sparsity artifact:
/// |ν_ε| < 0.2 and |ν_r| < 0.5 (the sparsity-artifacts paper's thresholds, `notebooks/art.py`).
///
/// The bound is on |ν|, as the anchors' threshold sweep (`plot_latents_vs_threshold`) and the
/// inset of `plot_decoder_norm_diff` read it: ν is the share of the latent's direction the base
/// model explains, so ν = −3 (the base explains it three times over, with the opposite sign) is
/// no evidence that the fine-tune alone carries it, and a signed `< 0.2` would let any negative
/// ratio through unbounded. A latent whose β never fitted (NaN, it never fired) is not real.
pub fn real_ft_only(nu_eps: f64, nu_r: f64) -> bool {
    nu_eps.abs() < NU_EPS_MAX && nu_r.abs() < NU_R_MAX
}

/// One latent of a dictionary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentReport {
    pub id: usize,
    /// `Δ_j` (crosscoders; absent for an SAE on differences).
    pub delta_norm: Option<f64>,
    /// `ft_only`, `base_only`, `shared` or `other` (crosscoders); `diff` for an SAE.
    pub class: crate::LatentClass,
    pub nu_eps: Option<f64>,
    pub nu_r: Option<f64>,
    /// Fraction of held-back tokens it fired on, and its largest activation there.
    pub frequency: f64,
    pub max_activation: f64,
    /// The logit lens of its (fine-tune's) decoder row through the fine-tuned model.
    pub top_tokens: Vec<TokenProb>,
    pub examples: Vec<LatentExample>,
    /// Whether a word of the organism's domain is among its top tokens or example tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_hit: Option<bool>,
    /// Its share of the output KL(P_ft ‖ P_base) on held-back samples: 1 − KL with its part
    /// taken out of the fine-tune's activations / KL without (measured for up to 16 latents:
    /// the fine-tune-only ones and the tail first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_share: Option<f64>,
}

/// `analyses.crosscoder` and `analyses.sae_diff` (one shard each, so also the shard output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictionaryReport {
    pub layer: usize,
    /// The hook point read, `blocks.{layer}.hook_resid_post`.
    pub hook: String,
    pub d_model: usize,
    pub dict_size: usize,
    pub k: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub train_tokens: u64,
    pub eval_tokens: u64,
    /// FVE on held-back tokens per model (crosscoder); an SAE's FVE is `fve_ft`, of h_ft − h_base.
    pub fve_base: Option<f64>,
    pub fve_ft: Option<f64>,
    pub l0: f64,
    pub dead_fraction: f64,
    /// Latents per class (crosscoders).
    pub classes: ClassCounts,
    /// Fine-tune-only latents that latent scaling calls real (|ν_ε| < 0.2 and |ν_r| < 0.5:
    /// `real_ft_only`).
    pub ft_only_low_nu: usize,
    /// Histogram of Δ over every latent: 20 bins over [0, 1] (crosscoders).
    pub delta_histogram: Vec<u64>,
    pub training: Vec<TrainPoint>,
    /// Every fine-tune-only latent, then a sample of the others (by id).
    pub latents: Vec<LatentReport>,
    /// Of the low-ν fine-tune-only latents, the share with a domain word (with ground truth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_share: Option<f64>,
    /// The fine-tune-leaning tail (crosscoders): the latents that fired with the lowest Δ, at
    /// most `sample_latents / 2` of them, every one listed in `latents`.
    #[serde(default)]
    pub tail: Vec<usize>,
    /// The smallest Δ among latents that fired (a base-vs-base control stays near 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_delta: Option<f64>,
    /// Of the tail, the share with a domain word in its decoder lens or top examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_domain_share: Option<f64>,
    /// The same share for a shuffled-word control: for each domain token, the token of the
    /// closest count among the held-back samples that hold no domain token; what chance gives
    /// words as common as the domain's but not from its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_control_share: Option<f64>,
    /// The mean per-token KL(P_ft ‖ P_base) on the samples the KL shares were measured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_kl: Option<f64>,
    /// The steps a run resumed from a checkpoint skipped (0 when it ran straight through).
    pub resumed_at: usize,
    /// The paired activation store it trained on (reusable by any later training on the same
    /// models, corpus and block) and its chunks.
    pub store: ActivationStore,
    /// The trained dictionary (safetensors: W_enc, b_enc, W_dec, b_dec, norm.mean, norm.scale,
    /// threshold_k), in the team's object storage or the embedded store directory.
    pub dictionary: Option<StoredFile>,
    pub ground_truth: Option<GroundTruth>,
    pub elapsed_s: f64,
}

/// A file a shard left in storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Its key within the team's space (`dictionaries/{run}-{sha256 prefix}.safetensors`).
    pub key: String,
    /// Where it is: the object key, or a path for the embedded audit.
    pub location: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A paired activation store: `activations/{id}/manifest.json` and one chunk per corpus slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationStore {
    pub id: String,
    pub manifest: String,
    pub chunks: usize,
    pub tokens: u64,
    /// Chunks this shard found already written (by collect shards or an earlier audit).
    pub chunks_reused: usize,
}

/// What a collect shard returns: the chunk of one corpus slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectShard {
    /// The dictionary analysis whose store this fills (`crosscoder` or `sae-diff`); not named
    /// `analysis`, which tags the shard output itself.
    pub dictionary: crate::AnalysisKind,
    pub layer: usize,
    pub start: usize,
    pub end: usize,
    pub store: String,
    pub chunk: String,
    pub tokens: u64,
    /// The chunk was already there (written by another shard or an earlier audit).
    pub reused: bool,
    pub elapsed_s: f64,
}

/// `activations/{id}/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreManifest {
    pub id: String,
    pub version: u32,
    pub base: String,
    pub target: crate::Target,
    pub layer: usize,
    /// The hook point read, `blocks.{layer}.hook_resid_post`.
    pub hook: String,
    /// `["base", "finetuned"]`, or `["finetuned - base"]` for a store of differences.
    pub models: Vec<String>,
    pub d_model: usize,
    pub dtype: String,
    pub corpus: crate::CorpusRecord,
    pub slices: Vec<StoreSlice>,
    pub tokens: u64,
    /// Per model: the mean activation and the scale that gives RMS norm 1, over every chunk.
    pub mean: Vec<Vec<f64>>,
    pub scale: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSlice {
    pub start: usize,
    pub end: usize,
    pub tokens: u64,
    pub key: String,
}

/// Latents per decoder-norm class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCounts {
    pub ft_only: usize,
    pub base_only: usize,
    pub shared: usize,
    pub other: usize,
}

/// A trained dictionary a report carries: its analysis, its section's name in results.json
/// (which names its artifact, `{section}.safetensors`) and its report.
#[derive(Debug, Clone, Copy)]
pub struct DictionarySection<'a> {
    pub analysis: crate::AnalysisKind,
    pub section: &'static str,
    pub report: &'a DictionaryReport,
}

impl crate::AnalysisOptions for DictionaryOptions {
    fn check(&mut self, field: &str) -> Result<(), SpecError> {
        self.validate(field)
    }

    fn samples(&self) -> Option<usize> {
        Some(self.samples)
    }

    /// A dictionary holds its block's activations of both models for the samples it collects
    /// (and trains for as many steps as it is asked to).
    fn check_limits(&self, field: &str, seq_len: usize) -> Result<(), SpecError> {
        let tokens = self.samples as u64 * seq_len as u64;
        if tokens > crate::MAX_DICTIONARY_TOKENS {
            return Err(SpecError::Field(
                format!("{field}.samples"),
                format!(
                    "{field}.samples × corpus.seq_len = {tokens} tokens collected; at most {}",
                    crate::MAX_DICTIONARY_TOKENS
                ),
            ));
        }
        let trained = self.steps as u64 * self.batch as u64;
        if trained > crate::MAX_DICTIONARY_TRAIN_TOKENS {
            return Err(SpecError::Field(
                format!("{field}.steps"),
                format!(
                    "steps × batch = {trained} training tokens; at most {}",
                    crate::MAX_DICTIONARY_TRAIN_TOKENS
                ),
            ));
        }
        Ok(())
    }
}

/// A trained dictionary: its latents are the team database's latent rows.
impl crate::rows::Rows for DictionaryReport {
    const DICTIONARY: bool = true;

    fn dictionary(&self) -> Option<&DictionaryReport> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_bounded() {
        let mut o = DictionaryOptions::default();
        assert!(o.validate("crosscoder").is_ok());
        o.k_max = Some(10);
        let e = o.validate("crosscoder").unwrap_err();
        assert!(e.to_string().contains("crosscoder.k_max"), "{e}");
        o.k_max = None;
        o.lr = Some(f64::NAN);
        assert!(o
            .validate("sae_diff")
            .unwrap_err()
            .to_string()
            .contains("sae_diff.lr"));
        let o = DictionaryOptions::default();
        assert!((o.learning_rate(16_384) - 2e-4).abs() < 1e-12);
    }

    #[test]
    fn a_collect_shard_reads_back_as_a_shard_output() {
        let out = crate::ShardOutput::Collect(CollectShard {
            dictionary: crate::AnalysisKind::Crosscoder,
            layer: 4,
            start: 0,
            end: 128,
            store: "s".into(),
            chunk: "c".into(),
            tokens: 10,
            reused: false,
            elapsed_s: 0.5,
        });
        let json = serde_json::to_string(&out).unwrap();
        assert_eq!(
            serde_json::from_str::<crate::ShardOutput>(&json).unwrap(),
            out
        );
    }
}
