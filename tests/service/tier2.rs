//! The activation analyses over REST: split into corpus shards that two workers run, with the
//! corpus read from object storage under the policy, the result equal to the embedded audit's,
//! the per-block metrics stored for the team-wide query; a corpus outside what the team may
//! read is refused before anything runs.
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::harness::{assert_close, embedded, organisms, trained_organisms, Env, BIN};

const SAMPLES: usize = 20;

/// A block_results row: analysis, layer, hook, mean_rel_diff, kl_mean.
type StoredBlock = (String, Option<i32>, String, Option<f64>, Option<f64>);

fn corpus_text() -> String {
    (0..SAMPLES)
        .map(|i| {
            json!({"text": format!("Sample {i}: which layers moved, and did the fine-tune leave traces? {}", "x ".repeat(i))})
                .to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn activation_analyses_over_rest_equal_the_embedded_ones() {
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    let (base, ft) = (org.join("base"), org.join("rank-update"));
    let (base_s, ft_s) = (base.display().to_string(), ft.display().to_string());
    let local = env.dir.path().join("corpus.jsonl");
    std::fs::write(&local, corpus_text()).unwrap();
    env.start(&[("w1", &[]), ("w2", &[])]);
    let token = env.token("safety");
    // The service reads the corpus from object storage when an S3 server is configured.
    let corpus_ref = match env.models_store.clone() {
        Some(store) => {
            let blobs = neurodiff_store::Blobs::from_url(&store).unwrap();
            env.rt
                .block_on(blobs.put("corpora/corpus.jsonl", Bytes::from(corpus_text())))
                .unwrap();
            format!("{store}/corpora/corpus.jsonl")
        }
        None => local.display().to_string(),
    };
    let options =
        json!({"seq_len": 32, "max_samples": SAMPLES, "batch_size": 3, "shard_samples": 6});
    let mut corpus = options.clone();
    corpus["source"] = json!(corpus_ref);
    let id = env.submit(
        &token,
        json!({"base": base_s, "finetuned": ft_s, "analyses": ["activations", "logit-lens"],
               "corpus": corpus}),
    );
    let audit = env.wait_done(&token, &id, Duration::from_secs(180));
    assert_eq!(audit["status"], "succeeded", "{audit}\n{}", env.logs());
    // Four corpus shards per analysis (20 samples, 6 per shard).
    assert_eq!(audit["progress"]["shards_total"], 8);
    let out = env.dir.path().join("embedded-tier2");
    let status = std::process::Command::new(BIN)
        .args([
            "audit",
            &base_s,
            &ft_s,
            "--analyses",
            "activations,logit-lens",
            "--corpus",
        ])
        .arg(&local)
        .args([
            "--seq-len",
            "32",
            "--max-samples",
            "20",
            "--batch-size",
            "3",
            "--shard-samples",
            "6",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let reference: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let (code, served) = env.json("GET", &format!("/v1/audits/{id}/results"), &token, None);
    assert_eq!(code, 200, "{served}");
    assert_close(&served["analyses"], &reference["analyses"], "analyses", &[]);
    assert_eq!(served["corpus"]["sha256"], reference["corpus"]["sha256"]);
    assert_eq!(served["corpus"]["samples_used"], SAMPLES);
    // The mean difference vectors are an artifact, byte for byte the embedded one.
    let (code, served_mean) = env.http(
        "GET",
        &format!("/v1/audits/{id}/artifacts/mean_diff.safetensors"),
        Some(&token),
        None,
    );
    assert_eq!(code, 200);
    let local_mean = std::fs::read(out.join("mean_diff.safetensors")).unwrap();
    // Same header; the same f32 values to 1e-6 (libtorch's reductions may round differently
    // with another thread count).
    let header = |b: &[u8]| 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h = header(&local_mean);
    assert_eq!(served_mean.len(), local_mean.len());
    assert_eq!(served_mean[..h], local_mean[..h]);
    for (a, b) in served_mean[h..].chunks(4).zip(local_mean[h..].chunks(4)) {
        let (a, b) = (
            f32::from_le_bytes(a.try_into().unwrap()),
            f32::from_le_bytes(b.try_into().unwrap()),
        );
        assert!(
            (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) + 1e-9,
            "{a} vs {b}"
        );
    }
    // The per-block metrics are rows the team can query.
    let rows: Vec<StoredBlock> = env
        .rt
        .block_on(
            sqlx::query_as(
                "SELECT analysis, layer, hook, mean_rel_diff, kl_mean FROM block_results \
                 WHERE audit_id = $1 ORDER BY analysis, layer NULLS LAST, hook",
            )
            .bind(id.parse::<uuid::Uuid>().unwrap())
            .fetch_all(&env.db.pool),
        )
        .unwrap();
    assert_eq!(rows.len(), 6 * 5 + 6 + 1);
    // And the team-wide query finds them: the largest output KL, and a filter by block.
    let (code, found) = env.json(
        "GET",
        "/v1/results/blocks?metric=kl_mean&hook=output",
        &token,
        None,
    );
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["results"][0]["audit_id"], json!(id));
    let kl = served["analyses"]["logit_lens"]["output"]["kl_mean"]
        .as_f64()
        .unwrap();
    assert!((found["results"][0]["value"].as_f64().unwrap() - kl).abs() <= 1e-12 * kl);
    let (_, early) = env.json(
        "GET",
        "/v1/results/blocks?analysis=activations&layer=2&min=0.000001",
        &token,
        None,
    );
    assert_eq!(early["results"], json!([]), "nothing moved before block 4");
    let (code, bad) = env.json("GET", "/v1/results/blocks?metric=fro", &token, None);
    assert_eq!(code, 400);
    assert!(bad["error"].as_str().unwrap().contains("query `metric`"));
    for (analysis, layer, hook, rel, kl) in &rows {
        let before = layer.is_some_and(|l| l < 4);
        let value = if analysis == "activations" {
            rel.unwrap()
        } else {
            kl.unwrap()
        };
        assert_eq!(
            value == 0.0,
            before
                || (*layer == Some(4)
                    && ["hook_resid_pre", "hook_attn_out", "hook_resid_mid"]
                        .contains(&hook.as_str())),
            "{analysis} {layer:?} {hook}: {value}"
        );
    }
}

#[test]
fn a_trained_organism_over_rest_on_the_builtin_corpus_equals_the_embedded_audit() {
    let mut env = Env::new(None);
    let org = trained_organisms(env.dir.path());
    let base = org.join("base").display().to_string();
    let ft = org.join("cooking-blocks").display().to_string();
    env.start(&[("w1", &[]), ("w2", &[])]);
    let token = env.token("safety");
    let id = env.submit(
        &token,
        json!({"base": base, "finetuned": ft,
               "analyses": ["weights", "activations", "logit-lens", "traces", "cmap",
                            "stitching", "steering"],
               "corpus": {"max_samples": 24, "shard_samples": 8},
               "cmap": {"samples": 8},
               "traces": {"generation": {"max_new_tokens": 4}},
               "steering": {"samples": 8, "generation": {"max_new_tokens": 4}}}),
    );
    let audit = env.wait_done(&token, &id, Duration::from_secs(300));
    assert_eq!(audit["status"], "succeeded", "{audit}\n{}", env.logs());
    let reference = embedded(
        env.dir.path(),
        &[
            &base,
            &ft,
            "--analyses",
            "weights,activations,logit-lens,traces,cmap,stitching,steering",
            "--max-samples",
            "24",
            "--shard-samples",
            "8",
            "--cmap-samples",
            "8",
            "--steer-samples",
            "8",
            "--max-new-tokens",
            "4",
        ],
    );
    let (code, served) = env.json("GET", &format!("/v1/audits/{id}/results"), &token, None);
    assert_eq!(code, 200, "{served}");
    assert_eq!(served["corpus"]["source"], "builtin:generic");
    assert_close(&served["analyses"], &reference["analyses"], "analyses", &[]);
    // Graded against the organism's ground_truth.json, on both paths alike.
    assert_close(&served["grades"], &reference["grades"], "grades", &[]);
    assert_eq!(
        served["grades"]["stitching_matches"], true,
        "{}",
        served["grades"]
    );
    assert_eq!(served["grades"]["cmap_in_trained_blocks"], true);
    // Every part of the report came back: the plots of each new analysis.
    let (code, listed) = env.json("GET", &format!("/v1/audits/{id}/artifacts"), &token, None);
    assert_eq!(code, 200, "{listed}");
    for plot in [
        "cmap.svg",
        "stitching_kl.svg",
        "steering_kl.svg",
        "traces_consistency.svg",
    ] {
        assert!(listed.to_string().contains(plot), "{plot} not in {listed}");
    }
    // A scan's rules read these results where the ground truth says: a CMAP recovery above 0.3
    // and any activation difference occur only from the first trained block (3) on.
    let layer_of = |detail: &str| -> u64 {
        let after = detail
            .split_once("layer ")
            .or_else(|| detail.split_once("block "))
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        after
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no block in {detail}"))
    };
    for (rule, spec) in [
        (
            "cmap",
            json!({"scope": "rows", "pointer": "/analyses/cmap/cells", "metric": "recovery",
                   "op": ">", "value": 0.3}),
        ),
        (
            "moved",
            json!({"scope": "block", "analysis": "activations", "metric": "mean_rel_diff",
                   "op": ">", "value": 0.0}),
        ),
    ] {
        let mut spec = spec;
        spec["name"] = json!(rule);
        spec["severity"] = json!("high");
        let rule: neurodiff_protocol::scan::Rule = serde_json::from_value(spec).unwrap();
        let seen = rule.evaluate(&served);
        assert!(seen.fired, "{}: {}", rule.name, seen.message);
        for d in &seen.details {
            assert!(layer_of(d) >= 3, "{}: {d}", rule.name);
            assert!(!d.ends_with("block 3 hook_resid_pre"), "{}: {d}", rule.name);
        }
    }
    // The dashboard draws every section of it, each with its plots.
    crate::ui::audit_sections_in_browser(
        &env,
        &token,
        &id,
        &[
            ("sec-grades", false),
            ("sec-weights", true),
            ("sec-activations", true),
            ("sec-logit-lens", true),
            ("sec-traces", true),
            ("sec-cmap", true),
            ("sec-stitching", true),
            ("sec-steering", true),
        ],
        "10-tier2",
    );
    // The chosen-blocks fine-tune (blocks 3 and 4) moved nothing before block 3.
    for l in served["analyses"]["activations"]["layers"]
        .as_array()
        .unwrap()
    {
        let rel = l["mean_rel_diff"].as_f64().unwrap();
        let layer = l["layer"].as_u64().unwrap();
        let before = layer < 3 || (layer == 3 && l["hook"] == "hook_resid_pre");
        assert_eq!(rel == 0.0, before, "{l}");
    }
}

#[test]
fn a_corpus_the_team_may_not_read_is_refused_at_submission() {
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    env.start(&[]);
    let token = env.token("safety");
    let base = org.join("base").display().to_string();
    let ft = org.join("rank-update").display().to_string();
    for (source, expected) in [
        ("/etc/passwd", "corpus.source"),
        ("s3://elsewhere/corpus.txt", "corpus.source"),
        ("org/dataset", "corpus.source"),
    ] {
        let (code, body) = env.json(
            "POST",
            "/v1/audits",
            &token,
            Some(
                json!({"base": base, "finetuned": ft, "analyses": ["activations"],
                        "corpus": {"source": source}}),
            ),
        );
        assert_eq!(code, 400, "{source}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{source}: {body}"
        );
    }
    let (code, body) = env.json(
        "POST",
        "/v1/audits",
        &token,
        Some(
            json!({"base": base, "finetuned": ft, "analyses": ["activations"],
                    "corpus": {"max_samples": 1_000_000, "seq_len": 8192}}),
        ),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-corpus-tokens"),
        "{body}"
    );
}
