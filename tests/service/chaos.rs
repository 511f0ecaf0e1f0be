//! The chaos run: two dozen audits through the whole service while workers are killed with
//! SIGKILL, Redis is restarted from a snapshot taken mid-run (its epoch key survives, the
//! entries added after the snapshot do not) and every PostgreSQL connection is dropped; two
//! schedulers run side by side. Every audit must end `succeeded`, with exactly the rows of
//! the embedded audit of its pair and one fan-in. The figures are printed for the issue note.
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::audit_id;
use crate::harness::{assert_close, embedded, free_port, organisms, redis_server, wait_for, Env};

const AUDITS: usize = 24;

/// Audits whose shards are all done so far, and shards done in all.
fn progress(env: &Env) -> (i64, i64) {
    env.rt
        .block_on(
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*) FILTER (WHERE status = 'succeeded'), COALESCE(sum(shards_done), 0)::bigint FROM audits",
            )
            .fetch_one(&env.db.pool),
        )
        .unwrap_or((0, 0))
}

fn wait_shards(env: &Env, at_least: i64) {
    wait_for(
        &format!("{at_least} shards done"),
        Duration::from_secs(120),
        || (progress(env).1 >= at_least).then_some(()),
    );
}

/// Drops every connection the service holds to its database.
fn drop_pg_connections(env: &Env) -> i64 {
    let admin = std::env::var("DATABASE_URL").unwrap();
    let db = env.db_url.rsplit('/').next().unwrap().to_string();
    env.rt.block_on(async {
        let admin = neurodiff_store::Db::connect(&admin).await.unwrap();
        let n: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db)
        .fetch_all(&admin.pool)
        .await
        .unwrap();
        n.iter().filter(|t| **t).count() as i64
    })
}

fn count_in_logs(env: &Env, names: &[&str], needle: &str) -> usize {
    names
        .iter()
        .map(|n| {
            std::fs::read_to_string(env.log(n))
                .unwrap_or_default()
                .matches(needle)
                .count()
        })
        .sum()
}

#[test]
fn two_dozen_audits_survive_kills_a_redis_snapshot_restore_and_dropped_connections() {
    let port = free_port();
    let snapshots = tempfile::tempdir().unwrap();
    let mut redis = redis_server(port, Some(snapshots.path()));
    let mut env = Env::new(Some(format!("redis://127.0.0.1:{port}")));
    let org = organisms(env.dir.path());
    let base = org.join("base").display().to_string();
    let pairs: Vec<String> = ["rank-update", "attn-scaled"]
        .iter()
        .map(|p| org.join(p).display().to_string())
        .collect();
    let slow: &[&str] = &["--slow-tensor-ms", "25"];
    env.start(&[("w1", slow), ("w2", slow), ("w3", slow)]);
    env.start_scheduler("scheduler-2");
    let token = env.token("chaos");
    let started = Instant::now();
    let ids: Vec<String> = (0..AUDITS)
        .map(|i| env.submit(&token, json!({"base": base, "finetuned": pairs[i % 2]})))
        .collect();
    let total_shards = AUDITS as i64 * 7;
    let (mut kills, mut redis_restarts, mut pg_drops) = (0, 0, 0);

    // 1. A worker dies mid-shard.
    wait_shards(&env, total_shards / 8);
    env.kill("w1");
    kills += 1;
    env.start_worker("w1b", slow);
    // 2. Redis writes a snapshot; work goes on (entries added after it will be lost).
    let saved = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "SAVE"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&saved.stdout).contains("OK"));
    let at_snapshot = progress(&env).1;
    wait_shards(&env, at_snapshot + total_shards / 8);
    // 3. Redis dies and comes back from that older snapshot.
    redis.kill().unwrap();
    redis.wait().unwrap();
    redis = redis_server(port, Some(snapshots.path()));
    redis_restarts += 1;
    // 4. Every PostgreSQL connection is dropped, and another worker dies.
    wait_shards(&env, progress(&env).1 + total_shards / 16);
    pg_drops += drop_pg_connections(&env);
    env.kill("w2");
    kills += 1;
    env.start_worker("w2b", slow);

    for id in &ids {
        let done = env.wait_done(&token, id, Duration::from_secs(300));
        assert_eq!(done["status"], "succeeded", "{done}\n{}", env.logs());
    }
    let elapsed = started.elapsed();

    // Every audit has exactly the embedded audit's rows, one per tensor, equal in value.
    let team = env.rt.block_on(env.db.ensure_team("chaos")).unwrap();
    let references: Vec<Value> = pairs
        .iter()
        .enumerate()
        .map(|(i, ft)| {
            let dir = env.dir.path().join(format!("reference-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            embedded(&dir, &[&base, ft])
        })
        .collect();
    let mut duplicated = 0;
    for (i, id) in ids.iter().enumerate() {
        let expected = references[i % 2]["analyses"]["weights"]["tensors"]
            .as_array()
            .unwrap();
        let rows = env
            .rt
            .block_on(env.db.tensor_results(&team, audit_id(id)))
            .unwrap();
        duplicated += rows.len().saturating_sub(expected.len());
        assert_eq!(rows.len(), expected.len(), "audit {id}");
        for t in expected {
            let row = rows
                .iter()
                .find(|r| r.name == t["name"].as_str().unwrap())
                .expect("row");
            assert_close(&serde_json::to_value(row).unwrap(), t, &row.name, &[]);
        }
        // Its report was recorded once, and what is stored is what was recorded.
        let artifacts = env
            .rt
            .block_on(env.db.artifacts(&team, audit_id(id)))
            .unwrap();
        assert!(artifacts.iter().any(|a| a.name == "results.json"));
        let blobs = env.blobs();
        for a in artifacts {
            let stored = env.rt.block_on(blobs.get(&a.object_key)).unwrap();
            assert_eq!(
                format!("{:x}", Sha256::digest(&stored)),
                a.sha256,
                "{id} {}",
                a.name
            );
        }
    }
    let schedulers = ["scheduler", "scheduler-2"];
    let fan_ins = count_in_logs(&env, &schedulers, "audit succeeded");
    let reaped = count_in_logs(&env, &schedulers, "task lost from the queue");
    let retried = count_in_logs(&env, &schedulers, "lease expired; retry scheduled");
    assert_eq!(fan_ins, AUDITS, "one fan-in per audit");
    println!(
        "chaos run: {AUDITS} audits ({total_shards} shards) succeeded in {:.1} s; workers killed: {kills}; \
         Redis restarted from a mid-run snapshot: {redis_restarts}; PostgreSQL connections dropped: {pg_drops}; \
         tasks found lost by the reaper: {reaped}; lease retries: {retried}; fan-ins: {fan_ins}; lost: 0; duplicated: {duplicated}",
        elapsed.as_secs_f64()
    );
    drop(env);
    let _ = redis.kill();
    let _ = redis.wait();
}
