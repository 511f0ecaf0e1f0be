//! Phi-3: Mistral's decoder (one sliding window on every layer when set) with q, k and v fused
//! in one `qkv_proj` and gate and up in one `gate_up_proj`; its LongRoPE (`rope_scaling.type`
//! longrope, with `original_max_position_embeddings`) and partial rotary factor are read by the
//! common RoPE parser.
use std::path::Path;

use super::llama::DecoderSpec;
use super::mistral;
use crate::error::Result;

/// Phi-3's decoder from a config read as Mistral's.
pub fn spec(config: &mistral::Config, path: &Path) -> Result<DecoderSpec> {
    let mut spec = config.spec(path)?;
    spec.fused = true;
    Ok(spec)
}
