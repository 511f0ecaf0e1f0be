//! The activation analyses on the trained organisms (`neurodiff organisms --trained`, cached
//! under ~/.cache/neurodiff by seed and version): what each fine-tune's ground truth says must
//! be what the audit finds.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{assert_changed_from, assert_same_statistics, audit, merge};
use neurodiff_core::organisms::trained::{cached, Quiet, DOMAINS};
use neurodiff_protocol::{AnalysisKind, AuditSpec, Target};

fn organisms() -> PathBuf {
    cached(0, &mut Quiet).unwrap()
}

fn truth(dir: &Path, organism: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(organism).join("ground_truth.json")).unwrap())
        .unwrap()
}

fn spec(dir: &Path, target: Target, samples: usize) -> AuditSpec {
    let mut spec = AuditSpec::new(
        dir.join("base").display().to_string(),
        target,
        vec![AnalysisKind::Activations, AnalysisKind::LogitLens],
    );
    spec.corpus.max_samples = samples;
    spec.corpus.seq_len = 48;
    spec.validate().unwrap();
    spec
}

fn checkpoint(dir: &Path, organism: &str) -> Target {
    Target::Checkpoint {
        reference: dir.join(organism).display().to_string(),
    }
}

#[test]
fn fine_tunes_show_from_their_first_trained_block_on_and_nowhere_before() {
    let dir = organisms();
    for d in DOMAINS {
        let blocks = format!("{}-blocks", d.name);
        let trained: Vec<usize> = truth(&dir, &blocks)["trained_blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as usize)
            .collect();
        let first = *trained.iter().min().unwrap();
        assert!(
            first > 0,
            "a chosen-blocks fine-tune should leave early blocks alone"
        );
        let r = audit(&spec(&dir, checkpoint(&dir, &blocks), 16)).unwrap();
        // The block's input norm and attention are trained, so its attention output is the
        // first state that moves; its input (hook_resid_pre) is still the base's.
        assert_changed_from(&r, first, "hook_attn_out", &blocks);

        // A full fine-tune moves every block; its embeddings move only for the tokens of its
        // domain text (Adam leaves a row with no gradient where it was), so block 0's input
        // differs on some tokens and every later state on all.
        let full = format!("{}-full", d.name);
        let r = audit(&spec(&dir, checkpoint(&dir, &full), 16)).unwrap();
        for l in &r.analyses.activations.as_ref().unwrap().layers {
            assert!(l.mean_diff_norm > 0.0, "{full} {} {}", l.layer, l.hook);
            if (l.layer, l.hook.as_str()) != (0, "hook_resid_pre") {
                assert!(l.p50_diff_norm > 0.0, "{full} {} {}", l.layer, l.hook);
            }
        }
    }
}

#[test]
fn the_trained_adapter_as_a_hook_equals_the_merged_model() {
    let dir = organisms();
    let tmp = tempfile::tempdir().unwrap();
    let lora = dir.join(format!("{}-lora", DOMAINS[0].name));
    merge(&dir.join("base"), &lora, &tmp.path().join("merged"));
    let hooked = spec(
        &dir,
        Target::Adapter {
            reference: lora.display().to_string(),
        },
        16,
    );
    let merged = spec(&dir, checkpoint(tmp.path(), "merged"), 16);
    let (a, m) = (audit(&hooked).unwrap(), audit(&merged).unwrap());
    assert_same_statistics(&a, &m, 1e-4);
    assert_changed_from(&a, 0, "hook_attn_out", "lora");
}

#[test]
fn a_narrow_fine_tune_raises_its_domain_words_at_the_output_on_generic_text() {
    let dir = organisms();
    for d in DOMAINS {
        let organism = format!("{}-full", d.name);
        let words: Vec<usize> = truth(&dir, &organism)["domain_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap() as usize)
            .collect();
        assert!(
            words.len() >= 20,
            "{organism}: few domain words are single tokens"
        );
        let mut spec = spec(&dir, checkpoint(&dir, &organism), 64);
        spec.options.logit_lens.top_tokens = 50;
        let r = audit(&spec).unwrap();
        let output = &r.analyses.logit_lens.as_ref().unwrap().output;
        // 25 of 4,096 ids are domain words: by chance 0.3 of 50 would be.
        let hits = output
            .rising
            .iter()
            .filter(|t| words.contains(&t.id))
            .count();
        assert!(
            hits >= 15,
            "{organism}: {hits} of the top 50 rising tokens are domain words: {:?}",
            output.rising.iter().map(|t| &t.token).collect::<Vec<_>>()
        );
        assert!(output.falling.iter().all(|t| !words.contains(&t.id)));
    }
}
