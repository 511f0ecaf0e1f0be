//! One shard of the activation analysis: both models on the shard's batches, block by block
//! (the block-streamed paired forward), every hook of every block read, and per token ||h_ft - h_base||, the relative difference and the cosine
//! accumulated (per token in f32, summed in f64, in sample order) with the mean difference vectors and the tokens that
//! differ most.
use std::time::Instant;

use neurodiff_analyses::activations::diff_sums;
use neurodiff_core::HookKind;
use neurodiff_protocol::{
    ActivationOptions, ActivationsShard, DiffSums, Example, Histogram, MeanDiffSums, ShardSpec,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::dist::to_f64;
use crate::execute::{Execute, Run, Step};
use crate::forward::{Pair, ShardInput, Tokens};
use crate::progress::Progress;
use crate::stream::{shard_batches, tick_block, PairedPass};
use crate::Result;

/// A candidate top example before its context is decoded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Candidate {
    diff_norm: f64,
    rel_diff: f64,
    sample: usize,
    position: usize,
}

/// Values below this norm count as zero when dividing (a zero base state).
const TINY: f64 = 1e-30;

pub fn run(
    on: &Run<'_>,
    opts: &ActivationOptions,
    progress: Progress<'_>,
) -> Result<Step<ActivationsShard>> {
    let _guard = tch::no_grad_guard();
    let started = Instant::now();
    let (pair, input) = (on.pair, &on.input);
    let n_layers = pair.info().n_layers;
    let (batches, tokens) = shard_batches(pair, input)?;
    // A layer range after its chain's first continues its predecessor's sums and streams.
    let (mut sums, mut pass) =
        match on
            .chain
            .resume::<Sums>(on.store(), pair, on.sources(), &batches)?
        {
            Some(resumed) => resumed,
            None => {
                let d = pair.info().d_model as usize;
                let mut sums = Sums::new(n_layers, d, opts, input.skip_first);
                for t in &tokens {
                    sums.count(t);
                }
                (sums, PairedPass::start(pair, on.sources(), &batches)?)
            }
        };
    let at = tokens
        .iter()
        .map(|t| At::new(t, sums.mean.positions, pair.device()))
        .collect::<Result<Vec<_>>>()?;
    // Block by block over every batch: per block and hook the batches arrive in sample order,
    // as the sums and the kept values need.
    let blocks = on.chain.blocks.clone();
    for layer in blocks.clone() {
        pass.advance(|b, base, ft| {
            for (h, hook) in HookKind::ALL.into_iter().enumerate() {
                sums.add(layer, h, &at[b], &base.at(hook)?, &ft.at(hook)?)?;
            }
            Ok(())
        })?;
        tick_block(progress, layer - blocks.start, blocks.len(), batches.len())?;
    }
    if blocks.is_empty() {
        tick_block(progress, 0, 0, batches.len())?;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    if let Some(link) = on.chain.hand_over(on.store(), &sums, &pass, elapsed_s)? {
        return Ok(Step::Handed(link));
    }
    sums.finish(pair, input, opts, started).map(Step::Done)
}

/// The batch's kept tokens, with their positions on the device and which of them lie within
/// the position profile.
struct At<'a> {
    tokens: &'a Tokens,
    positions: Tensor,
    early: Tensor,
}

impl<'a> At<'a> {
    fn new(tokens: &'a Tokens, p_max: usize, device: tch::Device) -> Result<Self> {
        let positions = Tensor::from_slice(
            &tokens
                .position
                .iter()
                .map(|&p| p as i64)
                .collect::<Vec<_>>(),
        )
        .f_to_device(device)?;
        let early = positions.f_lt(p_max as i64)?;
        Ok(At {
            tokens,
            positions,
            early,
        })
    }
}

/// What one shard accumulates, per block and hook, in sample order (handed on between the
/// links of a chain of layer ranges).
#[derive(Serialize, Deserialize)]
struct Sums {
    stats: Vec<DiffSums>,
    diff_values: Vec<Vec<f64>>,
    rel_values: Vec<Vec<f64>>,
    candidates: Vec<Vec<Candidate>>,
    mean: MeanDiffSums,
    n_tokens: u64,
    top_examples: usize,
    skip_first: usize,
}

impl Sums {
    fn new(n_layers: usize, d: usize, opts: &ActivationOptions, skip_first: usize) -> Self {
        let p_max = opts.positions;
        let stats: Vec<DiffSums> = (0..n_layers)
            .flat_map(|l| HookKind::ALL.map(move |h| diff_sums(l, h, p_max)))
            .collect();
        let sites = stats.len();
        Sums {
            stats,
            diff_values: vec![Vec::new(); sites],
            rel_values: vec![Vec::new(); sites],
            candidates: vec![Vec::new(); n_layers],
            mean: MeanDiffSums {
                d_model: d,
                n_layers,
                positions: p_max,
                by_position: vec![0.0; n_layers * p_max * d],
                position_counts: vec![0; p_max],
                all: vec![0.0; n_layers * d],
                all_count: 0,
            },
            n_tokens: 0,
            top_examples: opts.top_examples,
            skip_first,
        }
    }

    /// The batch's tokens, in the counts.
    fn count(&mut self, tokens: &Tokens) {
        self.n_tokens += tokens.sample.len() as u64;
        for (p, c) in self.mean.position_counts.iter_mut().enumerate() {
            *c += tokens.position.iter().filter(|&&q| q == p).count() as u64;
        }
        self.mean.all_count += tokens.sample.len() as u64;
    }

    /// Both models' states at one hook (`h`, its index in `HookKind::ALL`) of block `layer`.
    fn add(&mut self, layer: usize, h: usize, at: &At<'_>, xb: &Tensor, xf: &Tensor) -> Result<()> {
        let hook = HookKind::ALL[h];
        let tokens = at.tokens;
        // Per-token reductions in f32 (the states are f32 or narrower): the difference of two
        // nearby f32 values is exact, and a 1e-7 relative error in a norm is far inside the
        // contract's 1e-4; the sums over tokens are f64.
        let xb = tokens.select(xb)?.f_to_kind(Kind::Float)?;
        let xf = tokens.select(xf)?.f_to_kind(Kind::Float)?;
        let diff = xf.f_sub(&xb)?;
        let norm = |t: &Tensor| -> Result<Vec<f64>> {
            to_f64(
                &t.f_square()?
                    .f_sum_dim_intlist(1, false, Kind::Float)?
                    .f_sqrt()?,
            )
        };
        let (dn, bn, fnm) = (norm(&diff)?, norm(&xb)?, norm(&xf)?);
        let dot = to_f64(&xf.f_mul(&xb)?.f_sum_dim_intlist(1, false, Kind::Float)?)?;
        let i = layer * HookKind::ALL.len() + h;
        let s = &mut self.stats[i];
        for t in 0..dn.len() {
            let rel = dn[t] / bn[t].max(TINY);
            // Identical states have cosine 1 exactly, whatever the rounding of the norms.
            let cos = if dn[t] == 0.0 {
                1.0
            } else {
                dot[t] / (bn[t] * fnm[t]).max(TINY)
            };
            s.n += 1;
            s.diff_norm += dn[t];
            s.rel_diff += rel;
            s.cosine += cos;
            s.base_norm += bn[t];
            s.ft_norm += fnm[t];
            let p = tokens.position[t];
            // The distributions and top examples leave out the BOS (its state is the same
            // whatever the text and dominates both); the means keep every token.
            let counted = p >= self.skip_first;
            if counted {
                self.diff_values[i].push(dn[t]);
                self.rel_values[i].push(rel);
            }
            if p < self.mean.positions {
                s.positions.n[p] += 1;
                s.positions.diff_norm[p] += dn[t];
                s.positions.rel_diff[p] += rel;
            }
            if counted && hook == HookKind::ResidPost && self.top_examples > 0 {
                self.candidates[layer].push(Candidate {
                    diff_norm: dn[t],
                    rel_diff: rel,
                    sample: tokens.sample[t],
                    position: p,
                });
            }
        }
        if hook == HookKind::ResidPost {
            self.add_mean(layer, at, &diff)?;
            keep_top(&mut self.candidates[layer], self.top_examples);
        }
        Ok(())
    }

    /// Block `layer`'s residual differences, in the mean difference vectors (per position and
    /// over every token).
    fn add_mean(&mut self, layer: usize, at: &At<'_>, diff: &Tensor) -> Result<()> {
        let (p_max, d) = (self.mean.positions, self.mean.d_model);
        let by_pos = Tensor::f_zeros([p_max as i64, d as i64], (Kind::Float, diff.device()))?
            .f_index_add(
                0,
                &at.positions.f_masked_select(&at.early)?,
                &diff.f_index_select(0, &at.early.f_nonzero()?.f_squeeze_dim(1)?)?,
            )?;
        let by_pos = to_f64(&by_pos)?;
        let start = layer * p_max * d;
        for (a, v) in self.mean.by_position[start..start + p_max * d]
            .iter_mut()
            .zip(by_pos)
        {
            *a += v;
        }
        let all = to_f64(&diff.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        for (a, v) in self.mean.all[layer * d..(layer + 1) * d]
            .iter_mut()
            .zip(all)
        {
            *a += v;
        }
        Ok(())
    }

    /// The shard: the distributions from the kept values, the top examples decoded.
    fn finish(
        mut self,
        pair: &Pair,
        input: &ShardInput<'_>,
        opts: &ActivationOptions,
        started: Instant,
    ) -> Result<ActivationsShard> {
        for (i, s) in self.stats.iter_mut().enumerate() {
            s.diff_hist = Histogram::from_values(self.diff_values[i].iter().copied());
            s.rel_hist = Histogram::from_values(self.rel_values[i].iter().copied());
        }
        let examples = self
            .candidates
            .into_iter()
            .enumerate()
            .flat_map(|(layer, c)| c.into_iter().map(move |c| (layer, c)))
            .map(|(layer, c)| example(pair, input, layer, c, opts.context))
            .collect();
        Ok(ActivationsShard {
            start: input.start,
            end: input.start + input.samples.len(),
            n_tokens: self.n_tokens,
            stats: self.stats,
            examples,
            mean_diff: self.mean,
            elapsed_s: started.elapsed().as_secs_f64(),
        })
    }
}

fn keep_top(c: &mut Vec<Candidate>, k: usize) {
    c.sort_by(|a, b| {
        b.diff_norm
            .total_cmp(&a.diff_norm)
            .then(a.sample.cmp(&b.sample))
            .then(a.position.cmp(&b.position))
    });
    c.truncate(k);
}

fn example(
    pair: &Pair,
    input: &ShardInput<'_>,
    layer: usize,
    c: Candidate,
    context: usize,
) -> Example {
    let ids = &input.tokens[c.sample - input.start];
    let p = c.position;
    let before = pair.decode(&ids[p.saturating_sub(context)..p]);
    let token = pair.decode(&ids[p..=p]);
    let after = pair.decode(&ids[p + 1..(p + 1 + context).min(ids.len())]);
    Example {
        layer,
        hook: HookKind::ResidPost,
        sample: c.sample,
        position: p,
        diff_norm: c.diff_norm,
        rel_diff: c.rel_diff,
        context: format!("{before}[[{token}]]{after}"),
        token,
    }
}

/// Activation differences on the libtorch side.
#[derive(Debug)]
pub struct Activations;

impl Execute for Activations {
    type Wire = neurodiff_protocol::sections::Activations;
    const NEEDS_BLOCKS: bool = false;
    const STREAMS_BLOCKS: bool = true;

    fn run(
        on: &Run<'_>,
        opts: &ActivationOptions,
        progress: Progress<'_>,
    ) -> Result<Step<ActivationsShard>> {
        run(on, opts, progress)
    }

    fn steps(spec: &ShardSpec, _n_samples: usize) -> usize {
        crate::execute::slice_batches(spec).unwrap_or(0)
    }
}
