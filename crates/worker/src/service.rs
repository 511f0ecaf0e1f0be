//! The worker process: reads tasks from the work stream, renews its lease while it runs them,
//! writes shard results fenced by their attempt number, uploads each shard's result under a
//! deterministic key, then acknowledges. Every model is opened under the reference policy and
//! checked against the content planning recorded. Bad input fails the audit with the reason
//! (naming references as submitted, never worker-local paths); infrastructure and resource
//! errors leave the task unacknowledged, so the scheduler retries it. A task that runs past its
//! deadline fails its audit; on shutdown a task is handed back after the grace period, whatever
//! it is doing.
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use neurodiff_protocol::{Envelope, Task};
use neurodiff_store::Delivery;
use tokio::sync::watch;
use tracing::Instrument;

use crate::context::{fail_planning, fail_shard, Outcome, Transient, WorkerContext};
use crate::lease::{Interrupt, Lease};
use crate::shard::Running;

/// Runs `settings.concurrency` slots until `shutdown` turns true, then lets each slot finish
/// (or hand back) its task.
pub async fn run(ctx: WorkerContext, shutdown: watch::Receiver<bool>) {
    let mut slots = Vec::new();
    for slot in 0..ctx.settings.concurrency.max(1) {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        let consumer = format!("{}-{slot}", ctx.settings.name);
        slots.push(tokio::spawn(
            async move { slot_loop(ctx, consumer, shutdown).await }
                .instrument(tracing::info_span!("slot", slot)),
        ));
    }
    for s in slots {
        if let Err(e) = s.await {
            tracing::error!(error = %e, "worker slot panicked");
        }
    }
}

async fn slot_loop(ctx: WorkerContext, consumer: String, shutdown: watch::Receiver<bool>) {
    let reader = loop {
        match ctx.tasks.reader().await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect a reader; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while !*shutdown.borrow() {
        let delivery = match reader.read::<Envelope>(&consumer, 1000).await {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the work stream; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let task = delivery.task.task.clone();
        let span = tracing::info_span!("task", audit = %task.audit(), task = %task.label(), delivery = %delivery.id);
        let outcome = handle(&ctx, &consumer, &delivery, shutdown.clone())
            .instrument(span.clone())
            .await;
        let settled = async {
            match outcome {
                Ok(Outcome::Ack) => ctx.tasks.ack(&delivery.id).await,
                Ok(Outcome::HandBack) => {
                    tracing::info!("shutting down: handing the task back");
                    ctx.tasks.hand_back(&delivery.id, &delivery.task).await
                }
                Ok(Outcome::Defer(env)) => {
                    let due = neurodiff_store::now_ms() + crate::affinity::STEP.as_millis() as u64;
                    ctx.tasks.retry_later(&delivery.id, &env, due).await
                }
                Err(Transient(e)) => {
                    tracing::warn!(error = %e, "task left for retry");
                    Ok(())
                }
            }
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = settled {
            let _entered = span.enter();
            tracing::warn!(error = %e, "cannot settle the stream entry; it will be reclaimed");
        }
    }
}

async fn handle(
    ctx: &WorkerContext,
    consumer: &str,
    delivery: &Delivery<Envelope>,
    shutdown: watch::Receiver<bool>,
) -> Result<Outcome, Transient> {
    let task = &delivery.task.task;
    if let Task::Shard { audit, spec } = task {
        if let Some(env) = crate::affinity::defer(ctx, *audit, spec, &delivery.task).await? {
            return Ok(Outcome::Defer(Box::new(env)));
        }
    }
    let limits = &ctx.settings.enforcer.limits;
    let deadline = Duration::from_secs(match task {
        Task::Plan { .. } => limits.planning_timeout_s,
        Task::Shard { .. } => limits.task_deadline_s,
    });
    // Held while the task runs (hashing a large checkpoint while planning takes a while too);
    // dropping it stops the renewals.
    let lease = Lease::start(
        ctx,
        consumer,
        &delivery.id,
        task.audit(),
        shutdown,
        deadline,
    );
    // The attempt a shard runs as, once it has one (a deadline fails only that attempt).
    let attempt = AtomicI32::new(0);
    let running = Running {
        consumer,
        entry: &delivery.id,
        lease: &lease,
        attempt: &attempt,
    };
    let work = async {
        match task {
            Task::Plan { audit } => crate::plan::plan(ctx, *audit, &lease).await,
            Task::Shard { audit, spec } => crate::shard::run(ctx, &running, *audit, spec).await,
        }
    };
    tokio::select! {
        out = work => out,
        why = lease.interrupted() => match why {
            Interrupt::HandBack => Ok(Outcome::HandBack),
            Interrupt::Deadline => {
                let reason = match task {
                    Task::Plan { .. } => format!(
                        "planning: took longer than the limit of {} s (--planning-timeout-s)",
                        deadline.as_secs()
                    ),
                    Task::Shard { spec, .. } => format!(
                        "shard {}: took longer than the limit of {} s (--task-deadline-s)",
                        spec.shard,
                        deadline.as_secs()
                    ),
                };
                match task {
                    Task::Plan { audit } => fail_planning(ctx, *audit, &reason).await,
                    Task::Shard { audit, spec } => {
                        let n = attempt.load(Ordering::SeqCst);
                        fail_shard(ctx, *audit, &spec.shard, n, &reason).await
                    }
                }
            }
        },
    }
}
