//! The differential logit lens: options, what one shard (a slice of the corpus) returns, and the
//! `logit_lens` section of results.json.
use serde::{Deserialize, Serialize};

use crate::activations::{default_top, default_top_tokens};

use crate::error::{within, SpecError};
use crate::Histogram;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LensOptions {
    /// Tokens listed per block whose probability rises (and falls) most.
    #[serde(default = "default_top_tokens")]
    pub top_tokens: usize,
    /// Samples with the largest output KL kept.
    #[serde(default = "default_top")]
    pub top_samples: usize,
}

impl Default for LensOptions {
    fn default() -> Self {
        LensOptions {
            top_tokens: default_top_tokens(),
            top_samples: default_top(),
        }
    }
}

impl LensOptions {
    pub fn validate(&self) -> Result<(), SpecError> {
        within("logit_lens.top_tokens", self.top_tokens, 1, 1000)?;
        within("logit_lens.top_samples", self.top_samples, 0, 1000)
    }
}

/// Sums of KL(p_ft || p_base) over the tokens of one shard, at one block or at the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlSums {
    /// The block; absent for the output logits.
    pub layer: Option<usize>,
    pub n: u64,
    pub kl: f64,
    pub hist: Histogram,
    /// Sum over tokens of p_ft(v) - p_base(v), for each shared id v.
    pub prob_delta: Vec<f64>,
}

/// A sample whose output distribution moved most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleKl {
    pub sample: usize,
    pub n_tokens: u64,
    pub kl_mean: f64,
    pub text: String,
}

/// How the two vocabularies compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabCompare {
    pub base_size: usize,
    pub finetuned_size: usize,
    /// Ids compared: `0..shared`.
    pub shared: usize,
    /// Ids only the fine-tuned model has, with their text and the mean probability the
    /// fine-tuned model gives them at the output.
    pub added: Vec<TokenShift>,
}

/// What one shard of the logit lens returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensShard {
    pub start: usize,
    pub end: usize,
    pub layers: Vec<KlSums>,
    pub output: KlSums,
    pub top_samples: Vec<SampleKl>,
    /// Sum over tokens of the fine-tuned model's output probability of each added id.
    pub added_mass: Vec<f64>,
    pub vocab: VocabCompare,
    /// The text of every shared id (only in the shard that starts at sample 0).
    #[serde(default)]
    pub token_text: Vec<String>,
    pub elapsed_s: f64,
}

/// A token and how its probability moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenShift {
    pub id: usize,
    pub token: String,
    /// Mean over tokens of p_ft - p_base (for an added id: the fine-tuned probability).
    pub mean_prob_delta: f64,
}

/// `analyses.logit_lens.layers[]` and `.output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensLayer {
    pub layer: Option<usize>,
    pub n_tokens: u64,
    /// Mean over non-pad tokens of KL(p_ft || p_base), natural log.
    pub kl_mean: f64,
    pub kl_p50: f64,
    pub kl_p95: f64,
    pub rising: Vec<TokenShift>,
    pub falling: Vec<TokenShift>,
}

/// `analyses.logit_lens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensReport {
    pub n_samples: usize,
    pub layers: Vec<LensLayer>,
    pub output: LensLayer,
    pub top_samples: Vec<SampleKl>,
    pub vocab: VocabCompare,
}

impl crate::AnalysisOptions for LensOptions {
    fn check(&mut self, _field: &str) -> Result<(), SpecError> {
        self.validate()
    }
}

/// The scan's block rules and the team database read each block's KL and the output's.
impl crate::rows::Rows for LensReport {
    const BLOCKS: &'static [&'static str] = &["/layers", "/output"];

    fn block_rows(&self, kind: crate::AnalysisKind) -> Vec<crate::rows::BlockRow> {
        let row = |l: &LensLayer| crate::rows::BlockRow {
            kl_mean: Some(l.kl_mean),
            ..crate::rows::BlockRow::new(
                kind,
                l.layer,
                match l.layer {
                    Some(_) => crate::BlockSite::ResidPost,
                    None => crate::BlockSite::Output,
                },
            )
        };
        self.layers.iter().chain([&self.output]).map(row).collect()
    }
}
