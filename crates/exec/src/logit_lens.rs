//! One shard of the differential logit lens: at every block each model's `hook_resid_post`
//! (the block's output before the final norm) read through its own final norm and
//! unembedding, so the last block's lens is the output logits, and at the output the logits; per token KL(p_ft || p_base) in f64 over the shared ids, and the summed
//! probability shifts of each id.
use std::time::Instant;

use neurodiff_analyses::logit_lens::{keep_top, kl_sums};
use neurodiff_protocol::{
    Histogram, KlSums, LensOptions, LensShard, SampleKl, ShardSpec, TokenShift, VocabCompare,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::dist::to_f64;
use crate::execute::{Execute, Run, Step};
use crate::forward::{Pair, ShardInput, Side, Tokens};
use crate::progress::Progress;
use crate::stream::{shard_batches, tick_block, PairedPass};
use crate::Result;

/// Rows unembedded at once: each matmul reads the whole head, so it should serve many rows.
const UNEMBED_ROWS: i64 = 64;
/// Rows × vocabulary of one f64 softmax chunk (bounds the memory the softmaxes take).
const SOFTMAX_ELEMENTS: i64 = 1 << 21;

/// Per-token KL and the summed probability shift over the shared ids, chunk by chunk.
#[derive(Clone)]
struct Kl {
    per_token: Vec<f64>,
    delta: Vec<f64>,
}

/// The logits of rows `start..start + len` of both sides.
type Rows<'a> = &'a dyn Fn(i64, i64) -> Result<(Tensor, Tensor)>;

fn kl(n: i64, logits: Rows<'_>, shared: i64) -> Result<Kl> {
    let sub = (SOFTMAX_ELEMENTS / shared.max(1)).max(1);
    let mut per_token = Vec::with_capacity(n as usize);
    let mut delta: Option<Tensor> = None;
    let mut start = 0;
    while start < n {
        let len = UNEMBED_ROWS.min(n - start);
        // Unembedded in row blocks, then softmaxed in f64 in smaller chunks, so both the
        // logits and the f64 copies stay bounded.
        let (logits_b, logits_f) = logits(start, len)?;
        let mut s = 0;
        while s < len {
            let m = sub.min(len - s);
            let log_probs = |l: &Tensor| -> Result<Tensor> {
                Ok(l.f_narrow(0, s, m)?
                    .f_narrow(1, 0, shared)?
                    .f_to_kind(Kind::Double)?
                    .f_log_softmax(-1, Kind::Double)?)
            };
            let (lb, lf) = (log_probs(&logits_b)?, log_probs(&logits_f)?);
            let pf = lf.f_exp()?;
            let k = pf
                .f_mul(&lf.f_sub(&lb)?)?
                .f_sum_dim_intlist(-1, false, Kind::Double)?;
            per_token.extend(to_f64(&k)?);
            let d = pf
                .f_sub(&lb.f_exp()?)?
                .f_sum_dim_intlist(0, false, Kind::Double)?;
            delta = Some(match delta {
                None => d,
                Some(acc) => acc.f_add(&d)?,
            });
            s += m;
        }
        start += len;
    }
    let delta = match delta {
        Some(d) => to_f64(&d)?,
        None => vec![0.0; shared.max(0) as usize],
    };
    Ok(Kl { per_token, delta })
}

fn add(s: &mut KlSums, values: &mut Vec<f64>, k: Kl) {
    s.n += k.per_token.len() as u64;
    s.kl += k.per_token.iter().sum::<f64>();
    values.extend(&k.per_token);
    for (a, v) in s.prob_delta.iter_mut().zip(k.delta) {
        *a += v;
    }
}

pub fn run(on: &Run<'_>, opts: &LensOptions, progress: Progress<'_>) -> Result<Step<LensShard>> {
    let _guard = tch::no_grad_guard();
    let started = Instant::now();
    let (pair, input) = (on.pair, &on.input);
    let n_layers = pair.info().n_layers;
    let (vb, vf) = (
        pair.model(Side::Base).info().vocab_size,
        pair.model(Side::Finetuned).info().vocab_size,
    );
    let shared = vb.min(vf);
    let (batches, tokens) = shard_batches(pair, input)?;
    // A layer range after its chain's first continues its predecessor's sums and streams.
    let resumed = on
        .chain
        .resume::<LensSums>(on.store(), pair, on.sources(), &batches)?;
    let (mut sums, mut pass) = match resumed {
        Some(resumed) => resumed,
        None => (
            LensSums {
                layers: (0..n_layers)
                    .map(|l| kl_sums(Some(l), shared as usize))
                    .collect(),
                output: kl_sums(None, shared as usize),
                values: vec![Vec::new(); n_layers + 1],
                added_mass: vec![0.0; (vf - shared).max(0) as usize],
                sample_kl: vec![(0.0f64, 0u64); input.samples.len()],
            },
            PairedPass::start(pair, on.sources(), &batches)?,
        ),
    };
    // Block by block over every batch (the block-streamed paired forward). The lens at the
    // last block reads its output through the final norm and unembedding: the logits, so the
    // output's KL is the last block's.
    let blocks = on.chain.blocks.clone();
    for layer in blocks.clone() {
        let last = layer + 1 == n_layers;
        pass.advance(|b, base, ft| {
            let k = block_kl(pair, [&base.post, &ft.post], &tokens[b], shared)?;
            if last {
                sums.output(pair, input, &tokens[b], &ft.post, k.clone(), shared)?;
            }
            add(&mut sums.layers[layer], &mut sums.values[layer], k);
            Ok(())
        })?;
        tick_block(progress, layer - blocks.start, blocks.len(), batches.len())?;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    if let Some(link) = on.chain.hand_over(on.store(), &sums, &pass, elapsed_s)? {
        return Ok(Step::Handed(link));
    }
    if n_layers == 0 {
        tick_block(progress, 0, 0, batches.len())?;
        for (b, t) in tokens.iter().enumerate() {
            let [hb, hf] = pass.states(b)?;
            let k = block_kl(pair, [hb, hf], t, shared)?;
            sums.output(pair, input, t, hf, k, shared)?;
        }
    }
    let LensSums {
        mut layers,
        mut output,
        values,
        added_mass,
        sample_kl,
    } = sums;
    for (s, v) in layers.iter_mut().chain([&mut output]).zip(&values) {
        s.hist = Histogram::from_values(v.iter().copied());
    }
    let top_samples = top_samples(input, &sample_kl, opts.top_samples);
    let added = (shared..vf).map(|id| added_token(pair, id)).collect();
    // The text of every shared id, once per audit (the merge has no tokenizer).
    let token_text = if input.start == 0 {
        (0..shared).map(|id| pair.decode(&[id])).collect()
    } else {
        Vec::new()
    };
    Ok(Step::Done(LensShard {
        start: input.start,
        end: input.start + input.samples.len(),
        layers,
        output,
        top_samples,
        added_mass,
        vocab: VocabCompare {
            base_size: vb as usize,
            finetuned_size: vf as usize,
            shared: shared as usize,
            added,
        },
        token_text,
        elapsed_s: started.elapsed().as_secs_f64(),
    }))
}

/// What one shard accumulates: per block and at the output, in sample order (handed on
/// between the links of a chain of layer ranges).
#[derive(Serialize, Deserialize)]
struct LensSums {
    layers: Vec<KlSums>,
    output: KlSums,
    /// Per-token KL values, per block then the output (the histograms).
    values: Vec<Vec<f64>>,
    added_mass: Vec<f64>,
    /// Per sample of the shard: the output KL summed over its tokens, and their count.
    sample_kl: Vec<(f64, u64)>,
}

impl LensSums {
    /// One batch at the output: its per-token KL `k`, and the fine-tune's probability of the
    /// ids beyond the shared vocabulary at its final state `hf` (`[batch, seq, d]`).
    fn output(
        &mut self,
        pair: &Pair,
        input: &ShardInput<'_>,
        tokens: &Tokens,
        hf: &Tensor,
        k: Kl,
        shared: i64,
    ) -> Result<()> {
        for (t, v) in k.per_token.iter().enumerate() {
            let s = &mut self.sample_kl[tokens.sample[t] - input.start];
            s.0 += v;
            s.1 += 1;
        }
        let n = self.layers.len();
        add(&mut self.output, &mut self.values[n], k);
        if !self.added_mass.is_empty() {
            let lf = pair.model(Side::Finetuned).read_out(&tokens.select(hf)?)?;
            for (a, v) in self.added_mass.iter_mut().zip(mass_beyond(&lf, shared)?) {
                *a += v;
            }
        }
        Ok(())
    }
}

/// KL(ft ‖ base) per token of the logit lens at a block: both models' states there (`[batch,
/// seq, d]`, each block's `hook_resid_post`) read out by their own final norm and unembedding,
/// in row chunks.
fn block_kl(pair: &Pair, [hb, hf]: [&Tensor; 2], tokens: &Tokens, shared: i64) -> Result<Kl> {
    let hb = tokens.select(hb)?;
    let hf = tokens.select(hf)?;
    let rows = |start: i64, len: i64| -> Result<(Tensor, Tensor)> {
        Ok((
            pair.model(Side::Base)
                .read_out(&hb.f_narrow(0, start, len)?)?,
            pair.model(Side::Finetuned)
                .read_out(&hf.f_narrow(0, start, len)?)?,
        ))
    };
    kl(hb.size()[0], &rows, shared)
}

/// The fine-tune's probability summed over the rows, of each id beyond the shared vocabulary.
fn mass_beyond(logits: &Tensor, shared: i64) -> Result<Vec<f64>> {
    let p = logits
        .f_to_kind(Kind::Double)?
        .f_softmax(-1, Kind::Double)?;
    let added = p.size()[1] - shared;
    to_f64(
        &p.f_narrow(1, shared, added)?
            .f_sum_dim_intlist(0, false, Kind::Double)?,
    )
}

/// The samples of the shard with the largest mean KL at the output, at most `top`.
fn top_samples(input: &ShardInput<'_>, sample_kl: &[(f64, u64)], top: usize) -> Vec<SampleKl> {
    let mut samples: Vec<SampleKl> = sample_kl
        .iter()
        .enumerate()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(i, (kl, n))| SampleKl {
            sample: input.start + i,
            n_tokens: *n,
            kl_mean: kl / *n as f64,
            text: input.samples[i].chars().take(240).collect(),
        })
        .collect();
    keep_top(&mut samples, top);
    samples
}

/// An id only the fine-tune's vocabulary has, with its text.
fn added_token(pair: &Pair, id: i64) -> TokenShift {
    TokenShift {
        id: id as usize,
        token: pair
            .ft_tokenizer
            .as_ref()
            .map(|t| crate::dist::shown_text(t, &[id as u32]))
            .unwrap_or_else(|| format!("<{id}>")),
        mean_prob_delta: 0.0,
    }
}

/// The differential logit lens on the libtorch side.
#[derive(Debug)]
pub struct LogitLens;

impl Execute for LogitLens {
    type Wire = neurodiff_protocol::sections::LogitLens;
    const NEEDS_BLOCKS: bool = false;
    const STREAMS_BLOCKS: bool = true;

    fn run(on: &Run<'_>, opts: &LensOptions, progress: Progress<'_>) -> Result<Step<LensShard>> {
        run(on, opts, progress)
    }

    fn steps(spec: &ShardSpec, _n_samples: usize) -> usize {
        crate::execute::slice_batches(spec).unwrap_or(0)
    }
}
