//! Hook points: cache, replace and add, checked against identities that must hold exactly.
#![allow(clippy::expect_used, clippy::unwrap_used)]
mod common;

use common::{load_model, max_abs_diff, reference, TOL};
use neurodiff_core::{CoreError, Edit, HookKind, HookPoint, Hooks, Model};
use tch::{Kind, Tensor};

fn ids() -> Tensor {
    reference("gpt2")["input_ids"].shallow_clone()
}

fn cached_run(model: &Model, ids: &Tensor) -> (neurodiff_core::ForwardOutput, Hooks) {
    let mut hooks = Hooks::new().cache_all();
    let out = model.forward(ids, &mut hooks).expect("forward");
    (out, hooks)
}

#[test]
fn hook_names_round_trip() {
    for kind in HookKind::ALL {
        let p = HookPoint::new(3, kind);
        assert_eq!(p.to_string().parse::<HookPoint>().expect("parse"), p);
    }
    assert_eq!(
        HookPoint::new(2, HookKind::ResidMid).to_string(),
        "blocks.2.hook_resid_mid"
    );
    let err = "blocks.1.hook_nope"
        .parse::<HookPoint>()
        .expect_err("unknown hook");
    assert!(err.to_string().contains("blocks.1.hook_nope"), "{err}");
}

#[test]
fn cache_records_the_residual_stream_decomposition() {
    for name in [
        "gpt2",
        "llama",
        "qwen2",
        "qwen3",
        "olmo2",
        "gemma2",
        "gemma3_text",
        "phi3",
    ] {
        let model = load_model(name);
        let ids = reference(name)["input_ids"].shallow_clone();
        let (out, hooks) = cached_run(&model, &ids);
        let get = |l, k| {
            hooks
                .cached(&HookPoint::new(l, k))
                .expect("cached")
                .shallow_clone()
        };
        for l in 0..model.info().n_layers {
            let pre = get(l, HookKind::ResidPre);
            assert!(
                max_abs_diff(&pre, &out.hidden_states[l]) == 0.0,
                "{name}: resid_pre {l} != hidden_states[{l}]"
            );
            let mid = get(l, HookKind::ResidMid);
            assert!(max_abs_diff(&mid, &(&pre + get(l, HookKind::AttnOut))) <= TOL);
            let post = get(l, HookKind::ResidPost);
            assert!(max_abs_diff(&post, &(&mid + get(l, HookKind::MlpOut))) <= TOL);
            if l + 1 < model.info().n_layers {
                assert!(max_abs_diff(&post, &get(l + 1, HookKind::ResidPre)) == 0.0);
            }
            // One state under one name: the forward's resid_post is the hook's, at every block.
            assert!(
                max_abs_diff(&post, out.resid_post(l)) == 0.0,
                "{name}: resid_post {l}"
            );
        }
    }
}

#[test]
fn the_last_blocks_lens_is_the_output() {
    for name in [
        "gpt2",
        "llama",
        "qwen2",
        "mistral",
        "qwen3",
        "olmo2",
        "gemma2",
        "gemma3_text",
        "phi3",
    ] {
        let model = load_model(name);
        let ids = reference(name)["input_ids"].shallow_clone();
        let out = model.forward(&ids, &mut Hooks::new()).expect("forward");
        let last = model.info().n_layers - 1;
        let lens = model.read_out(out.resid_post(last)).expect("read out");
        let diff = max_abs_diff(&lens, &out.logits);
        assert!(
            diff <= 1e-5,
            "{name}: last block's lens differs from the logits by {diff}"
        );
        // transformers' last hidden state is the normed one: the pre-norm state differs.
        assert!(max_abs_diff(out.resid_post(last), &out.hidden_states[last + 1]) > 1e-3);
    }
}

#[test]
fn replacing_the_whole_stream_transplants_the_other_run() {
    // Patch every position of resid_pre at layer 1 with the activation of another prompt of the
    // same length: everything downstream must then equal that other prompt's run.
    let model = load_model("llama");
    let a = reference("llama")["input_ids"].shallow_clone();
    let b = a.flip([0]);
    let (out_b, hooks_b) = cached_run(&model, &b);
    let point = HookPoint::new(1, HookKind::ResidPre);
    let patch = hooks_b.cached(&point).expect("cached").shallow_clone();
    let mut hooks = Hooks::new().replace(point, patch);
    let patched = model.forward(&a, &mut hooks).expect("patched forward");
    assert!(max_abs_diff(&patched.logits, &out_b.logits) <= TOL);
    let clean_a = model.forward(&a, &mut Hooks::new()).expect("clean forward");
    assert!(
        max_abs_diff(&patched.logits, &clean_a.logits) > 1e-2,
        "the patch changed nothing"
    );
}

#[test]
fn adding_at_resid_post_equals_replacing_the_next_resid_pre() {
    let model = load_model("gpt2");
    let ids = ids();
    let d = model.info().d_model;
    let steer = Tensor::randn([d], (Kind::Float, tch::Device::Cpu)) * 3.0;
    let (_, clean) = cached_run(&model, &ids);
    let next_pre = clean
        .cached(&HookPoint::new(1, HookKind::ResidPre))
        .expect("cached");

    let added = model
        .forward(
            &ids,
            &mut Hooks::new().add(
                HookPoint::new(0, HookKind::ResidPost),
                steer.shallow_clone(),
            ),
        )
        .expect("steered");
    let replaced = model
        .forward(
            &ids,
            &mut Hooks::new().replace(HookPoint::new(1, HookKind::ResidPre), next_pre + &steer),
        )
        .expect("replaced");
    assert!(max_abs_diff(&added.logits, &replaced.logits) <= TOL);
}

#[test]
fn a_positional_edit_leaves_earlier_positions_alone() {
    // Causal attention: editing position p can change outputs at p and later, never before.
    let model = load_model("mistral");
    let ids = reference("mistral")["input_ids"].shallow_clone();
    let p = 5;
    let d = model.info().d_model;
    let clean = model.forward(&ids, &mut Hooks::new()).expect("clean");
    let edit = Edit::Add {
        value: Tensor::ones([d], (Kind::Float, tch::Device::Cpu)) * 5.0,
        positions: Some(vec![p]),
    };
    let edited = model
        .forward(
            &ids,
            &mut Hooks::new().edit(HookPoint::new(0, HookKind::MlpOut), edit),
        )
        .expect("edited");
    let before = |t: &Tensor| t.narrow(1, 0, p);
    assert!(max_abs_diff(&before(&edited.logits), &before(&clean.logits)) == 0.0);
    let at = |t: &Tensor| t.narrow(1, p, 1);
    assert!(max_abs_diff(&at(&edited.logits), &at(&clean.logits)) > 1e-3);
}

#[test]
fn adding_zero_changes_nothing() {
    let model = load_model("qwen2");
    let ids = reference("qwen2")["input_ids"].shallow_clone();
    let clean = model.forward(&ids, &mut Hooks::new()).expect("clean");
    let zero = Tensor::zeros([model.info().d_model], (Kind::Float, tch::Device::Cpu));
    let mut hooks = Hooks::new().add(HookPoint::new(1, HookKind::AttnOut), zero);
    let out = model.forward(&ids, &mut hooks).expect("forward");
    assert!(max_abs_diff(&out.logits, &clean.logits) == 0.0);
}

#[test]
fn bad_hooks_are_errors_that_name_the_hook() {
    let model = load_model("gpt2");
    let ids = ids();
    let err = model
        .forward(
            &ids,
            &mut Hooks::new().cache(HookPoint::new(7, HookKind::ResidPre)),
        )
        .expect_err("layer 7 does not exist");
    assert!(
        matches!(err, CoreError::Hook { .. })
            && err.to_string().contains("blocks.7.hook_resid_pre"),
        "{err}"
    );

    let wrong = Tensor::zeros([5], (Kind::Float, tch::Device::Cpu));
    let err = model
        .forward(
            &ids,
            &mut Hooks::new().add(HookPoint::new(0, HookKind::MlpOut), wrong),
        )
        .expect_err("a [5] vector does not broadcast to d_model 64");
    assert!(err.to_string().contains("blocks.0.hook_mlp_out"), "{err}");

    let edit = Edit::Replace {
        value: Tensor::zeros([64], (Kind::Float, tch::Device::Cpu)),
        positions: Some(vec![999]),
    };
    let err = model
        .forward(
            &ids,
            &mut Hooks::new().edit(HookPoint::new(0, HookKind::ResidPre), edit),
        )
        .expect_err("position out of range");
    assert!(err.to_string().contains("position 999"), "{err}");
}
