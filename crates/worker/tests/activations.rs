//! The activation analyses on organisms whose ground truth is known: a change planted in one
//! block leaves every statistic before it exactly zero and every one after it not; the results
//! do not depend on the batch size or on how the corpus is split into shards.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;

use neurodiff_core::organisms::{write_organisms, OrganismSpec};
use neurodiff_core::reference::HubOptions;
use neurodiff_protocol::{AnalysisKind, AuditResults, AuditSpec, Limits, PlanRecord, Target};
use neurodiff_worker::exec::run_shard;
use neurodiff_worker::{corpus, plan_audit, Sources};

fn record() -> neurodiff_protocol::ModelRecord {
    neurodiff_protocol::ModelRecord {
        reference: "x".into(),
        resolved: "x".into(),
        content_hash: "sha256:0".into(),
        files: Vec::new(),
    }
}

/// Runs `spec` as the embedded audit does (plan, every shard, assemble).
fn audit(spec: &AuditSpec) -> Result<AuditResults, String> {
    let limits = Limits::default();
    let sources = Sources::open(&spec.base, &spec.target, &HubOptions::from_env())
        .map_err(|e| e.to_string())?;
    let corpus = corpus::load_local(&spec.corpus, &limits).map_err(|e| e.to_string())?;
    let (b, t) = sources.contents().map_err(|e| e.to_string())?;
    let shards =
        plan_audit(&sources, spec, [&b, &t], Some(&corpus), &limits).map_err(|e| e.to_string())?;
    let outputs = shards
        .iter()
        .map(|s| run_shard(&sources, s, Some(&corpus), tch::Device::Cpu, &mut |_| true))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let record = PlanRecord {
        n_layers: sources.n_layers().unwrap(),
        base: record(),
        finetuned: record(),
        corpus: Some(corpus.record),
    };
    neurodiff_analyses::assemble(spec, record, outputs, 0).map_err(|e| e.to_string())
}

fn spec(dir: &Path, ft: &str) -> AuditSpec {
    let mut spec = AuditSpec::new(
        dir.join("base").display().to_string(),
        Target::Checkpoint {
            reference: dir.join(ft).display().to_string(),
        },
        vec![AnalysisKind::Activations, AnalysisKind::LogitLens],
    );
    spec.corpus.max_samples = 24;
    spec.corpus.seq_len = 40;
    spec.validate().unwrap();
    spec
}

#[test]
fn a_planted_change_shows_from_its_block_on_and_nowhere_before() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    // rank-update: a rank-4 change of block 4's mlp.down_proj; attn-scaled: block 1's attention.
    for (ft, block, first_hook) in [
        ("rank-update", 4, "hook_mlp_out"),
        ("attn-scaled", 1, "hook_attn_out"),
    ] {
        let r = audit(&spec(tmp.path(), ft)).unwrap();
        let a = r.analyses.activations.as_ref().unwrap();
        let hooks = neurodiff_analyses::activations::HOOKS;
        let first = hooks.iter().position(|h| *h == first_hook).unwrap();
        assert_eq!(a.layers.len(), 6 * hooks.len());
        for l in &a.layers {
            let changed = l.layer > block
                || (l.layer == block && hooks.iter().position(|h| *h == l.hook).unwrap() >= first);
            let stats = [
                l.mean_diff_norm,
                l.mean_rel_diff,
                l.p50_diff_norm,
                l.p95_rel_diff,
            ];
            if changed {
                assert!(
                    stats.iter().all(|s| *s > 0.0),
                    "{ft} {} {}: {stats:?}",
                    l.layer,
                    l.hook
                );
                assert!(l.mean_cosine < 1.0);
            } else {
                assert_eq!(stats, [0.0; 4], "{ft} {} {}", l.layer, l.hook);
                assert_eq!(l.mean_cosine, 1.0);
                assert!(l.position_diff_norm.iter().all(|v| *v == 0.0));
            }
        }
        assert!(a
            .top_examples
            .iter()
            .all(|e| e.layer < block || e.diff_norm > 0.0));
        let lens = r.analyses.logit_lens.as_ref().unwrap();
        for l in &lens.layers {
            let layer = l.layer.unwrap();
            if layer < block {
                assert_eq!((l.kl_mean, l.kl_p95), (0.0, 0.0), "{ft} lens {layer}");
                assert!(l.rising.is_empty() && l.falling.is_empty());
            } else {
                assert!(l.kl_mean > 0.0, "{ft} lens {layer}");
                assert!(!l.rising.is_empty() && !l.falling.is_empty());
            }
        }
        assert!(lens.output.kl_mean > 0.0);
        assert_eq!(lens.vocab.base_size, lens.vocab.shared);
        let mean = a.mean_diff.as_ref().unwrap();
        let d = mean.d_model;
        assert!(mean.all[..block * d].iter().all(|v| *v == 0.0));
        assert!(mean.all[block * d..].iter().any(|v| *v != 0.0));
    }
}

#[test]
fn results_do_not_depend_on_batch_size_or_shards() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    let mut one = spec(tmp.path(), "rank-update");
    one.corpus.batch_size = 1;
    one.corpus.shard_samples = 100;
    let mut many = one.clone();
    many.corpus.batch_size = 7;
    many.corpus.shard_samples = 5;
    let (a, b) = (audit(&one).unwrap(), audit(&many).unwrap());
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 * x.abs().max(y.abs()) + 1e-12;
    let (aa, ba) = (
        a.analyses.activations.unwrap(),
        b.analyses.activations.unwrap(),
    );
    assert_eq!(aa.n_tokens, ba.n_tokens);
    for (x, y) in aa.layers.iter().zip(&ba.layers) {
        for (p, q) in [
            (x.mean_diff_norm, y.mean_diff_norm),
            (x.mean_rel_diff, y.mean_rel_diff),
            (x.mean_cosine, y.mean_cosine),
        ] {
            assert!(close(p, q), "block {} {}: {p} vs {q}", x.layer, x.hook);
        }
    }
    let (al, bl) = (
        a.analyses.logit_lens.unwrap(),
        b.analyses.logit_lens.unwrap(),
    );
    for (x, y) in al
        .layers
        .iter()
        .chain([&al.output])
        .zip(bl.layers.iter().chain([&bl.output]))
    {
        assert!(
            close(x.kl_mean, y.kl_mean),
            "{:?}: {} vs {}",
            x.layer,
            x.kl_mean,
            y.kl_mean
        );
    }
    assert_eq!(
        al.top_samples.iter().map(|s| s.sample).collect::<Vec<_>>(),
        bl.top_samples.iter().map(|s| s.sample).collect::<Vec<_>>()
    );
}

/// `base` with every pair of the adapter at `adapter` merged in (W + scale · B A), in f32.
fn merge(base: &Path, adapter: &Path, out: &Path) {
    use neurodiff_core::weights::lora::Adapter;
    use neurodiff_core::Checkpoint;
    let ckpt = Checkpoint::open(base).unwrap();
    let adapter = Adapter::open(adapter).unwrap();
    std::fs::create_dir_all(out).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(base.join(f), out.join(f)).unwrap();
    }
    let tensors: Vec<(String, tch::Tensor)> = ckpt
        .names()
        .map(|n| {
            let w = ckpt.weight(n, tch::Kind::Double, tch::Device::Cpu).unwrap();
            let w = match adapter.pairs.get(n) {
                Some(pair) => w + adapter.dense_delta(&ckpt, pair).unwrap(),
                None => w,
            };
            (n.to_string(), w.to_kind(tch::Kind::Float))
        })
        .collect();
    tch::Tensor::write_safetensors(&tensors, out.join("model.safetensors")).unwrap();
}

#[test]
fn an_adapter_as_a_switchable_hook_equals_the_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    merge(
        &tmp.path().join("base"),
        &tmp.path().join("lora"),
        &tmp.path().join("merged"),
    );
    let mut hooked = spec(tmp.path(), "lora");
    hooked.target = Target::Adapter {
        reference: tmp.path().join("lora").display().to_string(),
    };
    let (a, m) = (
        audit(&hooked).unwrap(),
        audit(&spec(tmp.path(), "merged")).unwrap(),
    );
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * x.abs().max(y.abs()) + 1e-9;
    let (aa, ma) = (
        a.analyses.activations.unwrap(),
        m.analyses.activations.unwrap(),
    );
    let mut moved = 0;
    for (x, y) in aa.layers.iter().zip(&ma.layers) {
        assert_eq!((x.layer, &x.hook), (y.layer, &y.hook));
        for (p, q) in [
            (x.mean_diff_norm, y.mean_diff_norm),
            (x.mean_rel_diff, y.mean_rel_diff),
            (x.mean_cosine, y.mean_cosine),
        ] {
            assert!(close(p, q), "block {} {}: {p} vs {q}", x.layer, x.hook);
        }
        // The adapter (block 3's q_proj and v_proj) leaves every block before it unchanged.
        if x.layer < 3 {
            assert_eq!(x.mean_diff_norm, 0.0);
        }
        moved += usize::from(x.mean_diff_norm > 0.0);
    }
    assert!(moved > 0);
    let (al, ml) = (
        a.analyses.logit_lens.unwrap(),
        m.analyses.logit_lens.unwrap(),
    );
    for (x, y) in al
        .layers
        .iter()
        .chain([&al.output])
        .zip(ml.layers.iter().chain([&ml.output]))
    {
        assert!(
            close(x.kl_mean, y.kl_mean),
            "{:?}: {} vs {}",
            x.layer,
            x.kl_mean,
            y.kl_mean
        );
    }
    assert!(al.output.kl_mean > 0.0);
}

#[test]
fn a_missing_tokenizer_is_refused_at_planning() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    std::fs::remove_file(tmp.path().join("base/tokenizer.json")).unwrap();
    let e = audit(&spec(tmp.path(), "rank-update")).unwrap_err();
    assert!(e.contains("no tokenizer.json"), "{e}");
}
