//! Model organisms: model pairs whose difference is known, so every analysis can be checked
//! against the truth rather than only against another implementation.
//!
//! - [`planted`]: random weights with a change written in at a known tensor and rank (fast,
//!   exact ground truth for the weight analyses and the activation analyses' zero pattern);
//! - [`trained`]: a tiny Llama pretrained on the built-in corpus and narrowly fine-tuned on
//!   synthetic domains (ground truth for the behavioural analyses: domain words, trained blocks).
use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{CoreError, Result};
use crate::safetensors_out::{write_streaming, Planned};

pub mod planted;
pub mod trained;

pub use planted::{write_organisms, OrganismSpec};

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CoreError::Input(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| CoreError::io(path, e))
}

/// Writes `tensors` as float32 safetensors, in name order.
pub(crate) fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let planned: Vec<Planned> = tensors
        .iter()
        .map(|(n, t)| Planned {
            name: n.clone(),
            kind: Kind::Float,
            shape: t.size(),
        })
        .collect();
    write_streaming(
        path,
        &planned,
        &BTreeMap::from([("format".into(), "pt".into())]),
        |p| {
            tensors
                .get(&p.name)
                .map(|t| t.detach())
                .ok_or_else(|| CoreError::Input(format!("no tensor {}", p.name)))
        },
    )
}
