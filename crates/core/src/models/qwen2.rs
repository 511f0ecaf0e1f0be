//! Qwen2: the Llama decoder with biases on q, k and v (not o), and per-layer sliding windows.
use std::path::Path;

use serde::Deserialize;

use super::config_error;
use super::llama::{Common, DecoderSpec};
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// transformers 5 spells out each layer: "full_attention" or "sliding_attention".
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
}

impl Config {
    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        let mut spec = self.common.spec(path)?;
        spec.qkv_bias = true;
        let window = if self.use_sliding_window {
            self.sliding_window
        } else {
            None
        };
        spec.windows = match &self.layer_types {
            None if self.use_sliding_window => {
                return Err(config_error(path, "field `use_sliding_window` is true but `layer_types` is absent; re-save the config with transformers >= 5 to say which layers slide"));
            }
            None => vec![None; spec.n_layers],
            Some(types) => windows(types, spec.n_layers, window, path)?,
        };
        Ok(spec)
    }
}

/// Each layer's window from transformers 5's `layer_types` ("full_attention" or
/// "sliding_attention"): `window` for the sliding layers.
pub fn windows(
    types: &[String],
    n_layers: usize,
    window: Option<usize>,
    path: &Path,
) -> Result<Vec<Option<usize>>> {
    if types.len() != n_layers {
        return Err(config_error(
            path,
            format!(
                "field `layer_types` has {} entries for {n_layers} layers",
                types.len()
            ),
        ));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "full_attention" => Ok(None),
            "sliding_attention" => Ok(window),
            other => Err(config_error(
                path,
                format!("field `layer_types`: unknown `{other}`"),
            )),
        })
        .collect()
}
