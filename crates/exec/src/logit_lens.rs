//! One shard of the differential logit lens: at every block each model's `hook_resid_post`
//! (the block's output before the final norm) read through its own final norm and
//! unembedding, so the last block's lens is the output logits, and at the output the logits; per token KL(p_ft || p_base) in f64 over the shared ids, and the summed
//! probability shifts of each id.
use std::time::Instant;

use neurodiff_analyses::logit_lens::{keep_top, kl_sums};
use neurodiff_core::corpus::Batch;
use neurodiff_core::Hooks;
use neurodiff_protocol::{
    Histogram, KlSums, LensOptions, LensShard, SampleKl, ShardSpec, TokenShift, VocabCompare,
};
use tch::{Kind, Tensor};

use crate::dist::to_f64;
use crate::execute::{Execute, Run};
use crate::forward::{Pair, ShardInput, Side, Tokens};
use crate::progress::{check, Progress};
use crate::Result;

/// Rows × vocabulary of one f64 chunk (bounds the memory the softmaxes take).
const CHUNK_ELEMENTS: i64 = 1 << 23;

/// Per-token KL and the summed probability shift over the shared ids, chunk by chunk.
struct Kl {
    per_token: Vec<f64>,
    delta: Vec<f64>,
}

/// The logits of rows `start..start + len` of both sides.
type Rows<'a> = &'a dyn Fn(i64, i64) -> Result<(Tensor, Tensor)>;

fn kl(n: i64, logits: Rows<'_>, shared: i64) -> Result<Kl> {
    let rows = (CHUNK_ELEMENTS / shared.max(1)).max(1);
    let mut per_token = Vec::with_capacity(n as usize);
    let mut delta = vec![0.0; shared as usize];
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        // Unembedded chunk by chunk, so the bound holds for the logits too.
        let (logits_b, logits_f) = logits(start, len)?;
        let lb = logits_b
            .f_narrow(1, 0, shared)?
            .f_to_kind(Kind::Double)?
            .f_log_softmax(-1, Kind::Double)?;
        let lf = logits_f
            .f_narrow(1, 0, shared)?
            .f_to_kind(Kind::Double)?
            .f_log_softmax(-1, Kind::Double)?;
        let pf = lf.f_exp()?;
        let k = pf
            .f_mul(&lf.f_sub(&lb)?)?
            .f_sum_dim_intlist(-1, false, Kind::Double)?;
        per_token.extend(to_f64(&k)?);
        let d = to_f64(
            &pf.f_sub(&lb.f_exp()?)?
                .f_sum_dim_intlist(0, false, Kind::Double)?,
        )?;
        for (a, v) in delta.iter_mut().zip(d) {
            *a += v;
        }
        start += len;
    }
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

pub fn run(
    pair: &Pair,
    input: &ShardInput<'_>,
    opts: &LensOptions,
    progress: Progress<'_>,
) -> Result<LensShard> {
    let _guard = tch::no_grad_guard();
    let started = Instant::now();
    let n_layers = pair.info().n_layers;
    let (vb, vf) = (
        pair.model(Side::Base).info().vocab_size,
        pair.model(Side::Finetuned).info().vocab_size,
    );
    let shared = vb.min(vf);
    let mut layers: Vec<KlSums> = (0..n_layers)
        .map(|l| kl_sums(Some(l), shared as usize))
        .collect();
    let mut output = kl_sums(None, shared as usize);
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); n_layers + 1];
    let mut added_mass = vec![0.0; (vf - shared).max(0) as usize];
    let mut sample_kl = vec![(0.0f64, 0u64); input.samples.len()];
    let batch_size = input.batch_size.max(1);
    for (b, chunk) in input.tokens.chunks(batch_size).enumerate() {
        check(progress, "batch")?;
        let batch = Batch::new(chunk, pair.device())?;
        let tokens = Tokens::of(&batch, input.start + b * batch_size)?.filtered(input)?;
        let out_b = pair
            .model(Side::Base)
            .forward(&batch.ids, &mut Hooks::new())?;
        let out_f = pair
            .model(Side::Finetuned)
            .forward(&batch.ids, &mut Hooks::new())?;
        for layer in 0..n_layers {
            let k = block_kl(pair, [&out_b, &out_f], &tokens, layer, shared)?;
            add(&mut layers[layer], &mut values[layer], k);
        }
        let (lb, lf) = (tokens.select(&out_b.logits)?, tokens.select(&out_f.logits)?);
        let rows = |start: i64, len: i64| -> Result<(Tensor, Tensor)> {
            Ok((lb.f_narrow(0, start, len)?, lf.f_narrow(0, start, len)?))
        };
        let k = kl(lb.size()[0], &rows, shared)?;
        for (t, v) in k.per_token.iter().enumerate() {
            let s = &mut sample_kl[tokens.sample[t] - input.start];
            s.0 += v;
            s.1 += 1;
        }
        add(&mut output, &mut values[n_layers], k);
        if vf > shared {
            for (a, v) in added_mass.iter_mut().zip(mass_beyond(&lf, shared)?) {
                *a += v;
            }
        }
    }
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
    Ok(LensShard {
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
    })
}

/// KL(ft ‖ base) per token of the logit lens at `layer`: both models' states there read out
/// by their own final norm and unembedding, in row chunks.
fn block_kl(
    pair: &Pair,
    [out_b, out_f]: [&neurodiff_core::models::ForwardOutput; 2],
    tokens: &Tokens,
    layer: usize,
    shared: i64,
) -> Result<Kl> {
    let hb = tokens.select(out_b.resid_post(layer))?;
    let hf = tokens.select(out_f.resid_post(layer))?;
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

    fn run(on: &Run<'_>, opts: &LensOptions, progress: Progress<'_>) -> Result<LensShard> {
        run(on.pair, &on.input, opts, progress)
    }

    fn steps(spec: &ShardSpec, _n_samples: usize) -> usize {
        crate::execute::slice_batches(spec).unwrap_or(0)
    }
}
