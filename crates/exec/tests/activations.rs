//! The activation analyses on organisms whose ground truth is known: a change planted in one
//! block leaves every statistic before it exactly zero and every one after it not; the results
//! do not depend on the batch size or on how the corpus is split into shards.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{assert_changed_from, assert_same_statistics, audit, merge};
use neurodiff_core::organisms::{write_organisms, OrganismSpec};
use neurodiff_protocol::{AnalysisKind, AuditSpec, Target};

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
        assert_eq!(r.analyses.activations.as_ref().unwrap().layers.len(), 6 * 5);
        assert_changed_from(&r, block, first_hook, ft);
        let lens = r.analyses.logit_lens.as_ref().unwrap();
        assert_eq!(lens.vocab.base_size, lens.vocab.shared);
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
    assert_same_statistics(&a, &b, 1e-6);
    let (al, bl) = (
        a.analyses.logit_lens.unwrap(),
        b.analyses.logit_lens.unwrap(),
    );
    assert_eq!(
        al.top_samples.iter().map(|s| s.sample).collect::<Vec<_>>(),
        bl.top_samples.iter().map(|s| s.sample).collect::<Vec<_>>()
    );
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
    assert_same_statistics(&a, &m, 1e-4);
    let aa = a.analyses.activations.as_ref().unwrap();
    // The adapter (block 3's q_proj and v_proj) leaves every block before it unchanged.
    assert!(aa
        .layers
        .iter()
        .all(|x| x.layer >= 3 || x.mean_diff_norm == 0.0));
    assert!(aa.layers.iter().any(|x| x.mean_diff_norm > 0.0));
    assert!(a.analyses.logit_lens.as_ref().unwrap().output.kl_mean > 0.0);
}

#[test]
fn a_missing_tokenizer_is_refused_at_planning() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    std::fs::remove_file(tmp.path().join("base/tokenizer.json")).unwrap();
    let e = audit(&spec(tmp.path(), "rank-update")).unwrap_err();
    assert!(e.contains("no tokenizer.json"), "{e}");
}

#[test]
fn a_seq_len_beyond_learned_positions_is_refused_at_planning() {
    let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/gpt2");
    let mut spec = AuditSpec::new(
        gpt2.display().to_string(),
        Target::Checkpoint {
            reference: gpt2.display().to_string(),
        },
        vec![AnalysisKind::Activations],
    );
    spec.corpus.seq_len = 129;
    spec.corpus.max_samples = 2;
    let e = audit(&spec).unwrap_err();
    assert!(
        e.contains("--seq-len 129") && e.contains("n_positions = 128"),
        "{e}"
    );
}

#[test]
fn in_bf16_a_planted_change_still_shows_from_its_block_on_and_nowhere_before() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    let mut half = spec(tmp.path(), "rank-update");
    half.dtype = neurodiff_protocol::Dtype::Bf16;
    let r = audit(&half).unwrap();
    // The blocks before the planted one are the same bf16 weights on the same fp32 stream:
    // their differences stay exactly zero.
    assert_changed_from(&r, 4, "hook_mlp_out", "rank-update in bf16");
    // And the bf16 statistics stay near the fp32 ones where the change is.
    let full = audit(&spec(tmp.path(), "rank-update")).unwrap();
    let at = |r: &neurodiff_protocol::AuditResults| {
        let a = r.analyses.activations.as_ref().unwrap();
        a.layers
            .iter()
            .find(|x| x.layer == 5 && x.hook.as_str() == "hook_resid_post")
            .unwrap()
            .mean_rel_diff
    };
    let (h, f) = (at(&r), at(&full));
    assert!((h - f).abs() <= 0.05 * f, "bf16 {h} against fp32 {f}");
}

#[test]
fn a_warm_cache_serves_the_same_pair_within_its_bound() {
    use neurodiff_exec::forward::Loading;
    use neurodiff_exec::{ModelCache, Sources};
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    let s = spec(tmp.path(), "rank-update");
    let sources = Sources::open(
        &s.base,
        &s.target,
        &neurodiff_core::reference::HubOptions::from_env(),
    )
    .unwrap();
    let streamed = Loading {
        dtype: neurodiff_protocol::Dtype::Fp32,
        streamed: true,
    };
    let cache = ModelCache::new(1 << 30);
    let first = cache.take(&sources, tch::Device::Cpu, streamed).unwrap();
    assert!(!first.hit);
    let bytes = first.pair.weight_bytes();
    assert!(bytes > 0);
    cache.put_back(first);
    assert_eq!(cache.held(), bytes);
    let again = cache.take(&sources, tch::Device::Cpu, streamed).unwrap();
    assert!(
        again.hit && again.load_s == 0.0,
        "the second shard finds it warm"
    );
    assert_eq!(cache.held(), 0, "a taken pair is out of the cache");
    cache.put_back(again);
    // Another loading is another pair; both fit, and a bound below one pair keeps none.
    let resident = cache
        .take(
            &sources,
            tch::Device::Cpu,
            Loading::resident(neurodiff_protocol::Dtype::Fp32),
        )
        .unwrap();
    assert!(!resident.hit && resident.pair.weight_bytes() > bytes);
    cache.put_back(resident);
    assert!(cache.held() > bytes);
    let tiny = ModelCache::new(bytes - 1);
    let t = tiny.take(&sources, tch::Device::Cpu, streamed).unwrap();
    tiny.put_back(t);
    assert_eq!(tiny.held(), 0);
}
