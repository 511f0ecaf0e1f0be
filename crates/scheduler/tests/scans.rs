//! Scan passes against the real PostgreSQL, driven pass by pass (no background loop, no sleep):
//! a checkpoint is audited once its content has settled, a tokenizer landing after the weights
//! restarts the wait instead of making a second checkpoint, a checkpoint the admission refuses is
//! a failed run with an `audit_failed` alert, a webhook to an internal address is given up at
//! delivery even when its URL passed the lexical check, a restarted scheduler reads no file it
//! has hashed again, and a paused scan is not polled.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use neurodiff_protocol::scan::ScanRequest;
use neurodiff_protocol::ReferencePolicy;
use neurodiff_scheduler::scans::{evaluate_pending, pass, ScanPass};
use neurodiff_scheduler::webhooks::deliver_due;
use neurodiff_scheduler::ScanSettings;
use serde_json::json;
use sqlx::PgPool;

mod common;

/// A checkpoint the completeness rule accepts: a config and one whole safetensors file.
fn checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

async fn one_pass(ctx: &neurodiff_scheduler::SchedulerContext) -> ScanPass {
    let mut p = pass(ctx).await.unwrap();
    evaluate_pending(ctx, &mut p).await.unwrap();
    p
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn checkpoints_settle_refusals_alert_and_paused_scans_rest(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("incoming")).unwrap();
    let watch = dir.path().join("incoming").canonicalize().unwrap();
    let mut ctx = common::context(pool, 5).await;
    ctx.scans = ScanSettings {
        // The team may read what it watches, not the base it names: every audit is refused.
        policy: Arc::new(ReferencePolicy {
            local_roots: vec![watch.display().to_string()],
            ..ReferencePolicy::default()
        }),
        settle: Duration::ZERO,
        ..ScanSettings::default()
    };
    let team = ctx.db.ensure_team("watchers").await.unwrap();
    let request: ScanRequest = serde_json::from_value(json!({
        "name": "nightly", "source": watch.display().to_string(), "base": "/elsewhere/base",
        "every_s": 3600, "audit": {"analyses": ["weights"]},
        "rules": [{"name": "big", "severity": "high", "scope": "tensor", "metric": "rel_fro", "op": ">", "value": 0.1}],
        // Lexically a public host; it is 127.0.0.1 once parsed.
        "webhook_url": "http://2130706433/hook",
    }))
    .unwrap();
    request.validate().unwrap();
    let scan = ctx
        .db
        .create_scan(&team, &request, "a-secret-of-sixteen+", 32)
        .await
        .unwrap();
    let neurodiff_store::scans::ScanCreated::Created(scan) = scan else {
        panic!("not created: {scan:?}")
    };
    let scan = *scan;
    let runs = |ctx: &neurodiff_scheduler::SchedulerContext| {
        let db = ctx.db.clone();
        async move { db.scan_runs(scan.id, 100).await.unwrap() }
    };

    // The weights are whole; the tokenizer is not written yet. First sighting: nothing.
    checkpoint(&watch.join("step-1"));
    assert_eq!(one_pass(&ctx).await.polled, 1);
    assert!(runs(&ctx).await.is_empty());
    // The tokenizer lands before the next poll: another content, the wait starts again.
    std::fs::write(watch.join("step-1/tokenizer.json"), "{}").unwrap();
    // The settling scan was made due again at once, not in an hour.
    assert_eq!(one_pass(&ctx).await.polled, 1);
    assert!(runs(&ctx).await.is_empty());
    // Unchanged at the next poll: one run, for the content with its tokenizer.
    assert_eq!(one_pass(&ctx).await.polled, 1);
    let recorded = runs(&ctx).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    // The base is outside what the team may read: a failed run and an alert, not silence.
    assert_eq!(recorded[0].state.as_str(), "failed", "{recorded:?}");
    let alerts = ctx
        .db
        .list_alerts(&team, Some(scan.id), None, 100)
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].rule, "audit_failed");
    assert_eq!(alerts[0].severity.as_str(), "high");
    assert!(
        alerts[0].message.contains("refused"),
        "{}",
        alerts[0].message
    );

    // Polled again (it is due in an hour; trigger it): nothing new, nothing twice.
    ctx.db
        .update_scan(&team, scan.id, None, true)
        .await
        .unwrap();
    assert_eq!(one_pass(&ctx).await.polled, 1);
    assert_eq!(runs(&ctx).await.len(), 1);
    assert!(ctx.scans.hashes.files_hashed() >= 3);
    // A restarted scheduler (a new process: its caches empty) reads no file whole again: the
    // digests come back from the database.
    let restarted = neurodiff_scheduler::SchedulerContext {
        scans: ScanSettings {
            policy: ctx.scans.policy.clone(),
            settle: Duration::ZERO,
            ..ScanSettings::default()
        },
        ..ctx.clone()
    };
    ctx.db
        .update_scan(&team, scan.id, None, true)
        .await
        .unwrap();
    assert_eq!(one_pass(&restarted).await.polled, 1);
    assert_eq!(restarted.scans.hashes.files_hashed(), 0);
    assert_eq!(runs(&ctx).await.len(), 1);

    // The webhook resolves to loopback: refused at delivery, given up, never sent.
    assert_eq!(deliver_due(&ctx).await.unwrap(), 0);
    let alert = ctx.db.get_alert(&team, alerts[0].id).await.unwrap();
    let d = &alert.deliveries[0];
    assert!(d.gave_up_at.is_some(), "{d:?}");
    assert!(
        d.last_error.as_deref().unwrap_or("").contains("internal"),
        "{d:?}"
    );

    // Paused: not polled, even when due; a new checkpoint waits.
    checkpoint(&watch.join("step-2"));
    ctx.db
        .update_scan(&team, scan.id, Some(true), true)
        .await
        .unwrap();
    assert_eq!(one_pass(&ctx).await.polled, 0);
    assert_eq!(one_pass(&ctx).await.polled, 0);
    assert_eq!(runs(&ctx).await.len(), 1);
    ctx.db
        .update_scan(&team, scan.id, Some(false), true)
        .await
        .unwrap();
    one_pass(&ctx).await;
    one_pass(&ctx).await;
    assert_eq!(runs(&ctx).await.len(), 2);
}
