//! Running one shard: the half of each analysis that needs libtorch, one module per analysis
//! (the other half, plans, merges and plots, is `neurodiff_analyses`). The embedded audit and
//! the service's workers call [`run_shard`] alike.
pub mod activations;
pub mod cmap;
pub mod dictionary;
pub mod dist;
pub mod forward;
pub mod logit_lens;
pub mod steering;
pub mod stitching;
pub mod store;
pub mod traces;

use neurodiff_core::CoreError;
use neurodiff_protocol::{AnalysisKind, ShardKey, ShardOutput, ShardSpec};
use tch::Device;

use crate::{Result, Sources, WorkerError};

/// The corpus samples an audit uses, as planning read them.
#[derive(Debug, Clone)]
pub struct CorpusText {
    pub record: neurodiff_protocol::CorpusRecord,
    pub samples: Vec<String>,
    /// The samples are conversations (JSON lines with `messages`), rendered with the base
    /// model's chat template when they are tokenized.
    pub chat: bool,
}

/// The token ids of `samples`, and for a chat corpus which tokens the corpus's token filter
/// keeps (per sample, per token).
#[allow(clippy::type_complexity)]
fn encode_samples(
    sources: &Sources,
    pair: &forward::Pair,
    corpus: &CorpusText,
    samples: &[String],
    opts: &neurodiff_protocol::CorpusOptions,
) -> Result<(Vec<Vec<i64>>, Option<Vec<Vec<bool>>>)> {
    use neurodiff_core::chat::{ChatTemplate, TokenRole};
    use neurodiff_protocol::TokenFilter;
    if !corpus.chat {
        let tokens = neurodiff_core::corpus::encode(&pair.tokenizer, samples, opts.seq_len)?;
        return Ok((tokens, None));
    }
    let template = ChatTemplate::load_guarded(&sources.base_dir, sources.base.guard())?
        .ok_or_else(|| {
            WorkerError::Io(
            "the corpus is chat (`messages`) but the base model has no chat template to render it"
                .into(),
        )
        })?;
    let (tokens, roles) =
        neurodiff_core::chat::encode_corpus(&template, &pair.tokenizer, samples, opts.seq_len)?;
    let wanted = |r: &TokenRole| match opts.token_filter {
        TokenFilter::All => true,
        TokenFilter::Assistant => *r == TokenRole::Assistant,
        TokenFilter::User => *r == TokenRole::User,
        TokenFilter::Template => *r == TokenRole::Template,
    };
    let keep = roles
        .iter()
        .map(|rs| rs.iter().map(wanted).collect())
        .collect();
    Ok((tokens, Some(keep)))
}

/// How a shard reports progress and learns it should stop: called with a unit of work done
/// (a tensor, a batch); returns false to stop.
pub type Progress<'a> = &'a mut (dyn FnMut(&str) -> bool + Send);

/// Runs one shard of any analysis.
pub fn run_shard(
    sources: &Sources,
    spec: &ShardSpec,
    corpus: Option<&CorpusText>,
    store: &dyn store::ShardStore,
    device: Device,
    progress: Progress<'_>,
) -> Result<ShardOutput> {
    let span = tracing::info_span!("shard", shard = %spec.shard);
    let _entered = span.enter();
    let output = match spec.shard.analysis() {
        AnalysisKind::Weights => ShardOutput::Weights(sources.execute(spec, device, progress)?),
        AnalysisKind::Traces
        | AnalysisKind::Cmap
        | AnalysisKind::Steering
        | AnalysisKind::Crosscoder
        | AnalysisKind::SaeDiff => {
            let corpus = corpus.ok_or_else(|| {
                WorkerError::Io(format!("shard {}: no corpus was loaded", spec.shard))
            })?;
            let pair = forward::Pair::load(sources, device)?;
            if pair.info().n_layers == 0 {
                return Err(WorkerError::Io(format!(
                    "shard {}: the model has no blocks",
                    spec.shard
                )));
            }
            // Only the samples the analysis reads are tokenized.
            let needed = match spec.shard.analysis() {
                AnalysisKind::Cmap => spec.cmap.samples,
                AnalysisKind::Steering => spec.steering.samples,
                AnalysisKind::Crosscoder => spec.crosscoder.samples,
                AnalysisKind::SaeDiff => spec.sae_diff.samples,
                _ => spec.traces.samples,
            };
            // A dictionary's collect shard reads its slice alone.
            let range = match spec.shard {
                ShardKey::Samples { start, end, .. } => start..end,
                _ => 0..needed,
            };
            let samples = corpus
                .samples
                .get(range.start.min(corpus.samples.len())..range.end.min(corpus.samples.len()))
                .unwrap_or_default();
            let (tokens, keep) = encode_samples(sources, &pair, corpus, samples, &spec.corpus)?;
            let input = forward::ShardInput {
                start: 0,
                samples,
                tokens: &tokens,
                keep: keep.as_deref(),
                batch_size: spec.corpus.batch_size,
                skip_first: skip_first(spec, &pair),
            };
            let truth = dist::ground_truth(sources);
            let max_len = max_positions(sources)?;
            match spec.shard {
                ShardKey::Block {
                    analysis: AnalysisKind::Cmap,
                    layer,
                } => ShardOutput::Cmap(cmap::run(
                    &pair, layer, &input, &spec.cmap, truth, progress,
                )?),
                ShardKey::Block {
                    analysis: kind @ (AnalysisKind::Crosscoder | AnalysisKind::SaeDiff),
                    ..
                } => {
                    let identity = sources.identity();
                    let report = dictionary::train(
                        &pair, spec, &identity, corpus, &tokens, store, truth, progress,
                    )?;
                    if kind == AnalysisKind::Crosscoder {
                        ShardOutput::Crosscoder(report)
                    } else {
                        ShardOutput::SaeDiff(report)
                    }
                }
                ShardKey::Samples {
                    analysis: AnalysisKind::Crosscoder | AnalysisKind::SaeDiff,
                    ..
                } => ShardOutput::Collect(dictionary::collect(
                    &pair,
                    spec,
                    &sources.identity(),
                    corpus,
                    &tokens,
                    store,
                    progress,
                )?),
                ShardKey::Block {
                    analysis: AnalysisKind::Steering,
                    layer,
                } => ShardOutput::Steering(steering::run(
                    &pair,
                    layer,
                    &input,
                    &spec.steering,
                    max_len,
                    truth,
                    progress,
                )?),
                ShardKey::Position { position, .. } => ShardOutput::Traces(traces::run(
                    &pair,
                    position,
                    &input,
                    &spec.traces,
                    max_len,
                    truth,
                    progress,
                )?),
                other => {
                    return Err(WorkerError::Io(format!(
                        "shard {other}: not a shard of {}",
                        other.analysis()
                    )))
                }
            }
        }
        kind @ (AnalysisKind::Activations | AnalysisKind::LogitLens | AnalysisKind::Stitching) => {
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
            let (tokens, keep) = encode_samples(sources, &pair, corpus, samples, &spec.corpus)?;
            let input = forward::ShardInput {
                start,
                samples,
                tokens: &tokens,
                keep: keep.as_deref(),
                batch_size: spec.corpus.batch_size,
                skip_first: skip_first(spec, &pair),
            };
            match kind {
                AnalysisKind::Activations => ShardOutput::Activations(activations::run(
                    &pair,
                    &input,
                    &spec.activations,
                    progress,
                )?),
                AnalysisKind::Stitching if pair.info().n_layers == 0 => {
                    return Err(WorkerError::Io(format!(
                        "shard {}: the model has no blocks to stitch",
                        spec.shard
                    )))
                }
                AnalysisKind::Stitching => ShardOutput::Stitching(stitching::run(
                    &pair,
                    &input,
                    dist::ground_truth(sources),
                    progress,
                )?),
                _ => ShardOutput::LogitLens(logit_lens::run(
                    &pair,
                    &input,
                    &spec.logit_lens,
                    progress,
                )?),
            }
        }
    };
    tracing::info!(elapsed_s = output.elapsed_s(), "shard done");
    Ok(output)
}

/// The longest sequence the base embeds (GPT-2's `n_positions`; RoPE models have no hard
/// limit), bounding generation.
fn max_positions(sources: &Sources) -> Result<usize> {
    let config = sources.base.config_json()?;
    Ok(config
        .get("n_positions")
        .and_then(serde_json::Value::as_u64)
        .map_or(usize::MAX, |n| n as usize))
}

/// Stops when the caller says so.
pub(crate) fn check(progress: &mut (dyn FnMut(&str) -> bool + Send), what: &str) -> Result<()> {
    if progress(what) {
        Ok(())
    } else {
        Err(WorkerError::Core(CoreError::Interrupted))
    }
}

/// About how many progress steps (batches, generations) a shard of an analysis that runs the
/// models reports, for progress totals; `n_samples`: the corpus samples the audit uses.
pub fn planned_steps(spec: &ShardSpec, n_samples: usize) -> usize {
    let batches = |n: usize| n.div_ceil(spec.corpus.batch_size.max(1));
    let prompts = |g: &neurodiff_protocol::GenerationOptions| {
        if g.max_new_tokens == 0 {
            0
        } else {
            g.prompts.len()
        }
    };
    match spec.shard {
        ShardKey::Samples { start, end, .. } => batches(end - start),
        ShardKey::Block {
            analysis: AnalysisKind::Cmap,
            ..
        } => batches(spec.cmap.samples.min(n_samples)),
        ShardKey::Block {
            analysis: kind @ (AnalysisKind::Crosscoder | AnalysisKind::SaeDiff),
            ..
        } => {
            let o = if kind == AnalysisKind::SaeDiff {
                &spec.sae_diff
            } else {
                &spec.crosscoder
            };
            // Collection batches, training steps, evaluation chunks and reported latents.
            batches(o.samples.min(n_samples)) + o.steps + 1 + o.sample_latents
        }
        ShardKey::Block { .. } => {
            2 * batches(spec.steering.samples.min(n_samples))
                + 4 * prompts(&spec.steering.generation)
        }
        ShardKey::Position { .. } => {
            let n = spec.traces.samples.min(n_samples);
            batches(n.min(256)) + n.div_ceil(256) + 4 + 2 * prompts(&spec.traces.generation)
        }
        ShardKey::Layer(_) | ShardKey::NonLayer => 0,
    }
}

/// The leading positions the BOS-dominated statistics leave out: the request's
/// `corpus.skip_first`, or the tokens the tokenizer prepends.
pub(crate) fn skip_first(spec: &ShardSpec, pair: &forward::Pair) -> usize {
    spec.corpus
        .skip_first
        .unwrap_or_else(|| neurodiff_core::tokenizer::prefix_len(&pair.tokenizer))
}
