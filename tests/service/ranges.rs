//! Layer-range shards over the service: a pair planned as chains of layer ranges runs link by
//! link on whichever worker is free, each link starting from the residual streams its
//! predecessor left in object storage; a worker killed in the middle of a link does not lose
//! the chain (the link is retried from its stored input), and the results equal the embedded
//! audit's, which ran every block in one shard.
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::harness::{assert_within, embedded, organisms, wait_for, Env};

const SAMPLES: usize = 10;

fn corpus_text() -> String {
    (0..SAMPLES)
        .map(|i| {
            json!({"text": format!("Range {i}: which blocks moved, and what did they hand on? {}", "y ".repeat(i))})
                .to_string()
                + "\n"
        })
        .collect()
}

/// (shard key, status, attempt, worker) of every shard of `audit`.
fn shards(env: &Env, audit: Uuid) -> Vec<(String, String, i32, Option<String>)> {
    env.rt
        .block_on(
            sqlx::query_as(
                "SELECT shard_key, status, attempt, worker FROM shards WHERE audit_id = $1 \
                 ORDER BY plan_order",
            )
            .bind(audit)
            .fetch_all(&env.db.pool),
        )
        .unwrap_or_default()
}

#[test]
fn layer_ranges_survive_a_killed_worker_and_equal_the_embedded_audit() {
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    let (base, ft) = (org.join("base"), org.join("rank-update"));
    let (base_s, ft_s) = (base.display().to_string(), ft.display().to_string());
    let corpus_ref = env.corpus("ranges.jsonl", corpus_text().into_bytes());
    let local = env.dir.path().join("ranges-local.jsonl");
    std::fs::write(&local, corpus_text()).unwrap();
    // w1 is slow (each batch of a link takes a second), so it is killed inside a link.
    env.start(&[("w1", &["--slow-tensor-ms", "1000"])]);
    let token = env.token("ranges");
    let corpus = json!({"source": corpus_ref, "seq_len": 32, "max_samples": SAMPLES,
                        "batch_size": 5, "shard_samples": SAMPLES});
    // A budget below any block: one block per link, a chain of 6 links per analysis.
    let id = env.submit(
        &token,
        json!({"base": base_s, "finetuned": ft_s, "analyses": ["activations", "logit-lens"],
               "corpus": corpus, "range_bytes": 1}),
    );
    let audit: Uuid = id.parse().unwrap();
    // Wait until a link has handed over and a later one is running on w1; then kill w1.
    let killed = wait_for(
        "a link running after one handed over",
        Duration::from_secs(120),
        || {
            let rows = shards(&env, audit);
            let handed = rows.iter().any(|r| r.1 == "succeeded");
            rows.iter()
                .find(|r| handed && r.1 == "running" && !r.0.ends_with("blocks-0000-0001"))
                .map(|r| r.0.clone())
        },
    );
    env.kill("w1");
    env.start_worker("w2", &[]);
    env.start_worker("w3", &[]);
    let done = env.wait_done(&token, &id, Duration::from_secs(240));
    assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
    let rows = shards(&env, audit);
    assert_eq!(rows.len(), 2 * 6, "{rows:?}");
    assert!(rows.iter().all(|r| r.0.contains("/blocks-")), "{rows:?}");
    // The link w1 died in ran again, elsewhere, from the hand-over its predecessor stored.
    let retried = rows.iter().find(|r| r.0 == killed).unwrap();
    assert!(retried.2 >= 2, "{retried:?}");
    assert_ne!(retried.3.as_deref(), Some("w1"), "{retried:?}");
    // The chains moved between workers: w1's links stand, the later ones ran elsewhere.
    let workers: std::collections::BTreeSet<_> = rows.iter().filter_map(|r| r.3.clone()).collect();
    assert!(workers.len() >= 2, "{workers:?}");

    // The audit's per-shard record shows where each link's time went: every link noted its
    // model loading, and a worker's later links found the pair warm.
    let (code, listed) = env.json("GET", &format!("/v1/audits/{id}/shards"), &token, None);
    assert_eq!(code, 200, "{listed}");
    let listed = listed["shards"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 12);
    assert!(
        listed.iter().all(|s| s["status"] == "succeeded"
            && s["load_s"].is_number()
            && s["elapsed_s"].is_number()),
        "{listed:?}"
    );
    assert!(listed.iter().any(|s| s["warm"] == true), "{listed:?}");
    assert!(listed.iter().any(|s| s["warm"] == false), "{listed:?}");
    // Another team does not see them.
    let other = env.token("other-team");
    let (code, _) = env.json("GET", &format!("/v1/audits/{id}/shards"), &other, None);
    assert_eq!(code, 404);

    // The embedded audit, every block in one shard, gives the same results (to 1e-6: the
    // sums were handed over as JSON, the streams as exact f32).
    let dir = env.dir.path().join("embedded-ranges");
    std::fs::create_dir_all(&dir).unwrap();
    let local_s = local.display().to_string();
    let reference = embedded(
        &dir,
        &[
            &base_s,
            &ft_s,
            "--analyses",
            "activations,logit-lens",
            "--corpus",
            &local_s,
            "--seq-len",
            "32",
            "--max-samples",
            "10",
            "--batch-size",
            "5",
            "--shard-samples",
            "10",
        ],
    );
    let (code, served) = env.json("GET", &format!("/v1/audits/{id}/results"), &token, None);
    assert_eq!(code, 200, "{served}");
    assert_within(
        &served["analyses"],
        &reference["analyses"],
        "analyses",
        &["elapsed_s"],
        1e-6,
    );
}
