//! The service's worker process: pulls tasks from the Redis work stream, holds a lease on each,
//! opens every model and corpus under the reference policy, and hands the analyses to the
//! executor (`neurodiff_exec`), recording results in PostgreSQL and object storage.
mod affinity;
mod blob_store;
pub mod confine;
mod context;
pub mod corpus;
pub mod lease;
pub mod materialize;
mod plan;
pub mod service;
mod shard;

pub use blob_store::BlobStore;
pub use context::{WorkerContext, WorkerSettings};
