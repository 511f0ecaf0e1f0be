//! One team's scan cannot stall another team's: the scan loop runs against the real PostgreSQL
//! with team a watching a directory whose new checkpoint is 256 GiB (sparse) to hash, and team
//! b a small one. Team b's checkpoint is audited while team a's is still being hashed (each
//! poll is a task of its own), a poll's hashing is bounded by its budget and resumes where it
//! stopped, and the loop stops at once on shutdown, hashing included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use neurodiff_protocol::scan::ScanRequest;
use neurodiff_protocol::ReferencePolicy;
use neurodiff_scheduler::scans::pass;
use neurodiff_scheduler::ScanSettings;
use neurodiff_scheduler::SchedulerContext;
use neurodiff_store::scans::ScanCreated;
use neurodiff_store::ScanRow;
use serde_json::json;
use sqlx::PgPool;

mod common;

/// A checkpoint the completeness rule accepts, whose one tensor holds `data_len` bytes (the
/// file is sparse: a hole of that length after the header).
fn checkpoint(dir: &Path, data_len: u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let header =
        format!(r#"{{"w":{{"dtype":"U8","shape":[{data_len}],"data_offsets":[0,{data_len}]}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let file = dir.join("model.safetensors");
    std::fs::write(&file, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(bytes.len() as u64 + data_len).unwrap();
}

async fn scan(ctx: &SchedulerContext, team: &str, source: &Path) -> ScanRow {
    let team = ctx.db.ensure_team(team).await.unwrap();
    let request: ScanRequest = serde_json::from_value(json!({
        "name": "watch", "source": source.display().to_string(),
        "base": source.join("base").display().to_string(),
        "every_s": 3600, "audit": {"analyses": ["weights"]},
    }))
    .unwrap();
    match ctx
        .db
        .create_scan(&team, &request, "a-secret-of-sixteen+", 32)
        .await
    {
        Ok(ScanCreated::Created(s)) => *s,
        other => panic!("{other:?}"),
    }
}

async fn context(pool: PgPool, root: &Path, budget: u64) -> SchedulerContext {
    let mut ctx = common::context(pool, 5).await;
    ctx.scans = ScanSettings {
        policy: Arc::new(ReferencePolicy {
            local_roots: vec![root.display().to_string()],
            ..ReferencePolicy::default()
        }),
        settle: Duration::ZERO,
        poll_budget_bytes: budget,
        list_timeout: Duration::from_secs(3600),
        ..ScanSettings::default()
    };
    ctx
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_huge_checkpoint_of_one_team_delays_no_other_teams_scan(pool: PgPool) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    checkpoint(&root.join("a/step-1"), 256 << 30);
    checkpoint(&root.join("b/step-1"), 64);
    let ctx = context(pool, &root, u64::MAX).await;
    let (a, b) = (
        scan(&ctx, "team-a", &root.join("a")).await,
        scan(&ctx, "team-b", &root.join("b")).await,
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let looping = tokio::spawn(neurodiff_scheduler::scans::run(ctx.clone(), rx));
    let started = Instant::now();
    // Team b's checkpoint settles over two polls and is audited; team a's is still hashing
    // (256 GiB takes minutes): before, a pass waited for its slowest poll.
    loop {
        if !ctx.db.scan_runs(b.id, 10).await.unwrap().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "team b's checkpoint was not audited while team a's was hashed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("team b audited after {:?}", started.elapsed());
    assert!(ctx.db.scan_runs(a.id, 10).await.unwrap().is_empty());
    // Shutdown stops the hashing at its next read: the loop ends in seconds, not minutes.
    let stopping = Instant::now();
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), looping)
        .await
        .expect("the scan loop did not stop")
        .unwrap();
    eprintln!("scan loop stopped in {:?}", stopping.elapsed());
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_checkpoint_larger_than_a_polls_budget_is_hashed_over_several_polls(pool: PgPool) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    checkpoint(&root.join("a/step-1"), 10 << 20);
    let ctx = context(pool, &root, 4 << 20).await;
    let a = scan(&ctx, "team-a", &root.join("a")).await;
    let mut polls = 0;
    while ctx.db.scan_runs(a.id, 10).await.unwrap().is_empty() {
        polls += 1;
        assert!(polls <= 6, "not audited after {polls} polls");
        // Due at once again (its schedule is hourly).
        sqlx::query("UPDATE scans SET next_run_at = now() WHERE id = $1")
            .bind(a.id)
            .execute(&ctx.db.pool)
            .await
            .unwrap();
        pass(&ctx).await.unwrap();
    }
    // 10 MiB at 4 MiB a poll: three polls to hash it, one more to see it settled.
    assert_eq!(polls, 4);
    // Read whole once each: config.json and the weights (resumed, not restarted).
    assert_eq!(ctx.scans.hashes.files_hashed(), 2);
}
