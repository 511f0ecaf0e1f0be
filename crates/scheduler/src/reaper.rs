//! The reaper: finds unfinished work that PostgreSQL says is enqueued but that the queue does
//! not hold (on no stream, delayed set or pending list): a retry lost between two commands, a
//! Redis restored from an older snapshot (its epoch key survives, the newer entries do not).
//! Such work is marked not enqueued, and the next pass enqueues it again. A task it re-adds
//! that was not lost after all runs twice at most, fenced by its attempt.
use std::collections::HashSet;

use neurodiff_protocol::{Envelope, ShardKey, Task};
use neurodiff_store::StoreError;
use uuid::Uuid;

use crate::context::SchedulerContext;

/// Work enqueued less than this long ago is not judged yet (its stream entry and its
/// `enqueued_at` are written by two commands).
const SETTLED_S: f64 = 2.0;

/// One reaping pass; how many tasks were found lost.
pub async fn reap(ctx: &SchedulerContext) -> Result<usize, StoreError> {
    // The database first: anything it lists was on the queue before this read, so a task
    // missing from the queue read after it is lost, or finished (which requeue_lost skips).
    let (before, enqueued) = ctx.db.enqueued_unfinished(SETTLED_S).await?;
    if enqueued.is_empty() {
        return Ok(0);
    }
    let held: HashSet<(Uuid, Option<ShardKey>)> = ctx
        .tasks
        .outstanding::<Envelope>()
        .await?
        .into_iter()
        .map(|e| match e.task {
            Task::Plan { audit } => (audit, None),
            Task::Shard { audit, spec } => (audit, Some(spec.shard)),
        })
        .collect();
    let mut lost = 0;
    for (audit, shard) in enqueued {
        if held.contains(&(audit, shard)) {
            continue;
        }
        if ctx.db.requeue_lost(audit, shard.as_ref(), before).await? {
            let task = shard.map_or_else(|| "plan".to_string(), |k| k.to_string());
            tracing::warn!(%audit, %task, "task lost from the queue; enqueued again");
            lost += 1;
        }
    }
    Ok(lost)
}
