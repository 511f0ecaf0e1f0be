//! Layer-range shards: a pair planned as chains of layer ranges (each link handing both
//! models' residual streams and its sums to the next through the shard store) gives the
//! results one shard per slice gives, to 1e-6, and still finds the planted change; a link
//! whose hand-over is missing or damaged is refused naming it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{assert_changed_from, audit, shard_outputs};
use neurodiff_core::organisms::{write_organisms, OrganismSpec};
use neurodiff_core::reference::HubOptions;
use neurodiff_exec::store::{DirStore, ShardStore};
use neurodiff_exec::{corpus, plan_audit, run_shard, ModelCache, ShardEnv, Sources};
use neurodiff_protocol::{AnalysisKind, AuditSpec, Limits, ShardKey, ShardOutput, Target};
use serde_json::Value;

fn spec(dir: &Path) -> AuditSpec {
    let mut spec = AuditSpec::new(
        dir.join("base").display().to_string(),
        Target::Checkpoint {
            reference: dir.join("rank-update").display().to_string(),
        },
        vec![AnalysisKind::Activations, AnalysisKind::LogitLens],
    );
    spec.corpus.max_samples = 24;
    spec.corpus.seq_len = 40;
    spec.corpus.batch_size = 5;
    spec.corpus.shard_samples = 10;
    spec.validate().unwrap();
    spec
}

/// Every number of `a` within `rel` of `b`'s, every other value equal (`elapsed_s` aside).
fn assert_close(a: &Value, b: &Value, path: &str, rel: f64) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= rel * x.abs().max(y.abs()) + 1e-12,
                "{path}: {x} vs {y}"
            );
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{path}"
            );
            for (k, v) in x.iter().filter(|(k, _)| k.as_str() != "elapsed_s") {
                assert_close(v, &y[k], &format!("{path}.{k}"), rel);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                assert_close(v, w, &format!("{path}[{i}]"), rel);
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn chains_of_layer_ranges_equal_one_shard_per_slice() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    let whole = spec(tmp.path());
    let mut ranged = whole.clone();
    // A budget below any block: one block per link, 6 links per slice of the 6-block organism.
    ranged.range_bytes = Some(1);
    let (outputs, _) = shard_outputs(&ranged).unwrap();
    let links = outputs
        .iter()
        .filter(|o| matches!(o, ShardOutput::Link(_)))
        .count();
    // 3 slices × 2 analyses, each a chain of 6 one-block links, 5 of them handing on.
    assert_eq!(outputs.len(), 3 * 2 * 6);
    assert_eq!(links, 3 * 2 * 5);
    let (a, b) = (audit(&whole).unwrap(), audit(&ranged).unwrap());
    let (x, y) = (
        serde_json::to_value(&a.analyses).unwrap(),
        serde_json::to_value(&b.analyses).unwrap(),
    );
    assert_close(&x, &y, "analyses", 1e-6);
    // And the chain still finds the change planted in block 4's MLP.
    assert_changed_from(&b, 4, "hook_mlp_out", "rank-update as layer ranges");
}

#[test]
fn a_link_without_its_hand_over_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    let mut spec = spec(tmp.path());
    spec.range_bytes = Some(1);
    let limits = Limits::default();
    let sources = Sources::open(&spec.base, &spec.target, &HubOptions::from_env()).unwrap();
    let corpus = corpus::load_local(&spec.corpus_read(), &limits).unwrap();
    let (b, t) = sources.contents().unwrap();
    let shards = plan_audit(&sources, &spec, [&b, &t], Some(&corpus), &limits).unwrap();
    let second = shards
        .iter()
        .find(|s| matches!(s.shard, ShardKey::Range { first: 1, .. }))
        .unwrap();
    let first = shards
        .iter()
        .find(|s| {
            s.shard.samples() == second.shard.samples()
                && s.shard.analysis() == second.shard.analysis()
                && matches!(s.shard, ShardKey::Range { first: 0, .. })
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path());
    let models = ModelCache::new(0);
    let env = ShardEnv {
        store: &store,
        device: tch::Device::Cpu,
        models: &models,
        ready: None,
    };
    let run = |s| run_shard(&sources, s, Some(&corpus), env, &mut |_| true);
    let e = run(second).unwrap_err().to_string();
    assert!(e.contains("hand-over") && e.contains("missing"), "{e}");
    // Its predecessor leaves it; damaged, it is refused; restored, the link runs.
    let ShardOutput::Link(link) = run(first).unwrap() else {
        panic!("the chain's first link hands over");
    };
    let good = store.get(&link.state).unwrap().unwrap();
    store
        .put(&link.state, good[..good.len() - 3].to_vec())
        .unwrap();
    let e = run(second).unwrap_err().to_string();
    assert!(e.contains(&link.state) && e.contains("truncated"), "{e}");
    store.put(&link.state, good).unwrap();
    assert!(matches!(run(second).unwrap(), ShardOutput::Link(_)));
}
