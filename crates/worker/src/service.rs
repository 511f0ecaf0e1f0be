//! The worker process: reads tasks from the work stream, renews its lease while it runs them,
//! writes shard results fenced by their attempt number, uploads each shard's result under a
//! deterministic key, then acknowledges. Analysis errors fail the audit with the message;
//! infrastructure errors leave the task unacknowledged, so the scheduler retries it.
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use neurodiff_core::reference::HubOptions;
use neurodiff_core::CoreError;
use neurodiff_protocol::{
    plan_shards, Envelope, Event, PlanRecord, ShardKey, ShardSpec, Task, EVENTS_MAX_LEN,
};
use neurodiff_store::{shard_result_key, Blobs, Db, Delivery, Queue, StoreError};
use tch::Device;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::lease::Lease;
use crate::materialize::materialize_pair;
use crate::record::model_record;
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
    /// How long a shutting-down worker lets its shard finish before handing it back.
    pub grace: Duration,
    /// Where `s3://` checkpoints are copied.
    pub cache_dir: PathBuf,
    /// Fault injection: a pause after each tensor (zero in production).
    pub slow_tensor: Duration,
}

/// What a worker talks to.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    pub db: Db,
    pub tasks: Queue,
    pub events: Queue,
    pub blobs: Blobs,
    pub settings: WorkerSettings,
}

/// What happens to the stream entry after a task ran.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Done (or nothing left to do): acknowledge.
    Ack,
    /// Interrupted by shutdown: put it back for another worker now.
    HandBack,
}

/// An error worth retrying elsewhere: the entry stays unacknowledged and is reclaimed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transient(String);

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
    // Held while the task runs (hashing a large checkpoint while planning takes a while too);
    // dropping it stops the renewals.
    let lease = Lease::start(ctx, consumer, &delivery.id, task.audit(), shutdown);
    match task {
        Task::Plan { audit } => plan(ctx, *audit).await,
        Task::Shard { audit, spec } => {
            shard(ctx, consumer, &delivery.id, *audit, spec, &lease).await
        }
    }
}

/// Runs blocking libtorch work off the async threads, inside the caller's tracing span.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Transient> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Transient(format!("analysis thread: {e}")))
}

/// A task for an audit this database does not hold belongs to another deployment sharing the
/// Redis stream: left unacknowledged for its own workers, never dropped.
fn foreign(audit: Uuid) -> Transient {
    Transient(format!(
        "audit {audit} is not in this worker's database: another deployment shares this Redis \
         stream (give each its own NEURODIFF_QUEUE_PREFIX)"
    ))
}

async fn plan(ctx: &WorkerContext, audit: Uuid) -> Result<Outcome, Transient> {
    let row = match ctx.db.audit_by_id(audit).await {
        Ok(row) => row,
        Err(StoreError::NotFound { .. }) => return Err(foreign(audit)),
        Err(e) => return Err(e.into()),
    };
    if row.status != "queued" {
        return Ok(Outcome::Ack);
    }
    let spec = row.spec;
    let opened = materialize_pair(&spec.base, &spec.target, &ctx.settings.cache_dir).await;
    let (base_local, target_local) = match opened {
        Ok(paths) => paths,
        Err(WorkerError::Storage(e)) => return Err(Transient(e)),
        Err(e) => return fail(ctx, audit, None, &format!("planning: {e}")).await,
    };
    let spec_b = spec.clone();
    let planned = blocking(move || {
        let sources = Sources::open(&base_local, &target_local, &HubOptions::from_env())?;
        let n_layers = sources.n_layers()?;
        let shards = plan_shards(&spec_b, n_layers).map_err(|e| WorkerError::Io(e.to_string()))?;
        let (base_files, target_files) = sources.record_files();
        let record = PlanRecord {
            n_layers,
            base: model_record(&spec_b.base, &sources.base_dir, &base_files)?,
            finetuned: model_record(
                spec_b.target.reference(),
                &sources.target_dir,
                &target_files,
            )?,
        };
        Ok::<_, WorkerError>((shards, record))
    })
    .await?;
    let (shards, record) = match planned {
        Ok(p) => p,
        Err(e) => return fail(ctx, audit, None, &format!("planning: {e}")).await,
    };
    let keys: Vec<ShardKey> = shards.iter().map(|s| s.shard).collect();
    let record = serde_json::to_value(&record).map_err(|e| Transient(e.to_string()))?;
    ctx.db.plan_shards(audit, &keys, Some(&record)).await?;
    tracing::info!(shards = keys.len(), "planned");
    wake(ctx, Event::Planned { audit }).await;
    Ok(Outcome::Ack)
}

async fn fail(
    ctx: &WorkerContext,
    audit: Uuid,
    shard: Option<&str>,
    reason: &str,
) -> Result<Outcome, Transient> {
    tracing::warn!(reason, "audit failed");
    ctx.db.fail_audit(audit, shard, reason).await?;
    Ok(Outcome::Ack)
}

async fn wake(ctx: &WorkerContext, event: Event) {
    // Only a hint: the scheduler finds the same work in the database on its next pass.
    if let Err(e) = ctx.events.notify(&event, EVENTS_MAX_LEN).await {
        tracing::debug!(error = %e, "cannot wake the scheduler");
    }
}

async fn shard(
    ctx: &WorkerContext,
    consumer: &str,
    entry: &str,
    audit: Uuid,
    spec: &ShardSpec,
    lease: &Lease,
) -> Result<Outcome, Transient> {
    let key = spec.shard.to_string();
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
    tracing::info!(attempt, "shard started");
    let resolved = materialize_pair(&spec.base, &spec.target, &ctx.settings.cache_dir).await;
    let result = match resolved {
        Err(e) => Err(e),
        Ok((base, target)) => {
            let (spec_b, stop_b, device) = (spec.clone(), lease.stop.clone(), ctx.settings.device);
            let slow_tensor = ctx.settings.slow_tensor;
            blocking(move || {
                let sources = Sources::open(&base, &target, &HubOptions::from_env())?;
                let slow = slow_tensor;
                sources.execute(&spec_b, device, &mut |_| {
                    if !slow.is_zero() {
                        std::thread::sleep(slow);
                    }
                    !stop_b.load(Ordering::SeqCst)
                })
            })
            .await?
        }
    };
    let result = match result {
        Ok(r) => r,
        Err(WorkerError::Core(CoreError::Interrupted)) => {
            return Ok(if lease.handing_back() {
                Outcome::HandBack
            } else {
                tracing::info!("audit cancelled; shard dropped");
                Outcome::Ack
            });
        }
        Err(WorkerError::Storage(e)) => return Err(Transient(e)),
        Err(e) => return fail(ctx, audit, Some(&key), &format!("shard {key}: {e}")).await,
    };
    // Keyed by attempt, so a stale worker's upload never replaces the result the fan-in reads.
    let json = serde_json::to_vec(&result).map_err(|e| Transient(e.to_string()))?;
    ctx.blobs
        .put(&shard_result_key(audit, &key, attempt), Bytes::from(json))
        .await?;
    match ctx.db.record_shard(audit, attempt, &result).await {
        Ok(fan_in) => {
            tracing::info!(
                done = fan_in.shards_done,
                total = fan_in.shards_total,
                elapsed_s = result.elapsed_s,
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
