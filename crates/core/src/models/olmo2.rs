//! OLMo 2: the Llama decoder (its config, biases by `attention_bias`) with its RMSNorms after
//! attention and after the MLP (`post_attention_layernorm`, `post_feedforward_layernorm`, none
//! before), and an RMSNorm over the whole query and key projections before RoPE
//! (`self_attn.q_norm`, `self_attn.k_norm`).
use std::path::Path;

use super::llama::{DecoderSpec, NormPlacement, QkNorm};
use crate::error::Result;

/// OLMo 2's decoder from a config read as Llama's.
pub fn spec(config: &super::llama::Config, path: &Path) -> Result<DecoderSpec> {
    let mut spec = config.spec(path)?;
    spec.qk_norm = QkNorm::Whole;
    spec.norms = NormPlacement::Post;
    Ok(spec)
}
