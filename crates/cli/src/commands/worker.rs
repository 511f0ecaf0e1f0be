//! `neurodiff worker`: pulls layer shards from Redis and runs the analyses (links libtorch) until
//! SIGINT or SIGTERM; it then finishes its shard in flight, or hands it back when that takes
//! longer than `--grace-s`.
use std::path::PathBuf;
use std::time::Duration;

use neurodiff_server::services::{runtime, shutdown_signal, Backends};
use neurodiff_worker::service::{WorkerContext, WorkerSettings};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub backends: Backends,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "NEURODIFF_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// This worker's name on the stream (default: host and process id).
    #[arg(long, env = "NEURODIFF_WORKER_NAME")]
    pub name: Option<String>,
    /// How often the lease on the task in flight is renewed (keep well under the scheduler's
    /// --lease-timeout-ms).
    #[arg(long, env = "NEURODIFF_RENEW_MS", default_value_t = 5_000)]
    pub renew_ms: u64,
    /// On SIGTERM, how long the shard in flight may run before it is handed back.
    #[arg(long, default_value_t = 30)]
    pub grace_s: u64,
    /// Where s3:// checkpoints are copied before they are read.
    #[arg(long, env = "NEURODIFF_CACHE_DIR", default_value = "neurodiff-cache")]
    pub cache_dir: PathBuf,
    /// Fault injection for drills and tests: wait this long after each tensor, so a shard is
    /// reliably in flight when a worker is killed, Redis restarted or an audit cancelled.
    #[arg(long, hide = true, default_value_t = 0)]
    pub slow_tensor_ms: u64,
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let device = neurodiff_core::device::parse_device(&args.device)?;
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    runtime()?.block_on(async {
        let c = args.backends.connect(u64::MAX).await?;
        let ctx = WorkerContext {
            db: c.db,
            tasks: c.tasks,
            events: c.events,
            blobs: c.blobs,
            settings: WorkerSettings {
                name: name.clone(),
                device,
                concurrency: args.concurrency,
                renew_every: Duration::from_millis(args.renew_ms.max(10)),
                grace: Duration::from_secs(args.grace_s),
                cache_dir: args.cache_dir,
                slow_tensor: Duration::from_millis(args.slow_tensor_ms),
            },
        };
        eprintln!("neurodiff worker {name} running on {}", args.device);
        neurodiff_worker::service::run(ctx, shutdown_signal()).await;
        Ok(())
    })
}
