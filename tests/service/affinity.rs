//! Warm workers first: once a worker has run a shard of a pair, later shards of that pair go
//! to it while it lives, and another worker leaves them on the delayed set instead of loading
//! the models itself; when the warm worker is gone, the shards fall back to the others after
//! the affinity wait.
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{organisms, wait_for, Env};

fn corpus_text() -> String {
    (0..12)
        .map(|i| {
            json!({"text": format!("Warm {i}: the same pair again, and again. {}", "z ".repeat(i))})
                .to_string()
                + "\n"
        })
        .collect()
}

/// `(worker, warm)` of each shard of audit `id`.
fn placed(env: &Env, token: &str, id: &str) -> Vec<(String, Value)> {
    let (code, listed) = env.json("GET", &format!("/v1/audits/{id}/shards"), token, None);
    assert_eq!(code, 200, "{listed}");
    listed["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["worker"].as_str().unwrap_or("").to_string(),
                s["warm"].clone(),
            )
        })
        .collect()
}

#[test]
fn shards_go_to_the_worker_holding_their_models_and_fall_back_when_it_is_gone() {
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    let (base, ft) = (org.join("base"), org.join("rank-update"));
    let corpus = env.corpus("warm.jsonl", corpus_text().into_bytes());
    // w1 takes a while over each shard, so w2 is idle while w1 is busy.
    env.start(&[("w1", &["--slow-tensor-ms", "300"])]);
    let token = env.token("warm");
    let audit = |env: &Env, shard_samples: usize| {
        let id = env.submit(
            &token,
            json!({"base": base.display().to_string(), "finetuned": ft.display().to_string(),
                   "analyses": ["activations"],
                   "corpus": {"source": corpus, "seq_len": 24, "max_samples": 12,
                              "batch_size": 4, "shard_samples": shard_samples}}),
        );
        let done = env.wait_done(&token, &id, Duration::from_secs(120));
        assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
        id
    };
    // w1 loads the pair once.
    let first = audit(&env, 12);
    assert_eq!(placed(&env, &token, &first)[0].1, false);
    // w2 joins, willing to wait long for the warm worker: every shard of the next audit of
    // the pair runs on w1, warm, and w2 left the ones it was handed.
    env.start_worker("w2", &["--affinity-wait-ms", "30000"]);
    wait_for("w2 to read the stream", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(env.log("w2")).unwrap_or_default();
        log.contains("neurodiff worker w2 running").then_some(())
    });
    let second = audit(&env, 3);
    let shards = placed(&env, &token, &second);
    assert_eq!(shards.len(), 4);
    assert!(
        shards
            .iter()
            .all(|(w, warm)| w.starts_with("w1") && *warm == true),
        "{shards:?}\n{}",
        env.logs()
    );
    // w1 dies (its announcement outlives it): a worker with a short wait falls back to
    // loading the pair itself, and the audit finishes.
    env.kill("w1");
    env.kill("w2");
    env.start_worker("w3", &["--affinity-wait-ms", "1000"]);
    let third = audit(&env, 6);
    let shards = placed(&env, &token, &third);
    assert!(
        shards.iter().all(|(w, _)| w.starts_with("w3")),
        "{shards:?}"
    );
    let log = std::fs::read_to_string(env.log("w3")).unwrap();
    assert!(
        log.contains("left for a worker holding the models"),
        "{log}"
    );
}
