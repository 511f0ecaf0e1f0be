//! The shard executor: opens the two models an audit compares and runs each analysis's
//! libtorch half on them, shard by shard. It links no database, queue or HTTP client: the
//! embedded `neurodiff audit` calls it directly and the service's workers
//! (`neurodiff_worker`) call the same functions between leases.
pub mod activations;
pub mod cmap;
pub mod corpus;
pub mod dictionary;
pub mod dist;
mod error;
pub mod execute;
pub mod forward;
pub mod logit_lens;
pub mod plan;
pub mod progress;
pub mod record;
mod shard;
mod sources;
pub mod steering;
pub mod stitching;
pub mod store;
pub mod traces;

pub use error::{ExecError, Result};
pub use execute::{Execute, Run};
pub use plan::{check_limits, hash_sides, plan_audit, Named};
pub use record::Content;
pub use shard::{planned_steps, run_shard};
pub use sources::{OpenTarget, Sources};
