//! The analyses NeuroDiff runs, each one module behind [`Analysis`]: how it splits into shards,
//! how its shard outputs merge into its section of results.json, and what its report shows.
//! Planning ([`plan`]) and assembly ([`assemble`]) are written once here and called by the
//! embedded audit and by the service alike. No libtorch: the API and scheduler link this crate;
//! running a shard is the worker's (`neurodiff_exec`, one module per analysis too).
pub mod activations;
pub mod charts;
pub mod cmap;
pub mod dictionary;
pub mod findings;
pub mod flags;
pub mod grade;
pub mod logit_lens;
pub mod steering;
pub mod stitching;
pub mod traces;
pub mod weights;

use neurodiff_protocol::{
    Analyses, AnalysisKind, AuditResults, AuditSpec, Grades, PlanRecord, RequestOptions, ShardKey,
    ShardOutput, ShardSpec, SpecError, RESULTS_SCHEMA_VERSION,
};

pub use charts::ChartError;

/// What planning learnt from the models and the corpus, that shard plans depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFacts {
    pub n_layers: usize,
    /// Samples read from the corpus (`AuditSpec::samples_read` applied); absent without one.
    pub n_samples: Option<usize>,
    /// The base's residual width (`hidden_size` or `n_embd`), when its config says.
    pub d_model: Option<usize>,
    /// Both models' weight bytes of each block (what a layer range holds), when measured.
    pub block_bytes: Vec<u64>,
}

/// A plot of a report: its file name under `plots/`, and the SVG.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub svg: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// The shard outputs cannot be merged (one missing, of another analysis, inconsistent).
    #[error("{analysis}: {message}")]
    Merge {
        analysis: AnalysisKind,
        message: String,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Chart(#[from] ChartError),
}

/// One analysis: its kind and merge ([`Wiring`], which its wire types give), its shards, its
/// plots, report section, finding and grades.
pub trait Analysis: Sync + Wiring {
    /// The shards it splits into; by default, slices of the corpus (`corpus.shard_samples`
    /// samples each).
    fn plan(&self, spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardKey>, AnalysisError> {
        corpus_shards(self.kind(), spec, facts)
    }

    /// Its plots, when its section is present.
    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError>;

    /// Its grades against an organism's ground truth, into `g` (none by default: not every
    /// analysis has a planted answer to be graded against).
    fn grade(&self, _analyses: &Analyses, _truth: grade::Truth<'_>, _g: &mut Grades) {}

    /// Its grades as rows of `neurodiff grade`'s table (check, result).
    fn grade_rows(&self, _g: &Grades) -> Vec<[String; 2]> {
        Vec::new()
    }

    /// The token lists an LLM grader judges against the organism's domain (`neurodiff grade
    /// --llm`), each with its position; none by default.
    fn graded_tokens(&self, _results: &AuditResults) -> Vec<(usize, Vec<String>)> {
        Vec::new()
    }

    /// What it found, in a line (the CLI's summary, report.html's verdict), when its section
    /// is present.
    fn finding(&self, results: &AuditResults) -> Option<findings::Finding>;

    /// Its section of report.html (empty when its section is absent).
    fn html(&self, results: &AuditResults) -> String;

    /// Artifacts besides results.json and the plots (name, bytes).
    fn files(&self, _results: &AuditResults) -> Result<Vec<(String, Vec<u8>)>, AnalysisError> {
        Ok(Vec::new())
    }
}

/// Where an analysis sits in the wire types: its kind, and how its shards' outputs merge into
/// its section. An analysis with its own wire types has it from them ([`Merge`]); the
/// dictionaries, which share theirs, pick by family.
pub trait Wiring {
    fn kind(&self) -> AnalysisKind;

    /// Merges its shards' outputs (in any order) into its section of `into`.
    fn merge(
        &self,
        spec: &AuditSpec,
        outputs: Vec<ShardOutput>,
        into: &mut Analyses,
    ) -> Result<(), AnalysisError>;
}

impl<T: Merge> Wiring for T {
    fn kind(&self) -> AnalysisKind {
        <T::Wire as neurodiff_protocol::Section>::KIND
    }

    fn merge(
        &self,
        spec: &AuditSpec,
        outputs: Vec<ShardOutput>,
        into: &mut Analyses,
    ) -> Result<(), AnalysisError> {
        merge_typed(self, spec, outputs, into)
    }
}

/// A merge error of analysis `A`.
pub(crate) fn merge_err<A: Merge>(message: String) -> AnalysisError {
    AnalysisError::Merge {
        analysis: <A::Wire as neurodiff_protocol::Section>::KIND,
        message,
    }
}

/// An analysis's typed half: what one of its shards returns, its section of results.json, and
/// the merge from the one to the other. [`Analysis::merge`] is this, once each shard output is
/// unwrapped to its type ([`merge_typed`]): no merge picks its variant out of `ShardOutput` or
/// writes its field of `Analyses` by hand.
pub trait Sections {
    /// What one shard returns.
    type Shard;
    /// Its section of results.json.
    type Report;

    /// `output` as one of its shards; none when it is another analysis's.
    fn shard(&self, output: ShardOutput) -> Option<Self::Shard>;

    /// Its section of results.json.
    fn section<'a>(&self, analyses: &'a mut Analyses) -> &'a mut Option<Self::Report>;

    /// Its shards' outputs (in any order) merged into its section.
    fn merge_shards(
        &self,
        spec: &AuditSpec,
        shards: Vec<Self::Shard>,
    ) -> Result<Self::Report, AnalysisError>;
}

/// An analysis with one place in the wire types (`neurodiff_protocol::sections::<Kind>`): its
/// merge from its shards to its report. Its [`Sections`] follow (the shard's variant and the
/// section are the wire type's), so only the dictionaries, which pick theirs by family, write
/// `Sections` by hand.
pub trait Merge {
    type Wire: neurodiff_protocol::Section;

    /// Its shards' outputs (in any order) merged into its section.
    fn merge_shards(
        &self,
        spec: &AuditSpec,
        shards: Vec<<Self::Wire as neurodiff_protocol::Section>::Shard>,
    ) -> Result<<Self::Wire as neurodiff_protocol::Section>::Report, AnalysisError>;
}

impl<T: Merge> Sections for T {
    type Shard = <T::Wire as neurodiff_protocol::Section>::Shard;
    type Report = <T::Wire as neurodiff_protocol::Section>::Report;

    fn shard(&self, output: ShardOutput) -> Option<Self::Shard> {
        <T::Wire as neurodiff_protocol::Section>::shard(output)
    }

    fn section<'a>(&self, analyses: &'a mut Analyses) -> &'a mut Option<Self::Report> {
        <T::Wire as neurodiff_protocol::Section>::section(analyses)
    }

    fn merge_shards(
        &self,
        spec: &AuditSpec,
        shards: Vec<Self::Shard>,
    ) -> Result<Self::Report, AnalysisError> {
        Merge::merge_shards(self, spec, shards)
    }
}

/// [`Analysis::merge`] for an analysis with typed [`Sections`]: every output unwrapped to its
/// shard type (another analysis's output is refused, naming it), merged, and stored as its
/// section.
pub fn merge_typed<A: Wiring + Sections>(
    analysis: &A,
    spec: &AuditSpec,
    outputs: Vec<ShardOutput>,
    into: &mut Analyses,
) -> Result<(), AnalysisError> {
    let shards = outputs
        .into_iter()
        .map(|o| {
            let other = o.kind();
            analysis.shard(o).ok_or_else(|| AnalysisError::Merge {
                analysis: analysis.kind(),
                message: format!("a shard of {other} among its shards"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    *analysis.section(into) = Some(analysis.merge_shards(spec, shards)?);
    Ok(())
}

/// Every analysis, in the order reports show them.
pub static REGISTRY: [&dyn Analysis; 9] = [
    &weights::Weights,
    &activations::Activations,
    &logit_lens::LogitLens,
    &traces::Traces,
    &cmap::Cmap,
    &stitching::Stitching,
    &steering::Steering,
    &dictionary::CROSSCODER,
    &dictionary::SAE_DIFF,
];

/// Every analysis's flags on the command line (`neurodiff audit`, `submit`, `scan create`),
/// which make the request's options.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct AnalysisFlags {
    #[command(flatten)]
    weights: weights::Flags,
    #[command(flatten)]
    activations: activations::Flags,
    #[command(flatten)]
    logit_lens: logit_lens::Flags,
    #[command(flatten)]
    traces: traces::Flags,
    #[command(flatten)]
    cmap: cmap::Flags,
    #[command(flatten)]
    steering: steering::Flags,
    #[command(flatten)]
    generation: flags::GenerationFlags,
    #[command(flatten)]
    dictionary: dictionary::Flags,
}

impl AnalysisFlags {
    /// The request's options these flags give.
    pub fn options(&self) -> Result<RequestOptions, SpecError> {
        let generation = self.generation.options();
        Ok(RequestOptions {
            weights: Some(self.weights.options()),
            activations: Some(self.activations.options()),
            logit_lens: Some(self.logit_lens.options()),
            traces: Some(self.traces.options(generation.clone())),
            cmap: Some(self.cmap.options()),
            stitching: None,
            steering: Some(self.steering.options(generation)?),
            crosscoder: Some(self.dictionary.options()),
            sae_diff: Some(self.dictionary.options()),
        })
    }
}

/// The analysis of `kind`.
pub fn analysis(kind: AnalysisKind) -> &'static dyn Analysis {
    match kind {
        AnalysisKind::Weights => &weights::Weights,
        AnalysisKind::Activations => &activations::Activations,
        AnalysisKind::LogitLens => &logit_lens::LogitLens,
        AnalysisKind::Traces => &traces::Traces,
        AnalysisKind::Cmap => &cmap::Cmap,
        AnalysisKind::Stitching => &stitching::Stitching,
        AnalysisKind::Steering => &steering::Steering,
        AnalysisKind::Crosscoder => &dictionary::CROSSCODER,
        AnalysisKind::SaeDiff => &dictionary::SAE_DIFF,
    }
}

/// The shards of an audit: each analysis it names, in the registry's order.
pub fn plan(spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardSpec>, AnalysisError> {
    let mut shards = Vec::new();
    for a in REGISTRY.iter().filter(|a| spec.runs(a.kind())) {
        for key in a.plan(spec, facts)? {
            shards.push(ShardSpec::of(spec, key));
        }
    }
    Ok(shards)
}

/// results.json from the plan's records and every shard's output (in any order).
pub fn assemble(
    spec: &AuditSpec,
    record: PlanRecord,
    outputs: Vec<ShardOutput>,
    created_unix: u64,
) -> Result<AuditResults, AnalysisError> {
    let mut analyses = Analyses::default();
    let ground_truth = outputs.iter().find_map(ground_truth_of).cloned();
    let n_layers = record.n_layers;
    let mut by_kind: std::collections::BTreeMap<AnalysisKind, Vec<ShardOutput>> =
        Default::default();
    // A link that handed its state on holds no results: its chain's last link returns them.
    for o in outputs
        .into_iter()
        .filter(|o| !matches!(o, ShardOutput::Link(_)))
    {
        by_kind.entry(o.kind()).or_default().push(o);
    }
    for a in REGISTRY.iter().filter(|a| spec.runs(a.kind())) {
        let outputs = by_kind.remove(&a.kind()).unwrap_or_default();
        a.merge(spec, outputs, &mut analyses)?;
    }
    if let Some((kind, _)) = by_kind.into_iter().next() {
        return Err(AnalysisError::Merge {
            analysis: kind,
            message: "a shard of an analysis the audit does not run".into(),
        });
    }
    Ok(AuditResults {
        schema_version: RESULTS_SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix,
        base: record.base,
        finetuned: record.finetuned,
        target: spec.target.clone(),
        corpus: record.corpus,
        grades: ground_truth.map(|g| grade::grade(&analyses, &g, Some(n_layers))),
        analyses,
    })
}

/// The organism ground truth a shard read from the fine-tune's directory, if any.
pub fn ground_truth_of(output: &ShardOutput) -> Option<&neurodiff_protocol::GroundTruth> {
    match output {
        ShardOutput::Traces(s) => s.ground_truth.as_ref(),
        ShardOutput::Cmap(s) => s.ground_truth.as_ref(),
        ShardOutput::Stitching(s) => s.ground_truth.as_ref(),
        ShardOutput::Steering(s) => s.ground_truth.as_ref(),
        ShardOutput::Crosscoder(s) | ShardOutput::SaeDiff(s) => s.ground_truth.as_ref(),
        ShardOutput::Weights(_)
        | ShardOutput::Activations(_)
        | ShardOutput::LogitLens(_)
        | ShardOutput::Collect(_)
        | ShardOutput::Link(_) => None,
    }
}

/// The shards of an analysis that runs the models: slices of the corpus.
pub(crate) fn corpus_shards(
    kind: AnalysisKind,
    spec: &AuditSpec,
    facts: &PlanFacts,
) -> Result<Vec<ShardKey>, AnalysisError> {
    // The corpus may hold more samples than `max_samples` when another analysis asks for its
    // own count (`AuditSpec::samples_read`); these analyses read the first `max_samples`.
    let n = require_corpus(kind, facts)?.min(spec.corpus.max_samples);
    Ok(neurodiff_protocol::sample_shards(
        kind,
        n,
        spec.corpus.shard_samples,
    ))
}

/// The shards of an analysis that runs block-streamed: slices of the corpus, each split
/// into a chain of layer ranges when both models' blocks hold more than `range_bytes` (the
/// links of a slice listed in order, so the embedded audit runs each after its predecessor).
pub(crate) fn streamed_shards(
    kind: AnalysisKind,
    spec: &AuditSpec,
    facts: &PlanFacts,
) -> Result<Vec<ShardKey>, AnalysisError> {
    let slices = corpus_shards(kind, spec, facts)?;
    let total: u64 = facts.block_bytes.iter().sum();
    let ranges = match spec.range_bytes {
        Some(budget) if total > budget && facts.block_bytes.len() > 1 => {
            neurodiff_protocol::layer_ranges(&facts.block_bytes, budget)
        }
        _ => return Ok(slices),
    };
    let links = slices.len().saturating_mul(ranges.len());
    if links > neurodiff_protocol::MAX_CORPUS_SHARDS {
        return Err(AnalysisError::Spec(SpecError::Field(
            "range_bytes".into(),
            format!(
                "{} slices × {} layer ranges = {links} shards for {kind}; the most is {} \
                 (raise range_bytes or corpus.shard_samples)",
                slices.len(),
                ranges.len(),
                neurodiff_protocol::MAX_CORPUS_SHARDS
            ),
        )));
    }
    let mut keys = Vec::with_capacity(links);
    for slice in slices {
        let Some((start, end)) = slice.samples() else {
            keys.push(slice);
            continue;
        };
        keys.extend(ranges.iter().map(|&(first, last)| ShardKey::Range {
            analysis: kind,
            start,
            end,
            first,
            last,
        }));
    }
    Ok(keys)
}

/// The corpus's sample count, which an analysis that runs the models is planned with.
pub(crate) fn require_corpus(
    kind: AnalysisKind,
    facts: &PlanFacts,
) -> Result<usize, AnalysisError> {
    facts.n_samples.ok_or_else(|| AnalysisError::Merge {
        analysis: kind,
        message: "planned without a corpus".into(),
    })
}

/// The block an analysis reads by default (the traces, steering, the dictionaries): the
/// middle one, int(0.5 · (n_blocks − 1)).
pub fn middle_block(n_layers: usize) -> usize {
    n_layers.saturating_sub(1) / 2
}

/// The blocks an analysis that runs block by block covers: `layers`, or all of them.
pub(crate) fn blocks(
    field: &str,
    layers: Option<&[usize]>,
    n_layers: usize,
) -> Result<Vec<usize>, AnalysisError> {
    match layers {
        None => Ok((0..n_layers).collect()),
        Some(l) => match l.iter().find(|&&b| b >= n_layers) {
            Some(b) => Err(AnalysisError::Spec(SpecError::Field(
                field.into(),
                format!("block {b} does not exist; the model has {n_layers}"),
            ))),
            None => Ok(l.to_vec()),
        },
    }
}

/// Checks that sample shards cover `0..n` exactly once, sorted by start.
pub(crate) fn check_cover(
    analysis: AnalysisKind,
    ranges: &mut [(usize, usize)],
) -> Result<usize, AnalysisError> {
    ranges.sort_unstable();
    let mut next = 0;
    for &(start, end) in ranges.iter() {
        if start != next || end <= start {
            return Err(AnalysisError::Merge {
                analysis,
                message: format!(
                    "the shards do not cover the samples once (a shard starts at {start}, \
                     expected {next})"
                ),
            });
        }
        next = end;
    }
    Ok(next)
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use neurodiff_protocol::Target;

    fn planned(range_bytes: Option<u64>, samples: usize) -> Result<Vec<ShardKey>, AnalysisError> {
        let mut spec = AuditSpec::new(
            "b".into(),
            Target::Checkpoint {
                reference: "f".into(),
            },
            vec![AnalysisKind::Activations],
        );
        spec.range_bytes = range_bytes;
        spec.corpus.max_samples = samples;
        spec.corpus.shard_samples = 1;
        let facts = PlanFacts {
            n_layers: 6,
            n_samples: Some(samples),
            d_model: Some(8),
            block_bytes: vec![10; 6],
        };
        streamed_shards(AnalysisKind::Activations, &spec, &facts)
    }

    #[test]
    fn layer_ranges_split_each_slice_and_count_against_the_shard_limit() {
        // No budget, or one the pair fits: one shard per slice.
        assert_eq!(planned(None, 4).unwrap().len(), 4);
        assert_eq!(planned(Some(60), 4).unwrap().len(), 4);
        // 20 bytes: 3 links of 2 blocks per slice, in chain order.
        let keys = planned(Some(20), 4).unwrap();
        assert_eq!(keys.len(), 12);
        assert_eq!(
            keys[1].to_string(),
            "activations/samples-000000-000001/blocks-0002-0004"
        );
        // 1000 slices × 6 one-block links is over the 4096 shards an analysis may have.
        let e = planned(Some(1), 1000).unwrap_err().to_string();
        assert!(
            e.contains("range_bytes") && e.contains("6000 shards"),
            "{e}"
        );
    }
}
