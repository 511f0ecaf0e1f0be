//! The block-streamed paired forward: both models advance block by block over a shard's
//! batches (block l of the base, block l of the fine-tune, the analysis's statistics of block
//! l, then block l's weights are dropped), so a shard holds the embeddings and heads, two
//! blocks and the residual streams it runs, never two whole models.
use neurodiff_core::corpus::Batch;
use neurodiff_core::{HookKind, HookPoint, Hooks, Pass};
use tch::Tensor;

use crate::forward::{Pair, ShardInput, Side, Tokens};
use crate::progress::{check, Progress};
use crate::{ExecError, Result, Sources};

/// One side's states at one block on one batch: what enters it and what its sublayers add.
#[derive(Debug)]
pub struct BlockStates {
    pub pre: Tensor,
    pub attn_out: Tensor,
    pub mlp_out: Tensor,
    pub post: Tensor,
}

impl BlockStates {
    /// The state at `hook` (`hook_resid_mid` is `resid_pre + attn_out`, the block's own sum).
    pub fn at(&self, hook: HookKind) -> Result<Tensor> {
        Ok(match hook {
            HookKind::ResidPre => self.pre.shallow_clone(),
            HookKind::AttnOut => self.attn_out.shallow_clone(),
            HookKind::ResidMid => self.pre.f_add(&self.attn_out)?,
            HookKind::MlpOut => self.mlp_out.shallow_clone(),
            HookKind::ResidPost => self.post.shallow_clone(),
        })
    }
}

/// Both models' passes over every batch of a shard, advanced together a block at a time.
#[derive(Debug)]
pub struct PairedPass<'a> {
    pair: &'a Pair,
    sources: &'a Sources,
    /// `[base, fine-tune]` per batch.
    passes: Vec<[Pass; 2]>,
    /// The next block to run.
    next: usize,
}

impl<'a> PairedPass<'a> {
    /// Both models' embeddings of every batch.
    pub fn start(pair: &'a Pair, sources: &'a Sources, batches: &[Batch]) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let passes = batches
            .iter()
            .map(|b| {
                Ok([
                    pair.model(Side::Base).start(&b.ids)?,
                    pair.model(Side::Finetuned).start(&b.ids)?,
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PairedPass {
            pair,
            sources,
            passes,
            next: 0,
        })
    }

    /// Both models' passes over `batches` resumed at block `next` from the residual streams
    /// `states` (`[base, fine-tune]` per batch) a previous layer range handed over.
    pub fn resume(
        pair: &'a Pair,
        sources: &'a Sources,
        batches: &[Batch],
        next: usize,
        states: Vec<[Tensor; 2]>,
    ) -> Result<Self> {
        let mut pass = PairedPass::start(pair, sources, batches)?;
        if states.len() != pass.passes.len() {
            return Err(ExecError::Io(format!(
                "{} handed-over states for {} batches",
                states.len(),
                pass.passes.len()
            )));
        }
        for (passes, [base, ft]) in pass.passes.iter_mut().zip(states) {
            passes[0].resume(base)?;
            passes[1].resume(ft)?;
        }
        pass.next = next;
        Ok(pass)
    }

    /// The batches it runs.
    pub fn batches(&self) -> usize {
        self.passes.len()
    }

    /// Runs every batch through the next block of both models, showing `visit` each batch's
    /// states there (`visit(batch, base, fine-tune)`). The block's weights are read for this
    /// call alone (for a block-streamed pair) and their mapped pages released after.
    pub fn advance(
        &mut self,
        mut visit: impl FnMut(usize, &BlockStates, &BlockStates) -> Result<()>,
    ) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let layer = self.next;
        let (pair, sources) = (self.pair, self.sources);
        let started = std::time::Instant::now();
        let weights = [Side::Base, Side::Finetuned].map(|side| {
            pair.model(side)
                .block(layer, pair.checkpoint(sources, side))
        });
        let [wb, wf] = weights;
        let weights = [wb?, wf?];
        let read_s = started.elapsed().as_secs_f64();
        for (b, passes) in self.passes.iter_mut().enumerate() {
            let base = run_side(pair, Side::Base, &mut passes[0], &weights[0], layer)?;
            let ft = run_side(pair, Side::Finetuned, &mut passes[1], &weights[1], layer)?;
            visit(b, &base, &ft)?;
        }
        drop(weights);
        if !pair.model(Side::Base).is_resident() {
            sources.release_pages();
        }
        tracing::debug!(
            block = layer,
            read_s,
            run_s = started.elapsed().as_secs_f64() - read_s,
            "block done"
        );
        self.next += 1;
        Ok(())
    }

    /// Batch `b`'s residual states `[base, fine-tune]` after the blocks run so far.
    pub fn states(&self, b: usize) -> Result<[&Tensor; 2]> {
        let p = self
            .passes
            .get(b)
            .ok_or_else(|| ExecError::Io(format!("no batch {b} in the pass")))?;
        Ok([p[0].state(), p[1].state()])
    }
}

/// One side's pass through block `layer`, its sublayer outputs cached.
fn run_side(
    pair: &Pair,
    side: Side,
    pass: &mut Pass,
    weights: &neurodiff_core::BlockWeights<'_>,
    layer: usize,
) -> Result<BlockStates> {
    let (attn, mlp) = (
        HookPoint::new(layer, HookKind::AttnOut),
        HookPoint::new(layer, HookKind::MlpOut),
    );
    let pre = pass.state().shallow_clone();
    let mut hooks = Hooks::new().cache(attn).cache(mlp);
    // The adapter's switch is set by `model(side)`, right before the block runs.
    pair.model(side).advance(pass, weights, &mut hooks)?;
    let mut cache = hooks.take_cache();
    let mut take = |point: HookPoint| {
        cache
            .remove(&point)
            .ok_or_else(|| ExecError::Io(format!("the model did not expose {point}")))
    };
    Ok(BlockStates {
        pre,
        attn_out: take(attn)?,
        mlp_out: take(mlp)?,
        post: pass.state().shallow_clone(),
    })
}

/// The shard's batches on the device and their kept tokens.
pub fn shard_batches(pair: &Pair, input: &ShardInput<'_>) -> Result<(Vec<Batch>, Vec<Tokens>)> {
    let batch_size = input.batch_size.max(1);
    let mut batches = Vec::new();
    let mut tokens = Vec::new();
    for (b, chunk) in input.tokens.chunks(batch_size).enumerate() {
        let batch = Batch::new(chunk, pair.device())?;
        tokens.push(Tokens::of(&batch, input.start + b * batch_size)?.filtered(input)?);
        batches.push(batch);
    }
    Ok((batches, tokens))
}

/// Ticks `progress` so that a shard of `batches` batches over `blocks` blocks reports its
/// planned `batches` steps spread over the blocks: after block l, `(l + 1) · batches / blocks`
/// (all of them at once for a model without blocks).
pub fn tick_block(
    progress: Progress<'_>,
    block: usize,
    blocks: usize,
    batches: usize,
) -> Result<()> {
    let after_block = |l: usize| (l * batches).checked_div(blocks).unwrap_or(batches);
    let (before, after) = if blocks == 0 {
        (0, batches)
    } else {
        (after_block(block), after_block(block + 1))
    };
    for _ in before..after {
        check(progress, "batch")?;
    }
    Ok(())
}
