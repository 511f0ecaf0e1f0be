//! What an analysis that runs the models on corpus text implements on the libtorch side
//! ([`Execute`]), and what its shard runs on ([`Run`]).
use neurodiff_protocol::{LinkShard, Section, ShardKey, ShardSpec};

use crate::link::Chain;
use crate::progress::Progress;
use crate::store::ShardStore;
use crate::{dist, forward, ExecError, Result, Sources};

/// An analysis that runs both models on corpus text, on the libtorch side: its place in the
/// wire types (`neurodiff_protocol::sections::<Kind>`: its options, what one of its shards
/// returns, the same types its description merges), which samples a shard reads, and the run
/// itself.
pub trait Execute {
    type Wire: Section;
    /// Whether a model without blocks is refused (it has nothing to patch, stitch or steer).
    const NEEDS_BLOCKS: bool;
    /// Whether its shards run the block-streamed paired forward ([`crate::stream`]): the
    /// blocks are read as the pass reaches them instead of loaded whole.
    const STREAMS_BLOCKS: bool = false;

    /// Which samples its shard reads: the corpus's first ones when its options ask for their
    /// own count (`AnalysisOptions::samples`), else its shard's slice.
    fn reads(spec: &ShardSpec) -> Read {
        let options = <Self::Wire as Section>::options(&spec.options);
        match neurodiff_protocol::AnalysisOptions::samples(options) {
            Some(n) => Read::Leading(n),
            None => Read::Slice,
        }
    }

    /// Runs one shard: its analysis's shard, or for a layer range before its chain's last
    /// the hand-over to the next link (only an analysis that streams its blocks runs as
    /// layer ranges).
    fn run(
        run: &Run<'_>,
        opts: &Options<Self>,
        progress: Progress<'_>,
    ) -> Result<Step<Shard<Self>>>;

    /// The progress steps of one of its shards over a corpus of `n_samples` (the CLI's bar).
    fn steps(spec: &ShardSpec, n_samples: usize) -> usize;
}

/// How a shard's run ends.
#[derive(Debug)]
pub enum Step<T> {
    /// With its analysis's shard.
    Done(T),
    /// A layer range before its chain's last: with the hand-over it left for the next link.
    Handed(LinkShard),
}

/// The options of analysis `E`.
pub type Options<E> = <<E as Execute>::Wire as Section>::Options;
/// What one shard of analysis `E` returns.
pub type Shard<E> = <<E as Execute>::Wire as Section>::Shard;

/// Forward batches over `n` samples.
pub(crate) fn batches(spec: &ShardSpec, n: usize) -> usize {
    n.div_ceil(spec.corpus.batch_size.max(1))
}

/// Forward batches over a sample shard's (or a layer range's) slice (none for another shard).
pub(crate) fn slice_batches(spec: &ShardSpec) -> Option<usize> {
    spec.shard
        .samples()
        .map(|(start, end)| batches(spec, end.saturating_sub(start)))
}

/// Prompts generated from (none when no token is generated).
pub(crate) fn prompts(g: &neurodiff_protocol::GenerationOptions) -> usize {
    if g.max_new_tokens == 0 {
        0
    } else {
        g.prompts.len()
    }
}

/// What a corpus analysis's shard runs on: the pair and its tokenized samples, the shard's
/// key, and (read when asked) the organism's ground truth and the longest sequence the base
/// embeds.
pub struct Run<'a> {
    pub pair: &'a forward::Pair,
    pub input: forward::ShardInput<'a>,
    pub shard: ShardKey,
    /// The blocks it runs and the hand-overs it reads and leaves (all blocks, none, for any
    /// shard but a layer range).
    pub chain: Chain,
    sources: &'a Sources,
    store: &'a dyn ShardStore,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("shard", &self.shard)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

/// What a [`Run`] is made from besides the pair and its input.
pub(crate) struct RunEnv<'a> {
    pub shard: ShardKey,
    pub chain: Chain,
    pub sources: &'a Sources,
    pub store: &'a dyn ShardStore,
}

impl<'a> Run<'a> {
    pub(crate) fn new(
        pair: &'a forward::Pair,
        input: forward::ShardInput<'a>,
        env: RunEnv<'a>,
    ) -> Self {
        Run {
            pair,
            input,
            shard: env.shard,
            chain: env.chain,
            sources: env.sources,
            store: env.store,
        }
    }

    /// The store the chain's hand-overs live in.
    pub fn store(&self) -> &'a dyn ShardStore {
        self.store
    }

    /// Both sides, opened: what a block-streamed pair reads its blocks from.
    pub fn sources(&self) -> &'a Sources {
        self.sources
    }

    /// The ground truth beside the fine-tune, when it is an organism.
    pub fn ground_truth(&self) -> Option<neurodiff_protocol::GroundTruth> {
        dist::ground_truth(self.sources)
    }

    /// The longest sequence the base embeds (GPT-2's `n_positions`; RoPE models have no hard
    /// limit), bounding generation.
    pub fn max_positions(&self) -> Result<usize> {
        let config = self.sources.base.config_json()?;
        Ok(config
            .get("n_positions")
            .and_then(serde_json::Value::as_u64)
            .map_or(usize::MAX, |n| n as usize))
    }

    /// The block of a shard planned one per block.
    pub fn block(&self) -> Result<usize> {
        block_of(self.shard)
    }
}

/// Which samples of the corpus a shard reads.
#[derive(Debug, Clone, Copy)]
pub enum Read {
    /// Its own slice (`ShardKey::Samples`); the corpus must hold it.
    Slice,
    /// Samples [a, b), as far as the corpus has them.
    Range(usize, usize),
    /// The first n samples (or all, when the corpus has fewer).
    Leading(usize),
}

pub(crate) fn wrong_shape(shard: ShardKey) -> ExecError {
    ExecError::Io(format!(
        "shard {shard}: not a shard of {}",
        shard.analysis()
    ))
}

pub(crate) fn block_of(shard: ShardKey) -> Result<usize> {
    match shard {
        ShardKey::Block { layer, .. } => Ok(layer),
        other => Err(wrong_shape(other)),
    }
}
