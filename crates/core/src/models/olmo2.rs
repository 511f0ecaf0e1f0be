//! OLMo 2: the Llama decoder with its RMSNorms after attention and after the MLP
//! (`post_attention_layernorm`, `post_feedforward_layernorm`, none before), and an RMSNorm over
//! the whole query and key projections before RoPE (`self_attn.q_norm`, `self_attn.k_norm`).
use std::path::Path;

use serde::Deserialize;

use super::llama::{Common, DecoderSpec, NormPlacement, QkNorm};
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub attention_bias: bool,
}

impl Config {
    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        let mut spec = self.common.spec(path)?;
        spec.qkv_bias = self.attention_bias;
        spec.o_bias = self.attention_bias;
        spec.qk_norm = QkNorm::Whole;
        spec.norms = NormPlacement::Post;
        Ok(spec)
    }
}
