//! Gemma 3 (text, `gemma3_text`): Gemma 2's decoder without soft-capping by default, with a
//! per-head q/k RMSNorm (`1 + w`), five sliding layers to one global (`sliding_window_pattern`,
//! or `layer_types`), and its own RoPE for each: the sliding layers' local base
//! (`rope_local_base_freq`, 10 000) and the global layers' (`rope_theta`, 1 000 000, possibly
//! scaled), or one entry per layer type in transformers 5's `rope_parameters`.
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::gemma2;
use super::llama::{Common, DecoderSpec, QkNorm};
use super::rope::{Rope, RopeSource};
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub gemma2: gemma2::Config,
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
}

impl Config {
    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        let mut spec = self
            .gemma2
            .spec_with_pattern(path, self.sliding_window_pattern.unwrap_or(6))?;
        spec.qk_norm = QkNorm::PerHead;
        let common = &self.gemma2.common;
        let per_type = common
            .rope_parameters
            .as_ref()
            .filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
        let scaling = common.rope_scaling.as_ref().filter(|v| !v.is_null());
        let global = LayerRope {
            layer_type: "full_attention",
            default_theta: 1_000_000.0,
            theta: common.rope_theta,
            scaling,
        };
        let local = LayerRope {
            layer_type: "sliding_attention",
            default_theta: 10_000.0,
            theta: self.rope_local_base_freq,
            scaling: None,
        };
        spec.rope = Rope::parse(global.source(per_type, common), path)?;
        spec.sliding_rope = Some(Rope::parse(local.source(per_type, common), path)?);
        Ok(spec)
    }
}

/// One layer type's RoPE as a transformers 4 config spells it (top-level fields).
struct LayerRope<'a> {
    layer_type: &'static str,
    default_theta: f64,
    theta: Option<f64>,
    scaling: Option<&'a Value>,
}

impl<'a> LayerRope<'a> {
    /// transformers 5's entry for this layer type where there is one, else the 4 fields.
    fn source(&self, per_type: Option<&'a Value>, common: &Common) -> RopeSource<'a> {
        let entry = per_type.and_then(|p| p.get(self.layer_type));
        RopeSource {
            params: entry.or(self.scaling),
            field: if entry.is_some() {
                "rope_parameters"
            } else {
                "rope_scaling"
            },
            theta: if entry.is_some() { None } else { self.theta },
            default_theta: self.default_theta,
            max_position_embeddings: common.max_position_embeddings,
            original_max_position_embeddings: common.original_max_position_embeddings,
        }
    }
}
