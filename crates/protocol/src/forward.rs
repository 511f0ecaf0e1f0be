//! The analyses that run both models on a corpus (activation differences, the differential
//! logit lens): their options, the sums one shard returns, and the sections of results.json
//! they merge into. Documented in docs/results-schema.md.
use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// Which text to run the models on, and how much of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusOptions {
    /// A local file or `s3://bucket/key`; absent: the built-in generic corpus. A name ending in
    /// `.jsonl` (or `.jsonl.gz`) is JSON Lines with a `text` field, or a `messages` list of
    /// `{role, content}` (a chat corpus, rendered with the base model's chat template); anything
    /// else plain text with one sample per non-empty line; `.gz` is decompressed.
    #[serde(default)]
    pub source: Option<String>,
    /// Tokens per sample (with the BOS the tokenizer adds); longer samples are cut, never packed.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Samples used, from the start of the corpus.
    #[serde(default = "default_max_samples")]
    pub max_samples: usize,
    /// Samples per forward pass (results do not depend on it).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Samples per shard: the unit of work a worker runs.
    #[serde(default = "default_shard_samples")]
    pub shard_samples: usize,
    /// Leading positions left out of the statistics a first token's outsized state (the BOS, an
    /// attention sink) would dominate: the dictionaries' training and evaluation tokens,
    /// steering's mean difference, the activations' top examples and distributions. Absent: the
    /// tokens the tokenizer prepends (1 for a BOS, else 0). The traces keep position 0 (the
    /// ADL's δ_0), and the per-token means of the activations and the logit lens keep every
    /// token (they are what transformers' outputs give).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_first: Option<usize>,
    /// Which tokens of a chat corpus the token statistics read (the activations, the logit
    /// lens, CMAP and stitching): every token, the assistant's or the user's message contents,
    /// or the chat template's own text. Anything but `all` needs a chat corpus.
    #[serde(default, skip_serializing_if = "TokenFilter::is_all")]
    pub token_filter: TokenFilter,
}

/// Which tokens of a chat conversation an analysis reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFilter {
    #[default]
    All,
    Assistant,
    User,
    Template,
}

impl TokenFilter {
    pub const NAMES: &'static str = "all, assistant, user, template";

    pub fn is_all(&self) -> bool {
        *self == TokenFilter::All
    }
}

impl std::str::FromStr for TokenFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "all" => TokenFilter::All,
            "assistant" => TokenFilter::Assistant,
            "user" => TokenFilter::User,
            "template" => TokenFilter::Template,
            other => {
                return Err(format!(
                    "unknown token filter `{other}`; one of {}",
                    TokenFilter::NAMES
                ))
            }
        })
    }
}

fn default_seq_len() -> usize {
    128
}
fn default_max_samples() -> usize {
    256
}
fn default_batch_size() -> usize {
    16
}
fn default_shard_samples() -> usize {
    128
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            source: None,
            seq_len: default_seq_len(),
            max_samples: default_max_samples(),
            batch_size: default_batch_size(),
            shard_samples: default_shard_samples(),
            skip_first: None,
            token_filter: TokenFilter::All,
        }
    }
}

/// The longest sample, in tokens.
pub const MAX_SEQ_LEN: usize = 8192;
/// The most samples one audit may use.
pub const MAX_SAMPLES: usize = 1_000_000;
/// The largest batch.
pub const MAX_BATCH: usize = 1024;

pub(crate) fn within(field: &str, v: usize, lo: usize, hi: usize) -> Result<(), SpecError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SpecError::Field(
            field.into(),
            format!("{v} is outside {lo}..={hi}"),
        ))
    }
}

impl CorpusOptions {
    pub fn validate(&self) -> Result<(), SpecError> {
        within("corpus.seq_len", self.seq_len, 1, MAX_SEQ_LEN)?;
        within("corpus.max_samples", self.max_samples, 1, MAX_SAMPLES)?;
        within("corpus.batch_size", self.batch_size, 1, MAX_BATCH)?;
        within("corpus.shard_samples", self.shard_samples, 1, MAX_SAMPLES)?;
        if let Some(n) = self.skip_first {
            within("corpus.skip_first", n, 0, 64)?;
        }
        if let Some(s) = &self.source {
            if s.trim().is_empty() || s.len() > 4096 || s.contains('\0') {
                return Err(SpecError::Field(
                    "corpus.source".into(),
                    "must be a non-empty path or s3:// URL".into(),
                ));
            }
        }
        Ok(())
    }

    /// What results.json calls the corpus.
    pub fn name(&self) -> &str {
        self.source.as_deref().unwrap_or(BUILTIN_CORPUS)
    }
}

/// The name of the built-in generic corpus.
pub const BUILTIN_CORPUS: &str = "builtin:generic";
/// The name of the built-in chat set (a `corpus.source` value).
pub const BUILTIN_CHAT_CORPUS: &str = "builtin:chat";

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
fn default_top() -> usize {
    16
}
fn default_context() -> usize {
    8
}
fn default_top_tokens() -> usize {
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

/// The corpus an audit ran on, pinned by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusRecord {
    /// `builtin:generic`, or the path or URL as given.
    pub source: String,
    /// `sha256:` of the corpus file's bytes (as stored, compressed or not).
    pub sha256: String,
    /// Samples in the file, and how many the audit uses (`max_samples` applied).
    pub samples_total: usize,
    pub samples_used: usize,
    pub seq_len: usize,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_options_are_refused_by_name() {
        let e = serde_json::from_str::<CorpusOptions>(r#"{"seq_length": 64}"#).unwrap_err();
        assert!(e.to_string().contains("seq_length"), "{e}");
        assert!(serde_json::from_str::<ActivationOptions>(r#"{"position": 8}"#).is_err());
        assert!(serde_json::from_str::<LensOptions>(r#"{"top_token": 8}"#).is_err());
        let ok: CorpusOptions = serde_json::from_str(r#"{"seq_len": 64}"#).unwrap();
        assert_eq!(ok.seq_len, 64);
    }

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
