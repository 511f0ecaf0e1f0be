//! The planning task: both models opened under the reference policy (hub ids pinned to their
//! commit), then the executor's planning (limits, shard plan, every file hashed), its shards
//! written to the audit and the scheduler woken.
use std::sync::atomic::Ordering;

use neurodiff_core::CoreError;
use neurodiff_exec::{hash_sides, plan_audit, ExecError, Named};
use neurodiff_protocol::{AuditStatus, Event, PlanRecord, ShardKey};
use neurodiff_store::StoreError;
use uuid::Uuid;

use crate::confine::{open_sources, redact};
use crate::context::{
    blocking, fail_planning, foreign, open_pair, wake, Outcome, Transient, WorkerContext,
};
use crate::lease::Lease;

pub(crate) async fn plan(
    ctx: &WorkerContext,
    audit: Uuid,
    lease: &Lease,
) -> Result<Outcome, Transient> {
    let row = match ctx.db.audit_by_id(audit).await {
        Ok(row) => row,
        Err(StoreError::NotFound { .. }) => return Err(foreign(audit)),
        Err(e) => return Err(e.into()),
    };
    if row.status != AuditStatus::Queued {
        return Ok(Outcome::Ack);
    }
    tracing::info!("planning");
    let team = ctx.db.team_of(audit).await?;
    let mut spec = row.spec;
    // This worker's layer-range budget, unless the request named its own.
    spec.range_bytes = spec.range_bytes.or(ctx.settings.range_bytes);
    let enforcer = ctx.settings.enforcer.clone();
    let target_ref = spec.target.reference().to_string();
    let (base, target) = match open_pair(
        ctx,
        &team,
        (&spec.base, &spec.base),
        &spec.target,
        &target_ref,
    )
    .await
    {
        Ok(pair) => pair,
        Err(ExecError::Storage(e)) => return Err(Transient(e)),
        Err(e) => return failed(ctx, audit, &e, &[]).await,
    };
    let corpus = if spec.needs_corpus() {
        match enforcer.read_corpus(&team, &spec.corpus_read()).await {
            Ok(c) => Some(c),
            Err(ExecError::Storage(e)) => return Err(Transient(e)),
            Err(e) => return failed(ctx, audit, &e, &[]).await,
        }
    } else {
        None
    };
    let (spec_b, base_b, target_b) = (spec.clone(), base.clone(), target.clone());
    let limits = ctx.settings.enforcer.limits;
    let (hashes, stop) = (ctx.hashes.clone(), lease.stop.clone());
    let slow_plan = ctx.settings.slow_plan;
    let planned = blocking(move || {
        if !slow_plan.is_zero() {
            std::thread::sleep(slow_plan);
        }
        let sources = open_sources(&base_b, &spec_b.target, &target_b)?;
        let n_layers = sources.n_layers()?;
        let (base_files, target_files) = sources.contents()?;
        let shards = plan_audit(
            &sources,
            &spec_b,
            [&base_files, &target_files],
            corpus.as_ref(),
            &limits,
        )?;
        let (base, finetuned) = hash_sides(
            [&base_b, &target_b].map(|c| Named {
                reference: &c.reference,
                pinned: &c.pinned,
            }),
            [&base_files, &target_files],
            &hashes,
            &stop,
        )?;
        let record = PlanRecord {
            n_layers,
            corpus: corpus.map(|c| c.record),
            base,
            finetuned,
        };
        Ok::<_, ExecError>((shards, record))
    })
    .await?;
    let (shards, record) = match planned {
        Ok(p) => p,
        // Stopped: the audit was cancelled (a hand-back or deadline is answered by the caller).
        Err(ExecError::Core(CoreError::Interrupted)) if lease.stop.load(Ordering::SeqCst) => {
            return Ok(Outcome::Ack)
        }
        Err(e) if e.is_resource_exhaustion() => {
            return Err(Transient(format!("planning: {e} (resources; retried)")))
        }
        Err(e) => return failed(ctx, audit, &e, &[&base, &target]).await,
    };
    let keys: Vec<ShardKey> = shards.iter().map(|s| s.shard).collect();
    let record = serde_json::to_value(&record).map_err(|e| Transient(e.to_string()))?;
    ctx.db.plan_shards(audit, &keys, Some(&record)).await?;
    tracing::info!(shards = keys.len(), "planned");
    wake(ctx, Event::Planned { audit }).await;
    Ok(Outcome::Ack)
}

/// Fails the audit's planning with `e`, its message redacted: the models' directories by
/// their references, the worker's own paths hidden.
async fn failed(
    ctx: &WorkerContext,
    audit: Uuid,
    e: &ExecError,
    confined: &[&crate::confine::Confined],
) -> Result<Outcome, Transient> {
    let hidden = ctx.settings.enforcer.hidden();
    let reason = format!("planning: {}", redact(&e.to_string(), confined, &hidden));
    fail_planning(ctx, audit, &reason).await
}
