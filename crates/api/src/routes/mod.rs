//! One module per resource.
pub mod audits;
pub mod blocks;
pub mod health;
pub mod results;
