//! The scheduler's and workers' side of PostgreSQL: what still has to be enqueued, failures,
//! the fan-in claim, finished audits and their artifacts. Every transition is guarded by the
//! status it leaves, so a cancelled or finished audit is never moved again.
use neurodiff_protocol::{AuditSpec, ShardKey};
use sqlx::Row;
use uuid::Uuid;

use crate::pg::{audit_from_row, AuditRow, Db, AUDIT_COLUMNS};
use crate::{Result, StoreError};

/// A shard that has to be put on the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingShard {
    pub audit: Uuid,
    pub shard_key: String,
    pub spec: AuditSpec,
}

/// An artifact as the artifacts table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    pub name: String,
    pub object_key: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub content_type: String,
}

/// An audit whose shards are all done, claimed for the fan-in.
#[derive(Debug, Clone, PartialEq)]
pub struct Finishing {
    pub audit: AuditRow,
    pub models: Option<serde_json::Value>,
    /// The audit's shards and the attempt whose result was recorded.
    pub shards: Vec<(String, i32)>,
}

/// Parses a stored shard key (`layer-0007`, `non-layer`).
pub fn parse_shard_key(key: &str) -> Result<ShardKey> {
    if key == "non-layer" {
        return Ok(ShardKey::NonLayer);
    }
    key.strip_prefix("layer-")
        .and_then(|n| n.parse().ok())
        .map(ShardKey::Layer)
        .ok_or_else(|| StoreError::Invalid(format!("shard key `{key}`")))
}

impl Db {
    /// Audits stored but not yet on the queue (new, or lost with a Redis restart).
    pub async fn audits_to_plan(&self, limit: i64) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM audits WHERE enqueued_at IS NULL AND status = 'queued' ORDER BY created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Shards of running audits that are not on the queue.
    pub async fn shards_to_enqueue(&self, limit: i64) -> Result<Vec<PendingShard>> {
        let rows = sqlx::query(
            "SELECT s.audit_id, s.shard_key, a.spec FROM shards s JOIN audits a ON a.id = s.audit_id \
             WHERE s.enqueued_at IS NULL AND s.status = 'queued' AND a.status = 'running' \
             ORDER BY a.created_at, s.shard_key LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let spec: serde_json::Value = r.try_get("spec")?;
                Ok(PendingShard {
                    audit: r.try_get("audit_id")?,
                    shard_key: r.try_get("shard_key")?,
                    spec: serde_json::from_value(spec)
                        .map_err(|e| StoreError::Invalid(format!("stored spec: {e}")))?,
                })
            })
            .collect()
    }

    pub async fn mark_shard_enqueued(&self, audit: Uuid, shard_key: &str) -> Result<()> {
        sqlx::query("UPDATE shards SET enqueued_at = now() WHERE audit_id = $1 AND shard_key = $2")
            .bind(audit)
            .bind(shard_key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// After the queue lost its contents: everything unfinished is enqueued again (a shard
    /// that was in flight is fenced by its attempt number, so running it twice is harmless).
    pub async fn requeue_unfinished(&self) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let audits = sqlx::query("UPDATE audits SET enqueued_at = NULL WHERE status = 'queued'")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let shards = sqlx::query(
            "UPDATE shards s SET enqueued_at = NULL, status = 'queued' FROM audits a \
             WHERE a.id = s.audit_id AND a.status = 'running' AND s.status IN ('queued', 'running')",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(audits + shards)
    }

    /// Fails an unfinished audit with `reason` (planning failed, or a shard could not be run).
    pub async fn fail_audit(
        &self,
        audit: Uuid,
        shard_key: Option<&str>,
        reason: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = shard_key {
            sqlx::query(
                "UPDATE shards SET status = 'failed', error = $3, finished_at = now() \
                 WHERE audit_id = $1 AND shard_key = $2 AND status IN ('queued', 'running')",
            )
            .bind(audit)
            .bind(key)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE audits SET status = 'failed', error = $2, finished_at = now() \
             WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(audit)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE shards SET status = 'cancelled', finished_at = now() \
             WHERE audit_id = $1 AND status IN ('queued', 'running')",
        )
        .bind(audit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The status of an audit, whoever owns it (workers check it for cancellation).
    pub async fn audit_status(&self, audit: Uuid) -> Result<String> {
        sqlx::query_scalar("SELECT status FROM audits WHERE id = $1")
            .bind(audit)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("audit {audit}"),
            })
    }

    /// An audit and its spec, whoever owns it (for workers planning it).
    pub async fn audit_by_id(&self, audit: Uuid) -> Result<AuditRow> {
        let row = sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audits WHERE id = $1"))
            .bind(audit)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("audit {audit}"),
            })?;
        audit_from_row(&row)
    }

    /// Claims audits whose shards are all done for the fan-in. A claim older than
    /// `stale_after_s` (its scheduler died) can be taken again.
    pub async fn claim_finishing(&self, stale_after_s: f64) -> Result<Vec<Finishing>> {
        let rows = sqlx::query(&format!(
            "UPDATE audits SET finalizing_at = now() WHERE id IN (\
               SELECT id FROM audits WHERE status = 'running' AND shards_total > 0 \
               AND shards_done >= shards_total \
               AND (finalizing_at IS NULL OR finalizing_at < now() - make_interval(secs => $1)) \
               FOR UPDATE SKIP LOCKED) \
             RETURNING {AUDIT_COLUMNS}, models"
        ))
        .bind(stale_after_s)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let audit = audit_from_row(row)?;
            let shards = sqlx::query_as(
                "SELECT shard_key, attempt FROM shards WHERE audit_id = $1 AND status = 'succeeded' ORDER BY shard_key",
            )
            .bind(audit.id)
            .fetch_all(&self.pool)
            .await?;
            out.push(Finishing {
                models: row.try_get("models")?,
                audit,
                shards,
            });
        }
        Ok(out)
    }

    /// Records the fan-in's artifacts and marks the audit succeeded (unless it was cancelled
    /// meanwhile: then nothing changes and `false` is returned).
    pub async fn finish_audit(&self, audit: Uuid, artifacts: &[ArtifactRow]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE audits SET status = 'succeeded', finished_at = now() WHERE id = $1 AND status = 'running' RETURNING id",
        )
        .bind(audit)
        .fetch_optional(&mut *tx)
        .await?;
        if done.is_none() {
            return Ok(false);
        }
        for a in artifacts {
            sqlx::query(
                "INSERT INTO artifacts (audit_id, name, object_key, size_bytes, sha256, content_type) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (audit_id, name) DO UPDATE SET \
                 object_key = EXCLUDED.object_key, size_bytes = EXCLUDED.size_bytes, \
                 sha256 = EXCLUDED.sha256, content_type = EXCLUDED.content_type",
            )
            .bind(audit)
            .bind(&a.name)
            .bind(&a.object_key)
            .bind(a.size_bytes)
            .bind(&a.sha256)
            .bind(&a.content_type)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The artifacts of an audit of `team`, by name.
    pub async fn artifacts(&self, team: &crate::Team, audit: Uuid) -> Result<Vec<ArtifactRow>> {
        self.get_audit(team, audit).await?;
        let rows = sqlx::query(
            "SELECT name, object_key, size_bytes, sha256, content_type FROM artifacts WHERE audit_id = $1 ORDER BY name",
        )
        .bind(audit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ArtifactRow {
                    name: r.try_get("name")?,
                    object_key: r.try_get("object_key")?,
                    size_bytes: r.try_get("size_bytes")?,
                    sha256: r.try_get("sha256")?,
                    content_type: r.try_get("content_type")?,
                })
            })
            .collect()
    }

    /// How many audits are in each status (for /metrics).
    pub async fn status_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, count(*) AS n FROM audits GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }
}
