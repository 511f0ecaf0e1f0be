//! Helpers shared by the core integration tests: fixture paths and tensor comparisons.
#![allow(clippy::expect_used, clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use neurodiff_core::{Checkpoint, Model};
use tch::{Device, Tensor};

/// The tolerance of every parity comparison, fp32 max abs error.
pub const TOL: f64 = 1e-4;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load_model(name: &str) -> Model {
    let ckpt = Checkpoint::open(fixture(name)).expect("open fixture");
    Model::load(&ckpt, Device::Cpu).expect("load fixture model")
}

/// reference.safetensors as written by scripts/parity.py.
pub fn reference(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("reference.safetensors"))
        .expect("read reference")
        .into_iter()
        .collect()
}

pub fn reference_prompt(name: &str) -> String {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).expect("read reference");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("reference header");
    meta.metadata()
        .as_ref()
        .and_then(|m| m.get("prompt").cloned())
        .expect("prompt in reference metadata")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}
