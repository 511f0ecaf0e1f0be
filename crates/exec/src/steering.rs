//! One block of steering: the difference vector δ (the mean of h_ft − h_base at the block's
//! output over every token but the BOS (`corpus.skip_first`), or at one position) and the fine-tuned model's mean norm n̄_ft
//! there (positions ≥ 5) from a first pass; then, for each α, both models steered with
//! α · n̄_ft · δ/‖δ‖ at every position: KL to the fine-tune, perplexity and domain mass per
//! token; the chosen α and generations with and without it.
use std::time::Instant;

use neurodiff_analyses::steering::choose;
use neurodiff_core::corpus::Batch;
use neurodiff_core::organisms::trained::rng::Rng;
use neurodiff_core::{HookKind, HookPoint, Hooks};
use neurodiff_protocol::{
    Generation, GroundTruth, ShardSpec, SteeringChoice, SteeringOptions, SteeringPoint,
    SteeringShard, SteeringVector,
};
use tch::{Kind, Tensor};

use crate::dist::{encode_prompt, generate, kl_rows, nll_rows, Targets};
use crate::execute::{Execute, Run};
use crate::forward::{Pair, ShardInput, Side, Tokens};
use crate::progress::{check, Progress};
use crate::{ExecError, Result};

/// Positions from which n̄_ft is measured (the first ones carry outsized norms).
pub const NORM_FROM: usize = 5;

/// Sums of h_ft − h_base at a block over the chosen tokens, and of ||h_ft|| from `NORM_FROM`.
pub(crate) struct BlockMeans {
    pub delta: Tensor,
    pub nbar_ft: f64,
}

/// The mean difference at `layer`'s output over `tokens` (every token from position
/// `skip_first` on, or position `at`) and the fine-tuned model's mean norm there.
pub(crate) fn block_means(
    pair: &Pair,
    layer: usize,
    tokens: &[Vec<i64>],
    batch_size: usize,
    (at, skip_first): (Option<usize>, usize),
    progress: Progress<'_>,
) -> Result<BlockMeans> {
    let point = HookPoint::new(layer, HookKind::ResidPost);
    let d = pair.info().d_model;
    let mut sum = Tensor::f_zeros([d], (Kind::Double, pair.device()))?;
    let (mut count, mut norm_sum, mut norm_n, mut all_norm, mut all_n) =
        (0u64, 0.0, 0u64, 0.0, 0u64);
    for chunk in tokens.chunks(batch_size.max(1)) {
        check(progress, "batch")?;
        let batch = Batch::new(chunk, pair.device())?;
        let t = Tokens::of(&batch, 0)?;
        let (xb, xf) = crate::forward::paired_at(pair, &batch, &t, point)?;
        let diff = xf
            .f_to_kind(Kind::Double)?
            .f_sub(&xb.f_to_kind(Kind::Double)?)?;
        let keep: Vec<i64> = t
            .position
            .iter()
            .enumerate()
            .filter(|(_, &p)| at.map_or(p >= skip_first, |a| a == p))
            .map(|(i, _)| i as i64)
            .collect();
        if !keep.is_empty() {
            let idx = Tensor::from_slice(&keep).f_to_device(pair.device())?;
            sum = sum.f_add(&diff.f_index_select(0, &idx)?.f_sum_dim_intlist(
                0,
                false,
                Kind::Double,
            )?)?;
            count += keep.len() as u64;
        }
        let norms = crate::dist::to_f64(&xf.f_norm_scalaropt_dim(2, [-1], false)?)?;
        for (v, &p) in norms.iter().zip(&t.position) {
            all_norm += v;
            all_n += 1;
            if p >= NORM_FROM {
                norm_sum += v;
                norm_n += 1;
            }
        }
    }
    if count == 0 {
        return Err(ExecError::Io(format!(
            "no sample reaches position {} of the steering vector",
            at.unwrap_or(skip_first)
        )));
    }
    // Samples shorter than NORM_FROM tokens: the mean over every position instead.
    let nbar_ft = if norm_n > 0 {
        norm_sum / norm_n as f64
    } else {
        all_norm / all_n.max(1) as f64
    };
    Ok(BlockMeans {
        delta: sum.f_div_scalar(count as f64)?,
        nbar_ft,
    })
}

/// `δ/‖δ‖ · n̄` in f32 (zero when δ is zero).
pub(crate) fn scaled_unit(delta: &Tensor, nbar: f64) -> Result<(Tensor, f64)> {
    let norm = delta.f_norm()?.f_double_value(&[])?;
    let unit = if norm > 0.0 {
        delta.f_div_scalar(norm)?.f_mul_scalar(nbar)?
    } else {
        delta.f_zeros_like()?
    };
    Ok((unit.f_to_kind(Kind::Float)?, norm))
}

/// Steering at `layer`: the difference vector of the block's means, then the sweep of its
/// strengths on both models, and generations at the strength each model's sweep chose.
pub fn run(
    pair: &Pair,
    layer: usize,
    input: &ShardInput<'_>,
    opts: &SteeringOptions,
    max_len: usize,
    ground_truth: Option<GroundTruth>,
    progress: Progress<'_>,
) -> Result<SteeringShard> {
    let _guard = tch::no_grad_guard();
    let started = Instant::now();
    let n = opts.samples.min(input.tokens.len());
    let tokens = &input.tokens[..n];
    let at = match opts.vector {
        SteeringVector::Mean => None,
        SteeringVector::Position { position } => Some(position),
    };
    let batch_size = input.batch_size;
    let means = block_means(
        pair,
        layer,
        tokens,
        batch_size,
        (at, input.skip_first),
        progress,
    )?;
    let (v, delta_norm) = scaled_unit(&means.delta, means.nbar_ft)?;
    let domain = domain_ids(pair, ground_truth.as_ref())?;
    let sweep = Sweep {
        pair,
        layer,
        v: &v,
        domain: domain.as_ref(),
        opts,
    };
    let curves = sweep.curves(tokens, batch_size, progress)?;
    let (chosen, generations) = sweep.generate(&curves, max_len, progress)?;
    Ok(SteeringShard {
        layer,
        n_samples: n,
        delta_norm,
        nbar_ft: means.nbar_ft,
        curves,
        chosen,
        generations,
        ground_truth,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// The ground truth's domain tokens within the vocabulary both models share, on the device.
fn domain_ids(pair: &Pair, truth: Option<&GroundTruth>) -> Result<Option<Tensor>> {
    let shared = pair.shared_vocab();
    let domain: Option<Tensor> = truth.and_then(|g| {
        // Compared before the cast: a huge id in the file must not wrap to a negative index.
        let ids: Vec<i64> = g
            .domain_token_ids
            .iter()
            .filter(|&&i| (i as u64) < shared as u64)
            .map(|&i| i as i64)
            .collect();
        (!ids.is_empty()).then(|| Tensor::from_slice(&ids))
    });
    Ok(domain.map(|t| t.f_to_device(pair.device())).transpose()?)
}

/// The models steered, as the curves name them.
const TARGETS: [(&str, Side); 2] = [("base", Side::Base), ("finetuned", Side::Finetuned)];

/// A sweep of steering strengths with the unit vector `v` (scaled to n̄_ft) at `layer`.
struct Sweep<'a> {
    pair: &'a Pair,
    layer: usize,
    v: &'a Tensor,
    domain: Option<&'a Tensor>,
    opts: &'a SteeringOptions,
}

impl Sweep<'_> {
    /// Each model's curve over the strengths: KL to the unsteered fine-tune, perplexity of
    /// the corpus's next tokens, and the domain's probability mass.
    fn curves(
        &self,
        tokens: &[Vec<i64>],
        batch_size: usize,
        progress: Progress<'_>,
    ) -> Result<Vec<SteeringPoint>> {
        let (pair, alphas) = (self.pair, &self.opts.alphas);
        let point = HookPoint::new(self.layer, HookKind::ResidPost);
        let shared = pair.shared_vocab();
        // [target][alpha]: (Σ KL, Σ nll, Σ mass)
        let mut acc = vec![vec![(0.0, 0.0, 0.0); alphas.len()]; 2];
        let (mut n_tokens, mut n_targets) = (0u64, 0u64);
        for chunk in tokens.chunks(batch_size.max(1)) {
            check(progress, "batch")?;
            let batch = Batch::new(chunk, pair.device())?;
            let t = Tokens::of(&batch, 0)?;
            let targets = Targets::of(&batch)?;
            let ft = pair.model(Side::Finetuned);
            let lf = t.select(&ft.forward(&batch.ids, &mut Hooks::new())?.logits)?;
            n_tokens += lf.size()[0] as u64;
            n_targets += targets.len() as u64;
            for (ti, (_, side)) in TARGETS.into_iter().enumerate() {
                for (ai, &alpha) in alphas.iter().enumerate() {
                    let mut hooks = Hooks::new().add(point, self.v.f_mul_scalar(alpha)?);
                    let logits = pair.model(side).forward(&batch.ids, &mut hooks)?.logits;
                    let kl: f64 = kl_rows(&lf, &t.select(&logits)?, shared)?.iter().sum();
                    let (nll, mass) =
                        nll_rows(&targets.select(&logits)?, &targets.labels, self.domain)?;
                    let a = &mut acc[ti][ai];
                    a.0 += kl;
                    a.1 += nll.iter().sum::<f64>();
                    a.2 += mass.iter().sum::<f64>();
                }
            }
        }
        let mut curves = Vec::new();
        for (ti, (target, _)) in TARGETS.into_iter().enumerate() {
            for (ai, &alpha) in alphas.iter().enumerate() {
                let (kl, nll, mass) = acc[ti][ai];
                curves.push(SteeringPoint {
                    target: target.to_string(),
                    layer: self.layer,
                    alpha,
                    kl_to_ft: kl / n_tokens.max(1) as f64,
                    // Finite, so results.json reads back (JSON has no infinity).
                    perplexity: (nll / n_targets.max(1) as f64).exp().min(f64::MAX),
                    domain_mass: self.domain.map(|_| mass / n_targets.max(1) as f64),
                });
            }
        }
        Ok(curves)
    }

    /// Each model's chosen strength on its curve, and its generations unsteered and at that
    /// strength.
    fn generate(
        &self,
        curves: &[SteeringPoint],
        max_len: usize,
        progress: Progress<'_>,
    ) -> Result<(Vec<SteeringChoice>, Vec<Generation>)> {
        let point = HookPoint::new(self.layer, HookKind::ResidPost);
        let mut chosen = Vec::new();
        let mut generations = Vec::new();
        for (target, side) in TARGETS {
            let curve: Vec<&SteeringPoint> = curves.iter().filter(|p| p.target == target).collect();
            let Some(choice) = choose(&curve, self.opts.ppl_factor) else {
                continue;
            };
            let mut alphas = vec![0.0];
            if choice.alpha != 0.0 {
                alphas.push(choice.alpha);
            }
            for &alpha in &alphas {
                let steer = self.v.f_mul_scalar(alpha)?;
                let hooks = || Hooks::new().add(point, steer.shallow_clone());
                let steered = Steered {
                    side,
                    model: target,
                    layer: self.layer,
                    alpha,
                    hooks: &hooks,
                };
                let generation = &self.opts.generation;
                generations.extend(generations_of(
                    self.pair, &steered, generation, max_len, progress,
                )?);
            }
            chosen.push(choice);
        }
        Ok((chosen, generations))
    }
}

/// Which model generates, steered how: the `hooks` that add α times the direction at `layer`
/// (α = 0: unsteered), and the model's name in the results.
pub(crate) struct Steered<'a> {
    pub side: Side,
    pub model: &'a str,
    pub layer: usize,
    pub alpha: f64,
    pub hooks: &'a dyn Fn() -> Hooks,
}

/// Greedy and sampled continuations of every prompt by one model, steered.
pub(crate) fn generations_of(
    pair: &Pair,
    steered: &Steered<'_>,
    opts: &neurodiff_protocol::GenerationOptions,
    max_len: usize,
    progress: Progress<'_>,
) -> Result<Vec<Generation>> {
    let Steered {
        side,
        model,
        layer,
        alpha,
        hooks,
    } = *steered;
    let mut out = Vec::new();
    for (i, prompt) in opts.prompts.iter().enumerate() {
        check(progress, "generation")?;
        let ids = encode_prompt(&pair.tokenizer, prompt)?;
        for mode in ["greedy", "sampled"] {
            // The same seed per prompt with and without steering: the samples differ by it alone.
            let mut rng = Rng::new(opts.seed.wrapping_add(i as u64));
            let rng = (mode == "sampled").then_some(&mut rng);
            let text = generate(
                pair.model(side),
                &pair.tokenizer,
                &ids,
                opts,
                rng,
                hooks,
                max_len,
            )?;
            out.push(Generation {
                model: model.to_string(),
                layer,
                alpha,
                mode: mode.to_string(),
                prompt: prompt.clone(),
                text,
            });
        }
    }
    Ok(out)
}

/// Steering on the libtorch side.
#[derive(Debug)]
pub struct Steering;

impl Execute for Steering {
    type Wire = neurodiff_protocol::sections::Steering;
    const NEEDS_BLOCKS: bool = true;

    fn run(
        on: &Run<'_>,
        opts: &SteeringOptions,
        progress: Progress<'_>,
    ) -> Result<crate::execute::Step<SteeringShard>> {
        run(
            on.pair,
            on.block()?,
            &on.input,
            opts,
            on.max_positions()?,
            on.ground_truth(),
            progress,
        )
        .map(crate::execute::Step::Done)
    }

    fn steps(spec: &ShardSpec, n_samples: usize) -> usize {
        let o = &spec.options.steering;
        2 * crate::execute::batches(spec, o.samples.min(n_samples))
            + 4 * crate::execute::prompts(&o.generation)
    }
}
