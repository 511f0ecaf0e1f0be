//! Steering with difference vectors: options, what one shard (one block) returns, and the
//! `steering` section of results.json.
use serde::{Deserialize, Serialize};

use crate::error::{within, within_f, SpecError};
use crate::{Generation, GenerationOptions, GroundTruth};

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

impl crate::AnalysisOptions for SteeringOptions {
    fn check(&mut self, _field: &str) -> Result<(), SpecError> {
        self.validate()
    }

    fn check_seq_len(&self, field: &str, seq_len: usize) -> Result<(), SpecError> {
        if let SteeringVector::Position { position } = self.vector {
            if position >= seq_len {
                return Err(SpecError::Field(
                    format!("{field}.vector.position"),
                    format!("position {position} is beyond corpus.seq_len = {seq_len}"),
                ));
            }
        }
        Ok(())
    }

    fn samples(&self) -> Option<usize> {
        Some(self.samples)
    }

    /// Steering runs its slice of the corpus per block; bounded like a shard.
    fn check_limits(&self, field: &str, seq_len: usize) -> Result<(), SpecError> {
        crate::spec::check_block_tokens(&format!("{field}.samples"), self.samples, seq_len)
    }
}

/// Steering's grade: the mean domain-token mass of the base steered at the chosen α against
/// unsteered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SteeringGrade {
    pub steering_domain_gain: Option<f64>,
}

/// No rows of its own for the team database or the scan rules (they read it by pointer).
impl crate::rows::Rows for SteeringReport {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TraceOptions;

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
}
