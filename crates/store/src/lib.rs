//! I/O adapters. PostgreSQL is the record of truth (teams, tokens, audits, shards fenced by
//! attempt, per-tensor results); Redis Streams carry the shards; object storage keeps artifacts.
pub mod blobs;
pub mod latents;
pub mod pg;
pub mod query;
pub mod queue;
pub mod scans;
pub mod sched;
pub mod shards;
pub mod tokens;

pub use blobs::{artifact_key, shard_result_key, Blobs, ListedObject, StoredObject};
pub use latents::LatentQuery;
pub use neurodiff_protocol::BlockRow;
pub use neurodiff_protocol::LatentRow;
pub use pg::{Admission, AuditFilter, AuditRow, Db, FanIn, Quota, Team, MIGRATOR};
pub use query::{BlockQuery, ResultQuery};
pub use queue::{now_ms, Delivery, Queue, QueueStats, Reclaimed};
pub use scans::{
    DeliveryOutcome, DueDelivery, NewAlert, NewDelivery, PendingRun, RunOutcome, ScanCreated,
    ScanRow,
};
pub use sched::{parse_shard_key, ArtifactRow, Finishing, PendingShard, UnreadableShard};
pub use tokens::{TokenRow, TOKEN_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed; the message is for logs, never for API clients.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} not found")]
    NotFound { what: String },
    /// A write carried an attempt that is no longer the shard's current one.
    #[error("shard {shard} of audit {audit}: attempt {attempt} is stale (current {current})")]
    StaleAttempt {
        audit: uuid::Uuid,
        shard: String,
        attempt: i32,
        current: i32,
    },
    #[error("queue (Redis): {0}")]
    Queue(String),
    #[error("object storage: {0}")]
    Blob(String),
    /// The object store refused the credentials or the access: retrying will not help.
    #[error("object storage: access denied: {0}")]
    Denied(String),
    #[error("invalid: {0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
