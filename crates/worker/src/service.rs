//! The worker process: reads tasks from the work stream, renews its lease while it runs them,
//! writes shard results fenced by their attempt number, uploads each shard's result under a
//! deterministic key, then acknowledges. Every model is opened under the reference policy and
//! checked against the content planning recorded. Bad input fails the audit with the reason
//! (naming references as submitted, never worker-local paths); infrastructure and resource
//! errors leave the task unacknowledged, so the scheduler retries it. A task that runs past its
//! deadline fails its audit; on shutdown a task is handed back after the grace period, whatever
//! it is doing.
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use neurodiff_core::CoreError;
use neurodiff_protocol::limits::MAX_SHARD_OUTPUT_BYTES;
use neurodiff_protocol::{
    Envelope, Event, PlanRecord, ShardKey, ShardSpec, Target, Task, EVENTS_MAX_LEN,
};
use neurodiff_store::{shard_result_key, Blobs, Db, Delivery, Queue, StoreError};
use tch::Device;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::confine::{redact, Confined, Enforcer};
use crate::lease::{Interrupt, Lease};
use crate::record::{verify, HashCache};
use crate::{Sources, WorkerError};

/// The worker's settings (the binary fills them from flags and the environment).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// This process's consumer name on the stream; slots append `-{i}`.
    pub name: String,
    pub device: Device,
    pub concurrency: usize,
    /// How often the lease is renewed; the scheduler reclaims after several missed renewals.
    pub renew_every: Duration,
    /// How long a shutting-down worker lets its task run before handing it back.
    pub grace: Duration,
    /// The reference policy, the limits, the hub cache and where `s3://` checkpoints are copied.
    pub enforcer: Arc<Enforcer>,
    /// Fault injection: a pause after each tensor (zero in production).
    pub slow_tensor: Duration,
    /// Fault injection: a pause inside planning that nothing interrupts, as a long hash of a
    /// slow disk would be (zero in production).
    pub slow_plan: Duration,
}

/// What a worker talks to.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    pub db: Db,
    pub tasks: Queue,
    pub events: Queue,
    pub blobs: Blobs,
    pub settings: WorkerSettings,
    /// File hashes this process computed, so shards verify content without rehashing.
    pub hashes: Arc<HashCache>,
}

impl WorkerContext {
    pub fn new(
        db: Db,
        tasks: Queue,
        events: Queue,
        blobs: Blobs,
        settings: WorkerSettings,
    ) -> Self {
        WorkerContext {
            db,
            tasks,
            events,
            blobs,
            settings,
            hashes: Arc::new(HashCache::default()),
        }
    }
}

/// What happens to the stream entry after a task ran.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done (or nothing left to do): acknowledge.
    Ack,
    /// Interrupted by shutdown: put it back for another worker now.
    HandBack,
}

/// An error worth retrying elsewhere: the entry stays unacknowledged and is reclaimed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Transient(pub(crate) String);

impl From<StoreError> for Transient {
    fn from(e: StoreError) -> Self {
        Transient(e.to_string())
    }
}

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
    let work = async {
        match task {
            Task::Plan { audit } => crate::plan::plan(ctx, *audit, &lease).await,
            Task::Shard { audit, spec } => {
                shard(ctx, consumer, &delivery.id, *audit, spec, &lease, &attempt).await
            }
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

/// Runs blocking libtorch work off the async threads, inside the caller's tracing span.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Transient> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Transient(format!("analysis thread: {e}")))
}

/// A task for an audit this database does not hold belongs to another deployment sharing the
/// Redis stream: left unacknowledged for its own workers, never dropped.
pub(crate) fn foreign(audit: Uuid) -> Transient {
    Transient(format!(
        "audit {audit} is not in this worker's database: another deployment shares this Redis \
         stream (give each its own NEURODIFF_QUEUE_PREFIX)"
    ))
}

/// Fails an audit that is still waiting for its plan (a stale planner fails nothing).
pub(crate) async fn fail_planning(
    ctx: &WorkerContext,
    audit: Uuid,
    reason: &str,
) -> Result<Outcome, Transient> {
    tracing::warn!(reason, "planning failed");
    ctx.db.fail_unplanned(audit, reason).await?;
    Ok(Outcome::Ack)
}

/// Fails the audit because of its shard, if `attempt` is still the shard's current one.
async fn fail_shard(
    ctx: &WorkerContext,
    audit: Uuid,
    shard: &ShardKey,
    attempt: i32,
    reason: &str,
) -> Result<Outcome, Transient> {
    if ctx.db.fail_shard(audit, shard, attempt, reason).await? {
        tracing::warn!(reason, "audit failed");
    } else {
        tracing::warn!(
            reason,
            attempt,
            "a newer attempt owns this shard; not failing the audit"
        );
    }
    Ok(Outcome::Ack)
}

pub(crate) async fn wake(ctx: &WorkerContext, event: Event) {
    // Only a hint: the scheduler finds the same work in the database on its next pass.
    if let Err(e) = ctx.events.notify(&event, EVENTS_MAX_LEN).await {
        tracing::debug!(error = %e, "cannot wake the scheduler");
    }
}

#[allow(clippy::too_many_arguments)]
async fn shard(
    ctx: &WorkerContext,
    consumer: &str,
    entry: &str,
    audit: Uuid,
    spec: &ShardSpec,
    lease: &Lease,
    attempt_slot: &AtomicI32,
) -> Result<Outcome, Transient> {
    let key = spec.shard;
    // Stream entry ids start with the millisecond they were added at.
    let waited = entry
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .map(|added| neurodiff_store::now_ms().saturating_sub(added) as f64);
    let attempt = match ctx
        .db
        .start_attempt(audit, spec.shard, consumer, waited)
        .await
    {
        Ok(a) => a,
        // Cancelled, failed or already done: nothing to run.
        Err(StoreError::NotFound { .. }) => {
            return match ctx.db.audit_status(audit).await {
                Ok(_) => Ok(Outcome::Ack),
                Err(StoreError::NotFound { .. }) => Err(foreign(audit)),
                Err(e) => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    attempt_slot.store(attempt, Ordering::SeqCst);
    tracing::info!(attempt, "shard started");
    let team = ctx.db.team_of(audit).await?;
    // A plan record that does not parse must stop the shard: without it the pinned commits
    // and content hashes would go unchecked.
    let planned: Option<PlanRecord> = match ctx.db.audit_models(audit).await? {
        None => None,
        Some(m) => match serde_json::from_value(m) {
            Ok(p) => Some(p),
            Err(e) => {
                let reason = format!("shard {key}: the audit's plan record is unreadable: {e}");
                return fail_shard(ctx, audit, &key, attempt, &reason).await;
            }
        },
    };
    let failed = |e: WorkerError, pair: &[&Confined]| {
        redact(&e.to_string(), pair, &ctx.settings.enforcer.hidden())
    };
    // Hub ids are opened at the commit planning pinned, whatever the branch says now.
    let base_ref = planned
        .as_ref()
        .filter(|p| p.base.resolved != p.base.reference)
        .map_or(spec.base.clone(), |p| p.base.resolved.clone());
    let target_ref = planned
        .as_ref()
        .filter(|p| p.finetuned.resolved != p.finetuned.reference)
        .map_or(spec.target.reference().to_string(), |p| {
            p.finetuned.resolved.clone()
        });
    let pair = match open_pair(
        ctx,
        &team,
        (&spec.base, &base_ref),
        &spec.target,
        &target_ref,
    )
    .await
    {
        Ok(p) => p,
        Err(WorkerError::Storage(e)) => return Err(Transient(e)),
        Err(e) => {
            let reason = format!("shard {key}: {}", failed(e, &[]));
            return fail_shard(ctx, audit, &key, attempt, &reason).await;
        }
    };
    let corpus = if spec.shard.analysis().needs_corpus() {
        let recorded = planned.as_ref().and_then(|p| p.corpus.as_ref());
        // The samples planning read (an audit planned by an older version records fewer than
        // the shard spec now asks for; its shards read what it planned with).
        let opts = neurodiff_protocol::CorpusOptions {
            max_samples: recorded.map_or(spec.corpus.max_samples, |p| p.samples_used.max(1)),
            ..spec.corpus.clone()
        };
        let read = ctx.settings.enforcer.read_corpus(&team, &opts).await;
        let checked = read.and_then(|c| match recorded {
            Some(p) => crate::corpus::verify(p, &c.record).map(|()| c),
            None => Ok(c),
        });
        match checked {
            Ok(c) => Some(c),
            Err(WorkerError::Storage(e)) => return Err(Transient(e)),
            Err(e) => {
                let reason = format!("shard {key}: {}", failed(e, &[&pair.0, &pair.1]));
                return fail_shard(ctx, audit, &key, attempt, &reason).await;
            }
        }
    } else {
        None
    };
    let (base, target) = (pair.0.clone(), pair.1.clone());
    let (spec_b, stop_b, device) = (spec.clone(), lease.stop.clone(), ctx.settings.device);
    let slow_tensor = ctx.settings.slow_tensor;
    let hashes = ctx.hashes.clone();
    let store = crate::exec::store::BlobStore::new(
        ctx.blobs.clone(),
        &team,
        tokio::runtime::Handle::current(),
    );
    let result = blocking(move || {
        let sources = Sources::open_confined(&base, &spec_b.target, &target)?;
        if let Some(p) = &planned {
            let (base_files, target_files) = sources.contents()?;
            verify(&p.base, &base_files, &hashes, &stop_b)?;
            verify(&p.finetuned, &target_files, &hashes, &stop_b)?;
            // Verified: what shards keep is keyed to these bytes.
            let _ = sources.content_id.set(format!(
                "{}+{}",
                p.base.content_hash, p.finetuned.content_hash
            ));
        }
        let slow = slow_tensor;
        crate::exec::run_shard(
            &sources,
            &spec_b,
            corpus.as_ref(),
            &store,
            device,
            &mut |_| {
                if !slow.is_zero() {
                    std::thread::sleep(slow);
                }
                !stop_b.load(Ordering::SeqCst)
            },
        )
    })
    .await?;
    let result = match result {
        Ok(r) => r,
        // Cancelled (a hand-back or deadline is answered by `handle` before this is reached).
        Err(WorkerError::Core(CoreError::Interrupted)) => {
            tracing::info!("audit cancelled; shard dropped");
            return Ok(Outcome::Ack);
        }
        Err(e) if e.is_resource_exhaustion() => {
            let reason = format!("shard {key}: {}", failed(e, &[&pair.0, &pair.1]));
            // Kept on the shard, so that an audit dead-lettered after many such retries says
            // why (best effort: the retry does not depend on it).
            if let Err(note) = ctx.db.note_shard_error(audit, &key, &reason).await {
                tracing::debug!(error = %note, "cannot note the shard's error");
            }
            return Err(Transient(format!("{reason} (resources; retried)")));
        }
        Err(WorkerError::Storage(e)) => return Err(Transient(e)),
        Err(e) => {
            let reason = format!("shard {key}: {}", failed(e, &[&pair.0, &pair.1]));
            return fail_shard(ctx, audit, &key, attempt, &reason).await;
        }
    };
    // Keyed by attempt, so a stale worker's upload never replaces the result the fan-in reads.
    let json = serde_json::to_vec(&result).map_err(|e| Transient(e.to_string()))?;
    if json.len() as u64 > MAX_SHARD_OUTPUT_BYTES {
        let reason = format!(
            "shard {key}: its output is {} bytes, more than a shard may return ({MAX_SHARD_OUTPUT_BYTES} bytes)",
            json.len()
        );
        return fail_shard(ctx, audit, &key, attempt, &reason).await;
    }
    ctx.blobs
        .put(&shard_result_key(audit, &key, attempt), Bytes::from(json))
        .await?;
    match ctx
        .db
        .record_shard(audit, attempt, spec.shard, &result)
        .await
    {
        Ok(fan_in) => {
            tracing::info!(
                done = fan_in.shards_done,
                total = fan_in.shards_total,
                elapsed_s = result.elapsed_s(),
                "shard recorded"
            );
            if fan_in.complete() {
                wake(ctx, Event::ShardsDone { audit }).await;
            }
            Ok(Outcome::Ack)
        }
        Err(e @ StoreError::StaleAttempt { .. }) => {
            tracing::warn!(error = %e, "late write refused");
            Ok(Outcome::Ack)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens one side of an audit under the policy: `to_open` (the submitted reference, or the
/// form planning pinned), with messages naming `submitted`.
pub(crate) async fn open_one(
    ctx: &WorkerContext,
    team: &str,
    field: &str,
    submitted: &str,
    to_open: &str,
) -> crate::Result<Confined> {
    let mut c = ctx.settings.enforcer.open(team, field, to_open).await?;
    c.reference = submitted.to_string();
    Ok(c)
}

/// Both sides of an audit, opened under the policy.
pub(crate) async fn open_pair(
    ctx: &WorkerContext,
    team: &str,
    (base, base_open): (&str, &str),
    target: &Target,
    target_open: &str,
) -> crate::Result<(Confined, Confined)> {
    let field = match target {
        Target::Checkpoint { .. } => "finetuned",
        Target::Adapter { .. } => "adapter",
    };
    let b = open_one(ctx, team, "base", base, base_open).await?;
    let t = open_one(ctx, team, field, target.reference(), target_open).await?;
    Ok((b, t))
}
