//! The stores every service process connects to, and `scheduler`, which runs until SIGINT or
//! SIGTERM.
use std::time::Duration;

use anyhow::Context;
use neurodiff_protocol::{EVENTS_STREAM, TASKS_STREAM};
use neurodiff_scheduler::ScanSettings;
use neurodiff_scheduler::WebhookSettings;
use neurodiff_scheduler::{SchedulerContext, SchedulerSettings};

use crate::policy::{LimitArgs, PolicyArgs, QuotaArgs};
use neurodiff_store::{Blobs, Db, Queue};

/// The stores every service process uses. URLs may carry passwords and are never printed.
#[derive(Debug, clap::Args)]
pub struct Backends {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Where artifacts go: s3://bucket[/prefix] (AWS_* variables configure S3), file:///dir.
    #[arg(long, env = "NEURODIFF_OBJECT_STORE")]
    pub object_store: String,
    /// Names the Redis streams (`{prefix}:tasks`, `{prefix}:events`): deployments sharing one
    /// Redis use different prefixes.
    #[arg(long, env = "NEURODIFF_QUEUE_PREFIX", default_value = "neurodiff")]
    pub queue_prefix: String,
}

#[derive(Debug)]
pub struct Connected {
    pub db: Db,
    pub tasks: Queue,
    pub events: Queue,
    pub blobs: Blobs,
}

impl Backends {
    pub async fn connect(&self, max_deliveries: u64) -> anyhow::Result<Connected> {
        let db = Db::connect(&self.database_url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the database (DATABASE_URL): {e}"))?;
        db.migrate().await?;
        let tasks_stream = format!("{}:{TASKS_STREAM}", self.queue_prefix);
        let events_stream = format!("{}:{EVENTS_STREAM}", self.queue_prefix);
        let tasks = Queue::connect(&self.redis_url, &tasks_stream, max_deliveries)
            .await
            .context("cannot connect to Redis (REDIS_URL)")?;
        let events = Queue::connect(&self.redis_url, &events_stream, u64::MAX)
            .await
            .context("cannot connect to Redis (REDIS_URL)")?;
        let blobs = Blobs::from_url(&self.object_store).context("--object-store")?;
        Ok(Connected {
            db,
            tasks,
            events,
            blobs,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub backends: Backends,
    #[arg(long, env = "NEURODIFF_SCHEDULER_NAME", default_value = "scheduler")]
    pub name: String,
    /// Longest wait between reconciliation passes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// A task whose worker has not renewed its lease for this long is taken back.
    #[arg(long, env = "NEURODIFF_LEASE_TIMEOUT_MS", default_value_t = 30_000)]
    pub lease_timeout_ms: u64,
    /// A task handed to workers this many times is dead-lettered and its audit fails.
    #[arg(long, env = "NEURODIFF_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,
    #[arg(long, default_value_t = 1000)]
    pub backoff_base_ms: u64,
    #[arg(long, default_value_t = 60_000)]
    pub backoff_max_ms: u64,
    /// How often unfinished work that the queue does not hold is looked for and re-enqueued.
    #[arg(long, default_value_t = 30_000)]
    pub reap_ms: u64,
    /// What scans may read, as for audits submitted to the API.
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub quota: QuotaArgs,
    /// Lets webhooks reach loopback and private addresses (tests, single-tenant setups).
    #[arg(long, env = "NEURODIFF_WEBHOOK_ALLOW_INTERNAL")]
    pub webhook_allow_internal: bool,
    /// The first webhook retry waits this long; each next one twice as long, at most an hour.
    #[arg(long, env = "NEURODIFF_WEBHOOK_BACKOFF_MS", default_value_t = 5_000)]
    pub webhook_backoff_ms: u64,
    /// A watched directory's or prefix's checkpoint is audited once two polls this far apart
    /// saw the same content (files that land after the weights are part of it).
    #[arg(long, env = "NEURODIFF_SCAN_SETTLE_MS", default_value_t = 30_000)]
    pub scan_settle_ms: u64,
    /// Bytes of shard outputs one fan-in merges at once; an audit whose outputs total more
    /// fails naming this limit.
    #[arg(long, env = "NEURODIFF_MAX_FANIN_BYTES", default_value_t = neurodiff_protocol::limits::MAX_FANIN_BYTES)]
    pub max_fanin_bytes: u64,
    /// Bytes one poll of one scan may hash; a larger new checkpoint is hashed over several
    /// polls (each resumes where the last stopped).
    #[arg(long, env = "NEURODIFF_SCAN_HASH_BUDGET_BYTES", default_value_t = 16 << 30)]
    pub scan_hash_budget_bytes: u64,
    /// Polls of one team's scans that run at once.
    #[arg(long, env = "NEURODIFF_SCAN_POLLS_PER_TEAM", default_value_t = 2)]
    pub scan_polls_per_team: usize,
    /// Attempts before a delivery is given up (80: about three days at the default backoff).
    #[arg(long, env = "NEURODIFF_WEBHOOK_MAX_ATTEMPTS", default_value_t = 80)]
    pub webhook_max_attempts: i32,
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let policy = args.policy.load(&[&args.backends.object_store])?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let c = args
            .backends
            .connect(u64::from(args.max_deliveries) + 1)
            .await?;
        let ctx = SchedulerContext {
            db: c.db,
            tasks: c.tasks,
            events: c.events,
            blobs: c.blobs,
            settings: SchedulerSettings {
                name: args.name,
                poll: Duration::from_millis(args.poll_ms),
                lease_timeout: Duration::from_millis(args.lease_timeout_ms),
                max_deliveries: args.max_deliveries.max(1),
                backoff_base: Duration::from_millis(args.backoff_base_ms),
                backoff_max: Duration::from_millis(args.backoff_max_ms),
                reap_every: Duration::from_millis(args.reap_ms),
                max_fanin_bytes: args.max_fanin_bytes,
            },
            scans: ScanSettings {
                policy: std::sync::Arc::new(policy),
                limits: args.limits.limits(),
                quota: args.quota.quota(),
                webhooks: WebhookSettings {
                    allow_internal: args.webhook_allow_internal,
                    backoff_base: Duration::from_millis(args.webhook_backoff_ms),
                    max_attempts: args.webhook_max_attempts.max(1),
                    ..WebhookSettings::default()
                },
                hub: neurodiff_scheduler::sources::HubSource::from_env(),
                settle: Duration::from_millis(args.scan_settle_ms),
                poll_budget_bytes: args.scan_hash_budget_bytes,
                polls_per_team: args.scan_polls_per_team.max(1),
                ..ScanSettings::default()
            },
        };
        eprintln!("neurodiff scheduler running");
        neurodiff_scheduler::service::run(ctx, crate::signals::shutdown_signal()).await;
        Ok(())
    });
    // A poll's hashing thread stops at its next read once told; none may keep the process.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}
