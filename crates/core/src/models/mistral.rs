//! Mistral: the Llama decoder with an explicit `head_dim` and sliding-window attention.
use std::path::Path;

use serde::Deserialize;

use super::llama::{Common, DecoderSpec};
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    /// Each query sees at most this many keys (itself included); `null` means full attention.
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

impl Config {
    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        let mut spec = self.common.spec(path)?;
        spec.windows = vec![self.sliding_window; spec.n_layers];
        Ok(spec)
    }
}
