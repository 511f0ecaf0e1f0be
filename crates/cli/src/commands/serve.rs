//! `neurodiff api`: serves the HTTP API until SIGINT or SIGTERM, then drains in-flight requests.
use std::net::SocketAddr;

use anyhow::Context;
use neurodiff_api::{app, AppState, AUDITS_STREAM};
use neurodiff_store::{Db, Queue};

/// Settings of the API process, from flags or the environment. URLs may carry passwords and
/// are never printed.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, env = "NEURODIFF_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Shards delivered more often than this go to the dead-letter stream.
    #[arg(long, env = "NEURODIFF_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let db = Db::connect(&args.database_url)
            .await
            .context("cannot connect to the database (DATABASE_URL)")?;
        db.migrate().await?;
        let queue = Queue::connect(&args.redis_url, AUDITS_STREAM, args.max_deliveries)
            .await
            .context("cannot connect to Redis (REDIS_URL)")?;
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("--bind {}", args.bind))?;
        tracing::info!(addr = %args.bind, "neurodiff api listening");
        eprintln!("neurodiff api listening on http://{}", args.bind);
        axum::serve(
            listener,
            app(AppState {
                db,
                queue: Some(queue),
            }),
        )
        .with_graceful_shutdown(shutdown())
        .await?;
        Ok(())
    })
}

async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}
