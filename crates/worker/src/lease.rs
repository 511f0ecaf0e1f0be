//! The lease on the task in flight: renewed every `renew_every` while the task runs (planning
//! and shards alike), and the signals that stop a shard between tensors: its audit was cancelled
//! or failed, or the worker is shutting down and its grace period ran out (then the shard is
//! handed back rather than dropped).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::service::WorkerContext;

#[derive(Debug)]
pub struct Lease {
    renewer: JoinHandle<()>,
    /// Set when the task should stop.
    pub stop: Arc<AtomicBool>,
    /// Set when it stops because the worker is leaving (hand back, do not drop).
    pub handing_back: Arc<AtomicBool>,
}

impl Lease {
    pub fn start(
        ctx: &WorkerContext,
        consumer: &str,
        entry: &str,
        audit: Uuid,
        mut shutdown: watch::Receiver<bool>,
    ) -> Lease {
        let stop = Arc::new(AtomicBool::new(false));
        let handing_back = Arc::new(AtomicBool::new(false));
        let (ctx, consumer, entry) = (ctx.clone(), consumer.to_string(), entry.to_string());
        let (stop_r, back_r) = (stop.clone(), handing_back.clone());
        let renewer = tokio::spawn(async move {
            let grace = ctx.settings.grace;
            let mut shutdown_at: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ctx.settings.renew_every) => {},
                    _ = shutdown.changed(), if shutdown_at.is_none() => {},
                }
                if *shutdown.borrow() && shutdown_at.is_none() {
                    shutdown_at = Some(Instant::now());
                }
                if shutdown_at.is_some_and(|t| t.elapsed() >= grace) {
                    back_r.store(true, Ordering::SeqCst);
                    stop_r.store(true, Ordering::SeqCst);
                }
                match ctx.tasks.extend(&consumer, &entry).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("lease lost; the result will be fenced if stale"),
                    Err(e) => tracing::warn!(error = %e, "cannot renew the lease"),
                }
                match ctx.db.audit_status(audit).await {
                    Ok(s) if s == "cancelled" || s == "failed" => {
                        stop_r.store(true, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        });
        Lease {
            renewer,
            stop,
            handing_back,
        }
    }

    pub fn handing_back(&self) -> bool {
        self.handing_back.load(Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
