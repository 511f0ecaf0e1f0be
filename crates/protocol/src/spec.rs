//! What to audit: the audit spec a user submits and the layer shards it is planned into.
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::{AnalysisKind, CorpusOptions, Dtype, Options};

impl AnalysisKind {
    /// Whether the analysis runs both models on a corpus (and so needs one).
    pub fn needs_corpus(self) -> bool {
        self.shard_unit() != ShardUnit::Tensors
    }
}

impl fmt::Display for AnalysisKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AnalysisKind {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        AnalysisKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s || k.as_str().replace('-', "_") == s)
            .ok_or_else(|| {
                SpecError::Analyses(format!(
                    "unknown analysis `{s}`; available: {}",
                    AnalysisKind::ALL.map(AnalysisKind::as_str).join(", ")
                ))
            })
    }
}

// What the database's `analysis` columns map through.
impl TryFrom<String> for AnalysisKind {
    type Error = SpecError;

    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

/// How an analysis splits into shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardUnit {
    /// The weight audit's blocks and the tensors outside them.
    Tensors,
    /// Slices of the corpus.
    Samples,
    /// One block each.
    Block,
    /// One sequence position each.
    Position,
    /// Slices of the corpus (collecting activations), then one block (training on them).
    SamplesThenBlock,
}

/// What is compared with the base: a full checkpoint, or a PEFT LoRA adapter on the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    Checkpoint { reference: String },
    Adapter { reference: String },
}

impl Target {
    pub fn reference(&self) -> &str {
        match self {
            Target::Checkpoint { reference } | Target::Adapter { reference } => reference,
        }
    }

    /// The same kind of target, at another reference (a local copy, a pinned revision).
    pub fn with_reference(&self, reference: String) -> Target {
        match self {
            Target::Checkpoint { .. } => Target::Checkpoint { reference },
            Target::Adapter { .. } => Target::Adapter { reference },
        }
    }
}

/// One audit as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditSpec {
    pub base: String,
    pub target: Target,
    pub analyses: Vec<AnalysisKind>,
    /// Blocks to audit; `None` audits every block and the tensors outside the blocks.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// The text the corpus analyses run both models on.
    #[serde(default)]
    pub corpus: CorpusOptions,
    /// The dtype the corpus analyses hold the weights in.
    #[serde(default, skip_serializing_if = "Dtype::is_auto")]
    pub dtype: Dtype,
    /// The most bytes of both models' block weights one shard of a block-streamed analysis
    /// (activations, logit lens) holds: a pair over it runs as chains of layer-range shards,
    /// each handing the residual streams on to the next through object storage. `None`: every
    /// shard runs every block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_bytes: Option<u64>,
    /// Each analysis's options, under its name.
    #[serde(flatten)]
    pub options: Options,
}

impl Options {
    /// The corpus's checks, then each analysis's own checks of its options (the first error
    /// found is the one reported).
    fn validate(&mut self, corpus: &CorpusOptions) -> Result<(), SpecError> {
        corpus.validate()?;
        for (kind, options) in self.each_mut() {
            options.check(kind.field())?;
        }
        Ok(())
    }
}

impl AuditSpec {
    /// A spec with the default options of every analysis.
    pub fn new(base: String, target: Target, analyses: Vec<AnalysisKind>) -> AuditSpec {
        AuditSpec {
            base,
            target,
            analyses,
            layers: None,
            corpus: CorpusOptions::default(),
            dtype: Dtype::Auto,
            range_bytes: None,
            options: Options::default(),
        }
    }

    /// The one check of a spec's own fields, for the API and the embedded audit alike (what
    /// the spec names is checked against the reference policy separately).
    pub fn validate(&mut self) -> Result<(), SpecError> {
        if self.analyses.is_empty() {
            return Err(SpecError::Analyses(
                "must name at least one analysis".into(),
            ));
        }
        self.analyses.sort_unstable();
        self.analyses.dedup();
        if let Some(layers) = &self.layers {
            self.layers = Some(normalize_layers(layers, MAX_LAYER_INDEX)?);
        }
        if self.range_bytes == Some(0) {
            return Err(SpecError::Field(
                "range_bytes".into(),
                "must be at least 1 (leave it out to run every block in one shard)".into(),
            ));
        }
        self.options.validate(&self.corpus)?;
        // A position no sample can reach would fail the audit after its forward passes.
        for (kind, options) in self.options.each() {
            if self.runs(kind) {
                options.check_seq_len(kind.field(), self.corpus.seq_len)?;
            }
        }
        Ok(())
    }

    /// Checks the work the spec asks for against `limits` (after [`AuditSpec::validate`]).
    pub fn check_limits(&self, limits: &crate::Limits) -> Result<(), SpecError> {
        if let Some(layers) = &self.layers {
            normalize_layers(layers, limits.max_blocks)?;
        }
        if self.needs_corpus() {
            // Every sample read counts, whichever analysis asked for it.
            let read = self.samples_read();
            let tokens = read as u64 * self.corpus.seq_len as u64;
            if tokens > limits.max_corpus_tokens {
                return Err(SpecError::Field(
                    "corpus".into(),
                    format!(
                        "{read} samples read (the most any analysis asks for: corpus.max_samples \
                         or an analysis's own samples) × seq_len = {tokens} tokens; the limit \
                         is {} (--max-corpus-tokens)",
                        limits.max_corpus_tokens
                    ),
                ));
            }
            let per_shard = self.corpus.shard_samples as u64 * self.corpus.seq_len as u64;
            if per_shard > MAX_SHARD_TOKENS {
                return Err(SpecError::Field(
                    "corpus.shard_samples".into(),
                    format!(
                        "shard_samples × seq_len = {per_shard} tokens per shard; at most \
                         {MAX_SHARD_TOKENS} (a shard keeps per-token values for its quantiles)"
                    ),
                ));
            }
            // Each analysis's own bounds (CMAP's and steering's slice per block, what a
            // dictionary collects and trains on).
            for (kind, options) in self.options.each() {
                if self.runs(kind) {
                    options.check_limits(kind.field(), self.corpus.seq_len)?;
                }
            }
            // Sample shards: the corpus-wide analyses' and the dictionaries' collect shards.
            let shards = std::iter::once(self.corpus.max_samples)
                .chain(
                    self.options
                        .each()
                        .into_iter()
                        .filter(|(kind, _)| {
                            self.runs(*kind) && kind.shard_unit() == ShardUnit::SamplesThenBlock
                        })
                        .filter_map(|(_, options)| options.samples()),
                )
                .map(|n| n.div_ceil(self.corpus.shard_samples))
                .max()
                .unwrap_or(0);
            if shards > MAX_CORPUS_SHARDS {
                return Err(SpecError::Field(
                    "corpus.shard_samples".into(),
                    format!("{shards} shards per analysis; at most {MAX_CORPUS_SHARDS}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether an analysis of the spec runs the models on a corpus.
    pub fn needs_corpus(&self) -> bool {
        self.analyses.iter().any(|a| a.needs_corpus())
    }

    pub fn runs(&self, kind: AnalysisKind) -> bool {
        self.analyses.contains(&kind)
    }

    /// Samples read from the corpus: `corpus.max_samples` for the analyses that read every
    /// sample (activations, logit lens, stitching), or more when an analysis that runs asks
    /// for its own count (traces 10,000 as the ADL does, CMAP 64, steering 32, dictionaries
    /// 1024), each of which reads its own first samples.
    pub fn samples_read(&self) -> usize {
        self.options
            .each()
            .into_iter()
            .filter(|(kind, _)| self.runs(*kind))
            .filter_map(|(_, options)| options.samples())
            .fold(self.corpus.max_samples, usize::max)
    }

    /// The corpus options a reader uses: `corpus` with `max_samples` raised to
    /// [`AuditSpec::samples_read`] (what every shard reads, and planning records).
    pub fn corpus_read(&self) -> CorpusOptions {
        CorpusOptions {
            max_samples: self.samples_read(),
            ..self.corpus.clone()
        }
    }
}

/// Refuses a slice of `samples` run per block (CMAP, steering) above a shard's tokens.
pub(crate) fn check_block_tokens(
    field: &str,
    samples: usize,
    seq_len: usize,
) -> Result<(), SpecError> {
    let tokens = samples as u64 * seq_len as u64;
    if tokens > MAX_SHARD_TOKENS {
        return Err(SpecError::Field(
            field.into(),
            format!(
                "{field} × corpus.seq_len = {tokens} tokens per block; at most {MAX_SHARD_TOKENS}"
            ),
        ));
    }
    Ok(())
}

/// Tokens one corpus shard may run (`shard_samples` × `seq_len`).
pub const MAX_SHARD_TOKENS: u64 = 1 << 20;
/// Corpus shards one analysis may have.
pub const MAX_CORPUS_SHARDS: usize = 4096;
/// Tokens whose activations one dictionary analysis collects (held in memory while it trains).
pub const MAX_DICTIONARY_TOKENS: u64 = 1 << 22;
/// Tokens one dictionary analysis trains on (steps × batch).
pub const MAX_DICTIONARY_TRAIN_TOKENS: u64 = 1 << 32;

/// The most singular values a tensor's report may list.
pub const MAX_TOP_K: usize = 4096;

/// The unit of work: for the weight audit one transformer block, or everything outside the
/// blocks (embeddings, final norm, unembedding); for an analysis that runs the models, a slice
/// of the corpus's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardKey {
    Layer(usize),
    NonLayer,
    /// Samples `start..end` of the corpus, for `analysis`.
    Samples {
        analysis: AnalysisKind,
        start: usize,
        end: usize,
    },
    /// One block, for an analysis that runs the models block by block (CMAP, steering).
    Block {
        analysis: AnalysisKind,
        layer: usize,
    },
    /// One sequence position, for the readable traces.
    Position {
        analysis: AnalysisKind,
        position: usize,
    },
    /// Blocks `first..last` of samples `start..end`: one link of a chain of layer ranges, for
    /// a pair too large for one shard's budget (`AuditSpec::range_bytes`). It starts from the
    /// residual streams and sums its predecessor (the link ending at `first`) handed over.
    Range {
        analysis: AnalysisKind,
        start: usize,
        end: usize,
        first: usize,
        last: usize,
    },
}

impl ShardKey {
    /// The shard that owns a tensor, from its checkpoint name.
    pub fn of_tensor(name: &str) -> ShardKey {
        match crate::naming::layer_of(name) {
            Some(layer) => ShardKey::Layer(layer),
            None => ShardKey::NonLayer,
        }
    }
}

impl ShardKey {
    /// The analysis the shard belongs to.
    pub fn analysis(&self) -> AnalysisKind {
        match self {
            ShardKey::Layer(_) | ShardKey::NonLayer => AnalysisKind::BY_TENSOR,
            ShardKey::Samples { analysis, .. }
            | ShardKey::Block { analysis, .. }
            | ShardKey::Position { analysis, .. }
            | ShardKey::Range { analysis, .. } => *analysis,
        }
    }

    /// The samples `start..end` a sample shard or a layer range reads.
    pub fn samples(&self) -> Option<(usize, usize)> {
        match *self {
            ShardKey::Samples { start, end, .. } | ShardKey::Range { start, end, .. } => {
                Some((start, end))
            }
            _ => None,
        }
    }
}

/// What a layer range that is not its chain's last returns: where it left the residual
/// streams and the sums it had accumulated, for the next link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkShard {
    /// The link (a [`ShardKey::Range`]).
    pub link: ShardKey,
    /// The hand-over object's key in the team's shard store, its size and sha256.
    pub state: String,
    pub bytes: u64,
    pub sha256: String,
    pub elapsed_s: f64,
}

/// Each key's predecessor in its chain of layer ranges (the link of the same analysis and
/// samples that ends where it starts), `None` for a key that waits on nothing: what the
/// scheduler holds a link back until.
pub fn chain_predecessors(keys: &[ShardKey]) -> Vec<Option<ShardKey>> {
    let ends: std::collections::HashMap<_, ShardKey> = keys
        .iter()
        .filter_map(|k| match *k {
            ShardKey::Range {
                analysis,
                start,
                end,
                last,
                ..
            } => Some(((analysis, start, end, last), *k)),
            _ => None,
        })
        .collect();
    keys.iter()
        .map(|k| match *k {
            ShardKey::Range {
                analysis,
                start,
                end,
                first,
                ..
            } if first > 0 => ends.get(&(analysis, start, end, first)).copied(),
            _ => None,
        })
        .collect()
}

/// Splits blocks `0..block_bytes.len()` into consecutive ranges whose bytes (both models'
/// weights of each block) stay within `budget`, one block at least per range.
pub fn layer_ranges(block_bytes: &[u64], budget: u64) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let (mut first, mut held) = (0, 0u64);
    for (l, &b) in block_bytes.iter().enumerate() {
        if l > first && held.saturating_add(b) > budget {
            ranges.push((first, l));
            (first, held) = (l, 0);
        }
        held = held.saturating_add(b);
    }
    if first < block_bytes.len() {
        ranges.push((first, block_bytes.len()));
    }
    ranges
}

impl fmt::Display for ShardKey {
    /// A stable, sortable key for object names and database rows: `layer-0007`, `non-layer`,
    /// `logit-lens/samples-000064-000128`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardKey::Layer(i) => write!(f, "layer-{i:04}"),
            ShardKey::NonLayer => f.write_str("non-layer"),
            ShardKey::Samples {
                analysis,
                start,
                end,
            } => write!(f, "{analysis}/samples-{start:06}-{end:06}"),
            ShardKey::Block { analysis, layer } => write!(f, "{analysis}/block-{layer:04}"),
            ShardKey::Position { analysis, position } => {
                write!(f, "{analysis}/position-{position:04}")
            }
            ShardKey::Range {
                analysis,
                start,
                end,
                first,
                last,
            } => write!(
                f,
                "{analysis}/samples-{start:06}-{end:06}/blocks-{first:04}-{last:04}"
            ),
        }
    }
}

impl std::str::FromStr for ShardKey {
    type Err = SpecError;

    /// Reads back what `Display` wrote.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::ShardKey(s.to_string());
        if s == "non-layer" {
            return Ok(ShardKey::NonLayer);
        }
        if let Some(i) = s.strip_prefix("layer-") {
            let key = i.parse().map(ShardKey::Layer).map_err(|_| bad())?;
            return if key.to_string() == s {
                Ok(key)
            } else {
                Err(bad())
            };
        }
        let (analysis, rest) = s.split_once('/').ok_or_else(bad)?;
        let analysis: AnalysisKind = analysis.parse().map_err(|_| bad())?;
        let key = if let Some(range) = rest.strip_prefix("samples-") {
            let (range, blocks) = match range.split_once("/blocks-") {
                Some((samples, blocks)) => (samples, Some(blocks)),
                None => (range, None),
            };
            let pair = |t: &str| -> Result<(usize, usize), SpecError> {
                let (a, b) = t.split_once('-').ok_or_else(bad)?;
                let (a, b) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a >= b {
                    return Err(bad());
                }
                Ok((a, b))
            };
            let (start, end) = pair(range)?;
            let unit = analysis.shard_unit();
            match blocks {
                None if matches!(unit, ShardUnit::Samples | ShardUnit::SamplesThenBlock) => {
                    ShardKey::Samples {
                        analysis,
                        start,
                        end,
                    }
                }
                Some(blocks) if unit == ShardUnit::Samples => {
                    let (first, last) = pair(blocks)?;
                    ShardKey::Range {
                        analysis,
                        start,
                        end,
                        first,
                        last,
                    }
                }
                _ => return Err(bad()),
            }
        } else if let Some(layer) = rest.strip_prefix("block-") {
            if !matches!(
                analysis.shard_unit(),
                ShardUnit::Block | ShardUnit::SamplesThenBlock
            ) {
                return Err(bad());
            }
            ShardKey::Block {
                analysis,
                layer: layer.parse().map_err(|_| bad())?,
            }
        } else if let Some(position) = rest.strip_prefix("position-") {
            if analysis.shard_unit() != ShardUnit::Position {
                return Err(bad());
            }
            ShardKey::Position {
                analysis,
                position: position.parse().map_err(|_| bad())?,
            }
        } else {
            return Err(bad());
        };
        // Only the one spelling `Display` writes (no `layer-7`, no `logit_lens/...`).
        if key.to_string() != s {
            return Err(bad());
        }
        Ok(key)
    }
}

/// Everything a worker needs to run one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub base: String,
    pub target: Target,
    pub shard: ShardKey,
    #[serde(default)]
    pub corpus: CorpusOptions,
    #[serde(default, skip_serializing_if = "Dtype::is_auto")]
    pub dtype: Dtype,
    #[serde(flatten)]
    pub options: Options,
}

impl ShardSpec {
    /// The shard `shard` of the audit `spec`.
    pub fn of(spec: &AuditSpec, shard: ShardKey) -> ShardSpec {
        ShardSpec {
            base: spec.base.clone(),
            target: spec.target.clone(),
            shard,
            // What the shard reads (planning recorded the same samples).
            corpus: spec.corpus_read(),
            dtype: spec.dtype,
            options: spec.options.clone(),
        }
    }
}

/// Parses `--layers` syntax: `all`, or comma-separated indices and ranges (`0,3,5-7`).
pub fn parse_layers(s: &str) -> Result<Option<Vec<usize>>, SpecError> {
    let s = s.trim();
    if s.is_empty() || s == "all" {
        return Ok(None);
    }
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| SpecError::Layers(format!("`{t}` is not a layer index")))
    };
    // A bit per possible index (8 KiB), so no list, however many ranges it repeats, holds
    // more than the sorted distinct indices it names.
    let mut named = vec![0u64; MAX_LAYER_INDEX / 64];
    let mut mark = |l: usize| named[l / 64] |= 1 << (l % 64);
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b >= MAX_LAYER_INDEX {
                    return Err(SpecError::Layers(format!(
                        "`{part}`: layer indices stop at {}",
                        MAX_LAYER_INDEX - 1
                    )));
                }
                if a > b {
                    return Err(SpecError::Layers(format!("range `{part}` is reversed")));
                }
                (a..=b).for_each(&mut mark);
            }
            None => {
                let l = num(part)?;
                if l >= MAX_LAYER_INDEX {
                    return Err(SpecError::Layers(format!(
                        "layer {l} is beyond the limit of {MAX_LAYER_INDEX} blocks per model"
                    )));
                }
                mark(l);
            }
        }
    }
    let out: Vec<usize> = (0..MAX_LAYER_INDEX)
        .filter(|&l| named[l / 64] & (1 << (l % 64)) != 0)
        .collect();
    Ok(Some(out))
}

/// No model this tool audits has more blocks; bounds what a layer list may allocate.
pub const MAX_LAYER_INDEX: usize = 1 << 16;

/// Sorts and deduplicates a layer list and checks every index is below `max_blocks`, so the
/// shards planned from it are distinct and their count is the list's length.
pub fn normalize_layers(layers: &[usize], max_blocks: usize) -> Result<Vec<usize>, SpecError> {
    if layers.is_empty() {
        return Err(SpecError::Layers(
            "must not be empty (omit it to audit every layer)".into(),
        ));
    }
    if let Some(bad) = layers.iter().find(|&&l| l >= max_blocks) {
        return Err(SpecError::Layers(format!(
            "layer {bad} is beyond the limit of {max_blocks} blocks per model"
        )));
    }
    let mut out = layers.to_vec();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The weight audit's shards for a model with `n_layers` blocks, in order: one per block
/// (those `layers` names, or all of them and the tensors outside the blocks).
pub fn weight_shards(
    layers: Option<&[usize]>,
    n_layers: usize,
) -> Result<Vec<ShardKey>, SpecError> {
    Ok(match layers {
        None => (0..n_layers)
            .map(ShardKey::Layer)
            .chain([ShardKey::NonLayer])
            .collect(),
        Some(layers) => {
            if let Some(bad) = layers.iter().find(|&&l| l >= n_layers) {
                return Err(SpecError::Layers(format!(
                    "layer {bad} does not exist; the model has {n_layers} (0..={})",
                    n_layers.saturating_sub(1)
                )));
            }
            let mut keys: Vec<ShardKey> = layers.iter().copied().map(ShardKey::Layer).collect();
            // A repeated layer would be one shard row but two in the count.
            keys.sort_unstable();
            keys.dedup();
            keys
        }
    })
}

/// The shards of an analysis that runs the models: consecutive slices of `per_shard` samples
/// covering `0..n_samples`.
pub fn sample_shards(analysis: AnalysisKind, n_samples: usize, per_shard: usize) -> Vec<ShardKey> {
    let per_shard = per_shard.max(1);
    (0..n_samples)
        .step_by(per_shard)
        .map(|start| ShardKey::Samples {
            analysis,
            start,
            end: (start + per_shard).min(n_samples),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_syntax() {
        assert_eq!(parse_layers("all"), Ok(None));
        assert_eq!(parse_layers("3,0-2,2"), Ok(Some(vec![0, 1, 2, 3])));
        assert!(parse_layers("2-1").is_err());
        assert!(parse_layers("0-99999999999").is_err());
        assert_eq!(normalize_layers(&[3, 0, 3], 4), Ok(vec![0, 3]));
        assert!(normalize_layers(&[4], 4).is_err());
        assert!(normalize_layers(&[], 4).is_err());
        assert!(parse_layers("x")
            .unwrap_err()
            .to_string()
            .contains("field `layers`"));
    }

    #[test]
    fn plans_one_shard_per_layer_plus_the_rest() {
        assert_eq!(
            weight_shards(None, 2).unwrap(),
            [ShardKey::Layer(0), ShardKey::Layer(1), ShardKey::NonLayer]
        );
        assert_eq!(weight_shards(Some(&[1]), 2).unwrap().len(), 1);
        assert_eq!(weight_shards(Some(&[1, 0, 1]), 2).unwrap().len(), 2);
        assert!(weight_shards(Some(&[5]), 2).is_err());
        assert_eq!(ShardKey::Layer(7).to_string(), "layer-0007");
    }

    #[test]
    fn sample_shards_cover_the_corpus_and_keys_read_back() {
        let keys = sample_shards(AnalysisKind::LogitLens, 130, 64);
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[2].to_string(), "logit-lens/samples-000128-000130");
        for key in keys.into_iter().chain([
            ShardKey::Layer(3),
            ShardKey::NonLayer,
            ShardKey::Block {
                analysis: AnalysisKind::Cmap,
                layer: 2,
            },
            ShardKey::Position {
                analysis: AnalysisKind::Traces,
                position: 4,
            },
            // A dictionary's collect slices and its training block.
            ShardKey::Samples {
                analysis: AnalysisKind::Crosscoder,
                start: 0,
                end: 128,
            },
            ShardKey::Block {
                analysis: AnalysisKind::SaeDiff,
                layer: 4,
            },
            // A layer range of a sample slice.
            ShardKey::Range {
                analysis: AnalysisKind::Activations,
                start: 0,
                end: 64,
                first: 4,
                last: 8,
            },
        ]) {
            assert_eq!(key.to_string().parse::<ShardKey>(), Ok(key));
        }
        for bad in [
            "layer-x",
            "weights/samples-000000-000001",
            "activations/samples-000002-000001",
            "cmap/samples-000000-000001",
            "traces/block-0001",
            "crosscoder/position-0001",
            "cmap/block-1",
            "cmap/samples-000000-000001/blocks-0000-0002",
            "crosscoder/samples-000000-000001/blocks-0000-0002",
            "activations/samples-000000-000001/blocks-0002-0002",
            "activations/samples-000000-000001/blocks-0002",
            "activations/samples-000000-000001/blocks-2-3",
            "",
        ] {
            assert!(bad.parse::<ShardKey>().is_err(), "{bad}");
        }
        assert!(sample_shards(AnalysisKind::Activations, 0, 8).is_empty());
    }

    #[test]
    fn layer_ranges_keep_the_budget_and_chain_in_order() {
        // 4 blocks of 10 bytes: a budget of 25 holds two blocks; one larger than any block
        // still gets its own range; no budget problem for a model that fits.
        assert_eq!(layer_ranges(&[10; 4], 25), vec![(0, 2), (2, 4)]);
        assert_eq!(
            layer_ranges(&[10, 40, 10], 25),
            vec![(0, 1), (1, 2), (2, 3)]
        );
        assert_eq!(layer_ranges(&[10; 4], 1000), vec![(0, 4)]);
        assert!(layer_ranges(&[], 10).is_empty());
        let link = |start, first, last| ShardKey::Range {
            analysis: AnalysisKind::LogitLens,
            start,
            end: start + 8,
            first,
            last,
        };
        let keys = [
            link(0, 0, 2),
            link(0, 2, 4),
            link(8, 0, 2),
            link(8, 2, 4),
            ShardKey::Layer(0),
        ];
        assert_eq!(
            chain_predecessors(&keys),
            vec![None, Some(keys[0]), None, Some(keys[2]), None]
        );
    }

    #[test]
    fn analysis_names() {
        assert_eq!("logit-lens".parse(), Ok(AnalysisKind::LogitLens));
        assert_eq!("logit_lens".parse(), Ok(AnalysisKind::LogitLens));
        assert!("lens".parse::<AnalysisKind>().is_err());
        assert_eq!(
            serde_json::to_string(&AnalysisKind::LogitLens).unwrap(),
            "\"logit-lens\""
        );
    }
}
