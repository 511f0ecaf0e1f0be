//! Model stitching: what one shard (a slice of the corpus) returns, and the `stitching` section
//! of results.json.
use serde::{Deserialize, Serialize};

use crate::GroundTruth;

/// Stitching takes no options (every split is run): a request that gives `stitching` any
/// value is refused, naming it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StitchingOptions;

impl<'de> Deserialize<'de> for StitchingOptions {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "`stitching` takes no options (every split of the blocks is run)",
        ))
    }
}

impl crate::AnalysisOptions for StitchingOptions {
    fn none() -> bool {
        true
    }

    fn check(&mut self, _field: &str) -> Result<(), crate::SpecError> {
        Ok(())
    }
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

/// Stitching's grades: the splits whose stitched model has KL to the fine-tune of
/// (numerically) zero, per direction, and whether those are exactly the splits that take every
/// trained block from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StitchingGrade {
    pub stitching_zero_kl: Vec<(crate::StitchDirection, Vec<usize>)>,
    pub stitching_matches: Option<bool>,
}

/// No rows of its own for the team database or the scan rules (they read it by pointer).
impl crate::rows::Rows for StitchingReport {}
