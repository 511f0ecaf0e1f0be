//! The scheduler: reconciles the database with the queue (plans, enqueues, reclaims, retries,
//! dead-letters) and fans finished audits in (merging shard outputs and rendering the report
//! through `neurodiff_analyses` and `neurodiff_report`, as the embedded audit does).
pub mod fanin;
pub mod reaper;
pub mod service;
