//! Serde types shared by every NeuroDiff process (audit specs, shard specs, the API's bodies,
//! the results schema), one module per analysis (its options, shard output and report section)
//! beside the audit-wide ones (spec, results, wire, jobs, scans, views).
//! No libtorch here: the API and scheduler link this crate without linking torch.
pub mod activations;
pub mod cmap;
pub mod corpus;
pub mod dictionary;
pub mod error;
pub mod generation;
pub mod grades;
pub mod jobs;
pub mod limits;
pub mod logit_lens;
pub mod naming;
pub mod options;
pub mod policy;
pub mod results;
pub mod scan;
pub mod spec;
pub mod steering;
pub mod stitching;
pub mod tokens;
pub mod traces;
pub mod views;
pub mod vocab;
pub mod wire;

pub use activations::{
    ActivationLayer, ActivationOptions, ActivationsReport, ActivationsShard, DiffSums, Example,
    Histogram, MeanDiff, MeanDiffSums, PositionSums,
};
pub use cmap::{CmapCell, CmapOptions, CmapReport, CmapShard, CmapSums};
pub use corpus::{
    CorpusOptions, CorpusRecord, TokenFilter, BUILTIN_CHAT_CORPUS, BUILTIN_CORPUS, MAX_BATCH,
    MAX_SAMPLES, MAX_SEQ_LEN,
};
pub use dictionary::{
    real_ft_only, ActivationStore, ClassCounts, CollectShard, DictionaryOptions, DictionaryReport,
    LatentExample, LatentReport, StoreManifest, StoreSlice, StoredFile, TrainPoint, NU_EPS_MAX,
    NU_R_MAX,
};
pub use error::SpecError;
pub use generation::{Generation, GenerationOptions, MAX_GENERATED_TOKENS};
pub use grades::{Grades, GroundTruth, TraceGrade};
pub use jobs::{Envelope, Event, PlanRecord, Task, EVENTS_MAX_LEN, EVENTS_STREAM, TASKS_STREAM};
pub use limits::Limits;
pub use logit_lens::{
    KlSums, LensLayer, LensOptions, LensReport, LensShard, SampleKl, TokenShift, VocabCompare,
};
pub use options::{Options, RequestOptions};
pub use policy::{classify, ModelRef, PolicyError, ReferencePolicy};
pub use results::{
    relative, AddedRows, Analyses, AuditResults, DictionarySection, FileHash, LayerMetrics,
    ModelRecord, ModuleMetrics, ShapeMismatch, ShardOutput, ShardResult, TensorMetrics,
    WeightsReport, RESULTS_SCHEMA_VERSION,
};
pub use spec::{
    normalize_layers, parse_layers, sample_shards, weight_shards, AnalysisKind, AuditSpec,
    ShardKey, ShardSpec, ShardUnit, Spectrum, Target, WeightOptions, MAX_CORPUS_SHARDS,
    MAX_DICTIONARY_TOKENS, MAX_DICTIONARY_TRAIN_TOKENS, MAX_LAYER_INDEX, MAX_SHARD_TOKENS,
    MAX_TOP_K,
};
pub use steering::{
    SteeringBlock, SteeringChoice, SteeringOptions, SteeringPoint, SteeringReport, SteeringShard,
    SteeringVector,
};
pub use stitching::{StitchPoint, StitchShard, StitchSums, StitchingReport};
pub use tokens::{TokenList, TokenProb};
pub use traces::{Patchscope, ScalePoint, TraceOptions, TracePosition, TraceShard, TracesReport};
pub use views::Vocabulary;
pub use vocab::{
    BlockMetric, BlockSite, Component, HookKind, LatentClass, PatchDirection, StitchDirection,
    TensorMetric, UnknownName,
};
pub use wire::{AuditRequest, AuditStatus, AuditView, Progress};
