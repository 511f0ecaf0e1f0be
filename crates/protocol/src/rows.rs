//! What the team database and the scan rules read from an analysis's section of results.json,
//! whatever the analysis: its rows per tensor, per block, and its readable tokens. Each report
//! type says which it has ([`Rows`]); the registry hands them out by kind, so the fan-in, the
//! API's block query and the scan rules name no analysis.
use serde::{Deserialize, Serialize};

use crate::{AnalysisKind, BlockSite, LatentClass};

/// One block's metrics of an analysis, as the team database's block results record them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct BlockRow {
    /// The analysis whose section the row comes from.
    pub analysis: AnalysisKind,
    /// The block; absent for a row at the model's output.
    pub layer: Option<i32>,
    /// The hook (`hook_resid_post`, ...), or `output`.
    pub hook: BlockSite,
    pub mean_diff_norm: Option<f64>,
    pub mean_rel_diff: Option<f64>,
    pub mean_cosine: Option<f64>,
    pub kl_mean: Option<f64>,
}

/// One latent of one audit's dictionary, as the team database's latent results record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct LatentRow {
    /// The dictionary's analysis.
    pub analysis: AnalysisKind,
    pub layer: i32,
    pub latent: i32,
    pub class: LatentClass,
    pub delta_norm: Option<f64>,
    pub nu_eps: Option<f64>,
    pub nu_r: Option<f64>,
    pub frequency: f64,
    pub max_activation: f64,
    pub top_tokens: Vec<String>,
    pub example_tokens: Vec<String>,
    pub domain_hit: Option<bool>,
}

impl BlockRow {
    /// A row of `analysis` with no metric yet.
    pub fn new(analysis: AnalysisKind, layer: Option<usize>, hook: BlockSite) -> BlockRow {
        BlockRow {
            analysis,
            layer: layer.map(|l| l as i32),
            hook,
            mean_diff_norm: None,
            mean_rel_diff: None,
            mean_cosine: None,
            kl_mean: None,
        }
    }
}

impl AnalysisKind {
    /// The analyses whose sections have per-block rows (the team database's block results).
    pub fn with_block_rows() -> Vec<AnalysisKind> {
        let mut kinds = AnalysisKind::ALL.to_vec();
        kinds.retain(|k| !k.block_rows().is_empty());
        kinds
    }

    /// The analyses that train a dictionary (their latents are the team database's latent
    /// rows).
    pub fn dictionaries() -> Vec<AnalysisKind> {
        let mut kinds = AnalysisKind::ALL.to_vec();
        kinds.retain(|k| k.is_dictionary());
        kinds
    }
}

/// Where readable tokens are in a section: the array of positions, and in each position its
/// token lists (arrays of objects with a `token`).
pub type TokenPointers = (&'static str, &'static [&'static str]);

/// The rows of one analysis's section, as JSON pointers into the section (what the scan rules
/// read, so that they read results.json of any version as written) and as typed rows (what the
/// fan-in stores). An analysis with none implements it empty.
pub trait Rows {
    /// Its per-tensor rows: an array of tensor metrics.
    const TENSORS: Option<&'static str> = None;

    /// Its per-block rows: each pointer is an array of rows or one row, with `layer` (absent
    /// at the output) and `hook` (`hook_resid_post` when absent) beside its metrics.
    const BLOCKS: &'static [&'static str] = &[];

    /// Its readable tokens.
    const TOKENS: Option<TokenPointers> = None;

    /// Its section is a trained dictionary (a crosscoder's or an SAE's report).
    const DICTIONARY: bool = false;

    /// Its trained dictionary, when it is one.
    fn dictionary(&self) -> Option<&crate::DictionaryReport> {
        None
    }

    /// Its per-block rows as the team database stores them (`kind`: the analysis they are of).
    fn block_rows(&self, _kind: AnalysisKind) -> Vec<BlockRow> {
        Vec::new()
    }
}
