//! Malformed checkpoints: each gives an error naming the file and the tensor or field, never a panic.
#![allow(clippy::expect_used, clippy::unwrap_used)]
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::fixture;
use neurodiff_core::{Checkpoint, CoreError, Model};
use tch::{Device, Kind, Tensor};

/// A writable copy of a fixture.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(name);
    fs::create_dir(&dir).expect("mkdir");
    for entry in fs::read_dir(fixture(name)).expect("read fixture") {
        let path = entry.expect("entry").path();
        fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
    }
    (tmp, dir)
}

fn load(dir: &Path) -> Result<Model, CoreError> {
    Model::load(&Checkpoint::open(dir)?, Device::Cpu)
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
    edit(&mut config);
    fs::write(&path, serde_json::to_string_pretty(&config).expect("ser")).expect("write");
}

/// Rewrites model.safetensors with `edit` applied to its tensors.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).expect("read weights");
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).expect("write weights");
}

fn assert_mentions(err: &CoreError, parts: &[&str]) {
    let msg = err.to_string();
    for part in parts {
        assert!(
            msg.contains(part),
            "error `{msg}` does not mention `{part}`"
        );
    }
}

#[test]
fn missing_directory_and_missing_weights() {
    let err = Checkpoint::open("/nonexistent/model").expect_err("no dir");
    assert_mentions(&err, &["/nonexistent/model", "checkpoint directory"]);

    let (_t, dir) = copy_fixture("llama");
    fs::remove_file(dir.join("model.safetensors")).expect("rm");
    let err = Checkpoint::open(&dir).expect_err("no weights");
    assert_mentions(&err, &["model.safetensors", "model.safetensors.index.json"]);
}

#[test]
fn missing_config() {
    let (_t, dir) = copy_fixture("llama");
    fs::remove_file(dir.join("config.json")).expect("rm");
    let err = load(&dir).expect_err("no config");
    assert!(matches!(err, CoreError::MissingFile { .. }));
    assert_mentions(&err, &["config.json"]);
}

#[test]
fn truncated_safetensors_names_the_file() {
    let (_t, dir) = copy_fixture("qwen2");
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() - 100]).expect("truncate");
    let err = Checkpoint::open(&dir).expect_err("truncated");
    assert!(matches!(err, CoreError::Safetensors { .. }), "{err}");
    assert_mentions(&err, &["model.safetensors"]);
}

#[test]
fn garbage_header_names_the_file() {
    let (_t, dir) = copy_fixture("qwen2");
    let path = dir.join("model.safetensors");
    let mut bytes = fs::read(&path).expect("read");
    bytes[8..40].copy_from_slice(b"this is not the json header ....");
    fs::write(&path, &bytes).expect("write");
    let err = Checkpoint::open(&dir).expect_err("corrupt");
    assert!(matches!(err, CoreError::Safetensors { .. }), "{err}");

    fs::write(&path, b"abc").expect("tiny file");
    let err = Checkpoint::open(&dir).expect_err("three bytes");
    assert!(matches!(err, CoreError::Safetensors { .. }), "{err}");
}

#[test]
fn missing_shard_file_is_named() {
    let (_t, dir) = copy_fixture("gpt2");
    fs::remove_file(dir.join("model-00002-of-00004.safetensors")).expect("rm");
    let err = Checkpoint::open(&dir).expect_err("missing shard");
    assert_mentions(&err, &["model-00002-of-00004.safetensors"]);
}

#[test]
fn wrong_shape_names_tensor_and_file() {
    let (_t, dir) = copy_fixture("llama");
    edit_weights(&dir, |ts| {
        for (name, t) in ts.iter_mut() {
            if name == "model.layers.1.mlp.up_proj.weight" {
                *t = t.narrow(0, 0, 10);
            }
        }
    });
    let err = load(&dir).expect_err("wrong shape");
    assert!(matches!(err, CoreError::Shape { .. }), "{err}");
    assert_mentions(
        &err,
        &[
            "model.layers.1.mlp.up_proj.weight",
            "model.safetensors",
            "config.json",
        ],
    );
}

#[test]
fn integer_weight_is_a_dtype_error() {
    let (_t, dir) = copy_fixture("llama");
    edit_weights(&dir, |ts| {
        for (name, t) in ts.iter_mut() {
            if name == "model.norm.weight" {
                *t = t.to_kind(Kind::Int64);
            }
        }
    });
    let err = load(&dir).expect_err("int weight");
    assert!(matches!(err, CoreError::Dtype { .. }), "{err}");
    assert_mentions(&err, &["model.norm.weight", "I64"]);
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_fixture("mistral");
    edit_weights(&dir, |ts| {
        ts.retain(|(name, _)| name != "model.layers.0.self_attn.k_proj.weight")
    });
    let err = load(&dir).expect_err("missing tensor");
    assert!(matches!(err, CoreError::MissingTensor { .. }), "{err}");
    assert_mentions(&err, &["model.layers.0.self_attn.k_proj.weight"]);
}

#[test]
fn config_that_disagrees_with_the_weights() {
    let (_t, dir) = copy_fixture("qwen2");
    edit_config(&dir, |c| c["intermediate_size"] = 96.into());
    let err = load(&dir).expect_err("intermediate size mismatch");
    assert!(matches!(err, CoreError::Shape { .. }), "{err}");
    assert_mentions(&err, &["mlp", "[96, 64]", "config.json"]);

    let (_t, dir) = copy_fixture("gpt2-noprefix");
    edit_config(&dir, |c| c["n_layer"] = 5.into());
    let err = load(&dir).expect_err("more layers than weights");
    assert_mentions(&err, &["h.3.ln_1.weight"]);
}

#[test]
fn bad_config_fields_are_named() {
    let (_t, dir) = copy_fixture("llama");
    edit_config(&dir, |c| {
        c.as_object_mut().expect("object").remove("hidden_size");
    });
    let err = load(&dir).expect_err("no hidden_size");
    assert!(matches!(err, CoreError::Config { .. }), "{err}");
    assert_mentions(&err, &["config.json", "hidden_size"]);

    let (_t, dir) = copy_fixture("llama");
    edit_config(&dir, |c| c["num_key_value_heads"] = 3.into());
    assert_mentions(&load(&dir).expect_err("gqa"), &["num_key_value_heads"]);

    let (_t, dir) = copy_fixture("llama");
    edit_config(&dir, |c| c["rope_parameters"]["rope_type"] = "yarn".into());
    assert_mentions(
        &load(&dir).expect_err("rope"),
        &["rope_parameters.rope_type", "yarn"],
    );

    let (_t, dir) = copy_fixture("llama");
    fs::write(dir.join("config.json"), "{ not json").expect("write");
    assert_mentions(
        &load(&dir).expect_err("json"),
        &["config.json", "not valid JSON"],
    );
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let (_t, dir) = copy_fixture("llama");
    edit_config(&dir, |c| c["model_type"] = "mamba".into());
    let err = load(&dir).expect_err("mamba");
    assert!(
        matches!(err, CoreError::UnsupportedArchitecture { .. }),
        "{err}"
    );
    assert_mentions(
        &err,
        &[
            "mamba",
            "gemma2, gemma3_text, gpt2, llama, mistral, olmo2, phi3, qwen2, qwen3",
            "config.json",
        ],
    );
}

#[test]
fn bad_tokens_are_input_errors() {
    let model = common::load_model("gpt2");
    let too_big = Tensor::from_slice(&[1i64, 100_000]);
    let err = model
        .forward(&too_big, &mut neurodiff_core::Hooks::new())
        .expect_err("id out of vocab");
    assert!(matches!(err, CoreError::Input(_)), "{err}");
    let too_long = Tensor::zeros([200], (Kind::Int64, Device::Cpu));
    let err = model
        .forward(&too_long, &mut neurodiff_core::Hooks::new())
        .expect_err("past n_positions");
    assert_mentions(&err, &["n_positions"]);
}

#[test]
fn corrupt_tokenizer_is_named() {
    let (_t, dir) = copy_fixture("llama");
    fs::write(dir.join("tokenizer.json"), "{}").expect("write");
    let err = neurodiff_core::tokenizer::load(&dir).expect_err("bad tokenizer");
    assert_mentions(&err, &["tokenizer.json"]);
}
