//! PostgreSQL: teams and hashed tokens, audits with idempotency keys, layer shards fenced by
//! their attempt number, and per-tensor results that the whole team can query.
use chrono::{DateTime, Utc};
use neurodiff_protocol::{
    AuditSpec, AuditStatus, AuditView, Progress, ShardKey, ShardOutput, TensorMetrics,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use uuid::Uuid;

use crate::{Result, StoreError};

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
}

/// An audit row as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: Uuid,
    pub team_id: Uuid,
    pub spec: AuditSpec,
    pub status: AuditStatus,
    pub shards_total: i32,
    pub shards_done: i32,
    pub error: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What recording a shard's result did to its audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanIn {
    pub shards_done: i32,
    pub shards_total: i32,
}

impl FanIn {
    pub fn complete(&self) -> bool {
        self.shards_done == self.shards_total
    }
}

/// Per-team bounds on submissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Audits queued or running at once.
    pub max_active: i64,
    /// Audits submitted per minute.
    pub per_minute: i64,
    /// Scans a team may have (each is polled, listed and hashed by the scheduler).
    pub max_scans: i64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            max_active: 50,
            per_minute: 60,
            max_scans: 32,
        }
    }
}

/// What submitting an audit did.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Created(AuditRow),
    /// The idempotency key was used before for the same spec: that audit.
    Existing(AuditRow),
    /// The idempotency key was used before for a different spec.
    KeyReused(AuditRow),
    OverQuota {
        reason: String,
        retry_after_s: u64,
    },
}

/// Filters of `GET /v1/audits`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub status: Option<AuditStatus>,
    /// Matches the base or the fine-tuned reference exactly.
    pub model: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The (created_at, id) of the last audit of the previous page.
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct Db {
    pub pool: PgPool,
}

pub(crate) fn parse_status(s: &str) -> Result<AuditStatus> {
    s.parse()
        .map_err(|_| StoreError::Invalid(format!("stored status `{s}`")))
}

impl From<AuditRow> for AuditView {
    fn from(a: AuditRow) -> Self {
        AuditView {
            id: a.id,
            status: a.status,
            progress: Progress {
                shards_done: a.shards_done,
                shards_total: a.shards_total,
            },
            error: a.error,
            spec: a.spec,
            idempotency_key: a.idempotency_key,
            created_at: a.created_at,
            finished_at: a.finished_at,
        }
    }
}

pub(crate) fn audit_from_row(row: &sqlx::postgres::PgRow) -> Result<AuditRow> {
    let spec: serde_json::Value = row.try_get("spec")?;
    Ok(AuditRow {
        id: row.try_get("id")?,
        team_id: row.try_get("team_id")?,
        spec: serde_json::from_value(spec)
            .map_err(|e| StoreError::Invalid(format!("stored spec: {e}")))?,
        status: parse_status(row.try_get("status")?)?,
        shards_total: row.try_get("shards_total")?,
        shards_done: row.try_get("shards_done")?,
        error: row.try_get("error")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

pub(crate) const AUDIT_COLUMNS: &str = "id, team_id, spec, status, shards_total, shards_done, error, idempotency_key, created_at, finished_at";

impl Db {
    pub async fn connect(url: &str) -> Result<Db> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        Ok(Db { pool })
    }

    /// One round trip to the database (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The team called `name`, created if new.
    pub async fn ensure_team(&self, name: &str) -> Result<Team> {
        // Names become path segments and object keys (`teams/{team}/`).
        neurodiff_protocol::policy::check_team_name(name).map_err(|e| StoreError::Invalid(e.0))?;
        let row = sqlx::query(
            "INSERT INTO teams (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id, name",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(Team {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
        })
    }

    /// Admits an audit: with an idempotency key the team already used, returns that audit if
    /// the spec is the same and refuses it otherwise; then applies the team's quotas; then
    /// inserts. Serialised per team (an advisory lock), so concurrent submissions cannot all
    /// pass a quota that only one of them fits.
    pub async fn insert_audit(
        &self,
        team: &Team,
        spec: &AuditSpec,
        idempotency_key: Option<&str>,
        quota: &Quota,
    ) -> Result<Admission> {
        let mut tx = self.pool.begin().await?;
        admission_lock(&mut tx, team).await?;
        if let Some(key) = idempotency_key {
            let existing = sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audits WHERE team_id = $1 AND idempotency_key = $2"
            ))
            .bind(team.id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let audit = audit_from_row(&row)?;
                return Ok(if &audit.spec == spec {
                    Admission::Existing(audit)
                } else {
                    Admission::KeyReused(audit)
                });
            }
        }
        if let Some(over) = over_quota(&mut tx, team, quota).await? {
            return Ok(over);
        }
        let audit = insert_audit_row(&mut tx, team, spec, idempotency_key).await?;
        tx.commit().await?;
        Ok(Admission::Created(audit))
    }

    /// An audit of `team`; another team's audit is indistinguishable from a missing one.
    pub async fn get_audit(&self, team: &Team, id: Uuid) -> Result<AuditRow> {
        let row = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audits WHERE id = $1 AND team_id = $2"
        ))
        .bind(id)
        .bind(team.id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => audit_from_row(&row),
            None => Err(StoreError::NotFound {
                what: format!("audit {id}"),
            }),
        }
    }

    /// Audits of `team`, newest first, after `filter.cursor` (keyset pagination).
    pub async fn list_audits(&self, team: &Team, filter: &AuditFilter) -> Result<Vec<AuditRow>> {
        let (cursor_at, cursor_id) = filter.cursor.unzip();
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audits WHERE team_id = $1 \
             AND ($2::text IS NULL OR status = $2) \
             AND ($3::text IS NULL OR base_ref = $3 OR target_ref = $3) \
             AND ($4::timestamptz IS NULL OR created_at >= $4) \
             AND ($5::timestamptz IS NULL OR created_at < $5) \
             AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7)) \
             ORDER BY created_at DESC, id DESC LIMIT $8"
        ))
        .bind(team.id)
        .bind(filter.status.map(AuditStatus::as_str))
        .bind(&filter.model)
        .bind(filter.since)
        .bind(filter.until)
        .bind(cursor_at)
        .bind(cursor_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    /// Cancels a queued or running audit of `team` (and its unfinished shards); a finished
    /// audit is returned unchanged.
    pub async fn cancel_audit(&self, team: &Team, id: Uuid) -> Result<AuditRow> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE audits SET status = 'cancelled', finished_at = now() \
             WHERE id = $1 AND team_id = $2 AND status IN ('queued', 'running') RETURNING id",
        )
        .bind(id)
        .bind(team.id)
        .fetch_optional(&mut *tx)
        .await?;
        if updated.is_some() {
            sqlx::query("UPDATE shards SET status = 'cancelled', finished_at = now() WHERE audit_id = $1 AND status IN ('queued', 'running')")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.get_audit(team, id).await
    }

    /// Notes that the audit reached the queue (the reconciler enqueues those that did not).
    pub async fn mark_enqueued(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE audits SET enqueued_at = now() WHERE id = $1 AND enqueued_at IS NULL")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the audit's shard plan (idempotent) and the model records planning found, and
    /// marks it running. A cancelled audit stays cancelled.
    pub async fn plan_shards(
        &self,
        audit: Uuid,
        keys: &[ShardKey],
        models: Option<&serde_json::Value>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Only a queued audit is planned: a second planner (a redelivered plan task) adds no
        // shard rows to an audit another one planned.
        let planned = sqlx::query(
            "UPDATE audits SET models = COALESCE($2, models), status = 'running', \
             started_at = COALESCE(started_at, now()) WHERE id = $1 AND status = 'queued' RETURNING id",
        )
        .bind(audit)
        .bind(models)
        .fetch_optional(&mut *tx)
        .await?;
        if planned.is_none() {
            return Ok(());
        }
        // Shards are enqueued in plan order (a dictionary's training shard after its collect
        // shards), which the keys' text order is not.
        // A layer range waits for the link before it in its chain.
        let after = neurodiff_protocol::chain_predecessors(keys);
        for ((order, key), after) in (0i32..).zip(keys).zip(after) {
            sqlx::query(
                "INSERT INTO shards (audit_id, shard_key, plan_order, after_key) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(audit)
            .bind(key.to_string())
            .bind(order)
            .bind(after.map(|k| k.to_string()))
            .execute(&mut *tx)
            .await?;
        }
        // The total is the number of shard rows, whatever the list held (a repeated key is
        // one row), so the fan-in's count can always be reached.
        sqlx::query(
            "UPDATE audits SET shards_total = (SELECT count(*) FROM shards WHERE audit_id = $1) WHERE id = $1",
        )
        .bind(audit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A worker takes a shard: the attempt number it must present when writing back.
    /// `queue_wait_ms` is how long its task waited on the stream, when known.
    pub async fn start_attempt(
        &self,
        audit: Uuid,
        shard: ShardKey,
        worker: &str,
        queue_wait_ms: Option<f64>,
    ) -> Result<i32> {
        let row = sqlx::query(
            "UPDATE shards SET attempt = attempt + 1, status = 'running', worker = $3, started_at = now(), \
             queue_wait_ms = $4 \
             WHERE audit_id = $1 AND shard_key = $2 AND status IN ('queued', 'running') RETURNING attempt",
        )
        .bind(audit)
        .bind(shard.to_string())
        .bind(worker)
        .bind(queue_wait_ms)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(r.try_get("attempt")?),
            None => Err(StoreError::NotFound {
                what: format!("runnable shard {shard} of audit {audit}"),
            }),
        }
    }

    /// Writes a shard's results if `attempt` is still current (fencing), in one transaction:
    /// the tensor rows (upserted, so a retry never duplicates), the shard's status, and the
    /// audit's count of finished shards.
    pub async fn record_shard(
        &self,
        audit: Uuid,
        attempt: i32,
        shard: ShardKey,
        result: &ShardOutput,
    ) -> Result<FanIn> {
        let key = shard.to_string();
        let mut tx = self.pool.begin().await?;
        lock_audit(&mut tx, audit).await?;
        let fenced = sqlx::query(
            "UPDATE shards SET status = 'succeeded', finished_at = now(), elapsed_s = $4 \
             WHERE audit_id = $1 AND shard_key = $2 AND attempt = $3 AND status = 'running' RETURNING attempt",
        )
        .bind(audit)
        .bind(&key)
        .bind(attempt)
        .bind(result.elapsed_s())
        .fetch_optional(&mut *tx)
        .await?;
        if fenced.is_none() {
            let current: Option<i32> = sqlx::query_scalar(
                "SELECT attempt FROM shards WHERE audit_id = $1 AND shard_key = $2",
            )
            .bind(audit)
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?;
            return Err(StoreError::StaleAttempt {
                audit,
                shard: key,
                attempt,
                current: current.unwrap_or(-1),
            });
        }
        // Per-tensor rows are final per shard; the per-block metrics of the corpus analyses
        // exist only once their shards are merged, and are stored by the fan-in.
        for t in result.tensor_rows() {
            insert_tensor(&mut tx, audit, &key, t).await?;
        }
        let row = sqlx::query("UPDATE audits SET shards_done = shards_done + 1 WHERE id = $1 RETURNING shards_done, shards_total")
            .bind(audit)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(FanIn {
            shards_done: row.try_get("shards_done")?,
            shards_total: row.try_get("shards_total")?,
        })
    }

    /// The stored tensor metrics of an audit, most changed first.
    pub async fn tensor_results(&self, team: &Team, audit: Uuid) -> Result<Vec<TensorMetrics>> {
        self.get_audit(team, audit).await?;
        let rows = sqlx::query(
            "SELECT * FROM tensor_results WHERE audit_id = $1 ORDER BY rel_fro DESC NULLS LAST, fro DESC, name",
        )
        .bind(audit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tensor_from_row).collect()
    }
}

async fn insert_tensor(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    audit: Uuid,
    shard: &str,
    t: &TensorMetrics,
) -> Result<()> {
    let opt_i32 = |v: Option<usize>| v.map(|x| x as i32);
    sqlx::query(
        "INSERT INTO tensor_results (audit_id, shard_key, name, layer, module, shape, fro, base_fro, rel_fro, cosine, \
         max_abs, spectral, nuclear, stable_rank, effective_rank, rank_90, rank_99, numerical_rank, top_singular_values, \
         energy_top_k, rows_compared, method) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22) \
         ON CONFLICT (audit_id, name) DO UPDATE SET shard_key = EXCLUDED.shard_key, fro = EXCLUDED.fro, \
         base_fro = EXCLUDED.base_fro, rel_fro = EXCLUDED.rel_fro, cosine = EXCLUDED.cosine, max_abs = EXCLUDED.max_abs, \
         spectral = EXCLUDED.spectral, nuclear = EXCLUDED.nuclear, stable_rank = EXCLUDED.stable_rank, \
         effective_rank = EXCLUDED.effective_rank, rank_90 = EXCLUDED.rank_90, rank_99 = EXCLUDED.rank_99, \
         numerical_rank = EXCLUDED.numerical_rank, top_singular_values = EXCLUDED.top_singular_values, \
         energy_top_k = EXCLUDED.energy_top_k, rows_compared = EXCLUDED.rows_compared, method = EXCLUDED.method",
    )
    .bind(audit)
    .bind(shard)
    .bind(&t.name)
    .bind(opt_i32(t.layer))
    .bind(&t.module)
    .bind(t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>())
    .bind(t.fro)
    .bind(t.base_fro)
    .bind(t.rel_fro)
    .bind(t.cosine)
    .bind(t.max_abs)
    .bind(t.spectral)
    .bind(t.nuclear)
    .bind(t.stable_rank)
    .bind(t.effective_rank)
    .bind(opt_i32(t.rank_90))
    .bind(opt_i32(t.rank_99))
    .bind(opt_i32(t.numerical_rank))
    .bind(&t.top_singular_values)
    .bind(&t.energy_top_k)
    .bind(opt_i32(t.rows_compared))
    .bind(&t.method)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) fn tensor_from_row(r: &sqlx::postgres::PgRow) -> Result<TensorMetrics> {
    let usize_opt = |v: Option<i32>| v.map(|x| x as usize);
    let shape: Vec<i64> = r.try_get("shape")?;
    Ok(TensorMetrics {
        name: r.try_get("name")?,
        layer: usize_opt(r.try_get("layer")?),
        module: r.try_get("module")?,
        shape: shape.into_iter().map(|d| d as usize).collect(),
        fro: r.try_get("fro")?,
        base_fro: r.try_get("base_fro")?,
        rel_fro: r.try_get("rel_fro")?,
        cosine: r.try_get("cosine")?,
        max_abs: r.try_get("max_abs")?,
        spectral: r.try_get("spectral")?,
        nuclear: r.try_get("nuclear")?,
        stable_rank: r.try_get("stable_rank")?,
        effective_rank: r.try_get("effective_rank")?,
        top_singular_values: r.try_get("top_singular_values")?,
        energy_top_k: r.try_get("energy_top_k")?,
        rank_90: usize_opt(r.try_get("rank_90")?),
        rank_99: usize_opt(r.try_get("rank_99")?),
        numerical_rank: usize_opt(r.try_get("numerical_rank")?),
        rows_compared: usize_opt(r.try_get("rows_compared")?),
        method: r.try_get("method")?,
    })
}

/// Takes the team's admission lock for the rest of the transaction: concurrent submissions
/// (the API's and the scans') cannot all pass a quota that only one of them fits.
pub(crate) async fn admission_lock(conn: &mut sqlx::PgConnection, team: &Team) -> Result<()> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('neurodiff-admission'), hashtext($1::text))",
    )
    .bind(team.id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The refusal, when the team is over its quota (call under the admission lock).
pub(crate) async fn over_quota(
    conn: &mut sqlx::PgConnection,
    team: &Team,
    quota: &Quota,
) -> Result<Option<Admission>> {
    let usage = sqlx::query(
            "SELECT count(*) FILTER (WHERE status IN ('queued', 'running')) AS active, \
             count(*) FILTER (WHERE created_at > now() - interval '60 seconds') AS recent, \
             COALESCE(EXTRACT(EPOCH FROM (min(created_at) FILTER (WHERE created_at > now() - interval '60 seconds') \
               + interval '60 seconds' - now())), 0)::float8 AS window_left_s \
             FROM audits WHERE team_id = $1 AND (status IN ('queued', 'running') OR created_at > now() - interval '60 seconds')",
        )
        .bind(team.id)
        .fetch_one(&mut *conn)
        .await?;
    let (active, recent): (i64, i64) = (usage.try_get("active")?, usage.try_get("recent")?);
    if active >= quota.max_active {
        return Ok(Some(Admission::OverQuota {
            reason: format!(
                "team `{}` has {active} audits queued or running (quota {})",
                team.name, quota.max_active
            ),
            retry_after_s: 10,
        }));
    }
    if recent >= quota.per_minute {
        let left: f64 = usage.try_get("window_left_s")?;
        return Ok(Some(Admission::OverQuota {
            reason: format!(
                "team `{}` submitted {recent} audits in the last minute (quota {} per minute)",
                team.name, quota.per_minute
            ),
            retry_after_s: left.ceil().clamp(1.0, 60.0) as u64,
        }));
    }
    Ok(None)
}

pub(crate) async fn insert_audit_row(
    conn: &mut sqlx::PgConnection,
    team: &Team,
    spec: &AuditSpec,
    idempotency_key: Option<&str>,
) -> Result<AuditRow> {
    let spec_json = serde_json::to_value(spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let row = sqlx::query(&format!(
            "INSERT INTO audits (team_id, spec, base_ref, target_ref, idempotency_key) VALUES ($1, $2, $3, $4, $5) \
             RETURNING {AUDIT_COLUMNS}"
        ))
        .bind(team.id)
        .bind(&spec_json)
        .bind(&spec.base)
        .bind(spec.target.reference())
        .bind(idempotency_key)
        .fetch_one(&mut *conn)
        .await?;
    audit_from_row(&row)
}

/// Locks the audit's row first: every transaction that changes an audit and its shards takes
/// the audit before any shard, so two of them (two shards failing, one failing and one
/// finishing) queue instead of deadlocking.
pub(crate) async fn lock_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    audit: Uuid,
) -> Result<()> {
    sqlx::query("SELECT 1 FROM audits WHERE id = $1 FOR UPDATE")
        .bind(audit)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
