//! Scans, their runs, alerts and the webhook outbox in PostgreSQL. Exactly-once auditing rests
//! on one transaction: a run row unique per (scan, checkpoint content) and the audit it starts
//! are committed together, or neither is.
use chrono::{DateTime, Utc};
use neurodiff_protocol::scan::{RunState, ScanRequest, Severity};
use neurodiff_protocol::views::{AlertView, DeliveryView, RunView};
use neurodiff_protocol::{AuditSpec, AuditStatus};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use crate::pg::{admission_lock, insert_audit_row, over_quota, parse_status};
use crate::{Admission, Db, Quota, Result, StoreError, Team};

#[derive(Debug, Clone, PartialEq)]
pub struct ScanRow {
    pub id: Uuid,
    pub team: Team,
    pub request: ScanRequest,
    pub paused: bool,
    pub next_run_at: DateTime<Utc>,
    pub last_polled_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub runs_total: i64,
    pub alerts_open: i64,
}

/// What recording a checkpoint did.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Audited(Uuid),
    Baseline,
    /// This scan has seen this checkpoint's content before.
    Known,
    /// The team is over its quota: nothing was recorded; the next poll tries again.
    Deferred(String),
}

/// A run whose audit has ended and whose rules are not evaluated yet.
#[derive(Debug, Clone)]
pub struct PendingRun {
    pub run_id: Uuid,
    pub scan: ScanRow,
    pub checkpoint_id: String,
    pub location: String,
    pub audit_id: Option<Uuid>,
    pub audit_status: Option<AuditStatus>,
    pub audit_error: Option<String>,
}

/// An alert to store, with its webhook delivery when the scan has a webhook.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub id: Uuid,
    pub rule: String,
    pub severity: Severity,
    pub observed: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
    pub details: Vec<String>,
    pub delivery: Option<NewDelivery>,
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub url: String,
    pub body: String,
}

/// A delivery with the alert it is of.
#[derive(sqlx::FromRow)]
struct AlertDelivery {
    alert_id: Uuid,
    #[sqlx(flatten)]
    delivery: DeliveryView,
}

/// A delivery handed to a sender: the body to sign, the secret to sign it with.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: Uuid,
    pub url: String,
    pub body: String,
    pub secret: String,
    pub attempts: i32,
}

const SCAN_COLUMNS: &str = "s.id, s.team_id, t.name AS team_name, s.request, s.paused, s.next_run_at, \
    s.last_polled_at, s.last_error, s.created_at, \
    (SELECT count(*) FROM scan_runs r WHERE r.scan_id = s.id) AS runs_total, \
    (SELECT count(*) FROM alerts a WHERE a.scan_id = s.id AND a.acknowledged_at IS NULL) AS alerts_open";

fn scan_from_row(row: &sqlx::postgres::PgRow) -> Result<ScanRow> {
    let request: Value = row.try_get("request")?;
    Ok(ScanRow {
        id: row.try_get("id")?,
        team: Team {
            id: row.try_get("team_id")?,
            name: row.try_get("team_name")?,
        },
        request: serde_json::from_value(request)
            .map_err(|e| StoreError::Invalid(format!("stored scan: {e}")))?,
        paused: row.try_get("paused")?,
        next_run_at: row.try_get("next_run_at")?,
        last_polled_at: row.try_get("last_polled_at")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        runs_total: row.try_get("runs_total")?,
        alerts_open: row.try_get("alerts_open")?,
    })
}

fn not_found(what: &str, id: Uuid) -> StoreError {
    StoreError::NotFound {
        what: format!("{what} {id}"),
    }
}

/// What creating a scan did.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanCreated {
    Created(Box<ScanRow>),
    /// The team already has a scan of that name.
    NameTaken,
    /// The team has `limit` scans, as many as it may.
    TooMany {
        limit: i64,
    },
}

impl Db {
    /// Stores a scan (its secret kept for signing, not in the request); due at once. A team
    /// has at most `max_scans` (counted under the team's lock, so concurrent creations cannot
    /// all pass): every scan costs the scheduler listing and hashing at each poll.
    pub async fn create_scan(
        &self,
        team: &Team,
        request: &ScanRequest,
        secret: &str,
        max_scans: i64,
    ) -> Result<ScanCreated> {
        let mut stored = request.clone();
        stored.webhook_secret = None;
        let json = serde_json::to_value(&stored).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('scans:' || $1::text, 0))")
            .bind(team.id)
            .execute(&mut *tx)
            .await?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM scans WHERE team_id = $1")
            .bind(team.id)
            .fetch_one(&mut *tx)
            .await?;
        if count >= max_scans {
            return Ok(ScanCreated::TooMany { limit: max_scans });
        }
        let id: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO scans (team_id, name, request, source, webhook_url, webhook_secret) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (team_id, name) DO NOTHING RETURNING id",
        )
        .bind(team.id)
        .bind(&request.name)
        .bind(&json)
        .bind(&request.source)
        .bind(&request.webhook_url)
        .bind(secret)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        match id {
            Some(id) => Ok(ScanCreated::Created(Box::new(
                self.get_scan(team, id).await?,
            ))),
            None => Ok(ScanCreated::NameTaken),
        }
    }

    pub async fn list_scans(&self, team: &Team) -> Result<Vec<ScanRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SCAN_COLUMNS} FROM scans s JOIN teams t ON t.id = s.team_id \
             WHERE s.team_id = $1 ORDER BY s.created_at DESC LIMIT 500"
        ))
        .bind(team.id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(scan_from_row).collect()
    }

    /// A scan of `team`; another team's is indistinguishable from a missing one.
    pub async fn get_scan(&self, team: &Team, id: Uuid) -> Result<ScanRow> {
        let row = sqlx::query(&format!(
            "SELECT {SCAN_COLUMNS} FROM scans s JOIN teams t ON t.id = s.team_id \
             WHERE s.team_id = $1 AND s.id = $2"
        ))
        .bind(team.id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        scan_from_row(&row.ok_or_else(|| not_found("scan", id))?)
    }

    /// Pauses or resumes; `run_now` makes the scan due at once.
    pub async fn update_scan(
        &self,
        team: &Team,
        id: Uuid,
        paused: Option<bool>,
        run_now: bool,
    ) -> Result<ScanRow> {
        let done = sqlx::query(
            "UPDATE scans SET paused = COALESCE($3, paused), \
             next_run_at = CASE WHEN $4 THEN now() ELSE next_run_at END \
             WHERE team_id = $1 AND id = $2",
        )
        .bind(team.id)
        .bind(id)
        .bind(paused)
        .bind(run_now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("scan", id));
        }
        self.get_scan(team, id).await
    }

    /// Deletes the scan, its runs and alerts; the audits it started stay the team's audits.
    pub async fn delete_scan(&self, team: &Team, id: Uuid) -> Result<()> {
        let done = sqlx::query("DELETE FROM scans WHERE team_id = $1 AND id = $2")
            .bind(team.id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("scan", id));
        }
        Ok(())
    }

    /// The scan's runs, newest first.
    pub async fn scan_runs(&self, scan: Uuid, limit: i64) -> Result<Vec<RunView>> {
        let rows = sqlx::query_as::<_, RunView>(
            "SELECT r.id, r.checkpoint_id, r.location, r.base_ref, r.audit_id, a.status AS audit_status, \
             r.state, r.observed, r.error, r.created_at, \
             (SELECT count(*) FROM alerts x WHERE x.run_id = r.id) AS alerts \
             FROM scan_runs r LEFT JOIN audits a ON a.id = r.audit_id \
             WHERE r.scan_id = $1 ORDER BY r.created_at DESC, r.id LIMIT $2",
        )
        .bind(scan)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Claims up to `limit` due scans: each one's next run is set by `next` before the claim
    /// commits, so two schedulers never poll the same scan at once.
    pub async fn claim_due_scans(
        &self,
        limit: i64,
        next: impl Fn(&ScanRow, DateTime<Utc>) -> DateTime<Utc>,
    ) -> Result<Vec<ScanRow>> {
        let mut tx = self.pool.begin().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT {SCAN_COLUMNS} FROM scans s JOIN teams t ON t.id = s.team_id \
             WHERE NOT s.paused AND s.next_run_at <= now() ORDER BY s.next_run_at LIMIT $1 \
             FOR UPDATE OF s SKIP LOCKED"
        ))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let scans: Vec<ScanRow> = rows.iter().map(scan_from_row).collect::<Result<_>>()?;
        for s in &scans {
            sqlx::query("UPDATE scans SET next_run_at = $2, last_polled_at = now() WHERE id = $1")
                .bind(s.id)
                .bind(next(s, now))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(scans)
    }

    /// Records what the last poll of a scan found wrong (None: it went well).
    pub async fn scan_polled(&self, scan: Uuid, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE scans SET last_error = $2 WHERE id = $1")
            .bind(scan)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The checkpoint ids this scan has recorded, and the location of its latest run that did
    /// not fail (the base of the next with `base_mode: previous`).
    pub async fn scan_known(&self, scan: Uuid) -> Result<(Vec<String>, Option<String>)> {
        let rows = sqlx::query(
            "SELECT checkpoint_id, location, state FROM scan_runs WHERE scan_id = $1 ORDER BY created_at, id",
        )
        .bind(scan)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut last = None;
        for r in rows {
            ids.push(r.try_get("checkpoint_id")?);
            // A checkpoint that was refused or failed its audit is no base for the next.
            if stored_state(r.try_get("state")?)? != RunState::Failed {
                last = Some(r.try_get("location")?);
            }
        }
        Ok((ids, last))
    }

    /// Records a checkpoint of a scan and, with a spec, starts its audit, in one transaction:
    /// a content this scan has seen is `Known` and starts nothing.
    pub async fn record_run(
        &self,
        scan: &ScanRow,
        checkpoint_id: &str,
        location: &str,
        base: Option<&str>,
        spec: Option<&AuditSpec>,
        quota: &Quota,
    ) -> Result<RunOutcome> {
        let mut tx = self.pool.begin().await?;
        admission_lock(&mut tx, &scan.team).await?;
        let run: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO scan_runs (scan_id, checkpoint_id, location, base_ref, state) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scan_id, checkpoint_id) DO NOTHING RETURNING id",
        )
        .bind(scan.id)
        .bind(checkpoint_id)
        .bind(location)
        .bind(base)
        .bind(if spec.is_some() {
            RunState::Audited
        } else {
            RunState::Baseline
        }
        .as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(run) = run else {
            return Ok(RunOutcome::Known);
        };
        let Some(spec) = spec else {
            tx.commit().await?;
            return Ok(RunOutcome::Baseline);
        };
        if let Some(Admission::OverQuota { reason, .. }) =
            over_quota(&mut tx, &scan.team, quota).await?
        {
            return Ok(RunOutcome::Deferred(reason));
        }
        let key = format!("scan-{}-{}", scan.id.simple(), checkpoint_id);
        let audit = insert_audit_row(&mut tx, &scan.team, spec, Some(&key)).await?;
        sqlx::query("UPDATE scan_runs SET audit_id = $2 WHERE id = $1")
            .bind(run)
            .bind(audit.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RunOutcome::Audited(audit.id))
    }

    /// Records a checkpoint whose audit the admission refused, as a failed run with its alert,
    /// once per content like any run.
    pub async fn record_refused(
        &self,
        scan: &ScanRow,
        checkpoint_id: &str,
        location: &str,
        error: &str,
        alert: &NewAlert,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let run: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO scan_runs (scan_id, checkpoint_id, location, state, error, evaluated_at) \
             VALUES ($1, $2, $3, 'failed', $4, now()) ON CONFLICT (scan_id, checkpoint_id) DO NOTHING RETURNING id",
        )
        .bind(scan.id)
        .bind(checkpoint_id)
        .bind(location)
        .bind(error)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(run) = run else { return Ok(false) };
        insert_alerts(&mut tx, scan, run, None, std::slice::from_ref(alert)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Makes a scan due again within `seconds` (sooner than its schedule, never later).
    pub async fn scan_due_within(&self, scan: Uuid, seconds: f64) -> Result<()> {
        sqlx::query(
            "UPDATE scans SET next_run_at = least(next_run_at, now() + make_interval(secs => $2)) WHERE id = $1",
        )
        .bind(scan)
        .bind(seconds)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Runs whose audit has ended (or was deleted) and whose rules wait for evaluation.
    pub async fn pending_runs(&self, limit: i64) -> Result<Vec<PendingRun>> {
        let rows = sqlx::query(&format!(
            "SELECT {SCAN_COLUMNS}, r.id AS run_id, r.checkpoint_id, r.location, r.audit_id, \
             a.status AS audit_status, a.error AS audit_error \
             FROM scan_runs r JOIN scans s ON s.id = r.scan_id JOIN teams t ON t.id = s.team_id \
             LEFT JOIN audits a ON a.id = r.audit_id \
             WHERE r.state = 'audited' \
               AND (a.id IS NULL OR a.status IN ('succeeded', 'failed', 'cancelled')) \
             ORDER BY r.created_at LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: Option<String> = row.try_get("audit_status")?;
                Ok(PendingRun {
                    run_id: row.try_get("run_id")?,
                    scan: scan_from_row(row)?,
                    checkpoint_id: row.try_get("checkpoint_id")?,
                    location: row.try_get("location")?,
                    audit_id: row.try_get("audit_id")?,
                    audit_status: status.as_deref().map(parse_status).transpose()?,
                    audit_error: row.try_get("audit_error")?,
                })
            })
            .collect()
    }

    /// Stores a run's evaluation, its alerts and their deliveries at once. False when another
    /// scheduler evaluated the run first (then nothing is written).
    pub async fn record_evaluation(
        &self,
        run: &PendingRun,
        observed: &Value,
        error: Option<&str>,
        alerts: &[NewAlert],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE scan_runs SET state = $2, observed = $3, error = $4, evaluated_at = now() \
             WHERE id = $1 AND state = 'audited'",
        )
        .bind(run.run_id)
        .bind(
            if error.is_some() {
                RunState::Failed
            } else {
                RunState::Evaluated
            }
            .as_str(),
        )
        .bind(observed)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_alerts(&mut tx, &run.scan, run.run_id, run.audit_id, alerts).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Claims due deliveries: each claimed one counts an attempt and is not due again for
    /// `lease_s`, so a sender that dies mid-request has it retried, by itself or another.
    pub async fn claim_deliveries(&self, limit: i64, lease_s: f64) -> Result<Vec<DueDelivery>> {
        let rows = sqlx::query(
            // Fair across teams: each team's oldest due delivery first, then each team's
            // second, and so on, so one team's flood of alerts delays no other team's.
            "WITH ranked AS (SELECT d.id, d.next_attempt_at, \
               row_number() OVER (PARTITION BY a.team_id ORDER BY d.next_attempt_at, d.id) AS turn \
               FROM webhook_deliveries d JOIN alerts a ON a.id = d.alert_id \
               WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL AND d.next_attempt_at <= now()), \
             due AS (SELECT d.id FROM webhook_deliveries d JOIN ranked r ON r.id = d.id \
               WHERE r.turn <= $1 ORDER BY r.turn, r.next_attempt_at LIMIT $1 \
               FOR UPDATE OF d SKIP LOCKED) \
             UPDATE webhook_deliveries d SET attempts = d.attempts + 1, \
               next_attempt_at = now() + make_interval(secs => $2) \
             FROM due, alerts a, scans s WHERE d.id = due.id AND a.id = d.alert_id AND s.id = a.scan_id \
             RETURNING d.id, d.url, d.body, d.attempts, s.webhook_secret",
        )
        .bind(limit)
        .bind(lease_s)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueDelivery {
                    id: r.try_get("id")?,
                    url: r.try_get("url")?,
                    body: r.try_get("body")?,
                    secret: r.try_get("webhook_secret")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// What attempt number `attempt` got: delivered (a 2xx), retried after `retry_in_s`, or
    /// given up. A sender whose claim lapsed (a later attempt was claimed) writes nothing.
    pub async fn delivery_attempted(
        &self,
        id: Uuid,
        attempt: i32,
        status: Option<i32>,
        error: Option<&str>,
        outcome: DeliveryOutcome,
    ) -> Result<()> {
        let (delivered, gave_up, retry_s) = match outcome {
            DeliveryOutcome::Delivered => (true, false, 0.0),
            DeliveryOutcome::RetryIn(s) => (false, false, s),
            DeliveryOutcome::GiveUp => (false, true, 0.0),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET last_status = $2, last_error = $3, \
             delivered_at = CASE WHEN $4 THEN now() END, gave_up_at = CASE WHEN $5 THEN now() END, \
             next_attempt_at = now() + make_interval(secs => $6) \
             WHERE id = $1 AND attempts = $7 AND delivered_at IS NULL AND gave_up_at IS NULL",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(delivered)
        .bind(gave_up)
        .bind(retry_s)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn list_alerts(
        &self,
        team: &Team,
        scan: Option<Uuid>,
        acknowledged: Option<bool>,
        limit: i64,
    ) -> Result<Vec<AlertView>> {
        self.alerts_where(team, scan, acknowledged, None, limit)
            .await
    }

    async fn alerts_where(
        &self,
        team: &Team,
        scan: Option<Uuid>,
        acknowledged: Option<bool>,
        id: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AlertView>> {
        let mut out = sqlx::query_as::<_, AlertView>(
            "SELECT a.id, a.scan_id, s.name AS scan_name, a.audit_id, r.checkpoint_id, r.location, a.rule, \
             a.severity, a.observed, a.threshold, a.message, a.details, a.created_at, a.acknowledged_at \
             FROM alerts a JOIN scans s ON s.id = a.scan_id JOIN scan_runs r ON r.id = a.run_id \
             WHERE a.team_id = $1 AND ($2::uuid IS NULL OR a.scan_id = $2) \
               AND ($3::bool IS NULL OR (a.acknowledged_at IS NOT NULL) = $3) \
               AND ($5::uuid IS NULL OR a.id = $5) \
             ORDER BY a.created_at DESC, a.id LIMIT $4",
        )
        .bind(team.id)
        .bind(scan)
        .bind(acknowledged)
        .bind(limit)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        // Every listed alert's deliveries in one query.
        let ids: Vec<Uuid> = out.iter().map(|a| a.id).collect();
        let rows = sqlx::query_as::<_, AlertDelivery>(
            "SELECT alert_id, id, attempts, next_attempt_at, delivered_at, gave_up_at, last_status, last_error \
             FROM webhook_deliveries WHERE alert_id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            if let Some(a) = out.iter_mut().find(|a| a.id == r.alert_id) {
                a.deliveries.push(r.delivery);
            }
        }
        Ok(out)
    }

    pub async fn get_alert(&self, team: &Team, id: Uuid) -> Result<AlertView> {
        let mut rows = self.alerts_where(team, None, None, Some(id), 1).await?;
        rows.pop().ok_or_else(|| not_found("alert", id))
    }

    /// Acknowledges an alert (once; a second time changes nothing). Deliveries not yet made
    /// still go out: the receiver may be how the acknowledgement is tracked elsewhere.
    pub async fn ack_alert(&self, team: &Team, id: Uuid) -> Result<AlertView> {
        let done = sqlx::query(
            "UPDATE alerts SET acknowledged_at = COALESCE(acknowledged_at, now()) WHERE team_id = $1 AND id = $2",
        )
        .bind(team.id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("alert", id));
        }
        self.get_alert(team, id).await
    }
}

/// What one delivery attempt decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeliveryOutcome {
    Delivered,
    RetryIn(f64),
    GiveUp,
}

async fn insert_alerts(
    conn: &mut sqlx::PgConnection,
    scan: &ScanRow,
    run: Uuid,
    audit: Option<Uuid>,
    alerts: &[NewAlert],
) -> Result<()> {
    for a in alerts {
        sqlx::query(
                "INSERT INTO alerts (id, team_id, scan_id, run_id, audit_id, rule, severity, observed, threshold, message, details) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(a.id)
            .bind(scan.team.id)
            .bind(scan.id)
            .bind(run)
            .bind(audit)
            .bind(&a.rule)
            .bind(a.severity.as_str())
            .bind(a.observed)
            .bind(a.threshold)
            .bind(&a.message)
            .bind(serde_json::json!(a.details))
            .execute(&mut *conn)
            .await?;
        if let Some(d) = &a.delivery {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, alert_id, url, body) VALUES ($1, $2, $3, $4)",
            )
            .bind(d.id)
            .bind(a.id)
            .bind(&d.url)
            .bind(&d.body)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// A watched file's digest as stored: the path, its size and modification time (ns since the
/// epoch) when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDigest {
    pub path: String,
    pub size: i64,
    pub mtime_ns: i64,
    pub sha256: String,
}

impl Db {
    /// The digests stored for files under `dir` (a watched directory, canonical).
    pub async fn file_digests_under(&self, dir: &str) -> Result<Vec<StoredDigest>> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let rows = sqlx::query(
            "SELECT path, size, mtime_ns, sha256 FROM file_digests \
             WHERE left(path, length($1)) = $1 LIMIT 1000000",
        )
        .bind(&prefix)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredDigest {
                    path: r.try_get("path")?,
                    size: r.try_get("size")?,
                    mtime_ns: r.try_get("mtime_ns")?,
                    sha256: r.try_get("sha256")?,
                })
            })
            .collect()
    }

    /// Stores digests (a second store of the same file changes nothing).
    pub async fn store_file_digests(&self, digests: &[StoredDigest]) -> Result<()> {
        for chunk in digests.chunks(1000) {
            let mut q =
                sqlx::QueryBuilder::new("INSERT INTO file_digests (path, size, mtime_ns, sha256) ");
            q.push_values(chunk, |mut b, d| {
                b.push_bind(&d.path)
                    .push_bind(d.size)
                    .push_bind(d.mtime_ns)
                    .push_bind(&d.sha256);
            });
            q.push(" ON CONFLICT DO NOTHING");
            q.build().execute(&self.pool).await?;
        }
        Ok(())
    }
}

/// A run's state as stored (the table's CHECK admits only these).
fn stored_state(s: String) -> Result<RunState> {
    s.parse().map_err(|e: neurodiff_protocol::UnknownName| {
        StoreError::Invalid(format!("stored run: {e}"))
    })
}
