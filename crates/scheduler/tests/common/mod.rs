//! What the scheduler's integration tests share: a context on this test's database, Redis
//! streams of its own and an in-memory object store.
#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)]

use std::time::Duration;

use neurodiff_scheduler::{SchedulerContext, SchedulerSettings};
use neurodiff_store::{Blobs, Db, Queue};
use sqlx::PgPool;

pub async fn context(pool: PgPool, max_deliveries: u32) -> SchedulerContext {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("neurodiff-test:{}", uuid::Uuid::new_v4());
    SchedulerContext {
        db: Db { pool },
        tasks: Queue::connect(&url, &format!("{prefix}:tasks"), 100)
            .await
            .unwrap(),
        events: Queue::connect(&url, &format!("{prefix}:events"), 100)
            .await
            .unwrap(),
        blobs: Blobs::from_url("memory://").unwrap(),
        settings: SchedulerSettings {
            name: "scheduler".into(),
            poll: Duration::from_millis(50),
            lease_timeout: Duration::from_millis(150),
            max_deliveries,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(40),
            reap_every: Duration::from_millis(10),
            max_fanin_bytes: neurodiff_protocol::limits::MAX_FANIN_BYTES,
        },
        scans: Default::default(),
    }
}
