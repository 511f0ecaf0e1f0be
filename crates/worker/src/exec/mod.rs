//! Running one shard: the half of each analysis that needs libtorch, one module per analysis
//! (the other half, plans, merges and plots, is `neurodiff_analyses`). The embedded audit and
//! the service's workers call [`run_shard`] alike.
pub mod activations;
pub mod forward;
pub mod logit_lens;

use neurodiff_core::CoreError;
use neurodiff_protocol::{AnalysisKind, ShardKey, ShardOutput, ShardSpec};
use tch::Device;

use crate::{Result, Sources, WorkerError};

/// The corpus samples an audit uses, as planning read them.
#[derive(Debug, Clone)]
pub struct CorpusText {
    pub record: neurodiff_protocol::CorpusRecord,
    pub samples: Vec<String>,
}

/// How a shard reports progress and learns it should stop: called with a unit of work done
/// (a tensor, a batch); returns false to stop.
pub type Progress<'a> = &'a mut (dyn FnMut(&str) -> bool + Send);

/// Runs one shard of any analysis.
pub fn run_shard(
    sources: &Sources,
    spec: &ShardSpec,
    corpus: Option<&CorpusText>,
    device: Device,
    progress: Progress<'_>,
) -> Result<ShardOutput> {
    let span = tracing::info_span!("shard", shard = %spec.shard);
    let _entered = span.enter();
    let output = match spec.shard.analysis() {
        kind @ (AnalysisKind::Traces
        | AnalysisKind::Cmap
        | AnalysisKind::Stitching
        | AnalysisKind::Steering) => {
            return Err(WorkerError::Io(format!("{kind}: not built yet")))
        }
        AnalysisKind::Weights => ShardOutput::Weights(sources.execute(spec, device, progress)?),
        kind @ (AnalysisKind::Activations | AnalysisKind::LogitLens) => {
            let ShardKey::Samples { start, end, .. } = spec.shard else {
                return Err(WorkerError::Io(format!(
                    "shard {}: {kind} runs on sample shards",
                    spec.shard
                )));
            };
            let corpus = corpus.ok_or_else(|| {
                WorkerError::Io(format!("shard {}: no corpus was loaded", spec.shard))
            })?;
            let samples = corpus.samples.get(start..end).ok_or_else(|| {
                WorkerError::Io(format!(
                    "shard {}: the corpus has {} samples",
                    spec.shard,
                    corpus.samples.len()
                ))
            })?;
            let pair = forward::Pair::load(sources, device)?;
            let tokens =
                neurodiff_core::corpus::encode(&pair.tokenizer, samples, spec.corpus.seq_len)?;
            let input = forward::ShardInput {
                start,
                samples,
                tokens: &tokens,
                batch_size: spec.corpus.batch_size,
            };
            if kind == AnalysisKind::Activations {
                ShardOutput::Activations(activations::run(
                    &pair,
                    &input,
                    &spec.activations,
                    progress,
                )?)
            } else {
                ShardOutput::LogitLens(logit_lens::run(&pair, &input, &spec.logit_lens, progress)?)
            }
        }
    };
    tracing::info!(elapsed_s = output.elapsed_s(), "shard done");
    Ok(output)
}

/// Stops when the caller says so.
pub(crate) fn check(progress: &mut (dyn FnMut(&str) -> bool + Send), what: &str) -> Result<()> {
    if progress(what) {
        Ok(())
    } else {
        Err(WorkerError::Core(CoreError::Interrupted))
    }
}
