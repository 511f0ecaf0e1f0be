//! What a worker's tasks share: its settings and connections, how a task ends (acknowledged,
//! handed back, or left for a retry), and the steps planning and shards both take (opening the
//! pair under the policy, failing an audit, waking the scheduler).
use std::sync::Arc;
use std::time::Duration;

use neurodiff_exec::record::HashCache;
use neurodiff_exec::ModelCache;
use neurodiff_protocol::{Event, ShardKey, Target, EVENTS_MAX_LEN};
use neurodiff_store::{Blobs, Db, Queue, StoreError};
use tch::Device;
use uuid::Uuid;

use crate::confine::{Confined, Enforcer};

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
    /// Bytes of loaded models kept between shards (0: none).
    pub model_cache_bytes: u64,
    /// The layer-range budget planning applies when the request names none.
    pub range_bytes: Option<u64>,
    /// How long a shard may wait for a worker that holds its models warm before this one
    /// loads them itself (zero: no affinity).
    pub affinity_wait: Duration,
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
    /// Models loaded by earlier shards, by content (a warm worker).
    pub models: Arc<ModelCache>,
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
            models: Arc::new(ModelCache::new(settings.model_cache_bytes)),
            settings,
            hashes: Arc::new(HashCache::default()),
        }
    }
}

/// What happens to the stream entry after a task ran.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Done (or nothing left to do): acknowledge.
    Ack,
    /// Interrupted by shutdown: put it back for another worker now.
    HandBack,
    /// Left for a worker that holds its models: on the delayed set, for a moment.
    Defer(Box<neurodiff_protocol::Envelope>),
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
pub(crate) async fn fail_shard(
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

/// Opens one side of an audit under the policy: `to_open` (the submitted reference, or the
/// form planning pinned), with messages naming `submitted`.
pub(crate) async fn open_one(
    ctx: &WorkerContext,
    team: &str,
    field: &str,
    submitted: &str,
    to_open: &str,
) -> neurodiff_exec::Result<Confined> {
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
) -> neurodiff_exec::Result<(Confined, Confined)> {
    let field = match target {
        Target::Checkpoint { .. } => "finetuned",
        Target::Adapter { .. } => "adapter",
    };
    let b = open_one(ctx, team, "base", base, base_open).await?;
    let t = open_one(ctx, team, field, target.reference(), target_open).await?;
    Ok((b, t))
}
