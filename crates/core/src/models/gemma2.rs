//! Gemma 2: the Llama decoder with the embeddings scaled by √d, RMSNorms on both sides of
//! attention and of the MLP that scale by `1 + w`, GeGLU, attention scores scaled by
//! `query_pre_attn_scalar^-0.5` and soft-capped, soft-capped logits, and sliding-window
//! attention on every other layer (`layer_types`, the even layers when absent).
use std::path::Path;

use serde::Deserialize;

use super::config_error;
use super::llama::{Common, DecoderSpec, NormPlacement};
use super::qwen2::windows;
use crate::error::Result;
use crate::nn::Activation;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub hidden_activation: Option<String>,
    pub query_pre_attn_scalar: f64,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
}

impl Config {
    /// The decoder, with `every` the sliding pattern when `layer_types` is absent (layer i
    /// slides unless i + 1 is a multiple of `every`).
    pub fn spec_with_pattern(&self, path: &Path, every: usize) -> Result<DecoderSpec> {
        if self.use_bidirectional_attention == Some(true) {
            return Err(config_error(
                path,
                "field `use_bidirectional_attention`: bidirectional (encoder) Gemma is not a causal LM",
            ));
        }
        let mut spec = self.common.spec(path)?;
        if let Some(name) = &self.hidden_activation {
            spec.act = Activation::parse(name).ok_or_else(|| {
                config_error(
                    path,
                    format!(
                        "field `hidden_activation`: unsupported `{name}`; supported: {}",
                        Activation::NAMES
                    ),
                )
            })?;
        }
        spec.qkv_bias = self.attention_bias;
        spec.o_bias = self.attention_bias;
        spec.norms = NormPlacement::Sandwich;
        spec.norm_offset = 1.0;
        spec.embed_scale = Some((self.common.hidden_size as f64).sqrt());
        spec.attn_scale = self.query_pre_attn_scalar.powf(-0.5);
        spec.attn_softcap = self.attn_logit_softcapping;
        spec.final_softcap = self.final_logit_softcapping;
        let types = match &self.layer_types {
            Some(types) => types.clone(),
            None => (0..spec.n_layers)
                .map(|i| {
                    let kind = if (i + 1) % every == 0 {
                        "full"
                    } else {
                        "sliding"
                    };
                    format!("{kind}_attention")
                })
                .collect(),
        };
        spec.windows = windows(&types, spec.n_layers, self.sliding_window, path)?;
        Ok(spec)
    }

    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        self.spec_with_pattern(path, 2)
    }
}
