//! Samples are cut to what `seq_len` tokens can cover before they are tokenized (a tokenizer's
//! memory grows by hundreds of bytes per byte of text): the ids must be those of tokenizing the
//! whole sample, on every fixture's tokenizer, over the longest samples of the built-in corpus
//! and text built to put long words and runs of spaces across the cut.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../../tests/fuzz/common.rs"]
mod common;

use std::path::Path;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

use neurodiff_core::corpus::{self, encoded_bytes, longest_token_bytes};
use neurodiff_core::tokenizer;

fn whole(tok: &tokenizer::Tokenizer, s: &str, seq_len: usize) -> Vec<i64> {
    tok.encode(s, true)
        .unwrap()
        .get_ids()
        .iter()
        .take(seq_len)
        .map(|&i| i64::from(i))
        .collect()
}

#[test]
fn cutting_before_encoding_keeps_the_ids_of_the_whole_sample() {
    let mut samples = corpus::parse(corpus::BUILTIN_FILE, corpus::BUILTIN, u64::MAX).unwrap();
    samples.sort_by_key(|s| std::cmp::Reverse(s.len()));
    samples.truncate(300);
    let word = "antidisestablishmentarianism".repeat(40);
    samples.extend([
        format!("{} {word} tail", "x ".repeat(300)),
        format!("start{}end", " ".repeat(20_000)),
        "日本語のテキスト、".repeat(2000),
        "🙂".repeat(5000),
    ]);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut checked = 0;
    for model in [
        "gpt2",
        "gpt2-noprefix",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "olmo2",
        "gemma2",
        "gemma3_text",
        "phi3",
    ] {
        let tok = tokenizer::load(&fixtures.join(model)).unwrap();
        for seq_len in [8, 64, 200] {
            let cut = encoded_bytes(seq_len, longest_token_bytes(&tok));
            let got = corpus::encode(&tok, &samples, seq_len).unwrap();
            for (s, ids) in samples.iter().zip(&got) {
                assert_eq!(ids, &whole(&tok, s, seq_len), "{model} seq_len {seq_len}");
                checked += usize::from(s.len() > cut);
            }
        }
    }
    // The check means something only where samples were actually cut.
    assert!(checked > 100, "{checked} samples were longer than the cut");
}

/// A single line of many megabytes, of which 8 tokens are used: tokenizing it whole took about
/// 240 bytes per byte of text. Cut first, the tokenizer holds what 8 tokens need.
#[test]
fn a_huge_sample_costs_what_its_tokens_need() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tok = tokenizer::load(&fixtures.join("llama")).unwrap();
    let line = "lorem ipsum dolor sit amet ".repeat(300_000);
    let text = format!("{line}\n");
    let ((samples, ids), peak) = common::peak_of(|| {
        let (samples, _) = corpus::parse_bounded("c.txt", text.as_bytes(), 1 << 30, 10).unwrap();
        let ids = corpus::encode(&tok, &samples, 8).unwrap();
        (samples, ids)
    });
    assert_eq!(ids[0].len(), 8);
    // The sample kept (at most 1 MiB) and a tokenizer's work on a few KiB of it.
    assert!(samples[0].len() <= corpus::MAX_SAMPLE_BYTES);
    assert!(
        peak < 24 << 20,
        "{peak} bytes held at once for an 8-token sample"
    );
}
