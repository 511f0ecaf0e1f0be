//! The scheduler's and workers' side of PostgreSQL: what still has to be enqueued, failures,
//! the fan-in claim, finished audits and their artifacts. Every transition is guarded by the
//! status it leaves, so a cancelled or finished audit is never moved again.
use neurodiff_protocol::{AuditSpec, BlockRow, ShardKey};
use sqlx::Row;
use uuid::Uuid;

use neurodiff_protocol::AuditStatus;

use crate::pg::{audit_from_row, lock_audit, AuditRow, Db, AUDIT_COLUMNS};
use crate::{Result, StoreError};

/// A shard that has to be put on the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingShard {
    pub audit: Uuid,
    pub shard_key: ShardKey,
    pub spec: AuditSpec,
}

/// A shard row this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableShard {
    pub audit: Uuid,
    pub shard_key: String,
    pub reason: String,
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
    pub shards: Vec<(ShardKey, i32)>,
    /// This fan-in's claim: only its holder may finish the audit.
    pub claim: Uuid,
    /// When the last shard finished: the report's timestamp, so that two fan-ins of one audit
    /// render the same bytes.
    pub shards_finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Parses a stored shard key (`layer-0007`, `non-layer`, `activations/samples-000000-000128`).
pub fn parse_shard_key(key: &str) -> Result<ShardKey> {
    key.parse()
        .map_err(|_| StoreError::Invalid(format!("shard key `{key}`")))
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

    /// Shards of running audits that are not on the queue, in plan order (a layer range only
    /// once the link before it in its chain succeeded), and those that
    /// cannot be read (a key or spec this build does not know, such as one planned by a newer
    /// worker): the caller fails their audits instead of letting one row stop every audit's
    /// enqueueing.
    pub async fn shards_to_enqueue(
        &self,
        limit: i64,
    ) -> Result<(Vec<PendingShard>, Vec<UnreadableShard>)> {
        let rows = sqlx::query(
            "SELECT s.audit_id, s.shard_key, a.spec FROM shards s JOIN audits a ON a.id = s.audit_id \
             WHERE s.enqueued_at IS NULL AND s.status = 'queued' AND a.status = 'running' \
             AND (s.after_key IS NULL OR EXISTS (SELECT 1 FROM shards p WHERE p.audit_id = s.audit_id \
                  AND p.shard_key = s.after_key AND p.status = 'succeeded')) \
             ORDER BY a.created_at, s.plan_order, s.shard_key LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for r in &rows {
            let audit: Uuid = r.try_get("audit_id")?;
            let key: String = r.try_get("shard_key")?;
            let spec: serde_json::Value = r.try_get("spec")?;
            let parsed = parse_shard_key(&key).and_then(|shard_key| {
                let spec = serde_json::from_value(spec)
                    .map_err(|e| StoreError::Invalid(format!("stored spec: {e}")))?;
                Ok(PendingShard {
                    audit,
                    shard_key,
                    spec,
                })
            });
            match parsed {
                Ok(p) => ok.push(p),
                Err(e) => bad.push(UnreadableShard {
                    audit,
                    shard_key: key,
                    reason: format!("{e} (planned by another version of NeuroDiff?)"),
                }),
            }
        }
        Ok((ok, bad))
    }

    pub async fn mark_shard_enqueued(&self, audit: Uuid, shard_key: ShardKey) -> Result<()> {
        sqlx::query("UPDATE shards SET enqueued_at = now() WHERE audit_id = $1 AND shard_key = $2")
            .bind(audit)
            .bind(shard_key.to_string())
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

    /// Unfinished work marked as enqueued before `settled_s` seconds ago: (audit, shard key;
    /// None for an audit still to be planned), and the database's clock when read. The reaper
    /// compares it with what the queue holds.
    pub async fn enqueued_unfinished(
        &self,
        settled_s: f64,
    ) -> Result<(chrono::DateTime<chrono::Utc>, Vec<(Uuid, Option<ShardKey>)>)> {
        let at: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT now() - make_interval(secs => $1)")
                .bind(settled_s)
                .fetch_one(&self.pool)
                .await?;
        let rows = sqlx::query(
            "SELECT id AS audit_id, NULL::text AS shard_key FROM audits \
             WHERE status = 'queued' AND enqueued_at IS NOT NULL AND enqueued_at < $1 \
             UNION ALL \
             SELECT s.audit_id, s.shard_key FROM shards s JOIN audits a ON a.id = s.audit_id \
             WHERE a.status = 'running' AND s.status IN ('queued', 'running') \
             AND s.enqueued_at IS NOT NULL AND s.enqueued_at < $1",
        )
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        let mut work = Vec::with_capacity(rows.len());
        for r in &rows {
            let key: Option<String> = r.try_get("shard_key")?;
            // A key this build cannot read was enqueued by another version, which reaps it.
            match key.as_deref().map(parse_shard_key) {
                None => work.push((r.try_get("audit_id")?, None)),
                Some(Ok(key)) => work.push((r.try_get("audit_id")?, Some(key))),
                Some(Err(_)) => {}
            }
        }
        Ok((at, work))
    }

    /// Marks lost work (on no stream, delayed set or pending list) as not enqueued, so the
    /// next pass enqueues it again; only if it is still unfinished and was enqueued before
    /// `before` (work finished or re-enqueued meanwhile is left alone). `true` if it was.
    pub async fn requeue_lost(
        &self,
        audit: Uuid,
        shard_key: Option<&ShardKey>,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        let done = match shard_key {
            None => sqlx::query(
                "UPDATE audits SET enqueued_at = NULL WHERE id = $1 AND status = 'queued' AND enqueued_at < $2",
            )
            .bind(audit)
            .bind(before)
            .execute(&self.pool)
            .await?,
            Some(key) => sqlx::query(
                "UPDATE shards SET enqueued_at = NULL, status = 'queued' WHERE audit_id = $1 AND shard_key = $2 \
                 AND status IN ('queued', 'running') AND enqueued_at < $3",
            )
            .bind(audit)
            .bind(key.to_string())
            .bind(before)
            .execute(&self.pool)
            .await?,
        };
        Ok(done.rows_affected() == 1)
    }

    /// Fails an unfinished audit with `reason` (planning failed, or a shard could not be run).
    pub async fn fail_audit(
        &self,
        audit: Uuid,
        shard_key: Option<&str>,
        reason: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        lock_audit(&mut tx, audit).await?;
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
        fail_in(&mut tx, audit, reason).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fails an audit because its shard failed, only if `attempt` is still the shard's
    /// current, running attempt: a stale worker cannot fail an audit a newer attempt is
    /// running. `false` when fenced out.
    pub async fn fail_shard(
        &self,
        audit: Uuid,
        shard_key: &ShardKey,
        attempt: i32,
        reason: &str,
    ) -> Result<bool> {
        // One transaction: a shard marked failed with its audit still running would never be
        // run again nor let the audit end.
        let mut tx = self.pool.begin().await?;
        lock_audit(&mut tx, audit).await?;
        let current = sqlx::query(
            "UPDATE shards SET status = 'failed', error = $4, finished_at = now() \
             WHERE audit_id = $1 AND shard_key = $2 AND attempt = $3 AND status = 'running' RETURNING attempt",
        )
        .bind(audit)
        .bind(shard_key.to_string())
        .bind(attempt)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        if current.is_none() {
            return Ok(false);
        }
        fail_in(&mut tx, audit, reason).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Notes why a shard's attempt will be retried (out of memory, out of disk), for the
    /// reason its audit gives if it is dead-lettered.
    pub async fn note_shard_error(
        &self,
        audit: Uuid,
        shard_key: &ShardKey,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE shards SET error = $3 WHERE audit_id = $1 AND shard_key = $2 AND status IN ('queued', 'running')",
        )
        .bind(audit)
        .bind(shard_key.to_string())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last error noted on a shard, if any.
    pub async fn shard_error(&self, audit: Uuid, shard_key: &ShardKey) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT error FROM shards WHERE audit_id = $1 AND shard_key = $2")
                .bind(audit)
                .bind(shard_key.to_string())
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Fails an audit still waiting for its plan (planning failed); an audit that another
    /// worker planned meanwhile is left alone.
    pub async fn fail_unplanned(&self, audit: Uuid, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE audits SET status = 'failed', error = $2, finished_at = now() WHERE id = $1 AND status = 'queued'",
        )
        .bind(audit)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The name of the team an audit belongs to (workers apply its reference policy).
    pub async fn team_of(&self, audit: Uuid) -> Result<String> {
        sqlx::query_scalar(
            "SELECT teams.name FROM audits JOIN teams ON teams.id = audits.team_id WHERE audits.id = $1",
        )
        .bind(audit)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("audit {audit}"),
        })
    }

    /// The model records planning stored (file hashes, pinned revisions), whoever owns it.
    pub async fn audit_models(&self, audit: Uuid) -> Result<Option<serde_json::Value>> {
        Ok(
            sqlx::query_scalar("SELECT models FROM audits WHERE id = $1")
                .bind(audit)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// The status of an audit, whoever owns it (workers check it for cancellation).
    pub async fn audit_status(&self, audit: Uuid) -> Result<AuditStatus> {
        let status: String = sqlx::query_scalar("SELECT status FROM audits WHERE id = $1")
            .bind(audit)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("audit {audit}"),
            })?;
        crate::pg::parse_status(&status)
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
            "UPDATE audits SET finalizing_at = now(), finalizer = gen_random_uuid() WHERE id IN (\
               SELECT id FROM audits WHERE status = 'running' AND shards_total > 0 \
               AND shards_done >= shards_total \
               AND (finalizing_at IS NULL OR finalizing_at < now() - make_interval(secs => $1)) \
               FOR UPDATE SKIP LOCKED) \
             RETURNING {AUDIT_COLUMNS}, models, finalizer, \
               (SELECT max(finished_at) FROM shards WHERE audit_id = audits.id) AS shards_finished_at"
        ))
        .bind(stale_after_s)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let audit = audit_from_row(row)?;
            let stored: Vec<(String, i32)> = sqlx::query_as(
                "SELECT shard_key, attempt FROM shards WHERE audit_id = $1 AND status = 'succeeded' ORDER BY shard_key",
            )
            .bind(audit.id)
            .fetch_all(&self.pool)
            .await?;
            let shards = stored
                .into_iter()
                .map(|(key, attempt)| Ok((parse_shard_key(&key)?, attempt)))
                .collect::<Result<Vec<_>>>()?;
            out.push(Finishing {
                claim: row.try_get("finalizer")?,
                shards_finished_at: row.try_get("shards_finished_at")?,
                models: row.try_get("models")?,
                audit,
                shards,
            });
        }
        Ok(out)
    }

    /// Records the fan-in's artifacts and marks the audit succeeded (unless it was cancelled
    /// meanwhile: then nothing changes and `false` is returned).
    /// Only the holder of the latest claim can: a fan-in taken over by another scheduler
    /// records nothing.
    pub async fn finish_audit(
        &self,
        audit: Uuid,
        claim: Uuid,
        artifacts: &[ArtifactRow],
        blocks: &[BlockRow],
        latents: &[crate::LatentRow],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE audits SET status = 'succeeded', finished_at = now() WHERE id = $1 AND status = 'running' \
             AND finalizer = $2 RETURNING id",
        )
        .bind(audit)
        .bind(claim)
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
        for b in blocks {
            sqlx::query(
                "INSERT INTO block_results (audit_id, analysis, layer, hook, mean_diff_norm, mean_rel_diff, \
                 mean_cosine, kl_mean) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(audit)
            .bind(b.analysis.as_str())
            .bind(b.layer)
            .bind(b.hook.as_str())
            .bind(b.mean_diff_norm)
            .bind(b.mean_rel_diff)
            .bind(b.mean_cosine)
            .bind(b.kl_mean)
            .execute(&mut *tx)
            .await?;
        }
        crate::latents::insert(&mut tx, audit, latents).await?;
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

/// Fails an unfinished audit and cancels its unfinished shards, inside `tx`.
async fn fail_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    audit: Uuid,
    reason: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE audits SET status = 'failed', error = $2, finished_at = now() \
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(audit)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE shards SET status = 'cancelled', finished_at = now() \
         WHERE audit_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(audit)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
