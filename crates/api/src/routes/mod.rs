//! One module per resource.
pub mod alerts;
pub mod audits;
pub mod blocks;
pub mod health;
pub mod latents;
pub mod metrics;
pub mod results;
pub mod scans;
