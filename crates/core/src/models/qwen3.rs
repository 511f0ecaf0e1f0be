//! Qwen3: Qwen2's decoder (sliding layers by `layer_types`) with an RMSNorm over each head's
//! queries and keys before RoPE (`self_attn.q_norm`, `self_attn.k_norm`) and, by default, no
//! bias on q, k and v (`attention_bias`).
use std::path::Path;

use serde::Deserialize;

use super::llama::{DecoderSpec, QkNorm};
use super::qwen2;
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub qwen2: qwen2::Config,
    #[serde(default)]
    pub attention_bias: bool,
}

impl Config {
    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        let mut spec = self.qwen2.spec(path)?;
        spec.qkv_bias = self.attention_bias;
        spec.qk_norm = QkNorm::PerHead;
        Ok(spec)
    }
}
