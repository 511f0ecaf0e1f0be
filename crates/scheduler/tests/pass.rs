//! Scheduler passes against the real PostgreSQL (a database per test) and Redis (streams per
//! test), with a stand-in worker that takes tasks and goes silent: retries with backoff, then
//! the dead letter that fails the audit with its reason; and re-enqueueing after Redis lost
//! its streams.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use neurodiff_protocol::{
    AnalysisKind, AuditSpec, Envelope, ShardKey, Target, Task, WeightOptions,
};
use neurodiff_scheduler::service::{pass, SchedulerContext, SchedulerSettings};
use neurodiff_store::{Blobs, Db, Queue};
use sqlx::PgPool;

async fn context(pool: PgPool, max_deliveries: u32) -> SchedulerContext {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("neurodiff-test:{}", uuid::Uuid::new_v4());
    SchedulerContext {
        db: Db { pool },
        tasks: Queue::connect(&url, &format!("{prefix}:tasks"), 100)
            .await
            .unwrap(),
        events: Queue::connect(&url, &format!("{prefix}:events"), 100)
            .await
            .unwrap(),
        blobs: Blobs::from_url("memory://").unwrap(),
        settings: SchedulerSettings {
            name: "scheduler".into(),
            poll: Duration::from_millis(50),
            lease_timeout: Duration::from_millis(150),
            max_deliveries,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(40),
        },
    }
}

async fn planned_audit(ctx: &SchedulerContext) -> uuid::Uuid {
    let team = ctx.db.ensure_team("t").await.unwrap();
    let spec = AuditSpec {
        base: "b".into(),
        target: Target::Checkpoint {
            reference: "f".into(),
        },
        analyses: vec![AnalysisKind::Weights],
        layers: None,
        weights: WeightOptions::default(),
    };
    let (audit, _) = ctx.db.insert_audit(&team, &spec, None).await.unwrap();
    audit.id
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

    // Second silence: the limit is reached, the task is dead-lettered and the audit fails.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pass(&ctx).await.unwrap().dead, 1);
    assert_eq!(ctx.tasks.dead_letters().await.unwrap(), 1);
    let status = ctx.db.audit_status(audit).await.unwrap();
    let row = ctx.db.audit_by_id(audit).await.unwrap();
    assert_eq!(status, "failed");
    let reason = row.error.unwrap();
    assert!(
        reason.contains("layer-0003") && reason.contains("dead-lettered"),
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
    let mut keys = Vec::new();
    while let Some(d) = ctx.tasks.read::<Envelope>("w", 50).await.unwrap() {
        if let Task::Shard { spec, .. } = d.task.task {
            keys.push(spec.shard);
        }
    }
    keys.sort();
    assert_eq!(keys, [ShardKey::Layer(0), ShardKey::NonLayer]);
    ctx.tasks.delete().await.unwrap();
    ctx.events.delete().await.unwrap();
}
