//! The scheduler: reconciles the database with the queue (plans, enqueues, reclaims, retries,
//! dead-letters) and fans finished audits in (merging shard outputs and rendering the report
//! through `neurodiff_analyses` and `neurodiff_report`, as the embedded audit does); runs the
//! scheduled scans and delivers their alerts to webhooks.
pub mod context;
pub mod fanin;
pub mod fsread;
pub mod reaper;
pub mod scans;
pub mod service;
pub mod sightings;
pub mod sources;
pub mod webhooks;

pub use context::{ScanSettings, SchedulerContext, SchedulerSettings, WebhookSettings};
