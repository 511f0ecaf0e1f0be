//! Load benchmark of the service (not a timed test): N concurrent submissions of small audits
//! (one layer of the model organisms, norms and spectra) against an API, a scheduler and two
//! workers on this machine. Prints audits/s, the queue overhead per shard (from the stream
//! entry's timestamp to the worker's start, with idle workers) and the latency of status reads, each beside a baseline measured in the
//! same run: the embedded audit of the same pair, and /healthz (no auth, no database).
//!
//!   scripts/bench_service.sh [N]      (sets up the environment, then `cargo bench`)
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../../../tests/service/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use harness::{organisms, Env};
use serde_json::json;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn latencies(env: &Env, path: &str, token: Option<&str>, n: usize) -> Vec<f64> {
    let mut out: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let (status, _) = env.http("GET", path, token, None);
            assert_eq!(status, 200, "{path}");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    let base = org.join("base").display().to_string();
    let ft = org.join("rank-update").display().to_string();
    env.start(&[("w1", &[]), ("w2", &[])]);
    let token = env.token("bench");
    let body = json!({"base": base, "finetuned": ft, "layers": [0]});

    // Warm-up: the first audit pays for page-cache misses and connection set-up.
    let warm = env.submit(&token, body.clone());
    env.wait_done(&token, &warm, Duration::from_secs(60));

    // Queue overhead with idle workers: one audit at a time.
    let mut sequential = Vec::new();
    for _ in 0..20 {
        let id = env.submit(&token, body.clone());
        env.wait_done(&token, &id, Duration::from_secs(60));
        sequential.push(id.parse::<uuid::Uuid>().unwrap());
    }
    let mut overhead: Vec<f64> = env
        .rt
        .block_on(
            sqlx::query_scalar::<_, f64>(
                "SELECT queue_wait_ms FROM shards WHERE audit_id = ANY($1) AND queue_wait_ms IS NOT NULL",
            )
            .bind(&sequential)
            .fetch_all(&env.db.pool),
        )
        .unwrap();
    overhead.sort_by(f64::total_cmp);
    let mut end_to_end: Vec<f64> = env
        .rt
        .block_on(
            sqlx::query_scalar::<_, f64>(
                "SELECT EXTRACT(EPOCH FROM (finished_at - created_at))::float8 * 1000 FROM audits WHERE id = ANY($1)",
            )
            .bind(&sequential)
            .fetch_all(&env.db.pool),
        )
        .unwrap();
    end_to_end.sort_by(f64::total_cmp);

    // N concurrent submissions, with status reads running beside them.
    let started = Instant::now();
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| s.spawn(|| env.submit(&token, body.clone())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let submitted_s = started.elapsed().as_secs_f64();
    let status_ms = latencies(&env, &format!("/v1/audits/{}", ids[0]), Some(&token), 200);
    for id in &ids {
        let a = env.wait_done(&token, id, Duration::from_secs(300));
        assert_eq!(a["status"], "succeeded", "{a}");
    }
    let service_s = started.elapsed().as_secs_f64();
    let health_ms = latencies(&env, "/healthz", None, 200);

    // Baseline: the embedded audit of the same pair, one after another, in this run.
    let t = Instant::now();
    for _ in 0..5 {
        harness::embedded(env.dir.path(), &[&base, &ft, "--layers", "0"]);
    }
    let embedded_s = t.elapsed().as_secs_f64() / 5.0;

    let rate = n as f64 / service_s;
    println!(
        "service load benchmark: {n} concurrent audits (1 layer shard each), 2 workers, 2 cores"
    );
    println!(
        "  submitted all in {submitted_s:.3} s ({:.0} submissions/s)",
        n as f64 / submitted_s
    );
    println!("  audits/s: {rate:.2} (all {n} done in {service_s:.2} s)");
    println!(
        "  baseline: embedded `neurodiff audit` of the same pair, process included: {:.2} audits/s; ratio service/embedded {:.2}",
        1.0 / embedded_s,
        rate * embedded_s
    );
    println!(
        "  queue overhead per shard (added to the stream -> taken by a worker, idle workers): p50 {:.1} ms, p99 {:.1} ms (n={})",
        percentile(&overhead, 0.5),
        percentile(&overhead, 0.99),
        overhead.len()
    );
    println!(
        "  one audit end to end with idle workers (submit -> succeeded): p50 {:.0} ms",
        percentile(&end_to_end, 0.5)
    );
    println!(
        "  status read GET /v1/audits/{{id}} under load: p50 {:.2} ms, p99 {:.2} ms; baseline /healthz idle: p50 {:.2} ms, p99 {:.2} ms; p50 ratio {:.1}",
        percentile(&status_ms, 0.5),
        percentile(&status_ms, 0.99),
        percentile(&health_ms, 0.5),
        percentile(&health_ms, 0.99),
        percentile(&status_ms, 0.5) / percentile(&health_ms, 0.5)
    );
}
