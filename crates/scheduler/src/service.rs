//! The scheduler process. PostgreSQL is the record of truth and Redis only carries work, so each
//! pass reconciles the two: it enqueues audits and shards that are stored but not on the queue
//! (new ones, or all unfinished work after Redis lost its streams), moves due retries back onto
//! the stream, reclaims tasks whose worker stopped renewing its lease (retry with exponential
//! backoff, or dead-letter after the limit, failing the audit with the reason), and fans in
//! audits whose shards are all done. Wake-up events make a pass start at once; without them it
//! runs every `poll` anyway.
use std::time::Duration;

use neurodiff_protocol::{Envelope, ShardKey, ShardSpec, Task};
use neurodiff_store::now_ms;
use tokio::sync::watch;

use crate::context::{SchedulerContext, SchedulerSettings};
use crate::fanin::{finish, FanInError};

/// A fan-in that did not finish (its scheduler died, or storage failed) is retried after this.
const FAN_IN_RETRY_S: f64 = 60.0;

/// What one pass did (tests and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub requeued_after_loss: u64,
    pub planned: usize,
    pub enqueued: usize,
    pub promoted: usize,
    pub retried: usize,
    pub dead: usize,
    pub finished: usize,
}

pub async fn run(ctx: SchedulerContext, mut shutdown: watch::Receiver<bool>) {
    let scans = tokio::spawn(crate::scans::run(ctx.clone(), shutdown.clone()));
    let webhooks = tokio::spawn(crate::webhooks::run(ctx.clone(), shutdown.clone()));
    let events = match ctx.events.reader().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "no event reader; passes run every poll interval");
            ctx.events.clone()
        }
    };
    let mut last_reap = std::time::Instant::now();
    while !*shutdown.borrow() {
        if last_reap.elapsed() >= ctx.settings.reap_every {
            last_reap = std::time::Instant::now();
            match crate::reaper::reap(&ctx).await {
                Ok(0) => {}
                Ok(lost) => tracing::warn!(lost, "reaper re-enqueued lost work"),
                Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
            }
        }
        match pass(&ctx).await {
            Ok(p) if p != Pass::default() => tracing::info!(?p, "scheduler pass"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "scheduler pass failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let wait_ms = ctx.settings.poll.as_millis() as u64;
        tokio::select! {
            event = events.read::<serde_json::Value>(&ctx.settings.name, wait_ms) => {
                if let Ok(Some(e)) = event {
                    if let Err(err) = events.ack(&e.id).await {
                        tracing::debug!(error = %err, "cannot ack a wake-up event");
                    }
                }
            }
            _ = shutdown.changed() => {}
        }
    }
    let _ = tokio::join!(scans, webhooks);
}

fn backoff(settings: &SchedulerSettings, retries: u32) -> Duration {
    let factor = 1u32 << retries.saturating_sub(1).min(16);
    (settings.backoff_base * factor).min(settings.backoff_max)
}

/// One reconciliation pass: the queue recovered if it was lost, new work enqueued, expired
/// leases retried or dead-lettered, finished audits fanned in.
pub async fn pass(ctx: &SchedulerContext) -> Result<Pass, neurodiff_store::StoreError> {
    let mut p = Pass::default();
    if ctx.tasks.is_new_epoch().await? {
        ctx.tasks.ensure_group().await?;
        p.requeued_after_loss = ctx.db.requeue_unfinished().await?;
        if p.requeued_after_loss > 0 {
            tracing::warn!(
                rows = p.requeued_after_loss,
                "the queue is new or lost its contents; unfinished work enqueued again"
            );
        }
    }
    enqueue(ctx, &mut p).await?;
    p.promoted = ctx.tasks.promote_due(now_ms()).await?;
    reclaim(ctx, &mut p).await?;
    fan_in(ctx, &mut p).await?;
    Ok(p)
}

/// Puts the audits to plan and the shards to run on the queue; fails the audits whose shard
/// rows this build cannot read.
async fn enqueue(ctx: &SchedulerContext, p: &mut Pass) -> Result<(), neurodiff_store::StoreError> {
    for audit in ctx.db.audits_to_plan(100).await? {
        ctx.tasks
            .enqueue(&Envelope {
                task: Task::Plan { audit },
                retries: 0,
                deferred_since_ms: 0,
            })
            .await?;
        ctx.db.mark_enqueued(audit).await?;
        p.planned += 1;
    }
    let (pending, unreadable) = ctx.db.shards_to_enqueue(1000).await?;
    for u in unreadable {
        tracing::error!(audit = %u.audit, shard = %u.shard_key, reason = %u.reason, "unreadable shard");
        let reason = format!("shard {}: {}", u.shard_key, u.reason);
        ctx.db
            .fail_audit(u.audit, Some(&u.shard_key), &reason)
            .await?;
    }
    for s in pending {
        let task = Task::Shard {
            audit: s.audit,
            spec: Box::new(ShardSpec::of(&s.spec, s.shard_key)),
        };
        let envelope = Envelope {
            task,
            retries: 0,
            deferred_since_ms: 0,
        };
        ctx.tasks.enqueue(&envelope).await?;
        ctx.db.mark_shard_enqueued(s.audit, s.shard_key).await?;
        p.enqueued += 1;
    }
    Ok(())
}

/// Takes over the tasks whose worker stopped renewing its lease: each is retried after a
/// backoff, or dead-lettered (failing its audit) once handed out too often.
async fn reclaim(ctx: &SchedulerContext, p: &mut Pass) -> Result<(), neurodiff_store::StoreError> {
    let lease_ms = ctx.settings.lease_timeout.as_millis() as u64;
    let reclaimed = ctx
        .tasks
        .reclaim::<Envelope>(&ctx.settings.name, lease_ms, 100)
        .await?;
    for d in reclaimed.retry {
        let env = &d.task;
        let handed_out = env.retries + 1;
        if handed_out >= ctx.settings.max_deliveries {
            dead_letter(ctx, &d.id, env, handed_out).await?;
            p.dead += 1;
        } else {
            let wait = backoff(&ctx.settings, handed_out);
            let retry = Envelope {
                task: env.task.clone(),
                retries: handed_out,
                deferred_since_ms: env.deferred_since_ms,
            };
            ctx.tasks
                .retry_later(&d.id, &retry, now_ms() + wait.as_millis() as u64)
                .await?;
            tracing::info!(audit = %env.task.audit(), task = %env.task.label(), retry = handed_out, wait_ms = wait.as_millis() as u64, "lease expired; retry scheduled");
            p.retried += 1;
        }
    }
    for d in reclaimed.dead {
        let reason = format!(
            "{}: delivered {} times; dead-lettered",
            d.task.task.label(),
            d.deliveries
        );
        ctx.db
            .fail_audit(
                d.task.task.audit(),
                stored_key(&d.task.task).as_deref(),
                &reason,
            )
            .await?;
        p.dead += 1;
    }
    Ok(())
}

/// Dead-letters a task handed out `handed_out` times, failing its audit with the shard's last
/// error when it has one.
async fn dead_letter(
    ctx: &SchedulerContext,
    id: &str,
    env: &Envelope,
    handed_out: u32,
) -> Result<(), neurodiff_store::StoreError> {
    let last = match shard_of(&env.task) {
        Some(key) => ctx.db.shard_error(env.task.audit(), &key).await?,
        None => None,
    };
    let reason = match last {
        Some(e) => format!(
            "{} was handed to workers {handed_out} times and never finished; the last error: {e}; dead-lettered",
            env.task.label()
        ),
        None => format!(
            "{} was handed to workers {handed_out} times and never finished (each time its worker stopped renewing its lease); dead-lettered",
            env.task.label()
        ),
    };
    ctx.tasks.dead_letter(id, env, &reason).await?;
    ctx.db
        .fail_audit(env.task.audit(), stored_key(&env.task).as_deref(), &reason)
        .await?;
    tracing::warn!(audit = %env.task.audit(), task = %env.task.label(), "dead-lettered");
    Ok(())
}

/// Fans in the audits whose shards are all done (a failed fan-in of a bad result fails its
/// audit; one the store interrupted is retried).
async fn fan_in(ctx: &SchedulerContext, p: &mut Pass) -> Result<(), neurodiff_store::StoreError> {
    for f in ctx.db.claim_finishing(FAN_IN_RETRY_S).await? {
        let id = f.audit.id;
        match finish(ctx, f).await {
            Ok(true) => p.finished += 1,
            Ok(false) => {}
            Err(FanInError::Invalid(e)) => {
                tracing::error!(audit = %id, error = %e, "fan-in failed");
                ctx.db.fail_audit(id, None, &format!("fan-in: {e}")).await?;
            }
            Err(FanInError::Store(e)) => {
                tracing::warn!(audit = %id, error = %e, "fan-in will be retried");
            }
        }
    }
    Ok(())
}

fn shard_of(task: &Task) -> Option<ShardKey> {
    match task {
        Task::Plan { .. } => None,
        Task::Shard { spec, .. } => Some(spec.shard),
    }
}

/// The task's shard key as the shards table stores it (`fail_audit` also fails rows whose key
/// this build cannot parse, so it takes the stored text).
fn stored_key(task: &Task) -> Option<String> {
    shard_of(task).map(|k| k.to_string())
}
