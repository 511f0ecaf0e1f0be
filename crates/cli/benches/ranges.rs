//! Benchmark of layer-range shards over the service (not a timed test): the
//! Llama-3.2-1B-shaped bf16 pair `scripts/bench_scale.py` makes (`out/bench-scale`),
//! `activations,logit-lens` in bf16 on 16 samples × 64 tokens of the built-in corpus, run by
//! the service (API, scheduler, PostgreSQL, Redis, Garage on this machine) with one worker as
//! one shard per analysis, and with two workers as chains of layer ranges (`range_bytes`,
//! default 1e9: 4 links of 4 blocks), in the same run. Prints each wall time and the links'
//! placement, and checks that the two results agree to 1e-6.
//!
//!   scripts/bench_ranges.sh [RANGE_BYTES]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../../../tests/service/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::Env;
use serde_json::{json, Value};

/// The repository (benches run in their package's directory).
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// One audit of the pair in `made` by `workers` workers; its wall time, results and shards.
fn run(made: &Path, workers: usize, range_bytes: Option<u64>) -> (f64, Value, Value) {
    let mut env = Env::new(None);
    let pair = env.dir.path().join("pair");
    std::fs::create_dir_all(&pair).unwrap();
    for side in ["base", "ft"] {
        // Hard links where the filesystem allows (the files are 2.5 GB each).
        let linked = std::process::Command::new("cp")
            .arg("-al")
            .arg(made.join(side))
            .arg(&pair)
            .status()
            .unwrap();
        if !linked.success() {
            let copied = std::process::Command::new("cp")
                .arg("-r")
                .arg(made.join(side))
                .arg(&pair)
                .status()
                .unwrap();
            assert!(copied.success());
        }
    }
    let names: Vec<String> = (0..workers).map(|i| format!("w{i}")).collect();
    let list: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &[][..])).collect();
    env.start(&list);
    let token = env.token("bench");
    let mut body = json!({
        "base": pair.join("base").display().to_string(),
        "finetuned": pair.join("ft").display().to_string(),
        "analyses": ["activations", "logit-lens"], "dtype": "bf16",
        "corpus": {"max_samples": 16, "seq_len": 64, "batch_size": 8, "shard_samples": 16},
    });
    if let Some(b) = range_bytes {
        body["range_bytes"] = json!(b);
    }
    let started = Instant::now();
    let id = env.submit(&token, body);
    let a = env.wait_done(&token, &id, Duration::from_secs(3600));
    assert_eq!(a["status"], "succeeded", "{a}\n{}", env.logs());
    let wall = started.elapsed().as_secs_f64();
    let (_, results) = env.json("GET", &format!("/v1/audits/{id}/results"), &token, None);
    let (_, shards) = env.json("GET", &format!("/v1/audits/{id}/shards"), &token, None);
    (wall, results, shards)
}

fn main() {
    let range_bytes: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000_000);
    let made = Path::new(ROOT).join("out/bench-scale");
    assert!(
        made.join("ft/model.safetensors").is_file(),
        "make the pair first: python scripts/bench_scale.py --side neurodiff"
    );
    let (one, whole, _) = run(&made, 1, None);
    let (two, ranged, shards) = run(&made, 2, Some(range_bytes));
    harness::assert_within(
        &whole["analyses"],
        &ranged["analyses"],
        "analyses",
        &["elapsed_s"],
        1e-6,
    );
    println!("Llama-3.2-1B-shaped pair, bf16, activations + logit lens, 16 samples x 64 tokens");
    println!("service, 1 worker, one shard per analysis: {one:7.1} s");
    println!("service, 2 workers, layer ranges of {range_bytes} bytes: {two:7.1} s (results equal to 1e-6)");
    for s in shards["shards"].as_array().unwrap() {
        println!(
            "  {:55} {:6} load {:5.1} s  run {:6.1} s",
            s["shard"].as_str().unwrap_or(""),
            s["worker"].as_str().unwrap_or(""),
            s["load_s"].as_f64().unwrap_or(f64::NAN),
            s["elapsed_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
}
