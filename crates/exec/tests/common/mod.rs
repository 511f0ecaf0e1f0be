//! Helpers shared by the activation-analysis tests: the embedded audit, merging an adapter
//! into its base, and the two comparisons every ground-truth test makes.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;

use neurodiff_core::reference::HubOptions;
use neurodiff_exec::run_shard;
use neurodiff_exec::{corpus, plan_audit, Sources};
use neurodiff_protocol::{AuditResults, AuditSpec, Limits, PlanRecord, ShardOutput};

fn record() -> neurodiff_protocol::ModelRecord {
    neurodiff_protocol::ModelRecord {
        reference: "x".into(),
        resolved: "x".into(),
        content_hash: "sha256:0".into(),
        files: Vec::new(),
    }
}

/// Runs `spec` as the embedded audit does (plan, every shard, assemble).
pub fn audit(spec: &AuditSpec) -> Result<AuditResults, String> {
    let (outputs, record) = shard_outputs(spec)?;
    neurodiff_analyses::assemble(spec, record, outputs, 0).map_err(|e| e.to_string())
}

/// Plans `spec` and runs every shard: their outputs, and the plan's record.
pub fn shard_outputs(spec: &AuditSpec) -> Result<(Vec<ShardOutput>, PlanRecord), String> {
    let limits = Limits::default();
    let sources = Sources::open(&spec.base, &spec.target, &HubOptions::from_env())
        .map_err(|e| e.to_string())?;
    let corpus = corpus::load_local(&spec.corpus_read(), &limits).map_err(|e| e.to_string())?;
    let (b, t) = sources.contents().map_err(|e| e.to_string())?;
    let shards =
        plan_audit(&sources, spec, [&b, &t], Some(&corpus), &limits).map_err(|e| e.to_string())?;
    // Each audit its own store: what one test leaves never feeds another.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = neurodiff_exec::store::DirStore::new(dir.path());
    // One warm cache across the audit's shards, as the embedded audit and a worker keep.
    let models = neurodiff_exec::ModelCache::new(neurodiff_exec::cache::DEFAULT_MODEL_CACHE_BYTES);
    let env = neurodiff_exec::ShardEnv {
        store: &store,
        device: tch::Device::Cpu,
        models: &models,
        ready: None,
    };
    let outputs = shards
        .iter()
        .map(|s| run_shard(&sources, s, Some(&corpus), env, &mut |_| true))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let record = PlanRecord {
        n_layers: sources.n_layers().unwrap(),
        base: record(),
        finetuned: record(),
        corpus: Some(corpus.record),
    };
    Ok((outputs, record))
}

/// Asserts the ground truth of a change that starts at `block`'s `first_hook` (a hook name of
/// `HookKind`): every activation and lens statistic before it exactly zero, every one after it not.
pub fn assert_changed_from(r: &AuditResults, block: usize, first_hook: &str, what: &str) {
    let a = r.analyses.activations.as_ref().unwrap();
    let hooks = neurodiff_protocol::HookKind::ALL;
    let first = hooks.iter().position(|h| h.as_str() == first_hook).unwrap();
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
                "{what} {} {}: {stats:?}",
                l.layer,
                l.hook
            );
            assert!(l.mean_cosine < 1.0);
        } else {
            assert_eq!(stats, [0.0; 4], "{what} {} {}", l.layer, l.hook);
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
            assert_eq!((l.kl_mean, l.kl_p95), (0.0, 0.0), "{what} lens {layer}");
            assert!(l.rising.is_empty() && l.falling.is_empty());
        } else {
            assert!(l.kl_mean > 0.0, "{what} lens {layer}");
            assert!(!l.rising.is_empty() && !l.falling.is_empty());
        }
    }
    assert!(lens.output.kl_mean > 0.0);
    let mean = a.mean_diff.as_ref().unwrap();
    let d = mean.d_model;
    assert!(mean.all[..block * d].iter().all(|v| *v == 0.0));
    assert!(mean.all[block * d..].iter().any(|v| *v != 0.0));
}

/// Asserts that two audits of the same pair agree, statistic by statistic, to `rel`.
pub fn assert_same_statistics(a: &AuditResults, b: &AuditResults, rel: f64) {
    let close = |x: f64, y: f64| (x - y).abs() <= rel * x.abs().max(y.abs()) + 1e-12;
    let (aa, ba) = (
        a.analyses.activations.as_ref().unwrap(),
        b.analyses.activations.as_ref().unwrap(),
    );
    assert_eq!(aa.n_tokens, ba.n_tokens);
    assert_eq!(aa.layers.len(), ba.layers.len());
    for (x, y) in aa.layers.iter().zip(&ba.layers) {
        assert_eq!((x.layer, &x.hook), (y.layer, &y.hook));
        for (p, q) in [
            (x.mean_diff_norm, y.mean_diff_norm),
            (x.mean_rel_diff, y.mean_rel_diff),
            (x.mean_cosine, y.mean_cosine),
        ] {
            assert!(close(p, q), "block {} {}: {p} vs {q}", x.layer, x.hook);
        }
    }
    let (al, bl) = (
        a.analyses.logit_lens.as_ref().unwrap(),
        b.analyses.logit_lens.as_ref().unwrap(),
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
}

/// `base` with every pair of the adapter at `adapter` merged in (W + scale · B A), in f32.
pub fn merge(base: &Path, adapter: &Path, out: &Path) {
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
