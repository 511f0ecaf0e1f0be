//! Benchmark of the Tier II part 2 analyses (not a timed test): a GPT-2-small-sized pair (124M
//! fp32 parameters each, random, the fine-tune perturbed in its later blocks; made once by
//! scripts/bench_activations.py) on the first samples of the built-in corpus. Prints the wall
//! time of each analysis (traces, cmap, stitching, steering) and of all four together, run by
//! the service with one worker and with two (API, scheduler, PostgreSQL, Redis, Garage on this
//! machine), beside the embedded `neurodiff audit` of the same analysis in the same run.
//!
//!   scripts/bench_tier2.sh [SAMPLES]      (sets up the environment, then `cargo bench`)
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../../../tests/service/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::Env;
use serde_json::json;

const ANALYSES: [&str; 4] = ["traces", "cmap", "stitching", "steering"];
/// The repository (benches run in their package's directory).
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn make_pair(out: &Path) {
    if out.join("ft").join("model.safetensors").is_file() {
        return;
    }
    let status = std::process::Command::new("python")
        .args([
            "-c",
            "import sys; sys.path.insert(0, 'scripts'); import bench_activations as b; \
             b.make_pair(sys.argv[1])",
        ])
        .arg(out)
        .current_dir(ROOT)
        .status()
        .expect("python");
    assert!(status.success(), "making the GPT-2-small-sized pair");
}

fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(16);
    let options = json!({
        "corpus": {"max_samples": samples, "seq_len": 64, "batch_size": 8, "shard_samples": samples.div_ceil(2)},
        "cmap": {"samples": samples},
        "traces": {"scales": 10, "generation": {"max_new_tokens": 8}},
        "steering": {"samples": samples, "alphas": [0, 0.5, 1, 2],
                     "generation": {"max_new_tokens": 8}},
    });
    let flags = |analyses: &str| -> Vec<String> {
        [
            "--analyses",
            analyses,
            "--max-samples",
            &samples.to_string(),
            "--seq-len",
            "64",
            "--batch-size",
            "8",
            "--shard-samples",
            &samples.div_ceil(2).to_string(),
            "--cmap-samples",
            &samples.to_string(),
            "--steer-samples",
            &samples.to_string(),
            "--steer-alphas",
            "0,0.5,1,2",
            "--max-new-tokens",
            "8",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    let mut runs: Vec<(String, serde_json::Value)> = ANALYSES
        .iter()
        .map(|a| (a.to_string(), json!([a])))
        .collect();
    runs.push(("all four".into(), json!(ANALYSES)));
    let mut times = vec![[0.0f64; 2]; runs.len()];
    let mut embedded = vec![0.0f64; runs.len()];
    for (w, workers) in [1usize, 2].into_iter().enumerate() {
        let mut env = Env::new(None);
        let pair = env.dir.path().join("pair");
        let made = Path::new(ROOT).join("out/bench-act");
        make_pair(&made);
        std::fs::create_dir_all(&pair).unwrap();
        for side in ["base", "ft"] {
            let status = std::process::Command::new("cp")
                .arg("-r")
                .arg(made.join(side))
                .arg(&pair)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let (base, ft) = (
            pair.join("base").display().to_string(),
            pair.join("ft").display().to_string(),
        );
        let names: Vec<String> = (0..workers).map(|i| format!("w{i}")).collect();
        let list: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &[][..])).collect();
        env.start(&list);
        let token = env.token("bench");
        for (i, (name, analyses)) in runs.iter().enumerate() {
            let mut body = options.clone();
            body["base"] = json!(base);
            body["finetuned"] = json!(ft);
            body["analyses"] = analyses.clone();
            let t = Instant::now();
            let id = env.submit(&token, body);
            let a = env.wait_done(&token, &id, Duration::from_secs(3600));
            assert_eq!(a["status"], "succeeded", "{name}: {a}\n{}", env.logs());
            times[i][w] = t.elapsed().as_secs_f64();
            if w == 0 {
                let joined = if name == "all four" {
                    ANALYSES.join(",")
                } else {
                    name.clone()
                };
                let mut args = vec![base.clone(), ft.clone()];
                args.extend(flags(&joined));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let t = Instant::now();
                harness::embedded(env.dir.path(), &args);
                embedded[i] = t.elapsed().as_secs_f64();
            }
        }
    }
    for (i, (name, _)) in runs.iter().enumerate() {
        rows.push((name.clone(), embedded[i], times[i][0], times[i][1]));
    }
    println!(
        "Tier II part 2 on a GPT-2-small-sized pair: {samples} samples x 64 tokens of the built-in corpus"
    );
    println!("analysis     embedded   service 1 worker   service 2 workers   2 vs 1 worker");
    for (name, e, one, two) in rows {
        println!(
            "{name:<12} {e:>7.1} s   {one:>13.1} s   {two:>14.1} s   {:>10.2}x",
            one / two
        );
    }
}
