//! Weight-audit metrics against an independent float64 PyTorch computation
//! (scripts/weights_reference.py): a dense pair and PEFT adapters made by the `peft` library.
#![allow(clippy::expect_used, clippy::unwrap_used)]
mod common;

use std::collections::BTreeMap;

use common::fixture;
use neurodiff_core::weights::{self, lora::Adapter, Target};
use neurodiff_core::Checkpoint;
use neurodiff_protocol::{ShardKey, Spectrum, TensorMetrics, WeightOptions, WeightsReport};
use serde_json::Value;

const REL: f64 = 1e-4;

fn reference() -> Value {
    let path = fixture("weights/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference.json")).expect("json")
}

fn options(top_k: usize) -> WeightOptions {
    WeightOptions {
        spectrum: Spectrum::Full,
        top_k,
    }
}

fn audit(base: &Checkpoint, target: Target<'_>, opts: &WeightOptions) -> WeightsReport {
    let n = weights::n_layers(base).expect("layers");
    let shards = (0..n).map(ShardKey::Layer).chain([ShardKey::NonLayer]);
    let results = shards
        .map(|s| {
            weights::analyze_shard(base, target, s, opts, tch::Device::Cpu, &mut |_| true)
                .expect("shard")
        })
        .collect();
    WeightsReport::from_shards(results)
}

fn close(name: &str, metric: &str, got: f64, want: f64, scale: f64) {
    let err = (got - want).abs();
    assert!(
        err <= REL * scale.abs().max(1e-30),
        "{name} {metric}: got {got}, want {want} (error {err:e})"
    );
}

/// Compares every metric the reference has for each tensor.
fn check(got: &[TensorMetrics], want: &Value) -> usize {
    let got: BTreeMap<&str, &TensorMetrics> = got.iter().map(|t| (t.name.as_str(), t)).collect();
    let want = want.as_object().expect("object");
    assert_eq!(
        got.len(),
        want.len(),
        "tensor count: {:?}",
        got.keys().collect::<Vec<_>>()
    );
    let mut compared = 0;
    for (name, w) in want {
        let g = got
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} missing from the audit"));
        let num = |k: &str| w[k].as_f64();
        for (metric, value) in [
            ("fro", Some(g.fro)),
            ("base_fro", Some(g.base_fro)),
            ("rel_fro", g.rel_fro),
            ("cosine", Some(g.cosine)),
            ("max_abs", g.max_abs),
            ("spectral", g.spectral),
            ("nuclear", g.nuclear),
            ("stable_rank", g.stable_rank),
            ("effective_rank", g.effective_rank),
        ] {
            if let Some(want) = num(metric) {
                let got = value.unwrap_or_else(|| panic!("{name}: {metric} not computed"));
                close(name, metric, got, want, want);
                compared += 1;
            }
        }
        if let Some(sv) = w["top_singular_values"].as_array() {
            let sigma1 = sv[0].as_f64().unwrap();
            for (i, s) in sv.iter().enumerate() {
                close(
                    name,
                    &format!("sigma_{i}"),
                    g.top_singular_values[i],
                    s.as_f64().unwrap(),
                    sigma1,
                );
            }
        }
    }
    compared
}

#[test]
fn dense_pair_matches_float64_svd() {
    let base = Checkpoint::open(fixture("weights/base")).unwrap();
    let ft = Checkpoint::open(fixture("weights/ft")).unwrap();
    let reference = reference();
    let report = audit(&base, Target::Checkpoint(&ft), &options(8));
    let compared = check(&report.tensors, &reference["dense"]);
    assert!(compared > 100, "only {compared} metrics compared");

    // The grown vocabulary: shared rows compared, added rows reported.
    let added = report
        .added_rows
        .iter()
        .find(|a| a.name == "model.embed_tokens.weight")
        .expect("added rows");
    assert_eq!((added.base_rows, added.finetuned_rows), (128, 132));
    let want = reference["dense"]["model.embed_tokens.weight"]["added_fro"]
        .as_f64()
        .unwrap();
    close("embed_tokens", "added_fro", added.added_fro, want, want);
    assert!(report.shape_mismatches.is_empty() && report.only_in_base.is_empty());

    // The untouched tensor is exactly zero; the rank-2 update is ranked rank 2.
    let q = report
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.1.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(
        (q.fro, q.spectral, q.method.as_str()),
        (0.0, Some(0.0), "zero")
    );
    let down = report
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.1.mlp.down_proj.weight")
        .unwrap();
    assert_eq!(down.rank_99, Some(2));
    assert_eq!(
        report.tensors[0].name, down.name,
        "the rank-2 update is the most changed tensor"
    );
}

#[test]
fn adapters_match_peft_delta_without_materialising() {
    let reference = reference();
    for (adapter, base) in [
        ("adapter", "weights/base"),
        ("adapter-rslora", "weights/base"),
        ("adapter-gpt2", "gpt2"),
    ] {
        let base = Checkpoint::open(fixture(base)).unwrap();
        let adapter = Adapter::open(&fixture(&format!("weights/{adapter}"))).unwrap();
        adapter.check_targets(&base).unwrap();
        let report = audit(&base, Target::Adapter(&adapter), &options(8));
        let compared = check(
            &report.tensors,
            &reference[adapter.dir.file_name().unwrap().to_str().unwrap()],
        );
        assert!(compared >= 24, "{compared}");
        assert!(report
            .tensors
            .iter()
            .all(|t| t.method == "lora-factored" && t.max_abs.is_none()));
    }
}

#[test]
fn adapter_equals_the_dense_computation_on_the_merged_delta() {
    // Same numbers from the factors as from the dense delta the factors multiply out to.
    let base = Checkpoint::open(fixture("weights/base")).unwrap();
    let adapter = Adapter::open(&fixture("weights/adapter")).unwrap();
    for pair in adapter.pairs.values() {
        let factored = adapter
            .metrics(&base, pair, &options(4), tch::Device::Cpu)
            .unwrap();
        let delta = adapter.dense_delta(&base, pair).unwrap();
        let sigma = weights::spectrum::svdvals(&delta).unwrap();
        close(
            &pair.base_name,
            "fro",
            factored.fro,
            delta.norm().double_value(&[]),
            factored.fro,
        );
        for (i, s) in sigma.iter().take(4).enumerate() {
            close(
                &pair.base_name,
                "sigma",
                factored.top_singular_values[i],
                *s,
                sigma[0],
            );
        }
    }
}

#[test]
fn norms_only_mode_skips_spectra() {
    let base = Checkpoint::open(fixture("weights/base")).unwrap();
    let ft = Checkpoint::open(fixture("weights/ft")).unwrap();
    let opts = WeightOptions {
        spectrum: Spectrum::None,
        top_k: 4,
    };
    let report = audit(&base, Target::Checkpoint(&ft), &opts);
    assert!(report
        .tensors
        .iter()
        .all(|t| t.spectral.is_none() && t.method == "none"));
    check_fro_only(&report.tensors, &reference()["dense"]);
}

fn check_fro_only(got: &[TensorMetrics], want: &Value) {
    for t in got {
        let w = &want[&t.name];
        close(
            &t.name,
            "fro",
            t.fro,
            w["fro"].as_f64().unwrap(),
            w["fro"].as_f64().unwrap(),
        );
        close(
            &t.name,
            "cosine",
            t.cosine,
            w["cosine"].as_f64().unwrap(),
            1.0,
        );
    }
}
