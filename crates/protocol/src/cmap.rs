//! Cross-model activation patching (CMAP): options, what one shard (one block) returns, and the
//! `cmap` section of results.json.
use serde::{Deserialize, Serialize};

use crate::error::{within, SpecError};
use crate::GroundTruth;

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

impl crate::AnalysisOptions for CmapOptions {
    fn check(&mut self, _field: &str) -> Result<(), SpecError> {
        self.validate()
    }

    fn samples(&self) -> Option<usize> {
        Some(self.samples)
    }

    /// CMAP runs its slice of the corpus per block; bounded like a shard.
    fn check_limits(&self, field: &str, seq_len: usize) -> Result<(), SpecError> {
        crate::spec::check_block_tokens(&format!("{field}.samples"), self.samples, seq_len)
    }
}

/// CMAP's grades: the cell of largest recovery among the blocks' attention and MLP outputs (a
/// block's output carries every earlier change), and whether it lies in a trained block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CmapGrade {
    pub cmap_top: Option<CmapCell>,
    pub cmap_in_trained_blocks: Option<bool>,
}

/// No rows of its own for the team database or the scan rules (they read it by pointer).
impl crate::rows::Rows for CmapReport {}
