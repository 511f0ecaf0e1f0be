//! The weight audit's wire types: its options, the metrics of each tensor's delta, a shard's
//! result and the report the fan-in merges from shards (`analyses.weights` of results.json).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::spec::{ShardKey, MAX_TOP_K};

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

impl crate::AnalysisOptions for WeightOptions {
    fn check(&mut self, field: &str) -> Result<(), SpecError> {
        if self.top_k == 0 || self.top_k > MAX_TOP_K {
            return Err(SpecError::Field(
                format!("{field}.top_k"),
                format!("must be between 1 and {MAX_TOP_K}"),
            ));
        }
        Ok(())
    }
}

impl Default for WeightOptions {
    fn default() -> Self {
        WeightOptions {
            spectrum: Spectrum::Full,
            top_k: default_top_k(),
        }
    }
}

/// Metrics of one tensor's delta dW = W_ft - W_base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetrics {
    /// The tensor's name in the base checkpoint.
    pub name: String,
    pub layer: Option<usize>,
    pub module: String,
    pub shape: Vec<usize>,
    /// ||dW||_F
    pub fro: f64,
    /// ||W_base||_F
    pub base_fro: f64,
    /// ||dW||_F / ||W_base||_F; null when the base tensor is all zeros (undefined)
    pub rel_fro: Option<f64>,
    /// cosine(W_base, W_ft), both flattened
    pub cosine: f64,
    /// max |dW_ij| (absent for LoRA deltas, which are never materialised)
    pub max_abs: Option<f64>,
    /// sigma_1 (2-D tensors with spectra)
    pub spectral: Option<f64>,
    /// sum of sigma_i
    pub nuclear: Option<f64>,
    /// ||dW||_F^2 / sigma_1^2
    pub stable_rank: Option<f64>,
    /// exp(H(p)), p_i = sigma_i / sum sigma
    pub effective_rank: Option<f64>,
    /// The leading singular values, largest first.
    #[serde(default)]
    pub top_singular_values: Vec<f64>,
    /// energy_top_k[i]: share of ||dW||_F^2 captured by the top i+1 directions.
    #[serde(default)]
    pub energy_top_k: Vec<f64>,
    /// Fewest directions capturing 90% / 99% of ||dW||_F^2: "of what rank is the change?"
    pub rank_90: Option<usize>,
    pub rank_99: Option<usize>,
    /// Singular values above sigma_1 * max(m, n) * eps_f32 (numpy's matrix_rank tolerance at the
    /// precision checkpoints are stored in): the rank of the change, rounding noise aside.
    pub numerical_rank: Option<usize>,
    /// When the vocabulary grew: rows compared (the shared ones); see `WeightsReport::added_rows`.
    pub rows_compared: Option<usize>,
    /// How the spectrum was computed: `gram-eigh-f64`, `svd-f64`, `lora-factored`, or `none`.
    pub method: String,
}

impl TensorMetrics {
    /// The norm metrics of one tensor's delta; the spectral fields stay empty until filled.
    pub fn from_norms(
        name: &str,
        shape: Vec<usize>,
        fro: f64,
        base_fro: f64,
        cosine: f64,
        method: &str,
    ) -> Self {
        TensorMetrics {
            name: name.to_string(),
            layer: crate::naming::layer_of(name),
            module: crate::naming::module_of(name),
            shape,
            fro,
            base_fro,
            rel_fro: relative(fro, base_fro),
            cosine,
            max_abs: None,
            spectral: None,
            nuclear: None,
            stable_rank: None,
            effective_rank: None,
            top_singular_values: Vec::new(),
            energy_top_k: Vec::new(),
            rank_90: None,
            rank_99: None,
            numerical_rank: None,
            rows_compared: None,
            method: method.to_string(),
        }
    }
}

/// ||dW|| / ||W_base||, undefined (None) for a base tensor of zeros, such as a zero-initialised bias.
pub fn relative(fro: f64, base_fro: f64) -> Option<f64> {
    (base_fro > 0.0).then(|| fro / base_fro)
}

/// Most changed first: by rel_fro where it is defined, then the zero-based tensors by fro.
fn most_changed_first(a: &TensorMetrics, b: &TensorMetrics) -> std::cmp::Ordering {
    match (a.rel_fro, b.rel_fro) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.fro.total_cmp(&a.fro),
    }
    .then_with(|| a.name.cmp(&b.name))
}

/// Aggregate over one block (or everything outside the blocks when `layer` is absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerMetrics {
    pub layer: Option<usize>,
    /// sqrt of the sum of the tensors' ||dW||_F^2
    pub fro: f64,
    pub base_fro: f64,
    pub rel_fro: f64,
    pub n_tensors: usize,
    /// The tensor of this layer that changed most (see the ordering of `WeightsReport::tensors`).
    pub most_changed: String,
    pub most_changed_rel_fro: Option<f64>,
}

/// Aggregate over one module kind across layers (`mlp.down_proj`, `attn.c_attn`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleMetrics {
    pub module: String,
    pub fro: f64,
    pub base_fro: f64,
    pub rel_fro: f64,
    pub n_tensors: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeMismatch {
    pub name: String,
    pub base: Vec<usize>,
    pub finetuned: Vec<usize>,
}

/// A tensor whose first dimension grew (added tokens): the shared rows are compared in
/// `tensors`, the added ones are reported here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddedRows {
    pub name: String,
    pub base_rows: usize,
    pub finetuned_rows: usize,
    /// Frobenius norm of the added rows.
    pub added_fro: f64,
}

/// What one shard produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardResult {
    pub shard: ShardKey,
    pub tensors: Vec<TensorMetrics>,
    #[serde(default)]
    pub only_in_base: Vec<String>,
    #[serde(default)]
    pub only_in_finetuned: Vec<String>,
    #[serde(default)]
    pub shape_mismatches: Vec<ShapeMismatch>,
    #[serde(default)]
    pub added_rows: Vec<AddedRows>,
    pub elapsed_s: f64,
}

/// `analyses.weights` of results.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsReport {
    /// Sorted by rel_fro, most changed first.
    pub tensors: Vec<TensorMetrics>,
    /// Blocks in order, then the non-layer aggregate.
    pub layers: Vec<LayerMetrics>,
    pub modules: Vec<ModuleMetrics>,
    pub only_in_base: Vec<String>,
    pub only_in_finetuned: Vec<String>,
    pub shape_mismatches: Vec<ShapeMismatch>,
    pub added_rows: Vec<AddedRows>,
}

struct Sums {
    fro2: f64,
    base2: f64,
    n: usize,
}

impl WeightsReport {
    /// The fan-in: merges shard results in any order into one report.
    pub fn from_shards(shards: Vec<ShardResult>) -> WeightsReport {
        let mut report = WeightsReport {
            tensors: Vec::new(),
            layers: Vec::new(),
            modules: Vec::new(),
            only_in_base: Vec::new(),
            only_in_finetuned: Vec::new(),
            shape_mismatches: Vec::new(),
            added_rows: Vec::new(),
        };
        for s in shards {
            report.tensors.extend(s.tensors);
            report.only_in_base.extend(s.only_in_base);
            report.only_in_finetuned.extend(s.only_in_finetuned);
            report.shape_mismatches.extend(s.shape_mismatches);
            report.added_rows.extend(s.added_rows);
        }
        report.tensors.sort_by(most_changed_first);
        report.only_in_base.sort();
        report.only_in_finetuned.sort();
        report.shape_mismatches.sort_by(|a, b| a.name.cmp(&b.name));
        report.added_rows.sort_by(|a, b| a.name.cmp(&b.name));

        // Blocks in order, then everything outside them.
        let mut layers: BTreeMap<(bool, Option<usize>), (Sums, &TensorMetrics)> = BTreeMap::new();
        let mut modules: BTreeMap<&str, Sums> = BTreeMap::new();
        for t in &report.tensors {
            let key = (t.layer.is_none(), t.layer);
            // Tensors arrive most-changed first, so the first one seen per layer is its top.
            let (sums, _) = layers.entry(key).or_insert((
                Sums {
                    fro2: 0.0,
                    base2: 0.0,
                    n: 0,
                },
                t,
            ));
            sums.add(t);
            modules
                .entry(&t.module)
                .or_insert(Sums {
                    fro2: 0.0,
                    base2: 0.0,
                    n: 0,
                })
                .add(t);
        }
        report.layers = layers
            .into_iter()
            .map(|((_, layer), (s, top))| LayerMetrics {
                layer,
                fro: s.fro2.sqrt(),
                base_fro: s.base2.sqrt(),
                rel_fro: s.rel(),
                n_tensors: s.n,
                most_changed: top.name.clone(),
                most_changed_rel_fro: top.rel_fro,
            })
            .collect();
        report.modules = modules
            .into_iter()
            .map(|(module, s)| ModuleMetrics {
                module: module.to_string(),
                fro: s.fro2.sqrt(),
                base_fro: s.base2.sqrt(),
                rel_fro: s.rel(),
                n_tensors: s.n,
            })
            .collect();
        report
    }
}

impl Sums {
    fn add(&mut self, t: &TensorMetrics) {
        self.fro2 += t.fro * t.fro;
        self.base2 += t.base_fro * t.base_fro;
        self.n += 1;
    }

    fn rel(&self) -> f64 {
        if self.base2 > 0.0 {
            (self.fro2 / self.base2).sqrt()
        } else {
            0.0
        }
    }
}

/// The scan's tensor rules read each tensor's metrics.
impl crate::rows::Rows for WeightsReport {
    const TENSORS: Option<&'static str> = Some("/tensors");
}

impl crate::ShardOutput {
    /// A weight shard's tensor rows, which the team database stores as the shard lands (they
    /// are final per shard); none for the other analyses' shards.
    pub fn tensor_rows(&self) -> &[TensorMetrics] {
        match self {
            crate::ShardOutput::Weights(w) => &w.tensors,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, layer: Option<usize>, fro: f64, base_fro: f64) -> TensorMetrics {
        let t = TensorMetrics::from_norms(name, vec![2, 2], fro, base_fro, 1.0, "none");
        assert_eq!(t.layer, layer);
        t
    }

    fn shard(shard: ShardKey, tensors: Vec<TensorMetrics>) -> ShardResult {
        ShardResult {
            shard,
            tensors,
            only_in_base: vec![],
            only_in_finetuned: vec![],
            shape_mismatches: vec![],
            added_rows: vec![],
            elapsed_s: 0.0,
        }
    }

    #[test]
    fn fan_in_sorts_and_aggregates_in_any_order() {
        let shards = vec![
            shard(
                ShardKey::NonLayer,
                vec![tensor("model.embed_tokens.weight", None, 1.0, 10.0)],
            ),
            shard(
                ShardKey::Layer(1),
                vec![tensor(
                    "model.layers.1.mlp.up_proj.weight",
                    Some(1),
                    3.0,
                    4.0,
                )],
            ),
            shard(
                ShardKey::Layer(0),
                vec![
                    tensor("model.layers.0.mlp.up_proj.weight", Some(0), 3.0, 12.0),
                    tensor("model.layers.0.self_attn.q_proj.weight", Some(0), 4.0, 5.0),
                ],
            ),
        ];
        let r = WeightsReport::from_shards(shards);
        let names: Vec<&str> = r.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names[0], "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(
            r.layers.iter().map(|l| l.layer).collect::<Vec<_>>(),
            [Some(0), Some(1), None]
        );
        let l0 = &r.layers[0];
        assert_eq!((l0.fro, l0.base_fro, l0.n_tensors), (5.0, 13.0, 2));
        assert_eq!(l0.most_changed, "model.layers.0.self_attn.q_proj.weight");
        let up = r
            .modules
            .iter()
            .find(|m| m.module == "mlp.up_proj")
            .unwrap();
        assert!(
            (up.fro - 18f64.sqrt()).abs() < 1e-12 && (up.base_fro - 160f64.sqrt()).abs() < 1e-12
        );
        assert_eq!(up.n_tensors, 2);
    }
}
