//! `neurodiff worker`: pulls layer shards from Redis and runs the analyses (links libtorch) until
//! SIGINT or SIGTERM; it then finishes its shard in flight, or hands it back when that takes
//! longer than `--grace-s`.
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use neurodiff_core::reference::HubOptions;
use neurodiff_server::policy::{LimitArgs, PolicyArgs};
use neurodiff_server::services::{runtime, Backends};
use neurodiff_server::signals::shutdown_signal;
use neurodiff_worker::confine::Enforcer;
use neurodiff_worker::{WorkerContext, WorkerSettings};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub backends: Backends,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
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
    /// On SIGTERM, how long the task in flight may run before it is handed back.
    #[arg(long, default_value_t = 30)]
    pub grace_s: u64,
    /// Where s3:// checkpoints are copied before they are read.
    #[arg(long, env = "NEURODIFF_CACHE_DIR", default_value = "neurodiff-cache")]
    pub cache_dir: PathBuf,
    /// Bytes of loaded models kept between shards (keyed by the models' content; least
    /// recently used out first); 0 turns the cache off.
    #[arg(long, env = "NEURODIFF_MODEL_CACHE_BYTES", default_value_t = neurodiff_exec::cache::DEFAULT_MODEL_CACHE_BYTES)]
    pub model_cache_bytes: u64,
    /// The layer-range budget this worker plans with when a request names none: the most
    /// bytes of both models' block weights one shard of the activations or the logit lens
    /// holds (a larger pair runs as chains of layer ranges across the workers).
    #[arg(long, env = "NEURODIFF_RANGE_BYTES")]
    pub range_bytes: Option<u64>,
    /// How long a shard of a corpus analysis waits for a worker that announced it holds the
    /// shard's models warm before this worker loads them itself; 0 turns affinity off.
    #[arg(long, env = "NEURODIFF_AFFINITY_WAIT_MS", default_value_t = 2_000)]
    pub affinity_wait_ms: u64,
    /// Fault injection for drills and tests: wait this long after each tensor, so a shard is
    /// reliably in flight when a worker is killed, Redis restarted or an audit cancelled.
    #[arg(long, hide = true, default_value_t = 0)]
    pub slow_tensor_ms: u64,
    /// Fault injection: planning pauses this long, deaf to stop requests, so a drill can send
    /// SIGTERM to a worker stuck in planning.
    #[arg(long, hide = true, default_value_t = 0)]
    pub slow_plan_ms: u64,
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let device = neurodiff_core::device::parse_device(&args.device)?;
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    // Absolute and existing, so the policy can keep it out of every team's reach.
    std::fs::create_dir_all(&args.cache_dir)
        .map_err(|e| anyhow::anyhow!("--cache-dir {}: {e}", args.cache_dir.display()))?;
    let cache_dir = std::fs::canonicalize(&args.cache_dir)?;
    let cache = cache_dir.to_string_lossy().into_owned();
    // The hub cache holds repositories of every organisation: never readable as a local path.
    let mut hub = HubOptions::from_env();
    std::fs::create_dir_all(&hub.cache_dir)
        .map_err(|e| anyhow::anyhow!("hub cache {}: {e}", hub.cache_dir.display()))?;
    hub.cache_dir = std::fs::canonicalize(&hub.cache_dir)?;
    let hub_cache = hub.cache_dir.to_string_lossy().into_owned();
    let policy = args
        .policy
        .load(&[&args.backends.object_store, &cache, &hub_cache])?;
    let enforcer = Arc::new(Enforcer {
        policy,
        limits: args.limits.limits(),
        hub,
        cache_dir,
    });
    let rt = runtime()?;
    let result = rt.block_on(async {
        let c = args.backends.connect(u64::MAX).await?;
        let ctx = WorkerContext::new(
            c.db,
            c.tasks,
            c.events,
            c.blobs,
            WorkerSettings {
                name: name.clone(),
                device,
                concurrency: args.concurrency,
                renew_every: Duration::from_millis(args.renew_ms.max(10)),
                grace: Duration::from_secs(args.grace_s),
                enforcer,
                slow_tensor: Duration::from_millis(args.slow_tensor_ms),
                slow_plan: Duration::from_millis(args.slow_plan_ms),
                model_cache_bytes: args.model_cache_bytes,
                range_bytes: args.range_bytes.filter(|&b| b > 0),
                affinity_wait: Duration::from_millis(args.affinity_wait_ms),
            },
        );
        eprintln!("neurodiff worker {name} running on {}", args.device);
        neurodiff_worker::service::run(ctx, shutdown_signal()).await;
        Ok(())
    });
    // A task abandoned at the end of the grace period may still hold a blocking thread
    // (hashing, an analysis): the process does not wait for it. Its task was handed back.
    rt.shutdown_background();
    result
}
