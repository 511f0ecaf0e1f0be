//! One slice of the corpus for model stitching: both models run clean with every block's input
//! cached; then for each split k and order, the second model runs from block k on the first
//! model's state (`hook_resid_pre` of block k replaced), or, at k = n, reads the first model's
//! last state through its own final norm and unembedding.
use std::time::Instant;

use neurodiff_core::corpus::Batch;
use neurodiff_core::{HookKind, HookPoint, Hooks};
use neurodiff_protocol::{
    GroundTruth, ShardSpec, StitchDirection, StitchShard, StitchSums, StitchingOptions,
};
use tch::Tensor;

use crate::dist::{kl_rows, nll_rows, Targets};
use crate::execute::{Execute, Run};
use crate::forward::{Pair, ShardInput, Side, Tokens};
use crate::progress::{check, Progress};
use crate::{ExecError, Result};

pub fn run(
    pair: &Pair,
    input: &ShardInput<'_>,
    ground_truth: Option<GroundTruth>,
    progress: Progress<'_>,
) -> Result<StitchShard> {
    let _guard = tch::no_grad_guard();
    let started = Instant::now();
    let shared = pair.shared_vocab();
    let n_layers = pair.info().n_layers;
    let mut points: Vec<StitchSums> = StitchDirection::ALL
        .into_iter()
        .flat_map(|direction| {
            (0..=n_layers).map(move |k| StitchSums {
                k,
                direction,
                kl_to_base: 0.0,
                kl_to_ft: 0.0,
                nll: 0.0,
            })
        })
        .collect();
    let (mut n_tokens, mut n_targets, mut nll_base, mut nll_ft) = (0u64, 0u64, 0.0, 0.0);
    let batch_size = input.batch_size.max(1);
    let cache = || {
        (0..n_layers)
            .fold(Hooks::new(), |h, l| {
                h.cache(HookPoint::new(l, HookKind::ResidPre))
            })
            .cache(HookPoint::new(n_layers - 1, HookKind::ResidPost))
    };
    for (b, chunk) in input.tokens.chunks(batch_size).enumerate() {
        check(progress, "batch")?;
        let batch = Batch::new(chunk, pair.device())?;
        let tokens = Tokens::of(&batch, input.start + b * batch_size)?.filtered(input)?;
        let targets = Targets::of(&batch)?;
        let (mut hb, mut hf) = (cache(), cache());
        let out_b = pair.model(Side::Base).forward(&batch.ids, &mut hb)?.logits;
        let out_f = pair
            .model(Side::Finetuned)
            .forward(&batch.ids, &mut hf)?
            .logits;
        let (lb, lf) = (tokens.select(&out_b)?, tokens.select(&out_f)?);
        n_tokens += lb.size()[0] as u64;
        n_targets += targets.len() as u64;
        nll_base += sum(&nll_rows(&targets.select(&out_b)?, &targets.labels, None)?.0);
        nll_ft += sum(&nll_rows(&targets.select(&out_f)?, &targets.labels, None)?.0);
        for p in &mut points {
            // base_then_ft: the base's state enters the fine-tune at block k.
            let (second, first_cache) = match p.direction {
                StitchDirection::BaseThenFt => (Side::Finetuned, &hb),
                StitchDirection::FtThenBase => (Side::Base, &hf),
            };
            let cached = |point: HookPoint| -> Result<Tensor> {
                first_cache
                    .cached(&point)
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| ExecError::Io(format!("{point} was not cached")))
            };
            let logits = if p.k < n_layers {
                let point = HookPoint::new(p.k, HookKind::ResidPre);
                let mut hooks = Hooks::new().replace(point, cached(point)?);
                pair.model(second).forward(&batch.ids, &mut hooks)?.logits
            } else {
                let last = cached(HookPoint::new(n_layers - 1, HookKind::ResidPost))?;
                pair.model(second).read_out(&last)?
            };
            let l = tokens.select(&logits)?;
            p.kl_to_base += sum(&kl_rows(&lb, &l, shared)?);
            p.kl_to_ft += sum(&kl_rows(&lf, &l, shared)?);
            p.nll += sum(&nll_rows(&targets.select(&logits)?, &targets.labels, None)?.0);
        }
    }
    Ok(StitchShard {
        start: input.start,
        end: input.start + input.samples.len(),
        n_tokens,
        n_targets,
        points,
        nll_base,
        nll_ft,
        ground_truth,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

/// Model stitching on the libtorch side.
#[derive(Debug)]
pub struct Stitching;

impl Execute for Stitching {
    type Wire = neurodiff_protocol::sections::Stitching;
    const NEEDS_BLOCKS: bool = true;

    fn run(
        on: &Run<'_>,
        _opts: &StitchingOptions,
        progress: Progress<'_>,
    ) -> Result<crate::execute::Step<StitchShard>> {
        run(on.pair, &on.input, on.ground_truth(), progress).map(crate::execute::Step::Done)
    }

    fn steps(spec: &ShardSpec, _n_samples: usize) -> usize {
        crate::execute::slice_batches(spec).unwrap_or(0)
    }
}
