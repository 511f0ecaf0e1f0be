//! `neurodiff api`: serves the HTTP API until SIGINT or SIGTERM, then drains in-flight requests.
use std::net::SocketAddr;

use anyhow::Context;
use neurodiff_api::{app, metrics_app, AppState, MetricsAccess};

use crate::policy::{LimitArgs, PolicyArgs, QuotaArgs};
use crate::services::Backends;

/// Settings of the API process, from flags or the environment.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, env = "NEURODIFF_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub backends: Backends,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub quota: QuotaArgs,
    /// Lets scans' webhooks name loopback and private addresses (tests, single-tenant setups).
    #[arg(long, env = "NEURODIFF_WEBHOOK_ALLOW_INTERNAL")]
    pub webhook_allow_internal: bool,
    /// `/metrics` on the API's address answers only with `Authorization: Bearer <this>` (it
    /// counts every team's audits). Without it and without `--metrics-bind`, it is not served.
    #[arg(long, env = "NEURODIFF_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Also serve `/metrics`, open, on this address (one only the operator's scrapers reach).
    #[arg(long, env = "NEURODIFF_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let policy = args.policy.load(&[&args.backends.object_store])?;
        let c = args.backends.connect(u64::MAX).await?;
        let state = AppState::new(c.db, Some(c.events), Some(c.tasks), c.blobs)?
            .with_policy(policy)
            .with_webhooks(args.webhook_allow_internal)
            .with_limits(args.limits.limits(), args.quota.quota())
            .with_metrics(match &args.metrics_token {
                Some(token) if !token.is_empty() => MetricsAccess::token(token),
                _ => MetricsAccess::Off,
            });
        if let Some(addr) = args.metrics_bind {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-bind {addr}"))?;
            let metrics = metrics_app(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, metrics).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("--bind {}", args.bind))?;
        tracing::info!(addr = %args.bind, "neurodiff api listening");
        eprintln!("neurodiff api listening on http://{}", args.bind);
        axum::serve(listener, app(state))
            .with_graceful_shutdown(crate::signals::shutdown())
            .await?;
        Ok(())
    })
}
