//! The attacks and accidents a hostile or careless team can cause with a valid token, against
//! the real processes: references that escape the policy through symbolic links or shard
//! indexes, a model changed between planning and a shard, a config that claims a billion
//! blocks, repeated layers, a worker told to stop while stuck in planning, and two workers
//! copying one `s3://` model into one cache at once.
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{audit_id, service, upload_model};
use crate::harness::{organisms, wait_for, Env};

/// Copies the files of a checkpoint directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Submits `finetuned` against `base` and waits for the audit to end: (status, error).
fn run(env: &Env, token: &str, base: &str, finetuned: &str) -> (String, String) {
    let id = env.submit(token, json!({"base": base, "finetuned": finetuned}));
    let done = env.wait_done(token, &id, Duration::from_secs(120));
    (
        done["status"].as_str().unwrap_or_default().to_string(),
        done["error"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn references_that_escape_the_policy_are_refused_and_leak_nothing() {
    let (env, base, ft, token) = service(None, "rank-update", &[("w1", &[])]);
    // Outside every allowed root: another team's private checkpoint, say.
    let outside = tempfile::tempdir().unwrap();
    let private = outside.path().join("private");
    copy_dir(Path::new(&ft), &private);
    let secret = outside.path().display().to_string();

    // Refused at submission, before any worker looks.
    for (b, f) in [
        ("/", "/etc"),
        (base.as_str(), secret.as_str()),
        (base.as_str(), "org/name@../../x"),
    ] {
        let (status, resp) = env.json(
            "POST",
            "/v1/audits",
            &token,
            Some(json!({"base": b, "finetuned": f})),
        );
        assert_eq!(status, 400, "{b} {f}: {resp}");
        assert!(
            resp["error"].as_str().unwrap().contains("reference policy")
                || resp["error"].as_str().unwrap().contains("branch, tag"),
            "{resp}"
        );
    }
    if let Some(models) = &env.models_store {
        let sneaky = format!("{models}/x/%2E%2E/%2E%2E/etc");
        let (status, resp) = env.json(
            "POST",
            "/v1/audits",
            &token,
            Some(json!({"base": base, "finetuned": sneaky})),
        );
        assert_eq!(status, 400, "{resp}");
    }

    // Inside an allowed root lexically, outside it once links are resolved: accepted by the
    // API (which opens nothing), refused by the worker.
    let dir = env.dir.path();
    let link = dir.join("link-to-private");
    std::os::unix::fs::symlink(&private, &link).unwrap();
    let linked_file = dir.join("linked-weights");
    copy_dir(Path::new(&ft), &linked_file);
    std::fs::remove_file(linked_file.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(
        private.join("model.safetensors"),
        linked_file.join("model.safetensors"),
    )
    .unwrap();
    let indexed = dir.join("absolute-index");
    std::fs::create_dir_all(&indexed).unwrap();
    std::fs::copy(
        Path::new(&ft).join("config.json"),
        indexed.join("config.json"),
    )
    .unwrap();
    std::fs::write(
        indexed.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": {
            "model.embed_tokens.weight": private.join("model.safetensors").display().to_string()
        }})
        .to_string(),
    )
    .unwrap();
    let cache = dir.join("cache").display().to_string();
    for (target, needle) in [
        (&link, "resolves outside"),
        (&linked_file, "`model.safetensors` resolves outside"),
        (&indexed, "not a relative name inside the checkpoint"),
    ] {
        let (status, error) = run(&env, &token, &base, &target.display().to_string());
        assert_eq!(
            status,
            "failed",
            "{}: {error}\n{}",
            target.display(),
            env.logs()
        );
        assert!(error.contains(needle), "{}: {error}", target.display());
        // The index case may quote its own entry (the team wrote it); a link's target is
        // what the worker found, and is never shown.
        if target != &indexed {
            assert!(!error.contains(&secret), "leaks where it points: {error}");
        }
        assert!(!error.contains(&cache), "leaks the worker's cache: {error}");
    }
}

#[test]
fn a_model_changed_between_planning_and_a_shard_fails_naming_the_file() {
    let (env, base, ft, token) = service(None, "rank-update", &[("w1", super::SLOW)]);
    let mutable = env.dir.path().join("mutable");
    copy_dir(Path::new(&ft), &mutable);
    let id = env.submit(
        &token,
        json!({"base": base, "finetuned": mutable.display().to_string()}),
    );
    wait_for("the plan", Duration::from_secs(60), || {
        let (_, a) = env.json("GET", &format!("/v1/audits/{id}"), &token, None);
        (a["progress"]["shards_total"].as_i64().unwrap_or(0) > 0).then_some(())
    });
    // Same shapes, other content: without the check, the report would carry one model's hash
    // and the other's metrics.
    let other = env
        .dir
        .path()
        .join("org")
        .join("attn-scaled")
        .join("model.safetensors");
    let tmp = mutable.join("model.safetensors.new");
    std::fs::copy(other, &tmp).unwrap();
    std::fs::rename(&tmp, mutable.join("model.safetensors")).unwrap();
    let done = env.wait_done(&token, &id, Duration::from_secs(120));
    let error = done["error"].as_str().unwrap_or_default();
    assert_eq!(done["status"], "failed", "{done}\n{}", env.logs());
    assert!(
        error.contains("changed since planning") && error.contains("model.safetensors"),
        "{error}"
    );
    assert!(!error.contains(&env.dir.path().join("cache").display().to_string()));
}

/// The peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn a_layer_bomb_fails_fast_and_repeated_layers_finish() {
    let (env, base, ft, token) = service(None, "rank-update", &[("w1", &[])]);
    let mut bombs = Vec::new();
    for (name, from) in [("bomb-base", &base), ("bomb-ft", &ft)] {
        let dir = env.dir.path().join(name);
        copy_dir(Path::new(from), &dir);
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        config["num_hidden_layers"] = json!(1_000_000_000u64);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        bombs.push(dir.display().to_string());
    }
    let started = Instant::now();
    let (status, error) = run(&env, &token, &bombs[0], &bombs[1]);
    assert_eq!(status, "failed", "{error}");
    assert!(
        error.contains("1000000000 blocks") && error.contains("--max-blocks"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    let rss = peak_rss(env.pid("w1"));
    assert!(rss < 1 << 30, "the worker's peak RSS reached {rss} bytes");

    // A repeated layer is one shard, and the audit finishes.
    let id = env.submit(
        &token,
        json!({"base": base, "finetuned": ft, "layers": [1, 1, 0, 1]}),
    );
    let done = env.wait_done(&token, &id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
    assert_eq!(done["progress"]["shards_total"], 2);
    let shards: i64 = env
        .rt
        .block_on(
            sqlx::query_scalar("SELECT count(*) FROM shards WHERE audit_id = $1")
                .bind(audit_id(&id))
                .fetch_one(&env.db.pool),
        )
        .unwrap();
    assert_eq!(shards, 2);
}

#[test]
fn sigterm_during_a_long_planning_ends_the_worker_within_its_grace() {
    let (mut env, base, ft, token) = service(
        None,
        "rank-update",
        &[("stuck", &["--slow-plan-ms", "600000", "--grace-s", "1"])],
    );
    let id = env.submit(&token, json!({"base": base, "finetuned": ft}));
    let log = env.log("stuck");
    wait_for("planning to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("planning"))
            .map(|_| ())
    });
    let sent = Instant::now();
    let status = env.terminate("stuck");
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    // The plan task was handed back: another worker plans and runs the audit.
    env.start_worker("w2", &[]);
    let done = env.wait_done(&token, &id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
}

#[test]
fn two_concurrent_copies_of_one_s3_model_agree() {
    let env = Env::new(None);
    let org = organisms(env.dir.path());
    let Some(reference) = upload_model(&env, &org.join("base"), "base") else {
        // No S3 server here (never in CI: Env::new asserts one there).
        return;
    };
    let Ok(neurodiff_protocol::ModelRef::S3 { bucket, prefix }) =
        neurodiff_protocol::classify(&reference)
    else {
        panic!("{reference}")
    };
    let cache = env.dir.path().join("copies");
    let copy = || {
        neurodiff_worker::materialize::materialize_s3(&reference, &bucket, &prefix, &cache, 1 << 30)
    };
    let (a, b) = env.rt.block_on(async { futures::join!(copy(), copy()) });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    for entry in std::fs::read_dir(org.join("base")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        let original = Sha256::digest(std::fs::read(&path).unwrap());
        let copied = Sha256::digest(std::fs::read(a.join(name)).unwrap());
        assert_eq!(original, copied, "{name:?}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".part-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The copy that lost the race removed its own scratch directory.
    let scratch: Vec<_> = std::fs::read_dir(a.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".copy-"))
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    // A prefix whose objects change is copied afresh, never mixed with the older copy.
    let blobs = neurodiff_store::Blobs::from_url(&format!("s3://{bucket}")).unwrap();
    let config = format!("{prefix}/config.json");
    let mut changed = std::fs::read(org.join("base").join("config.json")).unwrap();
    changed.extend_from_slice(b"\n");
    env.rt
        .block_on(blobs.put(&config, bytes::Bytes::from(changed.clone())))
        .unwrap();
    let c = env.rt.block_on(copy()).unwrap();
    assert_ne!(c, a);
    assert_eq!(std::fs::read(c.join("config.json")).unwrap(), changed);
    // The copy is bounded: a limit below the model's size refuses it before writing.
    let small_cache = env.dir.path().join("small");
    let small = neurodiff_worker::materialize::materialize_s3(
        &reference,
        &bucket,
        &prefix,
        &small_cache,
        1024,
    );
    let err = env.rt.block_on(small).unwrap_err().to_string();
    assert!(err.contains("limit of 1024 bytes"), "{err}");
}

/// Rewrites `dir/tokenizer.json` so that 63 tokens (bytes no ASCII corpus holds) are 100 KiB
/// of text each.
fn poison_tokenizer(dir: &Path) {
    let path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let hostile: Vec<u64> = (1..=8)
        .chain([11, 12])
        .chain(14..=31)
        .chain(127..=161)
        .collect();
    let vocab = tok["model"]["vocab"].as_object().unwrap().clone();
    let rewritten: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .map(|(text, id)| match id.as_u64() {
            Some(n) if hostile.contains(&n) => (format!("{n}{}", "a".repeat(100 << 10)), id),
            _ => (text, id),
        })
        .collect();
    tok["model"]["vocab"] = rewritten.into();
    std::fs::write(&path, tok.to_string()).unwrap();
}

/// Cases 1 to 3 of the second hardening round against the real processes, one worker: a FIFO
/// as the corpus fails at once, a 37 MB single-line corpus costs what its 8 tokens need, a
/// tokenizer of 100 KiB tokens with one sample per shard leaves a small results.json; the
/// worker keeps serving, stays under 2 GB and exits within its grace; the scheduler stays
/// under 1 GB.
#[test]
fn hostile_corpora_and_tokenizers_leave_the_worker_and_scheduler_serving() {
    let (mut env, base, ft, token) = service(None, "rank-update", &[("w1", &["--grace-s", "2"])]);
    let dir = env.dir.path().to_path_buf();
    let audit = |base: &str, ft: &str, corpus: serde_json::Value| {
        let id = env.submit(
            &token,
            json!({"base": base, "finetuned": ft, "analyses": ["activations", "logit-lens"],
                   "corpus": corpus}),
        );
        let started = Instant::now();
        let done = env.wait_done(&token, &id, Duration::from_secs(300));
        (id, done, started.elapsed())
    };
    // 1. A FIFO: refused when opened, never waited on.
    let fifo = dir.join("corpus.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (_, done, took) = audit(&base, &ft, json!({"source": fifo.display().to_string()}));
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(error.contains("not a regular file"), "{error}");
    eprintln!("FIFO corpus: failed in {took:?}: {error}");
    // 2. One line of 37 MB, of which 8 tokens are used.
    let line = dir.join("one-line.txt");
    std::fs::write(&line, "lorem ipsum dolor sit amet ".repeat(1_400_000)).unwrap();
    let (_, done, took) = audit(
        &base,
        &ft,
        json!({"source": line.display().to_string(), "seq_len": 8, "max_samples": 1}),
    );
    assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
    let worker_rss = peak_rss(env.pid("w1"));
    eprintln!(
        "37 MB single-line corpus: succeeded in {took:?}; worker peak RSS {worker_rss} bytes"
    );
    assert!(worker_rss < 2 << 30, "worker peak RSS {worker_rss}");
    // 3. A tokenizer of 100 KiB tokens and one sample per shard.
    let (hb, hf) = (dir.join("hostile-base"), dir.join("hostile-ft"));
    copy_dir(Path::new(&base), &hb);
    copy_dir(Path::new(&ft), &hf);
    poison_tokenizer(&hb);
    poison_tokenizer(&hf);
    let ascii = dir.join("ascii.txt");
    let lines: Vec<String> = (0..32)
        .map(|i| format!("the quick brown fox {i}"))
        .collect();
    std::fs::write(&ascii, lines.join("\n")).unwrap();
    let (id, done, took) = audit(
        &hb.display().to_string(),
        &hf.display().to_string(),
        json!({"source": ascii.display().to_string(), "seq_len": 16, "max_samples": 32,
               "shard_samples": 1}),
    );
    assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
    let (status, results) = env.http(
        "GET",
        &format!("/v1/audits/{id}/results"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let scheduler_rss = peak_rss(env.pid("scheduler"));
    let worker_rss = peak_rss(env.pid("w1"));
    eprintln!(
        "tokenizer of 100 KiB tokens, 64 shards: succeeded in {took:?}; results.json {} bytes; \
         scheduler peak RSS {scheduler_rss}, worker {worker_rss}",
        results.len()
    );
    assert!(
        results.len() < 2 << 20,
        "results.json of {} bytes",
        results.len()
    );
    assert!(
        scheduler_rss < 1 << 30,
        "scheduler peak RSS {scheduler_rss}"
    );
    assert!(worker_rss < 2 << 30, "worker peak RSS {worker_rss}");
    // The worker still serves, and leaves within its grace when told.
    let (status, error) = run(&env, &token, &base, &ft);
    assert_eq!(status, "succeeded", "{error}");
    let sent = Instant::now();
    assert!(env.terminate("w1").success());
    let took = sent.elapsed();
    eprintln!("worker exited {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
}
