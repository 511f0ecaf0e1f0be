//! The lease on the task in flight: renewed every `renew_every` while the task runs (planning
//! and shards alike), and the signals that end it: its audit was cancelled or failed (stop
//! between tensors), the worker is shutting down and its grace period ran out, or the task ran
//! past its deadline. The last two also interrupt the task itself, whatever it is doing (a
//! blocking hash or analysis is abandoned to its thread, its result never written).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use neurodiff_protocol::AuditStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::context::WorkerContext;

/// Why a task was interrupted from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// The worker is leaving and the grace period is over: hand the task back.
    HandBack,
    /// The task ran past its deadline.
    Deadline,
}

#[derive(Debug)]
pub struct Lease {
    renewer: JoinHandle<()>,
    /// Set when the task should stop (checked between tensors and hashed chunks).
    pub stop: Arc<AtomicBool>,
    interrupted: watch::Receiver<Option<Interrupt>>,
}

impl Lease {
    pub fn start(
        ctx: &WorkerContext,
        consumer: &str,
        entry: &str,
        audit: Uuid,
        mut shutdown: watch::Receiver<bool>,
        deadline: Duration,
    ) -> Lease {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, interrupted) = watch::channel(None);
        let (ctx, consumer, entry) = (ctx.clone(), consumer.to_string(), entry.to_string());
        let stop_r = stop.clone();
        let started = Instant::now();
        let renewer = tokio::spawn(async move {
            let grace = ctx.settings.grace;
            let mut shutdown_at: Option<Instant> = None;
            loop {
                // Wake for the next renewal, or at once on shutdown, or when the grace period
                // or the deadline ends, whichever is first.
                let mut wait = ctx.settings.renew_every;
                wait = wait.min(deadline.saturating_sub(started.elapsed()));
                if let Some(t) = shutdown_at {
                    wait = wait.min(grace.saturating_sub(t.elapsed()));
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {},
                    _ = shutdown.changed(), if shutdown_at.is_none() => {},
                }
                if *shutdown.borrow() && shutdown_at.is_none() {
                    shutdown_at = Some(Instant::now());
                }
                let why = if shutdown_at.is_some_and(|t| t.elapsed() >= grace) {
                    Some(Interrupt::HandBack)
                } else if started.elapsed() >= deadline {
                    Some(Interrupt::Deadline)
                } else {
                    None
                };
                if let Some(why) = why {
                    stop_r.store(true, Ordering::SeqCst);
                    let _ = tx.send(Some(why));
                    return;
                }
                match ctx.tasks.extend(&consumer, &entry).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("lease lost; the result will be fenced if stale"),
                    Err(e) => tracing::warn!(error = %e, "cannot renew the lease"),
                }
                if let Ok(AuditStatus::Cancelled | AuditStatus::Failed) =
                    ctx.db.audit_status(audit).await
                {
                    stop_r.store(true, Ordering::SeqCst);
                }
            }
        });
        Lease {
            renewer,
            stop,
            interrupted,
        }
    }

    /// Resolves when the task is interrupted from outside (never, if it is not).
    pub async fn interrupted(&self) -> Interrupt {
        let mut rx = self.interrupted.clone();
        loop {
            if let Some(why) = *rx.borrow_and_update() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
