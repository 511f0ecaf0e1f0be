//! Running one shard: the half of each analysis that needs libtorch, one module per analysis
//! (the other half, plans, merges and plots, is `neurodiff_analyses`). The embedded audit and
//! the service's workers call [`run_shard`] alike.
use neurodiff_protocol::{Section, ShardKey, ShardOutput, ShardSpec};
use tch::Device;

use neurodiff_analyses::dictionary::Family;

use crate::cache::{ModelCache, Taken};
use crate::corpus::CorpusText;
use crate::execute::{batches, slice_batches, wrong_shape, Execute, Read, Run, RunEnv, Step};
use crate::link::Chain;
use crate::progress::Progress;
use crate::store::ShardStore;
use crate::{dictionary, dist, forward};
use crate::{ExecError, Result, Sources};

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
            ExecError::Io(
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

/// Runs one shard of any analysis ([`crate::executor`] says how each runs).
pub fn run_shard(
    sources: &Sources,
    spec: &ShardSpec,
    corpus: Option<&CorpusText>,
    env: ShardEnv<'_>,
    progress: Progress<'_>,
) -> Result<ShardOutput> {
    let span = tracing::info_span!("shard", shard = %spec.shard);
    let _entered = span.enter();
    let (store, device) = (env.store, env.device);
    let on_corpus = Corpus {
        sources,
        spec,
        corpus,
        device,
        models: env.models,
        store,
        ready: env.ready,
    };
    let output = match crate::executor(spec.shard.analysis()) {
        Executor::Tensors(t) => t.run(sources, spec, device, progress)?,
        Executor::Corpus(e) => e.run(&on_corpus, progress)?,
        Executor::Dictionary(family) => on_corpus.dictionary(family, store, progress)?,
    };
    tracing::info!(elapsed_s = output.elapsed_s(), "shard done");
    Ok(output)
}

/// Where a shard runs: the store for what outlives it, the device, the models kept warm
/// between shards, and (when the caller keeps it) where the shard notes what getting its
/// models ready cost.
#[derive(Clone, Copy)]
pub struct ShardEnv<'a> {
    pub store: &'a dyn ShardStore,
    pub device: Device,
    pub models: &'a ModelCache,
    pub ready: Option<&'a ReadyNote>,
}

/// What getting a shard's models ready cost, noted by the shard for its caller.
#[derive(Debug, Default)]
pub struct ReadyNote(std::sync::Mutex<Option<neurodiff_protocol::ModelsReady>>);

impl ReadyNote {
    fn note(&self, ready: neurodiff_protocol::ModelsReady) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(ready);
        }
    }

    /// What the shard noted (nothing for a shard that loads no models).
    pub fn take(&self) -> Option<neurodiff_protocol::ModelsReady> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl std::fmt::Debug for ShardEnv<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardEnv")
            .field("device", &self.device)
            .field("models", self.models)
            .finish_non_exhaustive()
    }
}

/// How one analysis's shards run.
pub(crate) enum Executor {
    /// Tensor by tensor, no corpus, behind [`TensorRuns`].
    Tensors(&'static dyn TensorRuns),
    /// A corpus analysis, behind [`Execute`].
    Corpus(&'static dyn Runs),
    /// A dictionary's collect and training shards.
    Dictionary(Family),
}

/// An analysis that runs tensor by tensor on the opened checkpoints, with no corpus.
pub(crate) trait TensorRuns {
    /// One shard's tensors.
    fn run(
        &self,
        sources: &Sources,
        shard: &ShardSpec,
        device: Device,
        on_tensor: Progress<'_>,
    ) -> Result<ShardOutput>;

    /// Its own bounds on the opened models, checked when the audit is planned.
    fn check_limits(
        &self,
        sources: &Sources,
        spec: &neurodiff_protocol::AuditSpec,
        limits: &neurodiff_protocol::Limits,
    ) -> Result<()>;
}

/// [`Execute`] for one analysis, as an object the registry can hand out.
pub(crate) trait Runs {
    fn run(&self, on: &Corpus<'_>, progress: Progress<'_>) -> Result<ShardOutput>;
    fn steps(&self, spec: &ShardSpec, n_samples: usize) -> usize;
}

/// The [`Runs`] of analysis `E`.
pub(crate) struct Exec<E>(pub(crate) std::marker::PhantomData<E>);

impl<E: Execute> Runs for Exec<E> {
    fn run(&self, on: &Corpus<'_>, progress: Progress<'_>) -> Result<ShardOutput> {
        on.run::<E>(progress)
    }

    fn steps(&self, spec: &ShardSpec, n_samples: usize) -> usize {
        E::steps(spec, n_samples)
    }
}

/// A shard that reads the corpus: what it needs to open its pair and samples.
pub(crate) struct Corpus<'a> {
    sources: &'a Sources,
    spec: &'a ShardSpec,
    corpus: Option<&'a CorpusText>,
    device: Device,
    models: &'a ModelCache,
    store: &'a dyn ShardStore,
    ready: Option<&'a ReadyNote>,
}

impl Corpus<'_> {
    fn open(&self, read: Read, streamed: bool) -> Result<CorpusShard<'_>> {
        let loading = forward::Loading {
            dtype: self.spec.dtype,
            streamed,
        };
        let pair = self.models.take(self.sources, self.device, loading)?;
        tracing::info!(load_s = pair.load_s, warm = pair.hit, "models ready");
        if let Some(ready) = self.ready {
            ready.note(neurodiff_protocol::ModelsReady {
                load_s: pair.load_s,
                warm: pair.hit,
            });
        }
        CorpusShard::open(self.sources, self.spec, self.corpus, read, pair)
    }

    /// One shard of `E`: its samples read, the pair opened, then its run.
    fn run<E: Execute>(&self, progress: Progress<'_>) -> Result<ShardOutput> {
        let spec = self.spec;
        if matches!(spec.shard, ShardKey::Range { .. }) && !E::STREAMS_BLOCKS {
            return Err(ExecError::Io(format!(
                "shard {}: {} does not run as layer ranges",
                spec.shard,
                spec.shard.analysis()
            )));
        }
        let mut s = self.open(E::reads(spec), E::STREAMS_BLOCKS)?;
        if E::NEEDS_BLOCKS {
            s = s.with_blocks(spec)?;
        }
        let chain = Chain::of(
            spec,
            s.pair.pair.info().n_layers,
            &self.sources.identity(),
            &s.corpus.record.sha256,
        )?;
        let env = RunEnv {
            shard: spec.shard,
            chain,
            sources: self.sources,
            store: self.store,
        };
        let run = Run::new(&s.pair.pair, s.input(spec), env);
        let options = E::Wire::options(&spec.options);
        let output = match E::run(&run, options, progress)? {
            Step::Done(shard) => E::Wire::output(shard),
            Step::Handed(link) => ShardOutput::Link(link),
        };
        self.models.put_back(s.pair);
        Ok(output)
    }

    /// A crosscoder's or an SAE's shard: a collect shard reads its slice alone, the training
    /// shard the leading samples.
    fn dictionary(
        &self,
        family: Family,
        store: &dyn ShardStore,
        progress: Progress<'_>,
    ) -> Result<ShardOutput> {
        let spec = self.spec;
        let options = family.options(&spec.options);
        let read = match spec.shard {
            ShardKey::Samples { start, end, .. } => Read::Range(start, end),
            ShardKey::Block { .. } => Read::Leading(options.samples),
            other => return Err(wrong_shape(other)),
        };
        let s = self.open(read, false)?.with_blocks(spec)?;
        let identity = self.sources.identity();
        let shard = dictionary::DictShard {
            pair: &s.pair.pair,
            spec,
            identity: &identity,
            corpus: s.corpus,
            tokens: &s.tokens,
            store,
        };
        let output = if let ShardKey::Samples { .. } = spec.shard {
            ShardOutput::Collect(dictionary::collect(shard, progress)?)
        } else {
            family.output(dictionary::train(
                shard,
                dist::ground_truth(self.sources),
                progress,
            )?)
        };
        self.models.put_back(s.pair);
        Ok(output)
    }
}

/// A shard that runs both models on corpus text: the pair and its samples tokenized (only those
/// it reads).
struct CorpusShard<'a> {
    pair: Taken,
    corpus: &'a CorpusText,
    start: usize,
    samples: &'a [String],
    tokens: Vec<Vec<i64>>,
    keep: Option<Vec<Vec<bool>>>,
}

impl<'a> CorpusShard<'a> {
    fn open(
        sources: &Sources,
        spec: &ShardSpec,
        corpus: Option<&'a CorpusText>,
        read: Read,
        pair: Taken,
    ) -> Result<CorpusShard<'a>> {
        let corpus = corpus
            .ok_or_else(|| ExecError::Io(format!("shard {}: no corpus was loaded", spec.shard)))?;
        let n = corpus.samples.len();
        let (start, samples) = match read {
            Read::Slice => {
                let Some((start, end)) = spec.shard.samples() else {
                    return Err(ExecError::Io(format!(
                        "shard {}: {} runs on sample shards",
                        spec.shard,
                        spec.shard.analysis()
                    )));
                };
                let samples = corpus.samples.get(start..end).ok_or_else(|| {
                    ExecError::Io(format!("shard {}: the corpus has {n} samples", spec.shard))
                })?;
                (start, samples)
            }
            Read::Range(a, b) => (0, &corpus.samples[a.min(n)..b.min(n).max(a.min(n))]),
            Read::Leading(k) => (0, &corpus.samples[..k.min(n)]),
        };
        let (tokens, keep) = encode_samples(sources, &pair.pair, corpus, samples, &spec.corpus)?;
        Ok(CorpusShard {
            pair,
            corpus,
            start,
            samples,
            tokens,
            keep,
        })
    }

    /// Refuses a model without blocks (nothing to read, patch, stitch or steer).
    fn with_blocks(self, spec: &ShardSpec) -> Result<CorpusShard<'a>> {
        if self.pair.pair.info().n_layers == 0 {
            return Err(ExecError::Io(format!(
                "shard {}: the model has no blocks",
                spec.shard
            )));
        }
        Ok(self)
    }

    fn input(&self, spec: &ShardSpec) -> forward::ShardInput<'_> {
        forward::ShardInput {
            start: self.start,
            samples: self.samples,
            tokens: &self.tokens,
            keep: self.keep.as_deref(),
            batch_size: spec.corpus.batch_size,
            skip_first: forward::skip_first(spec, &self.pair.pair),
        }
    }
}

/// The progress steps of one shard over a corpus of `n_samples` (the CLI's progress bar).
pub fn planned_steps(spec: &ShardSpec, n_samples: usize) -> usize {
    match crate::executor(spec.shard.analysis()) {
        Executor::Tensors(_) => 0,
        Executor::Corpus(e) => e.steps(spec, n_samples),
        Executor::Dictionary(family) => slice_batches(spec).unwrap_or_else(|| {
            let o = family.options(&spec.options);
            // Collection batches, training steps, evaluation chunks and reported latents.
            batches(spec, o.samples.min(n_samples)) + o.steps + 1 + o.sample_latents
        }),
    }
}
