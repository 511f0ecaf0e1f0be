//! The whole service against the real PostgreSQL, Redis and Garage: audits submitted over HTTP,
//! planned by the scheduler, run by worker processes, fanned in to object storage; then the
//! failures it must survive: a worker killed with SIGKILL mid-shard, a cancel mid-run, and a
//! Redis restart mid-run; and (hardening.rs) what a hostile team can try. (A stale attempt's
//! late write being refused is tested on the store, crates/store/tests/pg.rs, where the race
//! can be staged exactly.)
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

mod affinity;
mod chaos;
mod gguf;
mod hardening;
mod harness;
mod ranges;
mod scans;
mod tier2;
mod tier3;
mod ui;

use std::time::Duration;

use bytes::Bytes;
use harness::{assert_close, embedded, organisms, wait_for, Env};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SLOW: &[&str] = &["--slow-tensor-ms", "250"];

fn audit_id(id: &str) -> uuid::Uuid {
    id.parse().unwrap()
}

/// Model organisms and the service with `workers`: (env, base path, fine-tuned path, token).
fn service(
    redis: Option<String>,
    finetuned: &str,
    workers: &[(&str, &[&str])],
) -> (Env, String, String, String) {
    let mut env = Env::new(redis);
    let org = organisms(env.dir.path());
    let base = org.join("base").display().to_string();
    let ft = org.join(finetuned).display().to_string();
    env.start(workers);
    let token = env.token("safety");
    (env, base, ft, token)
}

/// Waits until at least one shard of `id` is done.
fn wait_one_shard_done(env: &Env, token: &str, id: &str) {
    wait_for("one shard done", Duration::from_secs(60), || {
        let (_, a) = env.json("GET", &format!("/v1/audits/{id}"), token, None);
        (a["progress"]["shards_done"].as_i64().unwrap_or(0) >= 1).then_some(())
    });
}

/// Waits until a shard of `id` is running on a worker whose name matches `worker` (SQL LIKE).
fn wait_shard_running(env: &Env, id: &str, worker: &str) {
    wait_for("a shard in flight", Duration::from_secs(60), || {
        env.rt
            .block_on(
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM shards WHERE audit_id = $1 AND status = 'running' AND worker LIKE $2",
                )
                .bind(audit_id(id))
                .bind(worker)
                .fetch_one(&env.db.pool),
            )
            .ok()
            .filter(|n| *n > 0)
    });
}

/// How many tensors a results.json reports.
fn tensor_count(results: &Value) -> i64 {
    results["analyses"]["weights"]["tensors"]
        .as_array()
        .map_or(0, |t| t.len() as i64)
}

/// Uploads a checkpoint directory to the test's model prefix; returns its s3:// reference.
fn upload_model(env: &Env, dir: &std::path::Path, name: &str) -> Option<String> {
    let store = env.models_store.clone()?;
    let blobs = neurodiff_store::Blobs::from_url(&store).unwrap();
    env.rt.block_on(async {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = Bytes::from(std::fs::read(&path).unwrap());
            blobs
                .put(&format!("models/{name}/{file}"), bytes)
                .await
                .unwrap();
        }
    });
    Some(format!("{store}/models/{name}"))
}

#[test]
fn a_service_audit_equals_the_embedded_audit() {
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    let (base, ft) = (org.join("base"), org.join("rank-update"));
    let (base_s, ft_s) = (base.display().to_string(), ft.display().to_string());
    env.start(&[("w1", &[]), ("w2", &[])]);
    let token = env.token("safety");
    // The base comes from object storage (an s3:// checkpoint) when an S3 server is configured.
    let base_ref = upload_model(&env, &base, "base").unwrap_or_else(|| base_s.clone());
    let id = env.submit(&token, json!({"base": base_ref, "finetuned": ft_s}));
    let audit = env.wait_done(&token, &id, Duration::from_secs(120));
    assert_eq!(audit["status"], "succeeded", "{audit}\n{}", env.logs());
    assert_eq!(
        audit["progress"]["shards_done"],
        audit["progress"]["shards_total"]
    );

    let reference = embedded(env.dir.path(), &[&base_s, &ft_s]);
    // results.json over HTTP equals the embedded audit's (paths and times aside).
    let (status, body) = env.http(
        "GET",
        &format!("/v1/audits/{id}/results"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_close(&served["analyses"], &reference["analyses"], "analyses", &[]);
    for side in ["base", "finetuned"] {
        assert_eq!(
            served[side]["content_hash"], reference[side]["content_hash"],
            "{side}"
        );
    }
    // The rows in PostgreSQL equal the embedded audit's tensors, one row each.
    let team = env.rt.block_on(env.db.ensure_team("safety")).unwrap();
    let rows = env
        .rt
        .block_on(env.db.tensor_results(&team, audit_id(&id)))
        .unwrap();
    let expected = reference["analyses"]["weights"]["tensors"]
        .as_array()
        .unwrap();
    assert_eq!(rows.len(), expected.len());
    for t in expected {
        let row = rows
            .iter()
            .find(|r| r.name == t["name"].as_str().unwrap())
            .expect("row");
        assert_close(
            &serde_json::to_value(row).unwrap(),
            t,
            row.name.as_str(),
            &[],
        );
    }
    // Every artifact is in object storage with the recorded size and sha256, and downloads.
    let artifacts = env
        .rt
        .block_on(env.db.artifacts(&team, audit_id(&id)))
        .unwrap();
    let names: Vec<_> = artifacts.iter().map(|a| a.name.as_str()).collect();
    for want in [
        "results.json",
        "report.html",
        "heatmap.svg",
        "layers.svg",
        "spectra.svg",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    let blobs = env.blobs();
    for a in &artifacts {
        let stored = env.rt.block_on(blobs.get(&a.object_key)).unwrap();
        assert_eq!(
            format!("{:x}", Sha256::digest(&stored)),
            a.sha256,
            "{}",
            a.name
        );
        let (status, got) = env.http(
            "GET",
            &format!("/v1/audits/{id}/artifacts/{}", a.name),
            Some(&token),
            None,
        );
        assert_eq!(
            (status, got.len() as i64),
            (200, a.size_bytes),
            "{}",
            a.name
        );
    }
    // The team-wide query finds the planted rank-4 change first.
    let (status, hits) = env.json(
        "GET",
        "/v1/results?metric=rel_fro&min=0.01&limit=5",
        &token,
        None,
    );
    assert_eq!(status, 200, "{hits}");
    let truth: Value =
        serde_json::from_slice(&std::fs::read(ft.join("ground_truth.json")).unwrap()).unwrap();
    let top = hits["results"][0]["tensor"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        truth.to_string().contains(&top),
        "{top} not planted: {truth}"
    );

    // Errors over real HTTP: 401, 404 across teams, 400 naming the field, 413.
    assert_eq!(
        env.http("GET", &format!("/v1/audits/{id}"), None, None).0,
        401
    );
    let other = env.token("other-team");
    assert_eq!(
        env.http("GET", &format!("/v1/audits/{id}"), Some(&other), None)
            .0,
        404
    );
    assert_eq!(
        env.http(
            "GET",
            &format!("/v1/audits/{id}/results"),
            Some(&other),
            None
        )
        .0,
        404
    );
    let (status, err) = env.json(
        "POST",
        "/v1/audits",
        &token,
        Some(json!({"base": "", "finetuned": "x"})),
    );
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("`base`"), "{err}");
    let huge = json!({"base": "x".repeat(100_000), "finetuned": "y"}).to_string();
    assert_eq!(
        env.http("POST", "/v1/audits", Some(&token), Some(huge)).0,
        413
    );
    // /metrics counts every team's audits: a team's token does not read it, the operator's does.
    for token in [None, Some(token.as_str())] {
        let (status, _) = env.http("GET", "/metrics", token, None);
        assert_eq!(status, 401);
    }
    let (status, metrics) = env.http("GET", "/metrics", Some(harness::METRICS_TOKEN), None);
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("neurodiff_audits{status=\"succeeded\"} 1"),
        "{metrics}"
    );

    // The client commands: submit --wait, then download every artifact.
    let client = |args: &[&str]| env.client(&token, args);
    let waited: Value = serde_json::from_str(&client(&[
        "submit",
        &base_s,
        &ft_s,
        "--layers",
        "4",
        "--spectrum",
        "none",
        "--wait",
    ]))
    .unwrap();
    assert_eq!(waited["status"], "succeeded");
    assert_eq!(waited["spec"]["layers"], json!([4]));
    assert_eq!(waited["spec"]["weights"]["spectrum"], "none");
    let second = waited["id"].as_str().unwrap();
    let out_dir = env.dir.path().join("downloaded");
    let listed = client(&["results", second, "--out", out_dir.to_str().unwrap()]);
    assert!(
        listed.contains("results.json") && listed.contains("report.html"),
        "{listed}"
    );
    let downloaded: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    let tensors = downloaded["analyses"]["weights"]["tensors"]
        .as_array()
        .unwrap();
    assert!(tensors
        .iter()
        .all(|t| t["layer"] == 4 && t["spectral"].is_null()));
}

#[test]
fn a_worker_killed_mid_shard_loses_nothing_and_duplicates_nothing() {
    let (mut env, base, ft, token) = service(None, "attn-scaled", &[("victim", SLOW)]);
    let id = env.submit(&token, json!({"base": base, "finetuned": ft}));
    let audit = audit_id(&id);
    // Wait until the victim is inside a shard, then SIGKILL it.
    wait_shard_running(&env, &id, "victim%");
    std::thread::sleep(Duration::from_millis(400));
    env.kill("victim");
    env.start_worker("rescuer", &[]);
    let done = env.wait_done(&token, &id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
    let reference = embedded(env.dir.path(), &[&base, &ft]);
    let expected = tensor_count(&reference);
    let (rows, distinct, retried): (i64, i64, i64) = env
        .rt
        .block_on(
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM tensor_results WHERE audit_id = $1), \
                 (SELECT count(DISTINCT name) FROM tensor_results WHERE audit_id = $1), \
                 (SELECT count(*) FROM shards WHERE audit_id = $1 AND attempt > 1)",
            )
            .bind(audit)
            .fetch_one(&env.db.pool),
        )
        .unwrap();
    assert_eq!((rows, distinct), (expected, expected));
    assert!(retried >= 1, "the killed shard ran again");
    let (_, body) = env.http(
        "GET",
        &format!("/v1/audits/{id}/results"),
        Some(&token),
        None,
    );
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_close(&served["analyses"], &reference["analyses"], "analyses", &[]);
}

#[test]
fn sigterm_hands_the_shard_in_flight_back() {
    // A zero grace period: the shard in flight is handed back at once, not finished.
    let leaving: &[&str] = &["--slow-tensor-ms", "250", "--grace-s", "0"];
    let (mut env, base, ft, token) = service(None, "rank-update", &[("leaving", leaving)]);
    let id = env.submit(&token, json!({"base": base, "finetuned": ft}));
    wait_shard_running(&env, &id, "%");
    let log = env.log("leaving");
    let status = env.terminate("leaving");
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("handing the task back"), "{text}");
    env.start_worker("staying", &[]);
    let done = env.wait_done(&token, &id, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
    // Handed back, not reclaimed: the scheduler never saw an expired lease.
    let sched = std::fs::read_to_string(env.log("scheduler")).unwrap();
    assert!(!sched.contains("lease expired"), "{sched}");
}

#[test]
fn cancelling_mid_run_stops_the_audit_and_frees_the_worker() {
    let (env, base, ft, token) = service(None, "rank-update", &[("w1", SLOW)]);
    let id = env.submit(&token, json!({"base": base, "finetuned": ft}));
    wait_one_shard_done(&env, &token, &id);
    let (status, cancelled) = env.json("DELETE", &format!("/v1/audits/{id}"), &token, None);
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled"))
    );
    // The worker notices at its next lease renewal and drops the shard; nothing finishes it.
    let (_, next) = (
        0,
        env.submit(
            &token,
            json!({"base": base, "finetuned": ft, "layers": [0]}),
        ),
    );
    let done = env.wait_done(&token, &next, Duration::from_secs(60));
    assert_eq!(
        done["status"],
        "succeeded",
        "the worker is free again\n{}",
        env.logs()
    );
    let (_, a) = env.json("GET", &format!("/v1/audits/{id}"), &token, None);
    assert_eq!(a["status"], "cancelled");
    assert!(
        a["progress"]["shards_done"].as_i64() < a["progress"]["shards_total"].as_i64(),
        "{a}"
    );
    assert_eq!(
        env.http(
            "GET",
            &format!("/v1/audits/{id}/results"),
            Some(&token),
            None
        )
        .0,
        409
    );
    let team = env.rt.block_on(env.db.ensure_team("safety")).unwrap();
    assert!(env
        .rt
        .block_on(env.db.artifacts(&team, audit_id(&id)))
        .unwrap()
        .is_empty());
}

#[test]
fn an_audit_survives_a_redis_restart_mid_run() {
    let port = harness::free_port();
    let mut redis = harness::redis_server(port, None);
    let (env, base, ft, token) = service(
        Some(format!("redis://127.0.0.1:{port}")),
        "rank-update",
        &[("w1", SLOW)],
    );
    let id = env.submit(&token, json!({"base": base, "finetuned": ft}));
    wait_one_shard_done(&env, &token, &id);
    // Redis here keeps nothing on disk: the restart loses every stream and group.
    redis.kill().unwrap();
    redis.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut redis = harness::redis_server(port, None);
    let done = env.wait_done(&token, &id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
    let reference = embedded(env.dir.path(), &[&base, &ft]);
    let expected = tensor_count(&reference);
    let rows: i64 = env
        .rt
        .block_on(
            sqlx::query_scalar("SELECT count(*) FROM tensor_results WHERE audit_id = $1")
                .bind(audit_id(&id))
                .fetch_one(&env.db.pool),
        )
        .unwrap();
    assert_eq!(rows, expected);
    drop(env);
    let _ = redis.kill();
    let _ = redis.wait();
}
