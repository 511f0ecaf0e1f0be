//! One module per resource.
pub mod audits;
pub mod health;
pub mod results;
