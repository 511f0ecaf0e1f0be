//! Serde types shared by every NeuroDiff process (audit specs, shard specs, the API's bodies,
//! the results schema).
//! No libtorch here: the API and scheduler link this crate without linking torch.
pub mod error;
pub mod forward;
pub mod jobs;
pub mod limits;
pub mod naming;
pub mod policy;
pub mod results;
pub mod scan;
pub mod spec;
pub mod tier2;
pub mod tier3;
pub mod views;
pub mod vocab;
pub mod wire;

pub use forward::*;
pub use jobs::{Envelope, Event, PlanRecord, Task, EVENTS_MAX_LEN, EVENTS_STREAM, TASKS_STREAM};
pub use limits::Limits;
pub use policy::{classify, ModelRef, PolicyError, ReferencePolicy};
pub use results::*;
pub use spec::*;
pub use tier2::*;
pub use tier3::*;
pub use views::Vocabulary;
pub use vocab::{
    BlockMetric, BlockSite, Component, HookKind, LatentClass, PatchDirection, StitchDirection,
    TensorMetric, UnknownName,
};
pub use wire::{AuditRequest, AuditStatus, AuditView, Progress};
