//! What to audit: the audit spec a user submits and the layer shards it is planned into.
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisKind {
    /// Tier I: per-tensor weight-delta metrics and spectra.
    Weights,
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

/// Which spectral metrics to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spectrum {
    /// Every singular value (exact): spectral, nuclear, stable and effective rank, top-k.
    #[default]
    Full,
    /// Norms only (Frobenius, relative, cosine): one pass over the bytes.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightOptions {
    #[serde(default)]
    pub spectrum: Spectrum,
    /// How many leading singular values (and energy shares) to report per tensor.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

fn default_top_k() -> usize {
    16
}

impl Default for WeightOptions {
    fn default() -> Self {
        WeightOptions {
            spectrum: Spectrum::Full,
            top_k: default_top_k(),
        }
    }
}

/// One audit as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSpec {
    pub base: String,
    pub target: Target,
    pub analyses: Vec<AnalysisKind>,
    /// Blocks to audit; `None` audits every block and the tensors outside the blocks.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    #[serde(default)]
    pub weights: WeightOptions,
}

/// The unit of work: one transformer block, or everything outside the blocks (embeddings,
/// final norm, unembedding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardKey {
    Layer(usize),
    NonLayer,
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

impl fmt::Display for ShardKey {
    /// A stable, sortable key for object names and database rows: `layer-0007`, `non-layer`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardKey::Layer(i) => write!(f, "layer-{i:04}"),
            ShardKey::NonLayer => f.write_str("non-layer"),
        }
    }
}

/// Everything a worker needs to run one shard of a weight audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub base: String,
    pub target: Target,
    pub shard: ShardKey,
    pub weights: WeightOptions,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("field `layers`: {0}")]
    Layers(String),
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
    let mut out = Vec::new();
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
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
        if out.len() > MAX_LAYER_INDEX {
            return Err(SpecError::Layers("too many layers listed".into()));
        }
    }
    Ok(Some(normalize_layers(&out, MAX_LAYER_INDEX)?))
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

/// The shards of an audit of a model with `n_layers` blocks, in order.
pub fn plan_shards(spec: &AuditSpec, n_layers: usize) -> Result<Vec<ShardSpec>, SpecError> {
    let keys: Vec<ShardKey> = match &spec.layers {
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
    };
    Ok(keys
        .into_iter()
        .map(|shard| ShardSpec {
            base: spec.base.clone(),
            target: spec.target.clone(),
            shard,
            weights: spec.weights.clone(),
        })
        .collect())
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
        let mut spec = AuditSpec {
            base: "b".into(),
            target: Target::Checkpoint {
                reference: "f".into(),
            },
            analyses: vec![AnalysisKind::Weights],
            layers: None,
            weights: WeightOptions::default(),
        };
        let keys: Vec<_> = plan_shards(&spec, 2)
            .unwrap()
            .into_iter()
            .map(|s| s.shard)
            .collect();
        assert_eq!(
            keys,
            [ShardKey::Layer(0), ShardKey::Layer(1), ShardKey::NonLayer]
        );
        spec.layers = Some(vec![1]);
        assert_eq!(plan_shards(&spec, 2).unwrap().len(), 1);
        spec.layers = Some(vec![1, 0, 1]);
        assert_eq!(plan_shards(&spec, 2).unwrap().len(), 2);
        spec.layers = Some(vec![5]);
        assert!(plan_shards(&spec, 2).is_err());
        assert_eq!(ShardKey::Layer(7).to_string(), "layer-0007");
    }
}
