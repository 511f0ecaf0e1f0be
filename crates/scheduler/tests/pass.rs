//! Scheduler passes against the real PostgreSQL (a database per test) and Redis (streams per
//! test), with a stand-in worker that takes tasks and goes silent: retries with backoff, then
//! the dead letter that fails the audit with its reason; and re-enqueueing after Redis lost
//! its streams; the reaper finding work the queue lost while its epoch survived; one fan-in
//! per audit when a second scheduler takes a slow one over.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use neurodiff_protocol::{AnalysisKind, AuditSpec, Envelope, ShardKey, Target, Task};
use neurodiff_protocol::{AuditStatus, ModelRecord, PlanRecord, ShardOutput, ShardResult};
use neurodiff_scheduler::fanin::finish;
use neurodiff_scheduler::reaper::reap;
use neurodiff_scheduler::service::pass;
use neurodiff_scheduler::SchedulerContext;
use neurodiff_store::shard_result_key;
use neurodiff_store::{Admission, Quota};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

mod common;
use common::context;

async fn planned_audit(ctx: &SchedulerContext) -> uuid::Uuid {
    let team = ctx.db.ensure_team("t").await.unwrap();
    let spec = AuditSpec {
        layers: None,
        ..AuditSpec::new(
            "b".into(),
            Target::Checkpoint {
                reference: "f".into(),
            },
            vec![AnalysisKind::Weights],
        )
    };
    match ctx
        .db
        .insert_audit(&team, &spec, None, &Quota::default())
        .await
        .unwrap()
    {
        Admission::Created(audit) => audit.id,
        other => panic!("not admitted: {other:?}"),
    }
}

/// Takes every task off the stream (acknowledged), as workers that finished would not: the
/// shard keys it held.
async fn drain(ctx: &SchedulerContext) -> Vec<ShardKey> {
    let mut keys = Vec::new();
    while let Some(d) = ctx.tasks.read::<Envelope>("w", 50).await.unwrap() {
        if let Task::Shard { spec, .. } = d.task.task {
            keys.push(spec.shard);
        }
    }
    keys.sort();
    keys
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_task_whose_worker_goes_silent_is_retried_then_dead_lettered(pool: PgPool) {
    let ctx = context(pool, 2).await;
    let audit = planned_audit(&ctx).await;
    // Pass 1 enqueues the plan task; the stand-in worker plans one shard, as a worker would.
    assert_eq!(pass(&ctx).await.unwrap().planned, 1);
    let plan = ctx.tasks.read::<Envelope>("w", 100).await.unwrap().unwrap();
    assert_eq!(plan.task.task, Task::Plan { audit });
    ctx.db
        .plan_shards(audit, &[ShardKey::Layer(3)], None)
        .await
        .unwrap();
    ctx.tasks.ack(&plan.id).await.unwrap();
    assert_eq!(pass(&ctx).await.unwrap().enqueued, 1);

    // First delivery: taken, never renewed.
    let first = ctx.tasks.read::<Envelope>("w", 100).await.unwrap().unwrap();
    assert_eq!(first.task.retries, 0);
    ctx.db
        .start_attempt(audit, ShardKey::Layer(3), "w", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = pass(&ctx).await.unwrap();
    assert_eq!((p.retried, p.dead), (1, 0), "{p:?}");
    // The retry waits for its backoff, then comes back counted.
    assert!(ctx.tasks.read::<Envelope>("w", 5).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pass(&ctx).await.unwrap().promoted, 1);
    let second = ctx.tasks.read::<Envelope>("w", 100).await.unwrap().unwrap();
    assert_eq!(second.task.retries, 1);

    // Second silence (its worker ran out of memory, say): the limit is reached, the task is
    // dead-lettered and the audit fails, saying why.
    ctx.db
        .note_shard_error(
            audit,
            &ShardKey::Layer(3),
            "shard layer-0003: libtorch: CUDA out of memory",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pass(&ctx).await.unwrap().dead, 1);
    assert_eq!(ctx.tasks.dead_letters().await.unwrap(), 1);
    let status = ctx.db.audit_status(audit).await.unwrap();
    let row = ctx.db.audit_by_id(audit).await.unwrap();
    assert_eq!(status, AuditStatus::Failed);
    let reason = row.error.unwrap();
    assert!(
        reason.contains("layer-0003")
            && reason.contains("dead-lettered")
            && reason.contains("CUDA out of memory"),
        "{reason}"
    );
    ctx.tasks.delete().await.unwrap();
    ctx.events.delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn unfinished_work_is_enqueued_again_when_redis_lost_it(pool: PgPool) {
    let ctx = context(pool, 5).await;
    let audit = planned_audit(&ctx).await;
    let p = pass(&ctx).await.unwrap();
    assert_eq!(p.planned, 1);
    ctx.db
        .plan_shards(audit, &[ShardKey::Layer(0), ShardKey::NonLayer], None)
        .await
        .unwrap();
    assert_eq!(pass(&ctx).await.unwrap().enqueued, 2);
    assert_eq!(pass(&ctx).await.unwrap().enqueued, 0, "enqueued once");
    // Redis loses everything (as a restart does here).
    ctx.tasks.delete().await.unwrap();
    let p = pass(&ctx).await.unwrap();
    assert_eq!((p.requeued_after_loss, p.enqueued), (2, 2), "{p:?}");
    assert_eq!(drain(&ctx).await, [ShardKey::Layer(0), ShardKey::NonLayer]);
    ctx.tasks.delete().await.unwrap();
    ctx.events.delete().await.unwrap();
}

/// Backdates when work was enqueued, past the reaper's settling time.
async fn backdate(ctx: &SchedulerContext) {
    sqlx::query("UPDATE shards SET enqueued_at = enqueued_at - interval '1 minute'")
        .execute(&ctx.db.pool)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn the_reaper_re_enqueues_work_a_restored_snapshot_lost(pool: PgPool) {
    let ctx = context(pool, 5).await;
    let audit = planned_audit(&ctx).await;
    pass(&ctx).await.unwrap();
    let plan = ctx.tasks.read::<Envelope>("w", 100).await.unwrap().unwrap();
    ctx.db
        .plan_shards(audit, &[ShardKey::Layer(0), ShardKey::Layer(1)], None)
        .await
        .unwrap();
    ctx.tasks.ack(&plan.id).await.unwrap();
    assert_eq!(pass(&ctx).await.unwrap().enqueued, 2);
    backdate(&ctx).await;
    // Everything is held: nothing to reap.
    assert_eq!(reap(&ctx).await.unwrap(), 0);
    // Redis comes back from a snapshot taken before layer 1 was added: the epoch key is there,
    // so the loss is invisible to the epoch check.
    let entries: Vec<(String, Envelope)> = {
        let mut out = Vec::new();
        while let Some(d) = ctx.tasks.read::<Envelope>("w", 50).await.unwrap() {
            out.push((d.id, d.task));
        }
        out
    };
    for (id, env) in &entries {
        match &env.task {
            Task::Shard { spec, .. } if spec.shard == ShardKey::Layer(1) => {
                ctx.tasks.ack(id).await.unwrap()
            }
            _ => {}
        }
    }
    let p = pass(&ctx).await.unwrap();
    assert_eq!((p.requeued_after_loss, p.enqueued), (0, 0), "{p:?}");
    assert_eq!(reap(&ctx).await.unwrap(), 1);
    assert_eq!(pass(&ctx).await.unwrap().enqueued, 1);
    assert_eq!(drain(&ctx).await, [ShardKey::Layer(1)]);
    ctx.tasks.delete().await.unwrap();
    ctx.events.delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_retry_lost_mid_promotion_is_found_by_the_reaper(pool: PgPool) {
    let ctx = context(pool, 5).await;
    let audit = planned_audit(&ctx).await;
    pass(&ctx).await.unwrap();
    let plan = ctx.tasks.read::<Envelope>("w", 100).await.unwrap().unwrap();
    ctx.db
        .plan_shards(audit, &[ShardKey::Layer(2)], None)
        .await
        .unwrap();
    ctx.tasks.ack(&plan.id).await.unwrap();
    pass(&ctx).await.unwrap();
    let taken = ctx.tasks.read::<Envelope>("w", 100).await.unwrap().unwrap();
    // The lease lapses; the retry waits in the delayed set, where the reaper sees it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pass(&ctx).await.unwrap().retried, 1);
    assert!(ctx.tasks.read::<Envelope>("w", 5).await.unwrap().is_none());
    backdate(&ctx).await;
    assert_eq!(reap(&ctx).await.unwrap(), 0, "a delayed retry is held");
    // A scheduler dies after taking the retry out of the delayed set and before adding it to
    // the stream (what two separate commands allowed).
    let retry = Envelope {
        task: taken.task.task.clone(),
        retries: 1,
        deferred_since_ms: 0,
    };
    let mut conn = redis::Client::open(
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    )
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .unwrap();
    let removed: i64 = redis::cmd("ZREM")
        .arg(ctx.tasks.delayed_key())
        .arg(serde_json::to_string(&retry).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(reap(&ctx).await.unwrap(), 1);
    assert_eq!(pass(&ctx).await.unwrap().enqueued, 1);
    assert_eq!(drain(&ctx).await, [ShardKey::Layer(2)]);
    ctx.tasks.delete().await.unwrap();
    ctx.events.delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_fan_in_taken_over_records_its_audit_once(pool: PgPool) {
    let ctx = context(pool, 5).await;
    let audit = planned_audit(&ctx).await;
    let record = PlanRecord {
        corpus: None,
        n_layers: 1,
        base: model_record("b"),
        finetuned: model_record("f"),
    };
    ctx.db
        .plan_shards(
            audit,
            &[ShardKey::Layer(0)],
            Some(&serde_json::to_value(&record).unwrap()),
        )
        .await
        .unwrap();
    let attempt = ctx
        .db
        .start_attempt(audit, ShardKey::Layer(0), "w", None)
        .await
        .unwrap();
    let result = ShardOutput::Weights(ShardResult {
        shard: ShardKey::Layer(0),
        tensors: Vec::new(),
        only_in_base: Vec::new(),
        only_in_finetuned: Vec::new(),
        shape_mismatches: Vec::new(),
        added_rows: Vec::new(),
        elapsed_s: 0.5,
    });
    ctx.blobs
        .put(
            &shard_result_key(audit, &ShardKey::Layer(0), attempt),
            serde_json::to_vec(&result).unwrap().into(),
        )
        .await
        .unwrap();
    ctx.db
        .record_shard(audit, attempt, ShardKey::Layer(0), &result)
        .await
        .unwrap();
    // Scheduler A claims the fan-in and stalls; its claim goes stale; B takes over.
    let mut a = ctx.db.claim_finishing(60.0).await.unwrap();
    assert_eq!(a.len(), 1);
    assert!(ctx.db.claim_finishing(60.0).await.unwrap().is_empty());
    sqlx::query("UPDATE audits SET finalizing_at = now() - interval '1 hour'")
        .execute(&ctx.db.pool)
        .await
        .unwrap();
    let mut b = ctx.db.claim_finishing(60.0).await.unwrap();
    assert_eq!(b.len(), 1);
    assert!(finish(&ctx, b.remove(0)).await.unwrap());
    let recorded = ctx.db.audit_by_id(audit).await.unwrap();
    assert_eq!(recorded.status, AuditStatus::Succeeded);
    // A wakes up: it renders and uploads the same bytes, and records nothing.
    assert!(!finish(&ctx, a.remove(0)).await.unwrap());
    let team = ctx.db.ensure_team("t").await.unwrap();
    let artifacts = ctx.db.artifacts(&team, audit).await.unwrap();
    assert!(!artifacts.is_empty());
    for art in artifacts {
        let bytes = ctx.blobs.get(&art.object_key).await.unwrap();
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            sha, art.sha256,
            "{}: the stored hash matches the object",
            art.name
        );
    }
    assert_eq!(
        ctx.db.audit_by_id(audit).await.unwrap().finished_at,
        recorded.finished_at,
        "finished once"
    );
    ctx.tasks.delete().await.unwrap();
    ctx.events.delete().await.unwrap();
}

fn model_record(reference: &str) -> ModelRecord {
    ModelRecord {
        reference: reference.into(),
        resolved: reference.into(),
        content_hash: "sha256:00".into(),
        files: Vec::new(),
    }
}

/// A shard row this build cannot read (planned by another version, say) fails its own audit
/// with the reason and does not stop other audits' shards from being enqueued.
#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn an_unreadable_shard_fails_its_audit_and_blocks_no_other(pool: PgPool) {
    let ctx = context(pool, 5).await;
    let (bad, good) = (planned_audit(&ctx).await, planned_audit(&ctx).await);
    pass(&ctx).await.unwrap();
    ctx.db
        .plan_shards(bad, &[ShardKey::Layer(0)], None)
        .await
        .unwrap();
    sqlx::query("UPDATE shards SET shard_key = 'future-kind/slice-0001' WHERE audit_id = $1")
        .bind(bad)
        .execute(&ctx.db.pool)
        .await
        .unwrap();
    ctx.db
        .plan_shards(good, &[ShardKey::Layer(0), ShardKey::NonLayer], None)
        .await
        .unwrap();
    let p = pass(&ctx).await.unwrap();
    assert_eq!(
        p.enqueued, 2,
        "the readable audit's shards are enqueued: {p:?}"
    );
    let failed = ctx.db.audit_by_id(bad).await.unwrap();
    assert_eq!(failed.status, AuditStatus::Failed);
    let error = failed.error.unwrap();
    assert!(error.contains("future-kind/slice-0001"), "{error}");
    assert_eq!(drain(&ctx).await, [ShardKey::Layer(0), ShardKey::NonLayer]);
    ctx.tasks.delete().await.unwrap();
    ctx.events.delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn outputs_larger_than_the_fan_in_may_hold_fail_the_audit_naming_the_limit(pool: PgPool) {
    let mut ctx = context(pool, 5).await;
    ctx.settings.max_fanin_bytes = 64 << 10;
    let audit = planned_audit(&ctx).await;
    let record = PlanRecord {
        corpus: None,
        n_layers: 2,
        base: model_record("b"),
        finetuned: model_record("f"),
    };
    let keys = [ShardKey::Layer(0), ShardKey::Layer(1)];
    ctx.db
        .plan_shards(audit, &keys, Some(&serde_json::to_value(&record).unwrap()))
        .await
        .unwrap();
    // Each output well under the limit, the two together over it.
    for (i, key) in keys.into_iter().enumerate() {
        let attempt = ctx.db.start_attempt(audit, key, "w", None).await.unwrap();
        let result = ShardOutput::Weights(ShardResult {
            shard: key,
            tensors: Vec::new(),
            only_in_base: (0..1500)
                .map(|j| format!("model.layers.{i}.t{j:06}"))
                .collect(),
            only_in_finetuned: Vec::new(),
            shape_mismatches: Vec::new(),
            added_rows: Vec::new(),
            elapsed_s: 0.5,
        });
        let bytes = serde_json::to_vec(&result).unwrap();
        assert!(bytes.len() > 32 << 10 && bytes.len() < 64 << 10);
        ctx.blobs
            .put(&shard_result_key(audit, &key, attempt), bytes.into())
            .await
            .unwrap();
        ctx.db
            .record_shard(audit, attempt, key, &result)
            .await
            .unwrap();
    }
    pass(&ctx).await.unwrap();
    let failed = ctx.db.audit_by_id(audit).await.unwrap();
    assert_eq!(failed.status, AuditStatus::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("more than the fan-in merges at once")
            && error.contains("--max-fanin-bytes"),
        "{error}"
    );
    ctx.tasks.delete().await.unwrap();
    ctx.events.delete().await.unwrap();
}
