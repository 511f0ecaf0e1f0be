//! The shard executor: opens the two models an audit compares and runs each analysis's
//! libtorch half on them, shard by shard. It links no database, queue or HTTP client: the
//! embedded `neurodiff audit` calls it directly and the service's workers
//! (`neurodiff_worker`) call the same functions between leases.
pub mod activations;
pub mod cache;
pub mod cmap;
pub mod corpus;
pub mod dictionary;
pub mod dist;
mod error;
pub mod execute;
pub mod forward;
pub mod link;
pub mod logit_lens;
pub mod plan;
pub mod progress;
pub mod record;
mod shard;
mod sources;
pub mod steering;
pub mod stitching;
pub mod store;
pub mod stream;
pub mod traces;
pub mod weights;

pub use cache::ModelCache;
pub use error::{ExecError, Result};
pub use execute::{Execute, Run, Step};
pub use plan::{check_limits, hash_sides, plan_audit, Named};
pub use record::Content;
pub use shard::{planned_steps, run_shard, ReadyNote, ShardEnv};
pub use sources::{OpenTarget, Sources};

use neurodiff_analyses::dictionary::Family;
use neurodiff_protocol::AnalysisKind;
use shard::{Exec, Executor};

/// How each analysis's shards run: the one match over the analyses on this side, so a new
/// analysis does not compile until it is registered here.
fn executor(kind: AnalysisKind) -> Executor {
    use std::marker::PhantomData;
    match kind {
        AnalysisKind::Weights => Executor::Tensors(&weights::Weights),
        AnalysisKind::Activations => {
            Executor::Corpus(&Exec::<activations::Activations>(PhantomData))
        }
        AnalysisKind::LogitLens => Executor::Corpus(&Exec::<logit_lens::LogitLens>(PhantomData)),
        AnalysisKind::Traces => Executor::Corpus(&Exec::<traces::Traces>(PhantomData)),
        AnalysisKind::Cmap => Executor::Corpus(&Exec::<cmap::Cmap>(PhantomData)),
        AnalysisKind::Stitching => Executor::Corpus(&Exec::<stitching::Stitching>(PhantomData)),
        AnalysisKind::Steering => Executor::Corpus(&Exec::<steering::Steering>(PhantomData)),
        AnalysisKind::Crosscoder => Executor::Dictionary(Family::Crosscoder),
        AnalysisKind::SaeDiff => Executor::Dictionary(Family::SaeDiff),
    }
}
