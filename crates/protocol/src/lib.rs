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
pub mod policy;
pub mod registry;
pub mod results;
pub mod rows;
pub mod scan;
pub mod spec;
pub mod steering;
pub mod stitching;
pub mod tokens;
pub mod traces;
pub mod views;
pub mod vocab;
pub mod weights;
pub mod wire;

pub use activations::{
    ActivationLayer, ActivationOptions, ActivationsReport, ActivationsShard, DiffSums, Example,
    Histogram, MeanDiff, MeanDiffSums, PositionSums,
};
pub use cmap::{CmapCell, CmapGrade, CmapOptions, CmapReport, CmapShard, CmapSums};
pub use corpus::{
    CorpusOptions, CorpusRecord, TokenFilter, BUILTIN_CHAT_CORPUS, BUILTIN_CORPUS, MAX_BATCH,
    MAX_SAMPLES, MAX_SEQ_LEN,
};
pub use dictionary::{
    real_ft_only, ActivationStore, ClassCounts, CollectShard, DictionaryOptions, DictionaryReport,
    DictionarySection, LatentExample, LatentReport, StoreManifest, StoreSlice, StoredFile,
    TrainPoint, NU_EPS_MAX, NU_R_MAX,
};
pub use error::SpecError;
pub use generation::{Generation, GenerationOptions, MAX_GENERATED_TOKENS};
pub use grades::GroundTruth;
pub use jobs::{
    Envelope, Event, ModelsReady, PlanRecord, Task, EVENTS_MAX_LEN, EVENTS_STREAM, TASKS_STREAM,
};
pub use limits::Limits;
pub use logit_lens::{
    KlSums, LensLayer, LensOptions, LensReport, LensShard, SampleKl, TokenShift, VocabCompare,
};
pub use policy::{classify, ModelRef, PolicyError, ReferencePolicy};
pub use registry::{AnalysisOptions, NoGrade, Section};
pub use results::{AuditResults, FileHash, ModelRecord, RESULTS_SCHEMA_VERSION};
pub use rows::{BlockRow, LatentRow, Rows};
pub use spec::{
    chain_predecessors, layer_ranges, normalize_layers, parse_layers, sample_shards, weight_shards,
    AuditSpec, LinkShard, ShardKey, ShardSpec, ShardUnit, Target, MAX_CORPUS_SHARDS,
    MAX_DICTIONARY_TOKENS, MAX_DICTIONARY_TRAIN_TOKENS, MAX_LAYER_INDEX, MAX_SHARD_TOKENS,
    MAX_TOP_K,
};
pub use steering::{
    SteeringBlock, SteeringChoice, SteeringGrade, SteeringOptions, SteeringPoint, SteeringReport,
    SteeringShard, SteeringVector,
};
pub use stitching::{
    StitchPoint, StitchShard, StitchSums, StitchingGrade, StitchingOptions, StitchingReport,
};
pub use tokens::{TokenList, TokenProb};
pub use traces::{
    Patchscope, ScalePoint, TraceGrade, TraceOptions, TracePosition, TraceShard, TracesGrade,
    TracesReport,
};
pub use views::Vocabulary;
pub use vocab::{
    BlockMetric, BlockSite, Component, Dtype, HookKind, LatentClass, PatchDirection,
    StitchDirection, TensorMetric, UnknownName,
};
pub use weights::{
    relative, AddedRows, LayerMetrics, ModuleMetrics, ShapeMismatch, ShardResult, Spectrum,
    TensorMetrics, WeightOptions, WeightsReport,
};
pub use wire::{AuditRequest, AuditStatus, AuditView, Progress, ShardList, ShardView};

registry::analyses! {
    /// Tier I: per-tensor weight-delta metrics and spectra.
    Weights = "weights" {
        field: weights, unit: Tensors, shard: ShardResult, report: WeightsReport,
        options: WeightOptions,
        grade: NoGrade,
    }
    /// Tier II: differences of both models' activations on a corpus, per block and hook.
    Activations = "activations" {
        field: activations, unit: Samples, shard: ActivationsShard, report: ActivationsReport,
        options: ActivationOptions,
        grade: NoGrade,
    }
    /// Tier II: the differential logit lens, KL(ft || base) per block and at the output.
    LogitLens = "logit-lens" {
        field: logit_lens, unit: Samples, shard: LensShard, report: LensReport,
        options: LensOptions,
        grade: NoGrade,
    }
    /// Tier II: readable traces of the fine-tune (ADL's logit lens and Patchscope of δ_j).
    Traces = "traces" {
        field: traces, unit: Position, shard: TraceShard, report: TracesReport,
        options: TraceOptions,
        grade: TracesGrade,
    }
    /// Tier II: cross-model activation patching, per block and component, both directions.
    Cmap = "cmap" {
        field: cmap, unit: Block, shard: CmapShard, report: CmapReport, options: CmapOptions,
        grade: CmapGrade,
    }
    /// Tier II: model stitching, blocks [0, k) of one model and the rest of the other.
    Stitching = "stitching" {
        field: stitching, unit: Samples, shard: StitchShard, report: StitchingReport,
        options: StitchingOptions,
        grade: StitchingGrade,
    }
    /// Tier II: steering with difference vectors over a grid of strengths, with generations.
    Steering = "steering" {
        field: steering, unit: Block, shard: SteeringShard, report: SteeringReport,
        options: SteeringOptions,
        grade: SteeringGrade,
    }
    /// Tier III: a BatchTopK crosscoder over both models' activations at one block, with
    /// latent scaling and feature attribution.
    Crosscoder = "crosscoder" {
        field: crosscoder, unit: SamplesThenBlock, shard: DictionaryReport,
        report: DictionaryReport, options: DictionaryOptions,
        grade: NoGrade,
    }
    /// Tier III: a BatchTopK SAE on the activation differences h_ft − h_base at one block.
    SaeDiff = "sae-diff" {
        field: sae_diff, unit: SamplesThenBlock, shard: DictionaryReport,
        report: DictionaryReport, options: DictionaryOptions,
        grade: NoGrade,
    }
}

impl AnalysisKind {
    /// What an audit runs when its request names no analysis.
    pub const DEFAULT: AnalysisKind = AnalysisKind::Weights;
    /// The analysis whose shards are tensor shards ([`ShardKey::Layer`] and
    /// [`ShardKey::NonLayer`]).
    pub const BY_TENSOR: AnalysisKind = AnalysisKind::Weights;
}
