//! One position of the readable traces (ADL): δ_j, the mean over samples of h_ft − h_base at
//! the block's output at position j (each sample cut to the first `positions` tokens: the
//! models are causal, so later tokens cannot change these states), read through the fine-tuned
//! model's logit lens (δ_j and −δ_j), and through its Patchscope: s · δ_j/‖δ_j‖ written into
//! the last token of three identity prompts, for each scale s.
use std::collections::BTreeSet;
use std::time::Instant;

use neurodiff_analyses::traces::{default_layer, overlap20};
use neurodiff_core::corpus::Batch;
use neurodiff_core::{Edit, HookKind, HookPoint, Hooks};
use neurodiff_protocol::{
    GroundTruth, Patchscope, ScalePoint, TokenList, TokenProb, TraceOptions, TracePosition,
    TraceShard,
};
use tch::{Kind, Tensor};

use super::dist::{encode_prompt, top_tokens};
use super::forward::{to_f64, Pair, ShardInput, Side, Tokens};
use super::steering::{block_means, generations_of, scaled_unit};
use super::{check, Progress};
use crate::{Result, WorkerError};

/// The identity prompts of Patchscope: the model continues a pattern of repetition, so what it
/// says after `?` is what the patched state reads as.
pub const IDENTITY_PROMPTS: [&str; 3] = [
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "bear -> bear\n42 -> 42\nblue -> blue\n?",
    "cat -> cat\n7 -> 7\nwater -> water\n?",
];

/// Samples (at full length) from which n̄_ft is measured.
const NORM_SAMPLES: usize = 256;
/// Samples per forward pass of the short δ pass.
const SHORT_BATCH: usize = 256;

pub fn run(
    pair: &Pair,
    position: usize,
    input: &ShardInput<'_>,
    opts: &TraceOptions,
    max_len: usize,
    ground_truth: Option<GroundTruth>,
    progress: Progress<'_>,
) -> Result<TraceShard> {
    let _guard = tch::no_grad_guard();
    let started = Instant::now();
    let layer = opts
        .layer
        .unwrap_or_else(|| default_layer(pair.info().n_layers));
    let point = HookPoint::new(layer, HookKind::ResidPost);
    let n = opts.samples.min(input.tokens.len());
    let norm_samples = &input.tokens[..n.min(NORM_SAMPLES)];
    let nbar_ft = block_means(pair, layer, norm_samples, input.batch_size, None, progress)?.nbar_ft;

    // δ_j over all samples and over the even and the odd ones.
    let d = pair.info().d_model;
    let zeros = || Tensor::f_zeros([d], (Kind::Double, pair.device()));
    let (mut sums, mut counts) = ([zeros()?, zeros()?, zeros()?], [0u64; 3]);
    let short: Vec<Vec<i64>> = input.tokens[..n]
        .iter()
        .map(|t| t[..t.len().min(opts.positions)].to_vec())
        .collect();
    for (b, chunk) in short.chunks(SHORT_BATCH).enumerate() {
        check(progress, "batch")?;
        let batch = Batch::new(chunk, pair.device())?;
        let t = Tokens::of(&batch, b * SHORT_BATCH)?;
        let (xb, xf) = super::forward::paired_at(pair, &batch, &t, point)?;
        let diff = xf
            .f_to_kind(Kind::Double)?
            .f_sub(&xb.f_to_kind(Kind::Double)?)?;
        for (half, keep) in [(0, None), (1, Some(0)), (2, Some(1))] {
            let rows: Vec<i64> = (0..t.position.len())
                .filter(|&i| t.position[i] == position)
                .filter(|&i| keep.is_none_or(|k| t.sample[i] % 2 == k))
                .map(|i| i as i64)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let idx = Tensor::from_slice(&rows).f_to_device(pair.device())?;
            sums[half] = sums[half].f_add(&diff.f_index_select(0, &idx)?.f_sum_dim_intlist(
                0,
                false,
                Kind::Double,
            )?)?;
            counts[half] += rows.len() as u64;
        }
    }
    if counts[0] == 0 {
        return Err(WorkerError::Io(format!(
            "traces: no sample of the corpus reaches position {position}"
        )));
    }
    let mean = |i: usize| sums[i].f_div_scalar(counts[i].max(1) as f64);
    let delta = mean(0)?;
    let ft = pair.model(Side::Finetuned);
    let lens = |v: &Tensor| -> Result<Tensor> {
        let logits = ft.read_out(&v.f_to_kind(Kind::Float)?.f_view([1, 1, d])?)?;
        Ok(logits
            .f_view([-1])?
            .f_to_kind(Kind::Double)?
            .f_softmax(-1, Kind::Double)?)
    };
    let logit_lens = top_tokens(&lens(&delta)?, opts.top_k, &pair.tokenizer)?;
    let negative = top_tokens(&lens(&delta.f_neg()?)?, opts.top_k, &pair.tokenizer)?;
    let ids20 = |v: &Tensor| -> Result<Vec<usize>> {
        Ok(top_tokens(&lens(v)?, 20, &pair.tokenizer)?
            .into_iter()
            .map(|t| t.id)
            .collect())
    };
    let halves = if counts[1] > 0 && counts[2] > 0 {
        [ids20(&mean(1)?)?, ids20(&mean(2)?)?]
    } else {
        [Vec::new(), Vec::new()]
    };
    let half_overlap = overlap20(&halves[0], &halves[1]);
    let (unit, delta_norm) = scaled_unit(&delta, 1.0)?;
    let patchscope = patchscope(pair, point, &unit, opts, progress)?;
    check(progress, "generation")?;
    let steer = unit.f_mul_scalar(nbar_ft * opts.steer_alpha)?;
    let mut steered = Vec::new();
    let alphas: &[f64] = if opts.steer_alpha == 0.0 {
        &[0.0]
    } else {
        &[0.0, opts.steer_alpha]
    };
    for &alpha in alphas {
        let v = steer.f_mul_scalar(if alpha == 0.0 { 0.0 } else { 1.0 })?;
        let hooks = || Hooks::new().add(point, v.shallow_clone());
        steered.extend(generations_of(
            pair,
            Side::Finetuned,
            "finetuned",
            layer,
            alpha,
            &opts.generation,
            &hooks,
            max_len,
            progress,
        )?);
    }
    Ok(TraceShard {
        layer,
        nbar_ft,
        trace: TracePosition {
            position,
            n_samples: counts[0],
            delta_norm,
            logit_lens: TokenList {
                top_tokens: logit_lens,
            },
            negative: TokenList {
                top_tokens: negative,
            },
            patchscope,
            half_top_ids: halves,
            half_overlap,
            steered,
        },
        ground_truth,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Patchscope of the unit direction `unit` over the scale grid; the chosen scale is the one
/// with the most tokens in the top 20 of all three prompts that are not in an unpatched
/// prompt's top 20 (the smallest such scale on ties): agreement across prompts, no LLM.
fn patchscope(
    pair: &Pair,
    point: HookPoint,
    unit: &Tensor,
    opts: &TraceOptions,
    progress: Progress<'_>,
) -> Result<Patchscope> {
    let ft = pair.model(Side::Finetuned);
    let scales = opts.scale_grid();
    let s = scales.len() as i64;
    let d = pair.info().d_model;
    let scale_t = Tensor::from_slice(&scales)
        .f_to_kind(Kind::Float)?
        .f_to_device(pair.device())?
        .f_view([s, 1, 1])?;
    let value = scale_t.f_mul(&unit.f_view([1, 1, d])?)?;
    let mut unpatched: BTreeSet<usize> = BTreeSet::new();
    // [prompt] → [scale] → the top 20 (id, probability) at the last token.
    let mut tops: Vec<Vec<Vec<(usize, f64)>>> = Vec::new();
    let last_block = HookPoint::new(pair.info().n_layers - 1, HookKind::ResidPost);
    for prompt in IDENTITY_PROMPTS {
        check(progress, "patchscope")?;
        let ids = encode_prompt(&pair.tokenizer, prompt)?;
        let last = ids.len() as i64 - 1;
        let one = Tensor::from_slice(&ids).f_to_device(pair.device())?;
        let clean = ft.forward(&one, &mut Hooks::new())?.logits;
        let p = clean
            .f_select(1, last)?
            .f_view([-1])?
            .f_to_kind(Kind::Double)?
            .f_softmax(-1, Kind::Double)?;
        unpatched.extend(
            top_tokens(&p, 20, &pair.tokenizer)?
                .into_iter()
                .map(|t| t.id),
        );
        let batch = one
            .f_unsqueeze(0)?
            .f_expand([s, ids.len() as i64], false)?
            .f_contiguous()?;
        // Only the last token is read out: logits at every position of every scale would be
        // scales × length × vocabulary floats.
        let mut hooks = Hooks::new()
            .edit(
                point,
                Edit::Replace {
                    value: value.shallow_clone(),
                    positions: Some(vec![last]),
                },
            )
            .cache(last_block)
            .without_logits();
        ft.forward(&batch, &mut hooks)?;
        let h = hooks
            .cached(&last_block)
            .ok_or_else(|| WorkerError::Io(format!("{last_block} was not cached")))?
            .f_select(1, last)?;
        let p = ft
            .read_out(&h)?
            .f_to_kind(Kind::Double)?
            .f_softmax(-1, Kind::Double)?;
        let k = 20.min(p.size()[1]);
        let (values, idx) = p.f_topk(k, -1, true, true)?;
        let values = to_f64(&values)?;
        let idx = Vec::<i64>::try_from(&idx.f_flatten(0, -1)?)
            .map_err(neurodiff_core::CoreError::from)?;
        tops.push(
            values
                .chunks(k as usize)
                .zip(idx.chunks(k as usize))
                .map(|(v, i)| {
                    i.iter()
                        .map(|&i| i as usize)
                        .zip(v.iter().copied())
                        .collect()
                })
                .collect(),
        );
    }
    let mut points = Vec::new();
    let mut best: Option<(usize, Vec<usize>)> = None;
    for (si, &scale) in scales.iter().enumerate() {
        let sets: Vec<BTreeSet<usize>> = tops
            .iter()
            .map(|t| t[si].iter().map(|(id, _)| *id).collect())
            .collect();
        let agreed: Vec<usize> = sets[0]
            .iter()
            .copied()
            .filter(|id| sets[1..].iter().all(|s| s.contains(id)))
            .collect();
        let novel = agreed.iter().filter(|id| !unpatched.contains(id)).count();
        points.push(ScalePoint {
            scale,
            agreed: agreed.len(),
            novel,
        });
        if best.as_ref().is_none_or(|(b, _)| novel > points[*b].novel) {
            best = Some((si, agreed));
        }
    }
    let (chosen, agreed) = best.ok_or_else(|| WorkerError::Io("no Patchscope scale".into()))?;
    let mut tokens: Vec<TokenProb> = agreed
        .into_iter()
        .map(|id| TokenProb {
            id,
            token: super::dist::shown_text(&pair.tokenizer, &[id as u32]),
            // Every agreed id is in each prompt's top 20 at this scale.
            prob: tops
                .iter()
                .filter_map(|t| t[chosen].iter().find(|(i, _)| *i == id).map(|(_, p)| *p))
                .sum::<f64>()
                / tops.len() as f64,
        })
        .collect();
    tokens.sort_by(|a, b| b.prob.total_cmp(&a.prob).then(a.id.cmp(&b.id)));
    Ok(Patchscope {
        scale: scales[chosen],
        top_tokens: tokens,
        scales: points,
    })
}
