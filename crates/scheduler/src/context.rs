//! What the scheduler's loops share: their settings (from the binary's flags) and connections.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use neurodiff_protocol::{Limits, ReferencePolicy};
use neurodiff_store::{Blobs, Db, Queue, Quota};

use crate::sightings::Sightings;
use crate::sources::{HashCache, HubSource};

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// This scheduler's consumer name.
    pub name: String,
    /// Longest wait between passes.
    pub poll: Duration,
    /// A task idle this long (its worker renews far more often) is taken back.
    pub lease_timeout: Duration,
    /// A task handed out this many times is dead-lettered and its audit fails.
    pub max_deliveries: u32,
    /// Retry n waits backoff_base * 2^(n-1), at most backoff_max.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often the reaper compares the database with the queue.
    pub reap_every: Duration,
    /// Bytes of shard outputs one fan-in may hold at once (it merges them in memory): an audit
    /// whose outputs total more fails naming this limit, before any is read.
    pub max_fanin_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct SchedulerContext {
    pub db: Db,
    pub tasks: Queue,
    pub events: Queue,
    pub blobs: Blobs,
    pub settings: SchedulerSettings,
    pub scans: ScanSettings,
}

/// What scans may do: the same policy, limits and quota as audits submitted to the API.
#[derive(Debug, Clone)]
pub struct ScanSettings {
    pub policy: Arc<ReferencePolicy>,
    pub limits: Limits,
    pub quota: Quota,
    pub webhooks: WebhookSettings,
    pub hashes: Arc<HashCache>,
    /// How hub repositories are read (the workers read them the same way).
    pub hub: HubSource,
    /// A directory or prefix checkpoint is audited once two polls at least this far apart saw
    /// the same content id (a tokenizer written after the weights is not a second checkpoint).
    pub settle: Duration,
    pub sightings: Arc<Sightings>,
    /// A source that has not answered in this long is given up until the next poll (and its
    /// hashing stopped).
    pub list_timeout: Duration,
    /// Bytes one poll of one scan may hash; a checkpoint not hashed whole by then is hashed on
    /// at the next poll, from where this one stopped.
    pub poll_budget_bytes: u64,
    /// Polls of one team's scans running at once; its other due scans wait their turn.
    pub polls_per_team: usize,
    /// Raised when the scheduler leaves: every poll's hashing stops at its next read.
    pub stop: Arc<AtomicBool>,
}

impl Default for ScanSettings {
    fn default() -> Self {
        ScanSettings {
            policy: Arc::default(),
            limits: Limits::default(),
            quota: Quota::default(),
            webhooks: WebhookSettings::default(),
            hashes: Arc::default(),
            hub: HubSource::default(),
            settle: Duration::from_secs(30),
            sightings: Arc::default(),
            list_timeout: Duration::from_secs(300),
            poll_budget_bytes: 16 << 30,
            polls_per_team: 2,
            stop: Arc::default(),
        }
    }
}

/// How alerts are delivered to webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Loopback and private addresses may be targets (tests, single-tenant deployments).
    pub allow_internal: bool,
    /// Retry n waits backoff_base * 2^(n-1), at most backoff_max.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A delivery failing this many times is given up (and shown so in the alert).
    pub max_attempts: i32,
    /// Per request.
    pub timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow_internal: false,
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            // About three days at the default backoff (ten doublings, then hourly), as the big
            // webhook senders keep retrying: a receiver down for a weekend still gets it.
            max_attempts: 80,
            timeout: Duration::from_secs(10),
        }
    }
}
