//! Running one shard task: start an attempt, open the pair (and corpus) under the policy at
//! what planning pinned, check the content planning recorded, run the executor off the async
//! threads, then upload the result under its attempt's key and record it, fenced by attempt.
use std::sync::atomic::{AtomicI32, Ordering};

use bytes::Bytes;
use neurodiff_core::CoreError;
use neurodiff_exec::corpus::CorpusText;
use neurodiff_exec::record::verify;
use neurodiff_exec::{ExecError, Sources};
use neurodiff_protocol::limits::MAX_SHARD_OUTPUT_BYTES;
use neurodiff_protocol::{Event, ModelsReady, PlanRecord, ShardKey, ShardOutput, ShardSpec};
use neurodiff_store::{shard_result_key, StoreError};
use uuid::Uuid;

use crate::blob_store::BlobStore;
use crate::confine::{open_sources, redact, Confined};
use crate::context::{
    blocking, fail_shard, foreign, open_pair, wake, Outcome, Transient, WorkerContext,
};
use crate::lease::Lease;

/// One delivery being run: who runs it, which stream entry, the lease that keeps it, and the
/// attempt it runs as once it has one (a deadline fails only that attempt).
pub(crate) struct Running<'a> {
    pub consumer: &'a str,
    pub entry: &'a str,
    pub lease: &'a Lease,
    pub attempt: &'a AtomicI32,
}

/// A started attempt of one shard of one audit, for the steps that may fail it.
struct Attempt<'a> {
    ctx: &'a WorkerContext,
    audit: Uuid,
    key: ShardKey,
    number: i32,
}

impl Attempt<'_> {
    /// Fails the audit because of this shard (if this attempt is still the shard's current
    /// one), the error's message cleared of worker-local paths.
    async fn fail(&self, e: ExecError, pair: &[&Confined]) -> Result<Outcome, Transient> {
        let reason = format!("shard {}: {}", self.key, self.redact(e, pair));
        self.fail_with(&reason).await
    }

    async fn fail_with(&self, reason: &str) -> Result<Outcome, Transient> {
        fail_shard(self.ctx, self.audit, &self.key, self.number, reason).await
    }

    fn redact(&self, e: ExecError, pair: &[&Confined]) -> String {
        redact(&e.to_string(), pair, &self.ctx.settings.enforcer.hidden())
    }
}

pub(crate) async fn run(
    ctx: &WorkerContext,
    running: &Running<'_>,
    audit: Uuid,
    spec: &ShardSpec,
) -> Result<Outcome, Transient> {
    let Some(number) = start(ctx, running, audit, spec).await? else {
        return Ok(Outcome::Ack);
    };
    let attempt = Attempt {
        ctx,
        audit,
        key: spec.shard,
        number,
    };
    let team = ctx.db.team_of(audit).await?;
    // A plan record that does not parse must stop the shard: without it the pinned commits
    // and content hashes would go unchecked.
    let planned: Option<PlanRecord> = match ctx.db.audit_models(audit).await? {
        None => None,
        Some(m) => match serde_json::from_value(m) {
            Ok(p) => Some(p),
            Err(e) => {
                let reason = format!(
                    "shard {}: the audit's plan record is unreadable: {e}",
                    spec.shard
                );
                return attempt.fail_with(&reason).await;
            }
        },
    };
    let pair = match open_planned(ctx, &team, spec, planned.as_ref()).await {
        Ok(p) => p,
        Err(ExecError::Storage(e)) => return Err(Transient(e)),
        Err(e) => return attempt.fail(e, &[]).await,
    };
    let corpus = match read_corpus(ctx, &team, spec, planned.as_ref()).await {
        Ok(c) => c,
        Err(ExecError::Storage(e)) => return Err(Transient(e)),
        Err(e) => return attempt.fail(e, &[&pair.0, &pair.1]).await,
    };
    let store = BlobStore::new(ctx.blobs.clone(), &team, tokio::runtime::Handle::current());
    let warm = planned.clone();
    let (result, ready) = execute(ctx, running.lease, spec, &pair, planned, corpus, store).await?;
    // Where the shard's time went, for the audit's per-shard record (best effort).
    if let Some(ready) = ready {
        if let Err(e) = ctx
            .db
            .note_models_ready(audit, &spec.shard, number, ready)
            .await
        {
            tracing::debug!(error = %e, "cannot note the shard's model loading");
        }
        // The pair is in this worker's cache now: later shards of it may come here.
        if let Some(planned) = &warm {
            crate::affinity::announce(ctx, planned).await;
        }
    }
    let result = match result {
        Ok(r) => r,
        // Cancelled (a hand-back or deadline is answered by `handle` before this is reached).
        Err(ExecError::Core(CoreError::Interrupted)) => {
            tracing::info!("audit cancelled; shard dropped");
            return Ok(Outcome::Ack);
        }
        Err(e) if e.is_resource_exhaustion() => {
            let reason = format!(
                "shard {}: {}",
                spec.shard,
                attempt.redact(e, &[&pair.0, &pair.1])
            );
            // Kept on the shard, so that an audit dead-lettered after many such retries says
            // why (best effort: the retry does not depend on it).
            if let Err(note) = ctx.db.note_shard_error(audit, &spec.shard, &reason).await {
                tracing::debug!(error = %note, "cannot note the shard's error");
            }
            return Err(Transient(format!("{reason} (resources; retried)")));
        }
        Err(ExecError::Storage(e)) => return Err(Transient(e)),
        Err(e) => return attempt.fail(e, &[&pair.0, &pair.1]).await,
    };
    record(&attempt, &result).await
}

/// Starts an attempt of the shard: its number, or `None` when there is nothing to run
/// (cancelled, failed or already done).
async fn start(
    ctx: &WorkerContext,
    running: &Running<'_>,
    audit: Uuid,
    spec: &ShardSpec,
) -> Result<Option<i32>, Transient> {
    // Stream entry ids start with the millisecond they were added at.
    let waited = running
        .entry
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .map(|added| neurodiff_store::now_ms().saturating_sub(added) as f64);
    match ctx
        .db
        .start_attempt(audit, spec.shard, running.consumer, waited)
        .await
    {
        Ok(attempt) => {
            running.attempt.store(attempt, Ordering::SeqCst);
            tracing::info!(attempt, "shard started");
            Ok(Some(attempt))
        }
        Err(StoreError::NotFound { .. }) => match ctx.db.audit_status(audit).await {
            Ok(_) => Ok(None),
            Err(StoreError::NotFound { .. }) => Err(foreign(audit)),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Both sides opened under the policy; hub ids at the commit planning pinned, whatever the
/// branch says now.
async fn open_planned(
    ctx: &WorkerContext,
    team: &str,
    spec: &ShardSpec,
    planned: Option<&PlanRecord>,
) -> neurodiff_exec::Result<(Confined, Confined)> {
    let base_ref = planned
        .filter(|p| p.base.resolved != p.base.reference)
        .map_or(spec.base.clone(), |p| p.base.resolved.clone());
    let target_ref = planned
        .filter(|p| p.finetuned.resolved != p.finetuned.reference)
        .map_or(spec.target.reference().to_string(), |p| {
            p.finetuned.resolved.clone()
        });
    open_pair(
        ctx,
        team,
        (&spec.base, &base_ref),
        &spec.target,
        &target_ref,
    )
    .await
}

/// The corpus a corpus analysis's shard reads, checked against what planning recorded.
async fn read_corpus(
    ctx: &WorkerContext,
    team: &str,
    spec: &ShardSpec,
    planned: Option<&PlanRecord>,
) -> neurodiff_exec::Result<Option<CorpusText>> {
    if !spec.shard.analysis().needs_corpus() {
        return Ok(None);
    }
    let recorded = planned.and_then(|p| p.corpus.as_ref());
    // The samples planning read (an audit planned by an older version records fewer than the
    // shard spec now asks for; its shards read what it planned with).
    let opts = neurodiff_protocol::CorpusOptions {
        max_samples: recorded.map_or(spec.corpus.max_samples, |p| p.samples_used.max(1)),
        ..spec.corpus.clone()
    };
    let corpus = ctx.settings.enforcer.read_corpus(team, &opts).await?;
    if let Some(p) = recorded {
        neurodiff_exec::corpus::verify(p, &corpus.record)?;
    }
    Ok(Some(corpus))
}

/// Runs the executor off the async threads: the files checked against the plan record's
/// content hashes first, the lease's stop flag checked at every unit of work.
async fn execute(
    ctx: &WorkerContext,
    lease: &Lease,
    spec: &ShardSpec,
    pair: &(Confined, Confined),
    planned: Option<PlanRecord>,
    corpus: Option<CorpusText>,
    store: BlobStore,
) -> Result<(neurodiff_exec::Result<ShardOutput>, Option<ModelsReady>), Transient> {
    let (base, target) = pair.clone();
    let (spec, stop, device) = (spec.clone(), lease.stop.clone(), ctx.settings.device);
    let slow = ctx.settings.slow_tensor;
    let (hashes, models) = (ctx.hashes.clone(), ctx.models.clone());
    let ready = std::sync::Arc::new(neurodiff_exec::ReadyNote::default());
    let noted = ready.clone();
    let result = blocking(move || {
        let sources: Sources = open_sources(&base, &spec.target, &target)?;
        if let Some(p) = &planned {
            let (base_files, target_files) = sources.contents()?;
            verify(&p.base, &base_files, &hashes, &stop)?;
            verify(&p.finetuned, &target_files, &hashes, &stop)?;
            // Verified: what shards keep is keyed to these bytes.
            let _ = sources.content_id.set(format!(
                "{}+{}",
                p.base.content_hash, p.finetuned.content_hash
            ));
        }
        neurodiff_exec::run_shard(
            &sources,
            &spec,
            corpus.as_ref(),
            neurodiff_exec::ShardEnv {
                store: &store,
                device,
                models: &models,
                ready: Some(&noted),
            },
            &mut |_| {
                if !slow.is_zero() {
                    std::thread::sleep(slow);
                }
                !stop.load(Ordering::SeqCst)
            },
        )
    })
    .await?;
    Ok((result, ready.take()))
}

/// Uploads the result (keyed by attempt, so a stale worker's upload never replaces the one
/// the fan-in reads) and records it; the scheduler is woken when the audit's last shard lands.
async fn record(attempt: &Attempt<'_>, result: &ShardOutput) -> Result<Outcome, Transient> {
    let (ctx, audit, key) = (attempt.ctx, attempt.audit, attempt.key);
    let json = serde_json::to_vec(result).map_err(|e| Transient(e.to_string()))?;
    if json.len() as u64 > MAX_SHARD_OUTPUT_BYTES {
        let reason = format!(
            "shard {key}: its output is {} bytes, more than a shard may return ({MAX_SHARD_OUTPUT_BYTES} bytes)",
            json.len()
        );
        return attempt.fail_with(&reason).await;
    }
    ctx.blobs
        .put(
            &shard_result_key(audit, &key, attempt.number),
            Bytes::from(json),
        )
        .await?;
    match ctx
        .db
        .record_shard(audit, attempt.number, key, result)
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
            } else if let ShardOutput::Link(_) = result {
                wake(ctx, Event::Handed { audit }).await;
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
