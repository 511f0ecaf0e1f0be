//! The scan loop: polls due scans' sources, starts one audit per new complete checkpoint (the
//! run and its audit committed together, unique per scan and content), and once an audit has
//! ended, evaluates the scan's rules on its results.json, stores the alerts and queues their
//! webhook deliveries in the same transaction.
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use neurodiff_protocol::scan::{BaseMode, Observation, Schedule, Severity};
use neurodiff_protocol::{AuditStatus, Event, ModelRef, EVENTS_MAX_LEN};
use neurodiff_store::{NewAlert, NewDelivery, PendingRun, RunOutcome, ScanRow, StoreError};
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::context::SchedulerContext;
use crate::fsread::Budget;
use crate::sources::{list_hub, list_local, list_s3, FileDigest, Found, Listing};
use neurodiff_store::scans::StoredDigest;

/// Scans polled at once by one scheduler (each in a task of its own).
const MAX_POLLS: usize = 64;

/// What one scan pass did (tests and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanPass {
    pub polled: usize,
    pub audits: usize,
    pub evaluated: usize,
    pub alerts: usize,
}

fn schedule_of(scan: &ScanRow) -> Schedule {
    Schedule::parse(scan.request.every_s, scan.request.cron.as_deref())
        .unwrap_or(Schedule::Every(3600))
}

async fn list(ctx: &SchedulerContext, scan: &ScanRow) -> Result<Listing, String> {
    // A source that hangs (a hub API, an S3 endpoint) must not hold up this scan past its
    // time, and the thread hashing a local one stops when the time is up.
    let limit = ctx.scans.list_timeout;
    let budget = Arc::new(Budget::new(
        ctx.scans.poll_budget_bytes,
        ctx.scans.stop.clone(),
    ));
    match tokio::time::timeout(limit, list_unbounded(ctx, scan, budget.clone())).await {
        Ok(listed) => listed,
        Err(_) => {
            budget.stop();
            Err(format!(
                "the source did not answer within {} s",
                limit.as_secs()
            ))
        }
    }
}

async fn list_unbounded(
    ctx: &SchedulerContext,
    scan: &ScanRow,
    budget: Arc<Budget>,
) -> Result<Listing, String> {
    let source = scan.request.source.clone();
    let kind = scan.request.target.unwrap_or_default();
    // The source may have been allowed when the scan was made and not since.
    ctx.scans
        .policy
        .check(&scan.team.name, "source", &source)
        .map_err(|e| e.0)?;
    match neurodiff_protocol::classify(&source).map_err(|e| e.0)? {
        ModelRef::S3 { .. } => list_s3(&source, kind).await,
        ModelRef::Local { .. } => {
            // The policy is lexical; a watched directory that is (or passes through) a link
            // must still lie inside what the team may read once the link is resolved.
            let canonical =
                std::fs::canonicalize(&source).map_err(|e| format!("source `{source}`: {e}"))?;
            let canonical = canonical.to_string_lossy().to_string();
            ctx.scans
                .policy
                .check(&scan.team.name, "source", &canonical)
                .map_err(|e| e.0)?;
            let source = canonical;
            let hashes = ctx.scans.hashes.clone();
            if hashes.needs_load(&source) {
                match ctx.db.file_digests_under(&source).await {
                    Ok(stored) => hashes.load(stored.into_iter().filter_map(from_stored)),
                    // Only a cost: what is not loaded is hashed again.
                    Err(e) => tracing::warn!(error = %e, "stored digests not loaded"),
                }
            }
            let listed = {
                let hashes = hashes.clone();
                tokio::task::spawn_blocking(move || list_local(&source, kind, &hashes, &budget))
                    .await
                    .map_err(|e| format!("listing: {e}"))?
            };
            let fresh: Vec<StoredDigest> = hashes
                .take_fresh()
                .into_iter()
                .filter_map(to_stored)
                .collect();
            if let Err(e) = ctx.db.store_file_digests(&fresh).await {
                tracing::warn!(error = %e, "digests not stored; a restart hashes them again");
            }
            listed
        }
        ModelRef::Hub {
            org,
            name,
            revision,
        } => {
            let hub = ctx.scans.hub.clone();
            tokio::task::spawn_blocking(move || list_hub(&org, &name, &revision, kind, &hub))
                .await
                .map_err(|e| format!("listing: {e}"))?
        }
    }
}

fn to_stored(d: FileDigest) -> Option<StoredDigest> {
    let ns = d
        .mtime
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(StoredDigest {
        path: d.path.to_str()?.to_string(),
        size: i64::try_from(d.size).ok()?,
        mtime_ns: i64::try_from(ns).ok()?,
        sha256: d.sha256,
    })
}

fn from_stored(d: StoredDigest) -> Option<FileDigest> {
    Some(FileDigest {
        path: d.path.into(),
        size: u64::try_from(d.size).ok()?,
        mtime: std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(d.mtime_ns).ok()?),
        sha256: d.sha256,
    })
}

/// Polls one scan: starts the audits of its new checkpoints, in order.
async fn poll(ctx: &SchedulerContext, scan: &ScanRow) -> Result<usize, StoreError> {
    let listing = match list(ctx, scan).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(scan = %scan.id, error = %e, "scan source unreadable");
            ctx.db.scan_polled(scan.id, Some(&e)).await?;
            return Ok(0);
        }
    };
    for (location, why) in &listing.incomplete {
        tracing::debug!(scan = %scan.id, %location, %why, "checkpoint not complete yet");
    }
    let (known, mut previous) = ctx.db.scan_known(scan.id).await?;
    let mut started = 0;
    let mut problem = None;
    // A commit is immutable; a directory or a prefix may still be gaining files.
    let settles = !matches!(
        neurodiff_protocol::classify(&scan.request.source),
        Ok(ModelRef::Hub { .. })
    );
    let base_mode = scan.request.base_mode.unwrap_or_default();
    let mut settling = 0usize;
    let now = Instant::now();
    for found in listing.complete.iter().filter(|f| !known.contains(&f.id)) {
        let sightings = &ctx.scans.sightings;
        if settles && !sightings.settled(scan.id, &found.location, &found.id, now, ctx.scans.settle)
        {
            settling += 1;
            if base_mode == BaseMode::Previous {
                // Later checkpoints are compared with this one: they wait for it.
                break;
            }
            continue;
        }
        sightings.forget(scan.id, &found.location);
        let base = match base_mode {
            BaseMode::Fixed => scan.request.base.clone(),
            BaseMode::Previous => previous.clone().or_else(|| scan.request.base.clone()),
        };
        match take(ctx, scan, found, base).await? {
            Taken::Started => started += 1,
            Taken::Recorded => {}
            Taken::Refused(why) => {
                problem = Some(why);
                continue;
            }
            Taken::Deferred(why) => {
                problem = Some(why);
                break;
            }
        }
        previous = Some(found.location.clone());
    }
    if settling > 0 {
        // Looked at again once settled, not at the next scheduled poll (a day away for a
        // daily cron).
        ctx.db
            .scan_due_within(scan.id, ctx.scans.settle.as_secs_f64())
            .await?;
    }
    // Not an error, but a trainer that never writes what completes a checkpoint (only `.bin`
    // weights, say) should show why nothing is audited.
    let problem = problem.or_else(|| {
        let (location, why) = listing.incomplete.first()?;
        let n = listing.incomplete.len();
        Some(format!(
            "{n} checkpoint(s) not complete yet; {location}: {why}"
        ))
    });
    ctx.db.scan_polled(scan.id, problem.as_deref()).await?;
    Ok(started)
}

/// What one new checkpoint of a poll came to.
enum Taken {
    /// Its audit was started.
    Started,
    /// Recorded without an audit (a baseline, or already known).
    Recorded,
    /// Refused by policy or limits: recorded and alerted; the poll goes on.
    Refused(String),
    /// The team's quota is full: the poll stops and the scan is due again soon.
    Deferred(String),
}

/// Records checkpoint `found` of `scan` against `base` (none: a baseline), and starts its
/// audit when the request is admitted.
async fn take(
    ctx: &SchedulerContext,
    scan: &ScanRow,
    found: &Found,
    base: Option<String>,
) -> Result<Taken, StoreError> {
    let spec = match &base {
        None => None,
        Some(b) => {
            let admitted = scan
                .request
                .audit_request(b, &found.location)
                .map_err(|e| e.to_string())
                .and_then(|r| r.admit(&scan.team.name, &ctx.scans.policy, &ctx.scans.limits));
            match admitted {
                Ok(spec) => Some(spec),
                Err(e) => {
                    refuse(ctx, scan, found, &e).await?;
                    return Ok(Taken::Refused(format!("{}: {e}", found.location)));
                }
            }
        }
    };
    let quota = &ctx.scans.quota;
    let outcome = ctx
        .db
        .record_run(
            scan,
            &found.id,
            &found.location,
            base.as_deref(),
            spec.as_ref(),
            quota,
        )
        .await?;
    Ok(match outcome {
        RunOutcome::Audited(audit) => {
            tracing::info!(scan = %scan.id, %audit, location = %found.location, "scan started an audit");
            let event = Event::Submitted { audit };
            if let Err(e) = ctx.events.notify(&event, EVENTS_MAX_LEN).await {
                tracing::debug!(error = %e, "scheduler not woken; the next pass finds the audit");
            }
            Taken::Started
        }
        RunOutcome::Baseline | RunOutcome::Known => Taken::Recorded,
        RunOutcome::Deferred(reason) => {
            // Not the whole interval: the quota frees up as the team's audits finish.
            ctx.db.scan_due_within(scan.id, 30.0).await?;
            Taken::Deferred(format!("deferred: {reason}"))
        }
    })
}

/// Records a refused checkpoint and alerts on it: a checkpoint made to be refused must not
/// stop the scan or pass silently.
async fn refuse(
    ctx: &SchedulerContext,
    scan: &ScanRow,
    found: &Found,
    error: &str,
) -> Result<(), StoreError> {
    let why = format!("refused: {error}");
    let subject = Subject {
        scan,
        checkpoint_id: &found.id,
        location: &found.location,
        audit_id: None,
    };
    let o = Observation {
        value: None,
        fired: true,
        message: format!("{}: not audited ({why})", found.location),
        details: Vec::new(),
    };
    let alert = new_alert(&subject, AUDIT_FAILED, Severity::High, &o);
    ctx.db
        .record_refused(scan, &found.id, &found.location, &why, &alert)
        .await?;
    Ok(())
}

/// What an alert is about: a scan's checkpoint and, when it was audited, its audit.
struct Subject<'a> {
    scan: &'a ScanRow,
    checkpoint_id: &'a str,
    location: &'a str,
    audit_id: Option<Uuid>,
}

impl<'a> Subject<'a> {
    fn of(run: &'a PendingRun) -> Subject<'a> {
        Subject {
            scan: &run.scan,
            checkpoint_id: &run.checkpoint_id,
            location: &run.location,
            audit_id: run.audit_id,
        }
    }
}

fn threshold(scan: &ScanRow, rule: &str) -> Option<f64> {
    scan.request
        .rules
        .iter()
        .find(|r| r.name == rule)
        .and_then(|r| r.value)
}

/// The webhook body of an alert: everything a receiver needs without calling back.
fn webhook_body(run: &Subject, alert: &NewAlert, delivery: Uuid) -> String {
    json!({
        "type": "alert.raised",
        "delivery_id": delivery,
        "team": run.scan.team.name,
        "alert": {
            "id": alert.id,
            "scan_id": run.scan.id,
            "scan_name": run.scan.request.name,
            "audit_id": run.audit_id,
            "checkpoint_id": run.checkpoint_id,
            "location": run.location,
            "rule": alert.rule,
            "severity": alert.severity,
            "observed": alert.observed,
            "threshold": alert.threshold,
            "message": alert.message,
            "details": alert.details,
            "created_at": Utc::now(),
        }
    })
    .to_string()
}

/// The rule name of the alert a refused or failed audit raises.
const AUDIT_FAILED: &str = "audit_failed";

fn new_alert(run: &Subject, rule: &str, severity: Severity, o: &Observation) -> NewAlert {
    let mut alert = NewAlert {
        id: Uuid::new_v4(),
        rule: rule.to_string(),
        severity,
        observed: o.value,
        threshold: threshold(run.scan, rule),
        message: o.message.clone(),
        details: o.details.clone(),
        delivery: None,
    };
    if let Some(url) = &run.scan.request.webhook_url {
        let id = Uuid::new_v4();
        alert.delivery = Some(NewDelivery {
            id,
            url: url.clone(),
            body: webhook_body(run, &alert, id),
        });
    }
    alert
}

/// Why a finished audit's results.json could not be read.
enum Unreadable {
    /// It is not there or not JSON: it never will be.
    Final(String),
    /// The database or the object store failed: the next pass tries again.
    Transient(String),
}

/// results.json of a finished audit, from object storage.
async fn results_of(
    ctx: &SchedulerContext,
    run: &PendingRun,
    audit: Uuid,
) -> Result<Value, Unreadable> {
    let store = |e: StoreError| match e {
        StoreError::NotFound { .. } | StoreError::Invalid(_) | StoreError::Denied(_) => {
            Unreadable::Final(e.to_string())
        }
        other => Unreadable::Transient(other.to_string()),
    };
    let artifacts = ctx
        .db
        .artifacts(&run.scan.team, audit)
        .await
        .map_err(store)?;
    let row = artifacts
        .iter()
        .find(|a| a.name == "results.json")
        .ok_or_else(|| Unreadable::Final("the audit stored no results.json".into()))?;
    let bytes = ctx.blobs.get(&row.object_key).await.map_err(store)?;
    serde_json::from_slice(&bytes).map_err(|e| Unreadable::Final(format!("results.json: {e}")))
}

/// Evaluates one run whose audit ended; the alerts it raised.
async fn evaluate(ctx: &SchedulerContext, run: &PendingRun) -> Result<usize, StoreError> {
    let failed = match (run.audit_id, run.audit_status) {
        (Some(audit), Some(AuditStatus::Succeeded)) => match results_of(ctx, run, audit).await {
            Ok(results) => {
                let mut observed = serde_json::Map::new();
                let mut alerts = Vec::new();
                for rule in &run.scan.request.rules {
                    let o = rule.evaluate(&results);
                    observed.insert(rule.name.clone(), json!(o.value));
                    if o.fired {
                        alerts.push(new_alert(&Subject::of(run), &rule.name, rule.severity, &o));
                    }
                }
                let stored = ctx
                    .db
                    .record_evaluation(run, &Value::Object(observed), None, &alerts)
                    .await?;
                return Ok(if stored { alerts.len() } else { 0 });
            }
            Err(Unreadable::Final(e)) => e,
            Err(Unreadable::Transient(e)) => {
                tracing::warn!(run = %run.run_id, error = %e, "results not readable now; evaluated later");
                return Ok(0);
            }
        },
        (Some(_), status) => format!(
            "the audit {}: {}",
            status.map_or("ended", AuditStatus::as_str),
            run.audit_error.as_deref().unwrap_or("no reason recorded")
        ),
        (None, _) => "the audit was deleted".to_string(),
    };
    // A checkpoint that cannot be audited is itself news to a safety team: it might have been
    // made to break the audit.
    let o = Observation {
        value: None,
        fired: true,
        message: format!("{}: not audited ({failed})", run.location),
        details: Vec::new(),
    };
    let alert = new_alert(&Subject::of(run), AUDIT_FAILED, Severity::High, &o);
    let stored = ctx
        .db
        .record_evaluation(run, &json!({}), Some(&failed), std::slice::from_ref(&alert))
        .await?;
    Ok(usize::from(stored))
}

/// Polls one scan; a failure is recorded on the scan and starts nothing.
async fn poll_one(ctx: &SchedulerContext, scan: &ScanRow) -> usize {
    match poll(ctx, scan).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(scan = %scan.id, error = %e, "scan poll failed");
            let _ = ctx
                .db
                .scan_polled(
                    scan.id,
                    Some("the poll failed; it is retried at the next one"),
                )
                .await;
            0
        }
    }
}

/// The scans being polled, each in a task of its own: a pass starts the due ones and does not
/// wait for them, so one scan's slow source (a large checkpoint to hash, a hub that answers
/// late) delays no other scan, another team's least of all.
#[derive(Debug, Default)]
pub struct Polls {
    tasks: tokio::task::JoinSet<usize>,
    /// The scan and team of each poll in flight, by its task (a task that panicked is known by
    /// its id only).
    running: HashMap<tokio::task::Id, (Uuid, Uuid)>,
}

impl Polls {
    /// Polls in flight.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    fn ended(&mut self, joined: Result<(tokio::task::Id, usize), tokio::task::JoinError>) -> usize {
        let (id, started) = match joined {
            Ok((id, started)) => (id, started),
            Err(e) => {
                tracing::error!(error = %e, "a scan poll panicked");
                (e.id(), 0)
            }
        };
        self.running.remove(&id);
        started
    }

    /// Audits started by the polls that have ended since the last call.
    pub fn reap(&mut self) -> usize {
        let mut started = 0;
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            started += self.ended(joined);
        }
        started
    }

    /// Waits for every poll in flight; the audits they started.
    pub async fn wait(&mut self) -> usize {
        let mut started = 0;
        while let Some(joined) = self.tasks.join_next_with_id().await {
            started += self.ended(joined);
        }
        started
    }

    /// Starts a poll of each due scan not already being polled, within the team's and the
    /// scheduler's bounds; the number started.
    pub async fn start(&mut self, ctx: &SchedulerContext) -> Result<usize, StoreError> {
        if self.len() >= MAX_POLLS {
            return Ok(0);
        }
        // The next run is reckoned from the database's clock, the one that decides what is
        // due: a scheduler whose clock is off neither stalls scans nor polls them at every pass.
        let due = ctx
            .db
            .claim_due_scans(16, |s, now| schedule_of(s).next_after(now))
            .await?;
        let mut started = 0;
        for scan in due {
            if self.running.values().any(|(s, _)| *s == scan.id) {
                continue;
            }
            let team_polls = self
                .running
                .values()
                .filter(|(_, t)| *t == scan.team.id)
                .count();
            if team_polls >= ctx.scans.polls_per_team.max(1) || self.len() >= MAX_POLLS {
                // The team's (or this scheduler's) other polls are still running: this one is
                // due again shortly.
                ctx.db
                    .scan_due_within(scan.id, ctx.settings.poll.as_secs_f64())
                    .await?;
                continue;
            }
            let (ctx, ids) = (ctx.clone(), (scan.id, scan.team.id));
            let task = self.tasks.spawn(async move { poll_one(&ctx, &scan).await });
            self.running.insert(task.id(), ids);
            started += 1;
        }
        Ok(started)
    }
}

/// One pass over due scans, waiting for their polls (tests drive the scans pass by pass).
pub async fn pass(ctx: &SchedulerContext) -> Result<ScanPass, StoreError> {
    let mut polls = Polls::default();
    let polled = polls.start(ctx).await?;
    let audits = polls.wait().await;
    Ok(ScanPass {
        polled,
        audits,
        ..ScanPass::default()
    })
}

/// Evaluates the runs whose audits have ended.
pub async fn evaluate_pending(ctx: &SchedulerContext, p: &mut ScanPass) -> Result<(), StoreError> {
    for run in ctx.db.pending_runs(64).await? {
        p.evaluated += 1;
        match evaluate(ctx, &run).await {
            Ok(n) => p.alerts += n,
            Err(e) => {
                tracing::warn!(run = %run.run_id, error = %e, "run evaluation failed; retried")
            }
        }
    }
    Ok(())
}

/// The scan loop, beside the scheduler's passes: hashing a large new checkpoint holds up no
/// shard, and no other scan (each poll runs on its own). On shutdown every poll's hashing is
/// stopped and the polls are given a few seconds to record where they were.
pub async fn run(ctx: SchedulerContext, mut shutdown: watch::Receiver<bool>) {
    let mut polls = Polls::default();
    while !*shutdown.borrow() {
        let mut p = ScanPass {
            audits: polls.reap(),
            ..ScanPass::default()
        };
        match polls.start(&ctx).await {
            Ok(n) => p.polled = n,
            Err(e) => tracing::warn!(error = %e, "claiming due scans failed"),
        }
        match evaluate_pending(&ctx, &mut p).await {
            Ok(()) if p != ScanPass::default() => tracing::info!(?p, "scan pass"),
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "scan pass failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.settings.poll) => {}
            _ = shutdown.changed() => {}
        }
    }
    ctx.scans.stop.store(true, Ordering::SeqCst);
    if tokio::time::timeout(Duration::from_secs(10), polls.wait())
        .await
        .is_err()
    {
        tracing::warn!("scan polls did not stop in time; abandoned");
    }
}
