//! The messages of the service: tasks on the work stream (read by workers) and wake-up events
//! on the scheduler's stream. PostgreSQL holds the state; these messages only move work.
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::spec::ShardSpec;

/// The stream the scheduler listens on (wake-ups: an audit was submitted, planned or finished),
/// after the deployment's prefix: `neurodiff:events`.
pub const EVENTS_STREAM: &str = "events";
/// The stream workers read tasks from, after the deployment's prefix: `neurodiff:tasks`.
pub const TASKS_STREAM: &str = "tasks";

/// Work for a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Resolve both models, check they can be compared, count their blocks, hash their files,
    /// and record the shard plan. Only a process that can open the models can do this.
    Plan { audit: Uuid },
    /// Analyse one layer shard.
    Shard { audit: Uuid, spec: Box<ShardSpec> },
}

impl Task {
    pub fn audit(&self) -> Uuid {
        match self {
            Task::Plan { audit } | Task::Shard { audit, .. } => *audit,
        }
    }

    /// `plan` or the shard key, for logs and error messages.
    pub fn label(&self) -> String {
        match self {
            Task::Plan { .. } => "plan".to_string(),
            Task::Shard { spec, .. } => spec.shard.to_string(),
        }
    }
}

/// A task with the number of times it was handed to a worker before (retries are new stream
/// entries, so Redis's own delivery counter restarts with each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub task: Task,
    #[serde(default)]
    pub retries: u32,
    /// When (Unix ms) a worker without the shard's models warm first left it for one that
    /// holds them; 0 if none did. Once the affinity wait has passed since, any worker runs it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferred_since_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Wake-up events kept at most (about) this many; older ones are dropped unread.
pub const EVENTS_MAX_LEN: u64 = 10_000;

/// Why the scheduler is woken; it re-reads the database either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Submitted {
        audit: Uuid,
    },
    Planned {
        audit: Uuid,
    },
    ShardsDone {
        audit: Uuid,
    },
    /// A layer range handed its state on: the next link of its chain can be enqueued.
    Handed {
        audit: Uuid,
    },
}

/// What planning found, stored with the audit for the fan-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub n_layers: usize,
    pub base: crate::results::ModelRecord,
    pub finetuned: crate::results::ModelRecord,
    /// The corpus, when an analysis runs the models; shards check they read the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<crate::CorpusRecord>,
}

/// What getting a shard's models ready cost its worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelsReady {
    /// Seconds spent loading (0 when the worker's model cache held them).
    pub load_s: f64,
    /// Whether the cache held them.
    pub warm: bool,
}
