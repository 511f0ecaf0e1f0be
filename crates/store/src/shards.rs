//! An audit's shards as its team sees them: status, attempts, worker, and where the time went
//! (queue wait, model loading, the analysis).
use neurodiff_protocol::{AuditStatus, ModelsReady, ShardKey, ShardView};
use sqlx::Row;
use uuid::Uuid;

use crate::pg::Db;
use crate::{Result, StoreError, Team};

impl Db {
    /// Notes what getting attempt `attempt` of the shard's models ready cost (a stale
    /// attempt's note is dropped).
    pub async fn note_models_ready(
        &self,
        audit: Uuid,
        shard: &ShardKey,
        attempt: i32,
        ready: ModelsReady,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE shards SET load_s = $4, warm = $5 \
             WHERE audit_id = $1 AND shard_key = $2 AND attempt = $3",
        )
        .bind(audit)
        .bind(shard.to_string())
        .bind(attempt)
        .bind(ready.load_s)
        .bind(ready.warm)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The shards of `team`'s audit `audit`, in plan order (`NotFound` for another team's).
    pub async fn shard_views(&self, team: &Team, audit: Uuid) -> Result<Vec<ShardView>> {
        self.get_audit(team, audit).await?;
        let rows = sqlx::query(
            "SELECT shard_key, status, attempt, worker, queue_wait_ms, load_s, warm, elapsed_s, \
             error, started_at, finished_at FROM shards WHERE audit_id = $1 \
             ORDER BY plan_order, shard_key",
        )
        .bind(audit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(ShardView {
                    shard: r.try_get("shard_key")?,
                    status: status.parse::<AuditStatus>().map_err(|_| {
                        StoreError::Invalid(format!("stored shard status `{status}`"))
                    })?,
                    attempt: r.try_get("attempt")?,
                    worker: r.try_get("worker")?,
                    queue_wait_ms: r.try_get("queue_wait_ms")?,
                    load_s: r.try_get("load_s")?,
                    warm: r.try_get("warm")?,
                    elapsed_s: r.try_get("elapsed_s")?,
                    error: r.try_get("error")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                })
            })
            .collect()
    }
}
