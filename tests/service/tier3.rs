//! Tier III over REST: a crosscoder audit of a trained organism is split into collect shards
//! (one per corpus slice, run by either worker) and a training shard; its results, its latent
//! rows (queried team-wide by token) and its dictionary (an artifact) come back, and another
//! team sees none of it.
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{trained_organisms, Env, BIN};
use crate::ui::{browser, log_in, shot, wait_text, CHROMEDRIVER};

#[test]
fn a_crosscoder_over_rest_finds_the_fine_tunes_domain() {
    let mut env = Env::new(None);
    let org = trained_organisms(env.dir.path());
    // Generic text interleaved with the fine-tune's held-out domain text.
    let generic = neurodiff_core::corpus::parse(
        neurodiff_core::corpus::BUILTIN_FILE,
        neurodiff_core::corpus::BUILTIN,
        u64::MAX,
    )
    .unwrap();
    let heldout = std::fs::read_to_string(org.join("data/cooking-heldout.jsonl")).unwrap();
    let mut text = String::new();
    for (g, d) in generic.iter().zip(heldout.lines()) {
        text.push_str(&json!({ "text": g }).to_string());
        text.push('\n');
        text.push_str(d);
        text.push('\n');
    }
    let corpus_ref = env.corpus("mixed.jsonl", text.into_bytes());
    env.start(&[("w1", &[]), ("w2", &[])]);
    let token = env.token("safety");
    let base = org.join("base").display().to_string();
    let ft = org.join("cooking-full").display().to_string();
    let id = env.submit(
        &token,
        json!({"base": base, "finetuned": ft, "analyses": ["crosscoder"],
               "corpus": {"source": corpus_ref, "seq_len": 32, "max_samples": 512,
                          "batch_size": 64, "shard_samples": 128},
               "crosscoder": {"layer": 4, "expansion": 4, "k": 16, "batch": 512, "steps": 1500,
                              "lr": 0.003, "samples": 512}}),
    );
    let audit = env.wait_done(&token, &id, Duration::from_secs(600));
    assert_eq!(audit["status"], "succeeded", "{audit}\n{}", env.logs());
    // Four collect shards (512 samples, 128 per slice) and the training shard.
    assert_eq!(audit["progress"]["shards_total"], 5);
    let (code, served) = env.json("GET", &format!("/v1/audits/{id}/results"), &token, None);
    assert_eq!(code, 200, "{served}");
    let cc = &served["analyses"]["crosscoder"];
    assert_eq!(cc["dict_size"], 512);
    assert_eq!(cc["store"]["chunks"], 4);
    // The collect shards filled the store before (or while) the training shard ran.
    assert!(
        cc["store"]["chunks_reused"].as_u64().unwrap() >= 1,
        "{}",
        cc["store"]
    );
    let share = cc["tail_domain_share"].as_f64().unwrap();
    let control = cc["tail_control_share"].as_f64().unwrap();
    assert!(
        share >= 0.4 && share > control,
        "tail domain share {share}, shuffled-word control {control}"
    );
    assert!(cc["min_delta"].as_f64().unwrap() < 0.3);
    // The dictionary and the plots are artifacts.
    let (code, listed) = env.json("GET", &format!("/v1/audits/{id}/artifacts"), &token, None);
    assert_eq!(code, 200, "{listed}");
    for name in [
        "crosscoder.safetensors",
        "crosscoder_training.svg",
        "crosscoder_delta_norm.svg",
    ] {
        assert!(listed.to_string().contains(name), "{name} not in {listed}");
    }
    let (code, dict) = env.http(
        "GET",
        &format!("/v1/audits/{id}/artifacts/crosscoder.safetensors"),
        Some(&token),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        dict.len() as u64,
        cc["dictionary"]["bytes"].as_u64().unwrap()
    );
    // The latents are rows the team can query: by a token of a tail latent that names the
    // domain, the latent is found.
    let hit: &Value = cc["latents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["domain_hit"] == true && !l["examples"].as_array().unwrap().is_empty())
        .expect("a latent with a domain word");
    let word = hit["examples"][0]["token"]
        .as_str()
        .unwrap()
        .trim()
        .to_uppercase();
    let (code, found) = env.json(
        "GET",
        &format!("/v1/results/latents?analysis=crosscoder&token={word}"),
        &token,
        None,
    );
    assert_eq!(code, 200, "{found}");
    let rows = found["results"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["audit_id"] == json!(id) && r["latent"] == hit["id"]),
        "{word}: {found}"
    );
    let (code, bad) = env.json("GET", "/v1/results/latents?class=new", &token, None);
    assert_eq!(code, 400);
    assert!(
        bad["error"].as_str().unwrap().contains("query `class`"),
        "{bad}"
    );
    // The dashboard shows the crosscoder's section (its plots and latent table).
    if std::path::Path::new(CHROMEDRIVER).exists() {
        let (_driver, port) = crate::ui::chromedriver();
        let profile = env.dir.path().join("chromium-profile");
        let ui = format!("http://127.0.0.1:{}/ui/", env.api_port);
        env.rt.block_on(async {
            use fantoccini::Locator;
            let c = browser(port, &profile).await;
            log_in(&c, &ui, &token).await;
            c.goto(&format!("{ui}#/audit/{id}")).await.unwrap();
            let text = wait_text(
                &c,
                "#sec-crosscoder",
                |t| t.contains("fine-tune only") && t.contains("Latents"),
                Duration::from_secs(30),
            )
            .await;
            assert!(text.contains("FVE base / fine-tune"), "{text}");
            let section = c.find(Locator::Css("#sec-crosscoder")).await.unwrap();
            c.execute(
                "arguments[0].scrollIntoView()",
                vec![serde_json::to_value(&section).unwrap()],
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            shot(&c, "09-crosscoder.png").await;
            // The team-wide latents query on the results page finds it by the same word.
            c.goto(&format!("{ui}#/results")).await.unwrap();
            crate::ui::fill(&c, "#l-token", &word).await;
            crate::ui::click(&c, "#l-submit").await;
            wait_text(
                &c,
                "#latents-table",
                |t| t.contains(&id[..8]),
                Duration::from_secs(30),
            )
            .await;
            shot(&c, "09b-latents-query.png").await;
            crate::ui::assert_no_script_errors(&c).await;
            c.close().await.unwrap();
        });
    } else {
        assert!(
            std::env::var("CI").is_err(),
            "CI: chromium-driver is not installed"
        );
    }
    // Another team sees neither the audit nor its latents.
    let other = env.token("other");
    let (_, theirs) = env.json("GET", "/v1/results/latents", &other, None);
    assert_eq!(theirs["results"], json!([]));
    let (code, _) = env.json("GET", &format!("/v1/audits/{id}/results"), &other, None);
    assert_eq!(code, 404);
}

/// The worker training a crosscoder is killed with SIGKILL after its checkpoint reached the
/// team's object storage; another worker takes the shard over, resumes from the checkpoint and
/// ends with the dictionary an uninterrupted embedded run trains, byte for byte.
#[test]
fn a_training_killed_with_sigkill_resumes_from_its_checkpoint() {
    let mut env = Env::new(None);
    let org = trained_organisms(env.dir.path());
    let corpus = org.join("data/sailing-heldout.jsonl");
    let corpus_ref = env.corpus("sailing.jsonl", std::fs::read(&corpus).unwrap());
    env.start(&[("w1", &[])]);
    let token = env.token("safety");
    let base = org.join("base").display().to_string();
    let ft = org.join("sailing-full").display().to_string();
    let options = json!({"layer": 4, "expansion": 4, "k": 16, "batch": 256, "steps": 4000,
                         "lr": 0.003, "samples": 128, "checkpoint_every_steps": 100});
    let id = env.submit(
        &token,
        json!({"base": base, "finetuned": ft, "analyses": ["crosscoder"],
               "corpus": {"source": corpus_ref, "seq_len": 32, "max_samples": 128,
                          "batch_size": 64, "shard_samples": 32},
               "crosscoder": options}),
    );
    // Wait for the training shard's checkpoint in the team's space, then kill its worker.
    let blobs = neurodiff_store::Blobs::from_url(&env.object_store).unwrap();
    let started = std::time::Instant::now();
    loop {
        let keys = env
            .rt
            .block_on(blobs.list("teams/safety/train/"))
            .unwrap_or_default();
        if keys.iter().any(|k| k.ends_with("checkpoint.safetensors")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint\n{}",
            env.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    env.kill("w1");
    env.start_worker("w2", &[]);
    let audit = env.wait_done(&token, &id, Duration::from_secs(600));
    assert_eq!(audit["status"], "succeeded", "{audit}\n{}", env.logs());
    let (_, served) = env.json("GET", &format!("/v1/audits/{id}/results"), &token, None);
    let cc = &served["analyses"]["crosscoder"];
    let resumed = cc["resumed_at"].as_u64().unwrap();
    assert!(
        resumed > 0 && resumed % 100 == 0 && resumed < 4000,
        "resumed at {resumed}"
    );
    // The same options straight through, embedded.
    let out = env.dir.path().join("embedded");
    let status = std::process::Command::new(BIN)
        .arg("audit")
        .args([&base, &ft])
        .args(["--analyses", "crosscoder", "--corpus"])
        .arg(&corpus)
        .args([
            "--seq-len",
            "32",
            "--max-samples",
            "128",
            "--batch-size",
            "64",
        ])
        .args([
            "--shard-samples",
            "32",
            "--dict-layer",
            "4",
            "--dict-expansion",
            "4",
        ])
        .args([
            "--dict-k",
            "16",
            "--dict-batch",
            "256",
            "--dict-steps",
            "4000",
        ])
        .args([
            "--dict-lr",
            "0.003",
            "--dict-samples",
            "128",
            "--quiet",
            "--store",
        ])
        .arg(env.dir.path().join("store"))
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let local = std::fs::read(out.join("crosscoder.safetensors")).unwrap();
    let (code, served_dict) = env.http(
        "GET",
        &format!("/v1/audits/{id}/artifacts/crosscoder.safetensors"),
        Some(&token),
        None,
    );
    assert_eq!(code, 200);
    assert!(
        served_dict == local,
        "the resumed dictionary differs from the straight run's"
    );
}
