//! The scheduler: reconciles the database with the queue (plans, enqueues, reclaims, retries,
//! dead-letters) and fans finished audits in (merging shard outputs and rendering the report
//! through `neurodiff_analyses` and `neurodiff_report`, as the embedded audit does); runs the
//! scheduled scans and delivers their alerts to webhooks.
pub mod fanin;
pub mod fsread;
pub mod reaper;
pub mod scans;
pub mod service;
pub mod sources;
pub mod webhooks;
