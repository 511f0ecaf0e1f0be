//! Phi-3: the Llama decoder with q, k and v fused in one `qkv_proj` and gate and up in one
//! `gate_up_proj`, LongRoPE (`rope_scaling.type` longrope, with `original_max_position_embeddings`),
//! an optional partial rotary factor, and one sliding window on every layer when set.
use std::path::Path;

use serde::Deserialize;

use super::llama::{Common, DecoderSpec};
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

impl Config {
    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        let mut spec = self.common.spec(path)?;
        spec.fused = true;
        spec.windows = vec![self.sliding_window; spec.n_layers];
        Ok(spec)
    }
}
