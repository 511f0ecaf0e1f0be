//! Forward-pass parity with transformers on the committed fixtures (scripts/parity.py).
#![allow(clippy::expect_used, clippy::unwrap_used)]
mod common;

use common::{fixture, load_model, max_abs_diff, reference, reference_prompt, TOL};
use neurodiff_core::{inspect, tokenizer};

/// Tokenizes the reference prompt with the fixture's tokenizer.json, runs the model and
/// compares input ids, logits and every hidden state with transformers.
fn check(model_dir: &str, reference_dir: &str) {
    let model = load_model(model_dir);
    let tok = tokenizer::load(&fixture(model_dir)).expect("tokenizer");
    let reference = reference(reference_dir);
    let got = inspect::inspect(&model, &tok, &reference_prompt(reference_dir)).expect("inspect");

    assert!(
        got.input_ids.equal(&reference["input_ids"]),
        "{model_dir}: token ids differ from the Python tokenizer"
    );
    let n_layers = model.info().n_layers;
    assert_eq!(got.hidden_states.len(), n_layers + 1);
    let err = max_abs_diff(&got.logits, &reference["logits"]);
    assert!(
        err <= TOL,
        "{model_dir}: logits max abs error {err:e} > {TOL:e}"
    );
    for (i, h) in got.hidden_states.iter().enumerate() {
        let err = max_abs_diff(h, &reference[&format!("hidden_states.{i}")]);
        assert!(
            err <= TOL,
            "{model_dir}: hidden_states.{i} max abs error {err:e} > {TOL:e}"
        );
    }
}

#[test]
fn gpt2_sharded_with_transformer_prefix() {
    check("gpt2", "gpt2");
}

#[test]
fn gpt2_without_prefix_matches_the_same_reference() {
    check("gpt2-noprefix", "gpt2");
}

#[test]
fn llama_gqa_untied_fp16() {
    check("llama", "llama");
}

#[test]
fn mistral_head_dim_and_sliding_window() {
    check("mistral", "mistral");
}

#[test]
fn qwen2_qkv_bias_tied_bf16() {
    check("qwen2", "qwen2");
}

#[test]
fn olmo2_post_norms_and_whole_qk_norm() {
    check("olmo2", "olmo2");
}

#[test]
fn qwen3_per_head_qk_norm_and_explicit_head_dim() {
    check("qwen3", "qwen3");
}

#[test]
fn gemma2_sandwich_norms_softcapping_and_alternating_windows() {
    check("gemma2", "gemma2");
}

#[test]
fn gemma3_qk_norm_local_and_global_rope_bf16() {
    check("gemma3_text", "gemma3_text");
}

#[test]
fn phi3_fused_projections_longrope_and_window() {
    check("phi3", "phi3");
}

#[test]
fn batch_rows_equal_single_runs() {
    let model = load_model("llama");
    let ids = reference("llama")["input_ids"].shallow_clone();
    let batch = tch::Tensor::stack(&[&ids, &ids.flip([0])], 0);
    let out = model
        .forward(&batch, &mut neurodiff_core::Hooks::new())
        .expect("batch forward");
    let single = model
        .forward(&ids.flip([0]), &mut neurodiff_core::Hooks::new())
        .expect("single forward");
    assert!(max_abs_diff(&out.logits.get(1), &single.logits.get(0)) <= TOL);
}
