//! GGUF checkpoints over REST: a base under an s3:// prefix and a fine-tune in a local model
//! root, each a directory holding one `.gguf`, audited by two workers (weights and the activation
//! analyses) with results equal to the embedded audit of the same files, which itself equals the
//! audit of the same models as transformers' safetensors (crates/cli/tests/audit.rs).
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{assert_close, embedded, Env};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/fixtures/gguf")
        .join(name)
}

#[test]
fn a_gguf_pair_over_rest_equals_the_embedded_audit() {
    let mut env = Env::new(None);
    let (base, ft) = (env.dir.path().join("base"), env.dir.path().join("ft"));
    for (dir, file) in [(&base, "tiny-llama.gguf"), (&ft, "tiny-llama-ft.gguf")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(fixture(file), dir.join(file)).unwrap();
    }
    let (base_s, ft_s) = (base.display().to_string(), ft.display().to_string());
    let text: String = (0..12)
        .map(|i| json!({"text": format!("Sample {i}: the quick brown fox and the lazy dog {}", "z ".repeat(i))}).to_string() + "\n")
        .collect();
    let corpus_ref = env.corpus("gguf.jsonl", text.clone().into_bytes());
    env.start(&[("w1", &[]), ("w2", &[])]);
    let token = env.token("safety");
    // The base from object storage when an S3 server is configured (a prefix holding the GGUF).
    let base_ref = crate::upload_model(&env, &base, "gguf-base").unwrap_or_else(|| base_s.clone());
    let id = env.submit(
        &token,
        json!({"base": base_ref, "finetuned": ft_s,
               "analyses": ["weights", "activations", "logit-lens"],
               "corpus": {"source": corpus_ref, "seq_len": 24, "max_samples": 12,
                          "batch_size": 4, "shard_samples": 6}}),
    );
    let audit = env.wait_done(&token, &id, Duration::from_secs(180));
    assert_eq!(audit["status"], "succeeded", "{audit}\n{}", env.logs());
    let local = env.dir.path().join("gguf.jsonl");
    std::fs::write(&local, text).unwrap();
    let reference = embedded(
        env.dir.path(),
        &[
            &base_s,
            &ft_s,
            "--analyses",
            "weights,activations,logit-lens",
            "--corpus",
            local.to_str().unwrap(),
            "--seq-len",
            "24",
            "--max-samples",
            "12",
        ],
    );
    let (status, body) = env.http(
        "GET",
        &format!("/v1/audits/{id}/results"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_close(&served["analyses"], &reference["analyses"], "analyses", &[]);
    assert!(
        served["analyses"]["weights"]["tensors"]
            .as_array()
            .unwrap()
            .len()
            >= 30
    );
    for side in ["base", "finetuned"] {
        assert_eq!(
            served[side]["content_hash"], reference[side]["content_hash"],
            "{side}"
        );
    }
}
