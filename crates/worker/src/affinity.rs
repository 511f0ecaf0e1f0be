//! Warm workers first: a shard of a corpus analysis goes preferably to a worker whose model
//! cache already holds its pair. A worker that finishes such a shard announces that it holds
//! the pair (by the plan's content hashes) for a while; a worker that receives a shard of a
//! pair it does not hold, while another live worker announced it, leaves the shard on the
//! delayed set for a moment instead of loading the models itself, until the affinity wait has
//! passed since it was first left, after which any worker runs it (so no shard waits on a busy
//! or dead worker for longer). A worker announces a pair only while its cache holds it.
use std::time::Duration;

use neurodiff_protocol::{Envelope, PlanRecord, ShardSpec};
use neurodiff_store::now_ms;
use uuid::Uuid;

use crate::context::{Transient, WorkerContext};

/// How long a deferred shard waits on the delayed set before it is handed out again.
pub(crate) const STEP: Duration = Duration::from_millis(250);
/// How long an announcement that a worker holds a pair warm lasts (renewed by each shard).
const WARM_FOR: Duration = Duration::from_secs(600);

/// The pair's key in the announcements, and its identity in the model cache, from the plan
/// record (`None` for an audit without one, or a shard that loads no models).
pub(crate) async fn pair_of(
    ctx: &WorkerContext,
    audit: Uuid,
    spec: &ShardSpec,
) -> Result<Option<(String, String)>, Transient> {
    if !spec.shard.analysis().needs_corpus() {
        return Ok(None);
    }
    let Some(record) = ctx.db.audit_models(audit).await? else {
        return Ok(None);
    };
    let Ok(planned) = serde_json::from_value::<PlanRecord>(record) else {
        return Ok(None);
    };
    Ok(Some(pair_key(&planned)))
}

/// The pair's key in the announcements and its identity in the model cache, from its plan
/// record's content hashes.
fn pair_key(planned: &PlanRecord) -> (String, String) {
    let content = format!(
        "{}+{}",
        planned.base.content_hash, planned.finetuned.content_hash
    );
    let key = neurodiff_exec::store::sha256_hex(content.as_bytes());
    (key, format!("content:{content}"))
}

/// The envelope to leave on the delayed set instead of running `env`'s shard here, or `None`
/// to run it: this worker holds the pair, no other worker announced it, or the shard has
/// waited its affinity wait.
pub(crate) async fn defer(
    ctx: &WorkerContext,
    audit: Uuid,
    spec: &ShardSpec,
    env: &Envelope,
) -> Result<Option<Envelope>, Transient> {
    let (wait, now) = (ctx.settings.affinity_wait.as_millis() as u64, now_ms());
    if wait == 0 || (env.deferred_since_ms > 0 && now.saturating_sub(env.deferred_since_ms) >= wait)
    {
        return Ok(None);
    }
    let Some((key, identity)) = pair_of(ctx, audit, spec).await? else {
        return Ok(None);
    };
    if ctx.models.holds(&identity) {
        return Ok(None);
    }
    let holders = ctx.tasks.warm_holders(&key, now).await?;
    if holders.iter().all(|h| h == &ctx.settings.name) {
        return Ok(None);
    }
    let since = if env.deferred_since_ms > 0 {
        env.deferred_since_ms
    } else {
        now
    };
    tracing::info!(warm = ?holders, waited_ms = now - since, "left for a worker holding the models");
    Ok(Some(Envelope {
        deferred_since_ms: since,
        ..env.clone()
    }))
}

/// Announces that this worker holds the pair its shard ran (`planned`, the audit's plan
/// record) warm, best effort; only a pair the cache kept (not an adapter's, one over the
/// bound, or a failed shard's).
pub(crate) async fn announce(ctx: &WorkerContext, planned: &PlanRecord) {
    if ctx.settings.affinity_wait.is_zero() || ctx.settings.model_cache_bytes == 0 {
        return;
    }
    let (key, identity) = pair_key(planned);
    if !ctx.models.holds(&identity) {
        return;
    }
    let until = now_ms() + WARM_FOR.as_millis() as u64;
    if let Err(e) = ctx
        .tasks
        .announce_warm(&key, &ctx.settings.name, until)
        .await
    {
        tracing::debug!(error = %e, "cannot announce the warm models");
    }
}
