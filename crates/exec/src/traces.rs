//! One position of the readable traces (ADL): δ_j, the mean over samples of h_ft − h_base at
//! the block's output at position j (each sample cut to the first `positions` tokens: the
//! models are causal, so later tokens cannot change these states), read through the fine-tuned
//! model's logit lens (δ_j, and the negated normed δ_j), and through its Patchscope:
//! s · n̄_ft · δ_j/‖δ_j‖ written into the last token of three identity prompts, for each scale s
//! (the diffing toolkit's activation difference lens, `src/diffing/methods/
//! activation_difference_lens/`; docs/results-schema.md lists where NeuroDiff differs).
use std::collections::BTreeSet;
use std::time::Instant;

use neurodiff_analyses::middle_block;
use neurodiff_analyses::traces::overlap20;
use neurodiff_core::corpus::Batch;
use neurodiff_core::{Edit, HookKind, HookPoint, Hooks};
use neurodiff_protocol::{
    Generation, GroundTruth, Patchscope, ScalePoint, ShardKey, ShardSpec, TokenList, TraceOptions,
    TracePosition, TraceShard,
};
use tch::{Kind, Tensor};

use crate::dist::{encode_prompt, top_tokens};
use crate::execute::{wrong_shape, Execute, Run};
use crate::forward::{Pair, ShardInput, Side, Tokens};
use crate::progress::{check, Progress};
use crate::steering::{block_means, generations_of, scaled_unit, Steered};
use crate::{ExecError, Result};

/// The identity prompts of Patchscope: the model continues a pattern of repetition, so what it
/// says after `?` is what the patched state reads as. The diffing toolkit's three
/// (`default_id_prompt_targets` in `src/diffing/utils/model.py`).
pub const IDENTITY_PROMPTS: [&str; 3] = [
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "bear -> bear\n42 -> 42\nblue -> blue\n?",
    "921 -> 921\ntarget -> target\nanna -> anna\n?",
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
        .unwrap_or_else(|| middle_block(pair.info().n_layers));
    let point = HookPoint::new(layer, HookKind::ResidPost);
    let n = opts.samples.min(input.tokens.len());
    let norm_samples = &input.tokens[..n.min(NORM_SAMPLES)];
    let nbar_ft = block_means(
        pair,
        layer,
        norm_samples,
        input.batch_size,
        (None, 0),
        progress,
    )?
    .nbar_ft;

    let d = pair.info().d_model;
    let Deltas { sums, counts } =
        deltas(pair, point, position, &input.tokens[..n], opts, progress)?;
    let mean = |i: usize| sums[i].f_div_scalar(counts[i].max(1) as f64);
    let delta = mean(0)?;
    let ft = pair.model(Side::Finetuned);
    // The toolkit's `logit_lens` (src/diffing/utils/model.py): the fine-tune's final norm of δ,
    // then its unembedding of that (`sign` 1) or of its negation (−1: the norm is applied
    // before negating, which differs from the lens of −δ where the norm has a bias).
    let signed_lens = |v: &Tensor, sign: f64| -> Result<Tensor> {
        let normed = ft.final_norm(&v.f_to_kind(Kind::Float)?.f_view([1, 1, d])?)?;
        let logits = ft.unembed(&normed.f_mul_scalar(sign)?)?;
        Ok(logits
            .f_view([-1])?
            .f_to_kind(Kind::Double)?
            .f_softmax(-1, Kind::Double)?)
    };
    let lens = |v: &Tensor| signed_lens(v, 1.0);
    let logit_lens = top_tokens(&lens(&delta)?, opts.top_k, &pair.tokenizer)?;
    let negative = top_tokens(&signed_lens(&delta, -1.0)?, opts.top_k, &pair.tokenizer)?;
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
    // δ at the fine-tune's natural norm: Patchscope's s = 1 and steering's α = 1 (the toolkit's
    // `use_normalized`).
    let (natural, delta_norm) = scaled_unit(&delta, nbar_ft)?;
    let patchscope = patchscope(pair, point, &natural, opts, progress)?;
    check(progress, "generation")?;
    let steered = steered(pair, point, &natural, opts, max_len, progress)?;
    Ok(TraceShard {
        layer,
        nbar_ft,
        skip_first: input.skip_first,
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

/// δ_j's sums over all samples and over the even and the odd ones, and their counts.
struct Deltas {
    sums: [Tensor; 3],
    counts: [u64; 3],
}

/// The fine-tune's minus the base's state at `point` and `position`, summed over `tokens` (each
/// cut to `opts.positions`) and over its even and odd samples.
fn deltas(
    pair: &Pair,
    point: HookPoint,
    position: usize,
    tokens: &[Vec<i64>],
    opts: &TraceOptions,
    progress: Progress<'_>,
) -> Result<Deltas> {
    let d = pair.info().d_model;
    let zeros = || Tensor::f_zeros([d], (Kind::Double, pair.device()));
    let (mut sums, mut counts) = ([zeros()?, zeros()?, zeros()?], [0u64; 3]);
    let short: Vec<Vec<i64>> = tokens
        .iter()
        .map(|t| t[..t.len().min(opts.positions)].to_vec())
        .collect();
    for (b, chunk) in short.chunks(SHORT_BATCH).enumerate() {
        check(progress, "batch")?;
        let batch = Batch::new(chunk, pair.device())?;
        let t = Tokens::of(&batch, b * SHORT_BATCH)?;
        let (xb, xf) = crate::forward::paired_at(pair, &batch, &t, point)?;
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
    Ok(Deltas { sums, counts })
}

/// The fine-tune's generations unsteered and steered with δ at `opts.steer_alpha` (at the
/// fine-tune's natural norm, `natural`).
fn steered(
    pair: &Pair,
    point: HookPoint,
    natural: &Tensor,
    opts: &TraceOptions,
    max_len: usize,
    progress: Progress<'_>,
) -> Result<Vec<Generation>> {
    let steer = natural.f_mul_scalar(opts.steer_alpha)?;
    let mut steered = Vec::new();
    let alphas: &[f64] = if opts.steer_alpha == 0.0 {
        &[0.0]
    } else {
        &[0.0, opts.steer_alpha]
    };
    for &alpha in alphas {
        let v = steer.f_mul_scalar(if alpha == 0.0 { 0.0 } else { 1.0 })?;
        let hooks = || Hooks::new().add(point, v.shallow_clone());
        let who = Steered {
            side: Side::Finetuned,
            model: "finetuned",
            layer: point.layer,
            alpha,
            hooks: &hooks,
        };
        steered.extend(generations_of(
            pair,
            &who,
            &opts.generation,
            max_len,
            progress,
        )?);
    }
    Ok(steered)
}

/// Each prompt's top tokens the toolkit intersects (`patchscope_lens`' `intersection_top_k`).
const INTERSECTION_TOP_K: i64 = 16384;
/// Tokens kept per scale (the toolkit's `tokens_k`).
const PATCHSCOPE_TOKENS: i64 = 20;

/// Patchscope of `v` (δ/‖δ‖ rescaled to n̄_ft) over the scale grid, as the diffing toolkit's
/// `run_auto_patch_scope_for_position` runs it: s · v replaces the fine-tune's state at the
/// block's output at the last token of each identity prompt; a token is kept at a scale when it
/// is in the top 16384 of every prompt, ranked by its mean probability over the prompts, and the
/// 20 best are listed. The toolkit picks the scale with an LLM grader; NeuroDiff picks the one
/// with the most tokens in the top 20 of all three prompts that are not in an unpatched prompt's
/// top 20 (the smallest such scale on ties): agreement across prompts, no LLM.
fn patchscope(
    pair: &Pair,
    point: HookPoint,
    v: &Tensor,
    opts: &TraceOptions,
    progress: Progress<'_>,
) -> Result<Patchscope> {
    let scales = opts.scale_grid();
    let s = scales.len() as i64;
    let d = pair.info().d_model;
    let scale_t = Tensor::from_slice(&scales)
        .f_to_kind(Kind::Float)?
        .f_to_device(pair.device())?
        .f_view([s, 1, 1])?;
    let patch = Patch {
        pair,
        point,
        value: scale_t.f_mul(&v.f_view([1, 1, d])?)?,
        scales: s,
    };
    let mut unpatched: BTreeSet<usize> = BTreeSet::new();
    // [prompt] → [scale] → the ids of the top 20 at the last token.
    let mut tops: Vec<Vec<BTreeSet<usize>>> = Vec::new();
    // Summed top-k probabilities and how many prompts have each id in their top k, [S, V].
    let (mut cum, mut count): (Option<Tensor>, Option<Tensor>) = (None, None);
    for prompt in IDENTITY_PROMPTS {
        check(progress, "patchscope")?;
        let pass = patch.prompt(prompt)?;
        unpatched.extend(pass.unpatched);
        tops.push(pass.top20);
        let sum = |acc: Option<Tensor>, x: Tensor| -> Result<Tensor> {
            Ok(match acc {
                Some(c) => c.f_add(&x)?,
                None => x,
            })
        };
        cum = Some(sum(cum, pass.probs)?);
        count = Some(sum(count, pass.hits)?);
    }
    let (cum, count) = cum
        .zip(count)
        .ok_or_else(|| ExecError::Io("no Patchscope prompt".into()))?;
    let prompts = IDENTITY_PROMPTS.len() as f64;
    // Mean probability over the prompts of the ids in every prompt's top k, 0 elsewhere.
    let score = cum
        .f_div_scalar(prompts)?
        .f_mul(&count.f_ge(prompts - 0.5)?.f_to_kind(Kind::Double)?)?;
    let points = scale_points(&scales, &tops, &unpatched);
    let chosen = (0..points.len())
        .fold(None, |best: Option<usize>, i| match best {
            Some(b) if points[b].novel >= points[i].novel => Some(b),
            _ => Some(i),
        })
        .ok_or_else(|| ExecError::Io("no Patchscope scale".into()))?;
    let row = score.f_select(0, chosen as i64)?;
    let tokens = top_tokens(&row, PATCHSCOPE_TOKENS as usize, &pair.tokenizer)?
        .into_iter()
        .filter(|t| t.prob > 0.0)
        .collect();
    Ok(Patchscope {
        scale: scales[chosen],
        top_tokens: tokens,
        scales: points,
    })
}

/// The patch of Patchscope: `value` ([scales, 1, d], each scale times the direction) in place
/// of the fine-tune's state at `point`, at an identity prompt's last token.
struct Patch<'a> {
    pair: &'a Pair,
    point: HookPoint,
    value: Tensor,
    scales: i64,
}

/// What one identity prompt gave: the unpatched top 20's ids, each scale's top 20 ids, and
/// each scale's top-k probabilities and hits (1 where an id is in the top k), [S, V].
struct PromptPass {
    unpatched: Vec<usize>,
    top20: Vec<BTreeSet<usize>>,
    probs: Tensor,
    hits: Tensor,
}

impl Patch<'_> {
    fn prompt(&self, prompt: &str) -> Result<PromptPass> {
        let (pair, ft) = (self.pair, self.pair.model(Side::Finetuned));
        let last_block = HookPoint::new(pair.info().n_layers - 1, HookKind::ResidPost);
        let ids = encode_prompt(&pair.tokenizer, prompt)?;
        let last = ids.len() as i64 - 1;
        let one = Tensor::from_slice(&ids).f_to_device(pair.device())?;
        let clean = ft.forward(&one, &mut Hooks::new())?.logits;
        let p = clean
            .f_select(1, last)?
            .f_view([-1])?
            .f_to_kind(Kind::Double)?
            .f_softmax(-1, Kind::Double)?;
        let unpatched = top_tokens(&p, 20, &pair.tokenizer)?;
        let batch = one
            .f_unsqueeze(0)?
            .f_expand([self.scales, ids.len() as i64], false)?
            .f_contiguous()?;
        // Only the last token is read out: logits at every position of every scale would be
        // scales × length × vocabulary floats.
        let mut hooks = Hooks::new()
            .edit(
                self.point,
                Edit::Replace {
                    value: self.value.shallow_clone(),
                    positions: Some(vec![last]),
                },
            )
            .cache(last_block)
            .without_logits();
        ft.forward(&batch, &mut hooks)?;
        let h = hooks
            .cached(&last_block)
            .ok_or_else(|| ExecError::Io(format!("{last_block} was not cached")))?
            .f_select(1, last)?;
        let p = ft
            .read_out(&h)?
            .f_to_kind(Kind::Double)?
            .f_softmax(-1, Kind::Double)?;
        let (_, idx20) = p.f_topk(PATCHSCOPE_TOKENS.min(p.size()[1]), -1, true, true)?;
        let (values, idx) = p.f_topk(INTERSECTION_TOP_K.min(p.size()[1]), -1, true, true)?;
        let zeros = p.f_zeros_like()?;
        Ok(PromptPass {
            unpatched: unpatched.into_iter().map(|t| t.id).collect(),
            top20: id_rows(&idx20)?,
            probs: zeros.f_scatter(1, &idx, &values)?,
            hits: zeros.f_scatter(1, &idx, &values.f_ones_like()?)?,
        })
    }
}

/// Each scale's agreement: the ids in the top 20 of every prompt, and how many of them no
/// unpatched prompt has in its top 20.
fn scale_points(
    scales: &[f64],
    tops: &[Vec<BTreeSet<usize>>],
    unpatched: &BTreeSet<usize>,
) -> Vec<ScalePoint> {
    let mut points = Vec::new();
    for (si, &scale) in scales.iter().enumerate() {
        let sets: Vec<&BTreeSet<usize>> = tops.iter().map(|t| &t[si]).collect();
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
    }
    points
}

/// The ids of each row of a `[rows, k]` index tensor, as sets.
fn id_rows(idx: &Tensor) -> Result<Vec<BTreeSet<usize>>> {
    let k = idx.size()[1].max(1) as usize;
    let flat =
        Vec::<i64>::try_from(&idx.f_flatten(0, -1)?).map_err(neurodiff_core::CoreError::from)?;
    Ok(flat
        .chunks(k)
        .map(|r| r.iter().map(|&i| i as usize).collect())
        .collect())
}

/// Readable traces on the libtorch side.
#[derive(Debug)]
pub struct Traces;

impl Execute for Traces {
    type Wire = neurodiff_protocol::sections::Traces;
    const NEEDS_BLOCKS: bool = true;

    fn run(
        on: &Run<'_>,
        opts: &TraceOptions,
        progress: Progress<'_>,
    ) -> Result<crate::execute::Step<TraceShard>> {
        let position = match on.shard {
            ShardKey::Position { position, .. } => position,
            other => return Err(wrong_shape(other)),
        };
        run(
            on.pair,
            position,
            &on.input,
            opts,
            on.max_positions()?,
            on.ground_truth(),
            progress,
        )
        .map(crate::execute::Step::Done)
    }

    fn steps(spec: &ShardSpec, n_samples: usize) -> usize {
        let o = &spec.options.traces;
        let n = o.samples.min(n_samples);
        crate::execute::batches(spec, n.min(256))
            + n.div_ceil(256)
            + 4
            + 2 * crate::execute::prompts(&o.generation)
    }
}
