//! Inputs a hostile team controls that used to blow up what a worker returns: a tokenizer
//! whose tokens are 100 KiB each turned every token list, example and vocabulary into
//! megabytes (32 shard outputs of 39 MB took the scheduler's fan-in down). Every text a result
//! carries is bounded (`neurodiff_protocol::limits`), whatever the tokenizer says.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;

use neurodiff_core::organisms::{write_organisms, OrganismSpec};
use neurodiff_protocol::limits::{MAX_GENERATED_TEXT_BYTES, MAX_TOKEN_TEXT_BYTES};
use neurodiff_protocol::{AnalysisKind, AuditSpec, Target};
use serde_json::Value;

/// Byte values no ASCII corpus holds: 63 of them, whose tokens become 100 KiB long.
fn hostile_bytes() -> Vec<u64> {
    (1..=8)
        .chain([0x0B, 0x0C])
        .chain(0x0E..=0x1F)
        .chain(0x7F..=0xA1)
        .collect()
}

/// Rewrites `dir/tokenizer.json` so that each hostile byte's token is 100 KiB of text.
fn poison(dir: &Path) {
    let path = dir.join("tokenizer.json");
    let mut tok: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let hostile = hostile_bytes();
    let renamed: Vec<(String, u64)> = vocab
        .iter()
        .filter(|(_, id)| hostile.contains(&id.as_u64().unwrap()))
        .map(|(k, id)| (k.clone(), id.as_u64().unwrap()))
        .collect();
    assert_eq!(renamed.len(), 63);
    for (key, id) in renamed {
        vocab.remove(&key);
        vocab.insert(format!("{id}{}", "a".repeat(100 << 10)), id.into());
    }
    std::fs::write(&path, serde_json::to_vec(&tok).unwrap()).unwrap();
}

/// Every string in `v` with its JSON pointer.
fn strings<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((at, s)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| strings(x, format!("{at}/{i}"), out)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| strings(x, format!("{at}/{k}"), out)),
        _ => {}
    }
}

#[test]
fn a_tokenizer_of_huge_tokens_leaves_every_result_small() {
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    for side in ["base", "rank-update"] {
        poison(&tmp.path().join(side));
    }
    let corpus = tmp.path().join("corpus.txt");
    let lines: Vec<String> = (0..8)
        .map(|i| format!("the quick brown fox {i} jumps over the lazy dog"))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let mut spec = AuditSpec::new(
        tmp.path().join("base").display().to_string(),
        Target::Checkpoint {
            reference: tmp.path().join("rank-update").display().to_string(),
        },
        vec![
            AnalysisKind::Activations,
            AnalysisKind::LogitLens,
            AnalysisKind::Traces,
        ],
    );
    spec.corpus.source = Some(corpus.display().to_string());
    spec.corpus.seq_len = 16;
    spec.corpus.max_samples = 8;
    spec.corpus.batch_size = 4;
    spec.corpus.shard_samples = 1;
    spec.options.traces.generation.max_new_tokens = 8;
    spec.options.traces.scales = 4;
    spec.validate().unwrap();
    let results = common::audit(&spec).unwrap();
    let json = serde_json::to_value(&results).unwrap();
    let mut all = Vec::new();
    strings(&json, String::new(), &mut all);
    // The hostile tokens do show up (the random model predicts them), cut to their bound.
    let cut = all
        .iter()
        .filter(|(_, s)| s.contains("aaaaaaaa") && s.ends_with('…'))
        .count();
    assert!(
        cut > 0,
        "no hostile token in the results: the test checks nothing"
    );
    for (at, s) in &all {
        assert!(
            s.len() <= MAX_GENERATED_TEXT_BYTES,
            "{at}: {} bytes",
            s.len()
        );
        if at.ends_with("/token") {
            assert!(s.len() <= MAX_TOKEN_TEXT_BYTES, "{at}: {} bytes", s.len());
        }
    }
    let size = serde_json::to_vec(&json).unwrap().len();
    assert!(size < 2 << 20, "results.json of {size} bytes");
}
