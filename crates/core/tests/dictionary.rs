//! Tier III dictionaries: parity of training steps and latent scaling with the PyTorch
//! reference (fixtures by scripts/crosscoder_reference.py), resume from a checkpoint bit for
//! bit, and planted ground truth: a crosscoder on synthetic activations whose shared,
//! fine-tune-only and base-only directions are known finds them, and finds no fine-tune-only
//! latent when both "models" are the same.
#![allow(clippy::expect_used, clippy::unwrap_used)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use neurodiff_core::dictionary::{
    self, class_of, delta_norm, Accumulator, Dictionary, Evaluation, Normalization, TrainOptions,
    Trainer,
};
use neurodiff_core::organisms::trained::rng::Rng;
use neurodiff_protocol::real_ft_only;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crosscoder")
        .join(name)
}

fn read(name: &str) -> (BTreeMap<String, Tensor>, BTreeMap<String, String>) {
    let path = fixture(name);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect();
    (tensors, meta)
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    diff / scale
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).reshape([-1]).double_value(&[0])
}

const TOL: f64 = 1e-5;

fn check_training(file: &str) {
    let (t, meta) = read(file);
    let m = |k: &str| meta[k].parse::<f64>().unwrap();
    let opts = TrainOptions {
        k: m("k") as i64,
        k_max: Some(m("k_max") as i64),
        k_anneal_steps: m("k_anneal") as usize,
        lr: m("lr"),
        warmup_steps: m("warmup") as usize,
        threshold_start: m("threshold_start") as usize,
        threshold_beta: m("threshold_beta"),
        dead_tokens: m("dead_tokens") as i64,
        aux_alpha: m("aux_alpha"),
        max_grad_norm: 1.0,
    };
    let x = &t["x"];
    let (steps, b, models, d) = {
        let s = x.size();
        (s[0], s[1], s[2], s[3])
    };
    let all = x.reshape([steps * b, models, d]);
    let norm = dictionary::normalization_of(&all, m("target_rms")).unwrap();
    assert!(
        max_rel(&norm.mean, &t["norm.mean"]) < TOL,
        "{file}: norm.mean"
    );
    assert!(
        max_rel(&norm.scale, &t["norm.scale"]) < TOL,
        "{file}: norm.scale"
    );
    let dict = Dictionary {
        w_enc: t["init.W_enc"].copy(),
        b_enc: t["init.b_enc"].copy(),
        w_dec: t["init.W_dec"].copy(),
        b_dec: t["init.b_dec"].copy(),
        threshold: scalar(&t["init.theta"]),
        k: opts.k,
        norm,
    };
    let mut trainer = Trainer::new(dict, opts).unwrap();
    trainer.since_fired = t["init.since"].copy();
    for step in 0..steps {
        let xb = trainer.dict.norm.apply(&x.get(step), Kind::Double).unwrap();
        let s = trainer.backward(&xb).unwrap();
        if step == 0 {
            assert!(
                max_rel(&trainer.dict.b_dec, &t["geomedian"]) < TOL,
                "{file}: geometric median"
            );
            let grads = trainer.grads().unwrap();
            for (g, name) in grads.iter().zip(["W_enc", "b_enc", "W_dec", "b_dec"]) {
                let e = max_rel(g, &t[&format!("grad0.{name}")]);
                assert!(e < TOL, "{file}: gradient of {name} at step 0: {e:e}");
            }
        }
        let want = |k: &str| scalar(&t[&format!("step{step}.{k}")]);
        for (got, name) in [
            (s.loss, "loss"),
            (s.l2, "l2"),
            (s.aux, "aux"),
            (s.threshold, "theta"),
        ] {
            let w = want(name);
            assert!(
                (got - w).abs() <= TOL * w.abs().max(1e-3),
                "{file}: step {step} {name}: {got} vs {w}"
            );
        }
        assert_eq!(s.k, want("k") as i64, "{file}: step {step} k");
        assert_eq!(s.n_dead, want("n_dead") as i64, "{file}: step {step} dead");
        trainer.update().unwrap();
    }
    for (p, name) in trainer
        .dict
        .params()
        .iter()
        .zip(["W_enc", "b_enc", "W_dec", "b_dec"])
    {
        let e = max_rel(p, &t[&format!("final.{name}")]);
        assert!(e < TOL, "{file}: {name} after {steps} steps: {e:e}");
    }
    assert!(
        trainer.since_fired.equal(&t["final.since"]),
        "{file}: dead counters"
    );
    let theta = scalar(&t["final.theta"]);
    assert!((trainer.dict.threshold - theta).abs() <= TOL * theta.abs().max(1e-3));
}

#[test]
fn training_steps_match_the_pytorch_reference() {
    check_training("train_cc.safetensors");
    check_training("train_sae.safetensors");
}

#[test]
fn latent_scaling_matches_the_pytorch_reference() {
    let (t, _) = read("scaling.safetensors");
    let (models, d) = (2, t["W_enc"].size()[1]);
    let dict = Dictionary {
        w_enc: t["W_enc"].copy(),
        b_enc: t["b_enc"].copy(),
        w_dec: t["W_dec"].copy(),
        b_dec: t["b_dec"].copy(),
        threshold: scalar(&t["theta"]),
        k: 1,
        norm: Normalization {
            mean: Tensor::zeros([models, d], (Kind::Double, Device::Cpu)),
            scale: Tensor::ones([models], (Kind::Double, Device::Cpu)),
        },
    };
    let x = &t["x"];
    let mut acc = Accumulator::new(&dict).unwrap();
    // Uneven batches: the sums must not depend on how the tokens are split.
    let mut codes = Vec::new();
    for (start, len) in [(0, 50), (50, 28), (78, 50)] {
        codes.push(acc.add(&dict, &x.narrow(0, start, len)).unwrap());
    }
    let f = Tensor::cat(&codes, 0);
    assert!(max_rel(&f, &t["f"]) < TOL, "codes");
    let ev = acc.finish(&dict).unwrap();
    let close = |got: &[f64], want: &Tensor, what: &str| {
        let want = Vec::<f64>::try_from(want.to_kind(Kind::Double).reshape([-1])).unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            if w.is_nan() {
                assert!(g.is_nan(), "{what}[{j}]: {g} vs NaN");
            } else {
                assert!(
                    (g - w).abs() <= TOL * w.abs().max(1e-3),
                    "{what}[{j}]: {g} vs {w}"
                );
            }
        }
    };
    for m in 0..2 {
        close(&ev.beta_r[m], &t["beta_r"].get(m as i64), "beta_r");
        close(&ev.beta_eps[m], &t["beta_eps"].get(m as i64), "beta_eps");
    }
    let (nu_eps, nu_r) = ev.nu();
    close(&nu_eps, &t["nu_eps"], "nu_eps");
    close(&nu_r, &t["nu_r"], "nu_r");
    close(&delta_norm(&dict).unwrap(), &t["delta"], "delta");
    close(&ev.fve, &t["fve"], "fve");
    close(&[ev.l0], &t["l0"], "l0");
    close(&[ev.dead_fraction], &t["dead_fraction"], "dead_fraction");
}

/// Synthetic paired activations: `shared` directions active in both models, `ft_only` in the
/// fine-tune only, `base_only` in the base only; each fires with probability 0.08.
fn planted(
    n: i64,
    d: i64,
    shared: i64,
    ft_only: i64,
    base_only: i64,
    seed: u64,
) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let total = shared + ft_only + base_only;
    let dirs = rng.tensor(&[total, d], |r| r.normal()).unwrap();
    let dirs = &dirs / dirs.norm_scalaropt_dim(2, [1], true);
    let acts = rng
        .tensor(&[n, total], |r| {
            if r.uniform() < 0.08 {
                0.5 + r.uniform()
            } else {
                0.0
            }
        })
        .unwrap();
    let mask = |from: i64, to: i64| {
        let mut v = vec![0f32; total as usize];
        for item in v.iter_mut().take(to as usize).skip(from as usize) {
            *item = 1.0;
        }
        Tensor::from_slice(&v)
    };
    let base = (&acts * mask(0, shared) + &acts * mask(shared + ft_only, total)).matmul(&dirs);
    let ft = (&acts * mask(0, shared + ft_only)).matmul(&dirs);
    let noise = rng.tensor(&[n, 2, d], |r| 0.01 * r.normal()).unwrap();
    (Tensor::stack(&[base, ft], 1) + noise, dirs)
}

fn opts(steps: usize) -> TrainOptions {
    TrainOptions {
        k: 3,
        lr: 1e-2,
        warmup_steps: steps / 10,
        threshold_start: steps / 2,
        dead_tokens: 20_000,
        ..TrainOptions::default()
    }
}

fn train(data: &Tensor, dict_size: i64, steps: usize, seed: u64) -> Trainer {
    let norm = dictionary::normalization_of(data, 1.0).unwrap();
    let s = data.size();
    let shape = dictionary::Shape {
        models: s[1],
        width: s[2],
        size: dict_size,
        k: 3,
    };
    let dict = Dictionary::init(shape, 0.1, norm, seed, (Kind::Float, Device::Cpu)).unwrap();
    let mut trainer = Trainer::new(dict, opts(steps)).unwrap();
    dictionary::train(&mut trainer, data, 256, steps, seed, &mut |_, _| Ok(true)).unwrap();
    trainer
}

#[test]
fn a_resumed_run_ends_bit_identical_to_a_straight_one() {
    tch::set_num_threads(1);
    let (data, _) = planted(2048, 16, 8, 3, 2, 1);
    let straight = train(&data, 64, 60, 5);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("train.safetensors");
    let norm = dictionary::normalization_of(&data, 1.0).unwrap();
    let shape = dictionary::Shape {
        models: 2,
        width: 16,
        size: 64,
        k: 3,
    };
    let dict = Dictionary::init(shape, 0.1, norm, 5, (Kind::Float, Device::Cpu)).unwrap();
    let mut first = Trainer::new(dict, opts(60)).unwrap();
    // Killed after step 23 (its checkpoint written after step 20).
    let err = dictionary::train(&mut first, &data, 256, 60, 5, &mut |t, s| {
        if t.step == 21 {
            t.save(&ckpt)?;
        }
        Ok(s.step < 23)
    })
    .unwrap_err();
    assert!(matches!(err, neurodiff_core::CoreError::Interrupted));
    drop(first);
    let mut resumed = Trainer::load(&ckpt, opts(60), Device::Cpu).unwrap();
    assert_eq!(resumed.step, 21);
    dictionary::train(&mut resumed, &data, 256, 60, 5, &mut |_, _| Ok(true)).unwrap();
    for (a, b) in straight.dict.params().iter().zip(resumed.dict.params()) {
        assert!(a.equal(b), "a parameter differs after resuming");
    }
    assert_eq!(
        straight.dict.threshold.to_bits(),
        resumed.dict.threshold.to_bits()
    );
    assert!(straight.since_fired.equal(&resumed.since_fired));
    // The saved dictionary reads back whole.
    let path = dir.path().join("dict.safetensors");
    resumed.dict.save(&path).unwrap();
    let back = Dictionary::load(&path, Device::Cpu).unwrap();
    assert!(back.w_dec.equal(&resumed.dict.w_dec));
    assert_eq!(back.threshold, resumed.dict.threshold);
}

type Classes = (BTreeMap<&'static str, usize>, Vec<f64>, Evaluation);

fn classes(trainer: &Trainer, data: &Tensor) -> Classes {
    let delta = delta_norm(&trainer.dict).unwrap();
    let mut acc = Accumulator::new(&trainer.dict).unwrap();
    let x = trainer.dict.norm.apply(data, Kind::Float).unwrap();
    let _codes = acc.add(&trainer.dict, &x).unwrap();
    let ev = acc.finish(&trainer.dict).unwrap();
    let mut counts = BTreeMap::new();
    for (j, dl) in delta.iter().enumerate() {
        if ev.fired[j] > 0 {
            *counts.entry(class_of(*dl).as_str()).or_insert(0) += 1;
        }
    }
    (counts, delta, ev)
}

#[test]
fn a_crosscoder_finds_planted_fine_tune_only_directions_and_none_in_a_control() {
    tch::set_num_threads(1);
    let (data, dirs) = planted(8192, 16, 8, 3, 2, 2);
    let trainer = train(&data, 64, 3000, 3);
    let (counts, delta, ev) = classes(&trainer, &data.narrow(0, 6144, 2048));
    let (nu_eps, nu_r) = ev.nu();
    // Every planted fine-tune-only direction is matched by a fine-tune-only latent.
    let dec_ft = trainer.dict.w_dec.get(1).to_kind(Kind::Float);
    let dec_ft = &dec_ft / dec_ft.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    for i in 8..11 {
        let cos = dec_ft.matmul(&dirs.get(i).unsqueeze(1)).squeeze_dim(1);
        let (best, j) = (
            cos.max().double_value(&[]),
            cos.argmax(0, false).int64_value(&[]),
        );
        assert!(
            best > 0.9,
            "planted ft-only direction {i}: best cosine {best}"
        );
        eprintln!(
            "planted ft-only direction {i}: latent {j}, cosine {best:.3}, Δ {:.3}",
            delta[j as usize]
        );
        assert!(
            delta[j as usize] < 0.1,
            "its latent {j} has Δ = {}",
            delta[j as usize]
        );
        // Latent scaling: the base explains none of it (the anchors' definition, β^r on the
        // full reconstruction), and the rule calls it real.
        let (e, r) = (nu_eps[j as usize], nu_r[j as usize]);
        eprintln!("    ν_ε {e:.3}, ν_r {r:.3}");
        assert!(r.abs() < 0.3, "latent {j}: ν_r = {r}");
        assert!(real_ft_only(e, r), "latent {j}: ν_ε {e}, ν_r {r} not real");
    }
    // Shared latents: the base reconstructs them as much as the fine-tune does.
    let shared: Vec<f64> = (0..delta.len())
        .filter(|&j| ev.fired[j] > 0 && class_of(delta[j]).as_str() == "shared")
        .map(|j| nu_r[j])
        .collect();
    eprintln!("ν_r of shared latents: {shared:.3?}");
    assert!(!shared.is_empty());
    for r in &shared {
        assert!((0.7..=1.3).contains(r), "a shared latent has ν_r = {r}");
    }
    eprintln!("classes of latents that fire: {counts:?}");
    let ft_only = counts.get("ft_only").copied().unwrap_or(0);
    // Exactly the planted three, and the two base-only directions as base-only latents.
    assert_eq!(ft_only, 3, "{counts:?}");
    assert_eq!(counts.get("base_only"), Some(&2), "{counts:?}");
    // The control: both models the same (the base twice).
    let base = data.select(1, 0);
    let same = Tensor::stack(&[&base, &base], 1);
    let control = train(&same, 64, 3000, 3);
    let (counts, _, _) = classes(&control, &same.narrow(0, 6144, 2048));
    assert_eq!(counts.get("ft_only"), None, "control: {counts:?}");
    assert_eq!(counts.get("base_only"), None, "control: {counts:?}");
}
