//! Scheduled scans on the real service: checkpoints dropped into a watched directory (and a
//! watched Garage prefix) are audited once each, a half-written one only once it is complete;
//! the rule the planted organism is built to break raises an alert, delivered signed to a
//! receiver on loopback that answers 500 and then 200 (one retry, one delivery id); checkpoints
//! that break no rule raise nothing; schedulers killed and duplicated mid-scan audit nothing
//! twice; another team sees none of it.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{organisms, wait_for, Env};

const LONG: Duration = Duration::from_secs(240);

/// What a receiver got: headers (lower-case names) and the body.
type Received = Arc<Mutex<Vec<(Vec<(String, String)>, String)>>>;

/// An HTTP receiver on loopback that answers each request with the next status of `script`
/// (the last one repeats).
fn receiver(script: Vec<u16>) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/neurodiff", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            seen.lock()
                .unwrap()
                .push((headers, String::from_utf8(body).unwrap()));
            let status = script[i.min(script.len() - 1)];
            let reason = if status == 200 {
                "OK"
            } else {
                "Internal Server Error"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

/// Checks `NeuroDiff-Signature: t=..,v1=..` against the secret, computed here independently.
fn verify(secret: &str, headers: &[(String, String)], body: &str) {
    let sig = header(headers, "neurodiff-signature");
    let (t, v1) = sig.split_once(",v1=").expect("t=..,v1=..");
    let t = t.strip_prefix("t=").expect("t=");
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..600).contains(&age), "signature time {t}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()), "signature");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Writes `from` into `watch/name` the way a trainer does: into a hidden directory, renamed
/// when complete.
fn drop_checkpoint(from: &Path, watch: &Path, name: &str) {
    let tmp = watch.join(format!(".tmp-{name}"));
    copy_dir(from, &tmp);
    std::fs::rename(&tmp, watch.join(name)).unwrap();
}

/// Makes a checkpoint another one with the same weights: its config says so.
fn mark(dir: &Path, note: &str) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["_scan_test_note"] = json!(note);
    std::fs::write(&path, config.to_string()).unwrap();
}

fn scan(env: &Env, token: &str, id: &str) -> Value {
    let (status, s) = env.json("GET", &format!("/v1/scans/{id}"), token, None);
    assert_eq!(status, 200, "{s}");
    s
}

/// Waits for a scan poll that starts after this call.
fn next_poll(env: &Env, token: &str, id: &str) {
    let before = scan(env, token, id)["last_polled_at"].clone();
    wait_for("the next poll", LONG, || {
        (scan(env, token, id)["last_polled_at"] != before).then_some(())
    });
}

/// Two polls later the scan has still audited nothing, and says why.
fn still_waiting(env: &Env, token: &str, id: &str, checkpoint: &str) {
    next_poll(env, token, id);
    next_poll(env, token, id);
    let waiting = scan(env, token, id);
    assert_eq!(waiting["runs"].as_array().unwrap().len(), 0);
    let why = waiting["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("not complete yet") && why.contains(checkpoint),
        "{why}"
    );
}

fn alerts(env: &Env, token: &str, scan_id: &str) -> Vec<Value> {
    let (status, page) = env.json(
        "GET",
        &format!("/v1/alerts?state=all&scan={scan_id}"),
        token,
        None,
    );
    assert_eq!(status, 200, "{page}");
    page["alerts"].as_array().unwrap().clone()
}

/// Waits until every run of the scan is evaluated and it has `n` runs.
fn settled(env: &Env, token: &str, id: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} evaluated runs of scan {id}"), LONG, || {
        let runs = scan(env, token, id)["runs"].as_array().unwrap().clone();
        let done = runs
            .iter()
            .all(|r| ["evaluated", "baseline", "failed"].contains(&r["state"].as_str().unwrap()));
        (runs.len() == n && done).then_some(runs)
    })
}

/// A large change that is low-rank: what the `rank-update` organism plants (rank 4, 30% of
/// the tensor's norm) and what `attn-scaled` (full rank) does not.
fn low_rank_rule() -> Value {
    json!({"name": "low-rank-large", "severity": "high", "scope": "tensor",
           "metric": "rel_fro", "op": ">", "value": 0.2,
           "and": [{"metric": "stable_rank", "op": "<", "value": 4.5}]})
}

#[test]
fn a_watched_directory_is_audited_once_per_checkpoint_and_alerts_are_delivered_signed() {
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    env.start(&[("w1", &[])]);
    let token = env.token("scanners");
    let (hook, received) = receiver(vec![500, 200]);
    let watch = env.dir.path().join("watch");
    std::fs::create_dir_all(&watch).unwrap();
    let (status, created) = env.json(
        "POST",
        "/v1/scans",
        &token,
        Some(json!({
            "name": "nightly", "source": watch, "base": org.join("base"), "every_s": 1,
            "audit": {"analyses": ["weights"]},
            "rules": [low_rank_rule(),
                      {"name": "changed-at-all", "severity": "info", "scope": "audit",
                       "pointer": "/analyses/weights/tensors/0/rel_fro", "op": ">", "value": 10.0}],
            "webhook_url": hook,
        })),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["webhook_secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32);
    assert!(
        scan(&env, &token, &id).get("webhook_secret").is_none(),
        "the secret is shown once"
    );

    // Another team sees neither the scan nor, later, its alerts.
    let other = env.token("others");
    assert_eq!(
        env.json("GET", &format!("/v1/scans/{id}"), &other, None).0,
        404
    );
    assert_eq!(
        env.json("POST", &format!("/v1/scans/{id}/trigger"), &other, None)
            .0,
        404
    );

    // The same through the command line: create, list, show, delete.
    let cli = |args: &[&str]| env.client(&token, args);
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let rule = low_rank_rule().to_string();
    let made: Value = serde_json::from_str(&cli(&[
        "scan",
        "create",
        "from-cli",
        elsewhere.to_str().unwrap(),
        "--base",
        org.join("base").to_str().unwrap(),
        "--cron",
        "*/5 * * * *",
        "--rule",
        &rule,
    ]))
    .unwrap();
    assert_eq!(made["cron"], "*/5 * * * *");
    assert_eq!(made["rules"][0]["name"], "low-rank-large");
    assert!(made["webhook_secret"].is_string());
    assert!(cli(&["scan", "list"]).contains("from-cli"));
    let made_id = made["id"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&cli(&["scan", "show", made_id])).unwrap()["name"],
        "from-cli"
    );
    cli(&["scan", "delete", made_id]);

    // A half-written checkpoint: its weights shorter than their header says. Not audited.
    // Made under a dot name (skipped) and renamed in, so no poll sees it whole before it is cut.
    let half = watch.join("step-1");
    let staging = watch.join(".step-1");
    copy_dir(&org.join("rank-update"), &staging);
    let weights = std::fs::read(staging.join("model.safetensors")).unwrap();
    std::fs::write(
        staging.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    std::fs::rename(&staging, &half).unwrap();
    still_waiting(&env, &token, &id, "step-1");

    // Complete: audited once; the planted low-rank change raises the alert its rule predicts.
    std::fs::write(half.join("model.safetensors"), &weights).unwrap();
    let runs = settled(&env, &token, &id, 1);
    assert_eq!(runs[0]["state"], "evaluated", "{runs:?}\n{}", env.logs());
    assert!(runs[0]["observed"]["low-rank-large"].as_f64().unwrap() > 0.2);
    let raised = alerts(&env, &token, &id);
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0]["rule"], "low-rank-large");
    assert_eq!(raised[0]["severity"], "high");
    assert_eq!(raised[0]["audit_id"], runs[0]["audit_id"]);
    let alert_id = raised[0]["id"].as_str().unwrap().to_string();

    // Delivered at the second attempt: 500, then 200, the same delivery id both times.
    let delivered = wait_for("the webhook delivery", LONG, || {
        let (_, a) = env.json("GET", &format!("/v1/alerts/{alert_id}"), &token, None);
        a["deliveries"][0]["delivered_at"].is_string().then_some(a)
    });
    let d = &delivered["deliveries"][0];
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["last_status"], 200);
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 2, "one failed attempt and one retry");
        for (headers, body) in got.iter() {
            assert_eq!(
                header(headers, "neurodiff-delivery"),
                d["id"].as_str().unwrap()
            );
            assert_eq!(header(headers, "neurodiff-event"), "alert.raised");
            verify(&secret, headers, body);
            let b: Value = serde_json::from_str(body).unwrap();
            assert_eq!(b["alert"]["id"], alert_id.as_str());
            assert_eq!(b["alert"]["rule"], "low-rank-large");
        }
        assert_eq!(got[0].1, got[1].1, "a retry sends the same body");
    }
    assert_eq!(
        env.json("GET", &format!("/v1/alerts/{alert_id}"), &other, None)
            .0,
        404
    );
    assert_eq!(
        env.json("POST", &format!("/v1/alerts/{alert_id}/ack"), &other, None)
            .0,
        404
    );

    // The trainer writes its optimizer state after the weights: the same checkpoint still.
    std::fs::write(half.join("optimizer.pt"), vec![7u8; 4096]).unwrap();
    next_poll(&env, &token, &id);
    next_poll(&env, &token, &id);
    assert_eq!(scan(&env, &token, &id)["runs"].as_array().unwrap().len(), 1);

    // A large but full-rank change and an unchanged copy of the base break no rule; a copy of
    // step-1 under another name is the same checkpoint and is not audited again.
    drop_checkpoint(&org.join("attn-scaled"), &watch, "step-2");
    drop_checkpoint(&org.join("base"), &watch, "step-3");
    drop_checkpoint(&org.join("rank-update"), &watch, "step-1-copy");
    let runs = settled(&env, &token, &id, 3);
    assert!(runs.iter().all(|r| r["state"] == "evaluated"), "{runs:?}");
    assert_eq!(alerts(&env, &token, &id).len(), 1);
    let step2 = runs
        .iter()
        .find(|r| r["location"].as_str().unwrap().ends_with("step-2"))
        .unwrap();
    assert_eq!(step2["alerts"], 0);
    // Its change is large, but no tensor of it is low-rank: nothing meets the rule's conditions.
    assert!(step2["observed"]["low-rank-large"].is_null(), "{step2}");

    // The scheduler dies, checkpoints arrive, and two schedulers come back, one of them killed
    // mid-scan and started again: every new checkpoint is audited exactly once.
    env.kill("scheduler");
    let mut marked = org.join("rank-update-marked");
    copy_dir(&org.join("rank-update"), &marked);
    mark(&marked, "the same weights, another checkpoint");
    drop_checkpoint(&marked, &watch, "step-4");
    marked = org.join("attn-scaled-marked");
    copy_dir(&org.join("attn-scaled"), &marked);
    mark(&marked, "another");
    drop_checkpoint(&marked, &watch, "step-5");
    env.start_scheduler("s2");
    wait_for("s2 to start a scan's audit", LONG, || {
        (scan(&env, &token, &id)["runs"].as_array().unwrap().len() > 3).then_some(())
    });
    env.kill("s2");
    env.start_scheduler("s3");
    env.start_scheduler("s4");
    let runs = settled(&env, &token, &id, 5);
    let mut checkpoints: Vec<&str> = runs
        .iter()
        .map(|r| r["checkpoint_id"].as_str().unwrap())
        .collect();
    checkpoints.sort();
    checkpoints.dedup();
    assert_eq!(checkpoints.len(), 5);
    let (_, page) = env.json("GET", "/v1/audits?limit=100", &token, None);
    assert_eq!(
        page["audits"].as_array().unwrap().len(),
        5,
        "one audit per checkpoint"
    );
    let raised = alerts(&env, &token, &id);
    assert_eq!(
        raised.len(),
        2,
        "step-1 and step-4 break the rule: {raised:?}"
    );
    wait_for("the second delivery", LONG, || {
        (received.lock().unwrap().len() == 3).then_some(())
    });
    let ids: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| header(h, "neurodiff-delivery").to_string())
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);

    // Acknowledge; the open list empties for that alert.
    let (status, acked) = env.json("POST", &format!("/v1/alerts/{alert_id}/ack"), &token, None);
    assert_eq!(status, 200, "{acked}");
    assert!(acked["acknowledged_at"].is_string());
    let (_, open) = env.json("GET", &format!("/v1/alerts?scan={id}"), &token, None);
    assert_eq!(open["alerts"].as_array().unwrap().len(), 1);

    // Pause stops polling; delete removes the scan, not its audits.
    let (_, paused) = env.json("POST", &format!("/v1/scans/{id}/pause"), &token, None);
    assert_eq!(paused["paused"], true);
    assert_eq!(
        env.json("DELETE", &format!("/v1/scans/{id}"), &token, None)
            .0,
        204
    );
    assert_eq!(
        env.json("GET", &format!("/v1/scans/{id}"), &token, None).0,
        404
    );
    let (_, page) = env.json("GET", "/v1/audits?limit=100", &token, None);
    assert_eq!(page["audits"].as_array().unwrap().len(), 5);
}

#[test]
fn a_scan_against_the_previous_checkpoint_chains_its_audits() {
    // No base: the first checkpoint is the baseline, each next one is compared with the one
    // before it. base -> rank-update changes one tensor (the alert); rank-update -> rank-update
    // with another config changes nothing.
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    env.start(&[("w1", &[])]);
    let token = env.token("chain");
    let watch = env.dir.path().join("chain");
    std::fs::create_dir_all(&watch).unwrap();
    let (status, created) = env.json(
        "POST",
        "/v1/scans",
        &token,
        Some(
            json!({"name": "chain", "source": watch, "base_mode": "previous", "every_s": 1,
                    "audit": {"analyses": ["weights"]}, "rules": [low_rank_rule()]}),
        ),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    drop_checkpoint(&org.join("base"), &watch, "step-1");
    let runs = settled(&env, &token, &id, 1);
    assert_eq!(runs[0]["state"], "baseline");
    assert!(runs[0]["audit_id"].is_null());
    drop_checkpoint(&org.join("rank-update"), &watch, "step-2");
    let runs = settled(&env, &token, &id, 2);
    let step2 = &runs[0];
    assert_eq!(step2["state"], "evaluated", "{runs:?}");
    assert!(step2["base"].as_str().unwrap().ends_with("step-1"));
    let marked = org.join("rank-update-again");
    copy_dir(&org.join("rank-update"), &marked);
    mark(&marked, "the same weights");
    drop_checkpoint(&marked, &watch, "step-3");
    let runs = settled(&env, &token, &id, 3);
    assert!(
        runs[0]["base"].as_str().unwrap().ends_with("step-2"),
        "{runs:?}"
    );
    let raised = alerts(&env, &token, &id);
    assert_eq!(raised.len(), 1, "only step-2 changed anything: {raised:?}");
    assert!(raised[0]["location"].as_str().unwrap().ends_with("step-2"));
}

#[test]
fn a_watched_garage_prefix_is_audited_once_complete() {
    let mut env = Env::new(None);
    let Some(models) = env.models_store.clone() else {
        eprintln!("no S3 server configured (scripts/garage.sh): the s3 scan test is skipped");
        return;
    };
    let org = organisms(env.dir.path());
    env.start(&[("w1", &[])]);
    let token = env.token("s3-scanners");
    let store = neurodiff_store::Blobs::from_url(&models).unwrap();
    let put = |key: &str, bytes: Vec<u8>| {
        env.rt
            .block_on(store.put(key, bytes::Bytes::from(bytes)))
            .unwrap();
    };
    let (status, created) = env.json(
        "POST",
        "/v1/scans",
        &token,
        Some(json!({
            "name": "bucket", "source": format!("{models}/watch"), "base": org.join("base"),
            "every_s": 1, "audit": {"analyses": ["weights"]}, "rules": [low_rank_rule()],
        })),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let ft = org.join("rank-update");
    // The config first, the weights not yet: not a checkpoint.
    put(
        "watch/ckpt-a/config.json",
        std::fs::read(ft.join("config.json")).unwrap(),
    );
    still_waiting(&env, &token, &id, "ckpt-a");
    for e in std::fs::read_dir(&ft).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name != "config.json" {
            put(
                &format!("watch/ckpt-a/{name}"),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    let runs = settled(&env, &token, &id, 1);
    assert_eq!(runs[0]["state"], "evaluated", "{runs:?}\n{}", env.logs());
    assert!(runs[0]["location"].as_str().unwrap().starts_with("s3://"));
    let raised = alerts(&env, &token, &id);
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0]["rule"], "low-rank-large");
    next_poll(&env, &token, &id);
    assert_eq!(scan(&env, &token, &id)["runs"].as_array().unwrap().len(), 1);
}

#[test]
fn a_watched_hub_repository_is_audited_once_per_commit() {
    // Offline: the deployment keeps a shared hub cache (a sync job downloads into it); the scan
    // reads the branch's commit from it and the workers resolve `org/name@commit` from it.
    let mut env = Env::new(None);
    let cache = env.dir.path().join("hub");
    let repo = cache.join("models--testorg--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    env.extra_env = vec![
        ("HF_HUB_OFFLINE".into(), "1".into()),
        ("HF_HUB_CACHE".into(), cache.display().to_string()),
        ("NEURODIFF_ALLOW_HUB_ORGS".into(), "testorg".into()),
    ];
    let org = organisms(env.dir.path());
    env.start(&[("w1", &[])]);
    let token = env.token("hub-scanners");
    let commit = |n: u8, from: &str| {
        let sha = format!("{:040x}", u128::from(n) * 0x1111_1111);
        copy_dir(&org.join(from), &repo.join("snapshots").join(&sha));
        std::fs::write(repo.join("refs/main"), &sha).unwrap();
        sha
    };
    let first = commit(1, "rank-update");
    let (status, created) = env.json(
        "POST",
        "/v1/scans",
        &token,
        Some(json!({
            "name": "hub", "source": "testorg/tiny", "base": org.join("base"), "every_s": 1,
            "audit": {"analyses": ["weights"]}, "rules": [low_rank_rule()],
        })),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let runs = settled(&env, &token, &id, 1);
    assert_eq!(runs[0]["state"], "evaluated", "{runs:?}\n{}", env.logs());
    assert_eq!(runs[0]["checkpoint_id"], first.as_str());
    assert_eq!(runs[0]["location"], format!("testorg/tiny@{first}"));
    assert_eq!(alerts(&env, &token, &id).len(), 1);
    // The branch does not move: nothing new. Then a new commit, full-rank: audited, no alert.
    next_poll(&env, &token, &id);
    assert_eq!(scan(&env, &token, &id)["runs"].as_array().unwrap().len(), 1);
    commit(2, "attn-scaled");
    let runs = settled(&env, &token, &id, 2);
    assert!(runs.iter().all(|r| r["state"] == "evaluated"), "{runs:?}");
    assert_eq!(alerts(&env, &token, &id).len(), 1);
    // Another organisation's repository is refused by the policy at creation.
    let (status, refused) = env.json(
        "POST",
        "/v1/scans",
        &token,
        Some(json!({"name": "other", "source": "otherorg/tiny", "base": org.join("base"), "every_s": 60})),
    );
    assert_eq!(status, 400, "{refused}");
}
