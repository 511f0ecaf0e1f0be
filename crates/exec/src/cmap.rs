//! One block of cross-model activation patching: both models run clean on the first
//! `cmap.samples` samples with the block's components cached, then each model again with the
//! other's activation at one component patched in; KL(p_donor ‖ p_patched) summed per token.
use std::time::Instant;

use neurodiff_core::corpus::Batch;
use neurodiff_core::{HookPoint, Hooks};
use neurodiff_protocol::{
    CmapOptions, CmapShard, CmapSums, Component, GroundTruth, PatchDirection, ShardSpec,
};

use crate::dist::kl_rows;
use crate::execute::{Execute, Run};
use crate::forward::{Pair, ShardInput, Side, Tokens};
use crate::progress::{check, Progress};
use crate::Result;

pub fn run(
    pair: &Pair,
    layer: usize,
    input: &ShardInput<'_>,
    opts: &CmapOptions,
    ground_truth: Option<GroundTruth>,
    progress: Progress<'_>,
) -> Result<CmapShard> {
    let _guard = tch::no_grad_guard();
    let started = Instant::now();
    let shared = pair.shared_vocab();
    let n = opts.samples.min(input.tokens.len());
    let mut sums: Vec<CmapSums> = PatchDirection::ALL
        .into_iter()
        .flat_map(|direction| {
            Component::ALL.map(move |component| CmapSums {
                component,
                direction,
                kl: 0.0,
            })
        })
        .collect();
    let (mut n_tokens, mut gap_fb, mut gap_bf) = (0u64, 0.0, 0.0);
    let batch_size = input.batch_size.max(1);
    for (b, chunk) in input.tokens[..n].chunks(batch_size).enumerate() {
        check(progress, "batch")?;
        let batch = Batch::new(chunk, pair.device())?;
        let tokens = Tokens::of(&batch, input.start + b * batch_size)?.filtered(input)?;
        let cache = || {
            Component::ALL.into_iter().fold(Hooks::new(), |h, c| {
                h.cache(HookPoint::new(layer, c.hook()))
            })
        };
        let (mut hb, mut hf) = (cache(), cache());
        let lb = tokens.select(&pair.model(Side::Base).forward(&batch.ids, &mut hb)?.logits)?;
        let lf = tokens.select(
            &pair
                .model(Side::Finetuned)
                .forward(&batch.ids, &mut hf)?
                .logits,
        )?;
        n_tokens += lb.size()[0] as u64;
        gap_fb += kl_rows(&lf, &lb, shared)?.iter().sum::<f64>();
        gap_bf += kl_rows(&lb, &lf, shared)?.iter().sum::<f64>();
        for s in &mut sums {
            let point = HookPoint::new(layer, s.component.hook());
            let (recipient, donor_cache, donor_logits) = match s.direction {
                PatchDirection::FtIntoBase => (Side::Base, &hf, &lf),
                PatchDirection::BaseIntoFt => (Side::Finetuned, &hb, &lb),
            };
            let value = donor_cache
                .cached(&point)
                .ok_or_else(|| crate::ExecError::Io(format!("{point} was not cached")))?
                .shallow_clone();
            let mut hooks = Hooks::new().replace(point, value);
            let patched = tokens.select(
                &pair
                    .model(recipient)
                    .forward(&batch.ids, &mut hooks)?
                    .logits,
            )?;
            s.kl += kl_rows(donor_logits, &patched, shared)?.iter().sum::<f64>();
        }
    }
    Ok(CmapShard {
        layer,
        n_samples: n,
        n_tokens,
        kl_ft_base: gap_fb,
        kl_base_ft: gap_bf,
        cells: sums,
        ground_truth,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Cross-model activation patching on the libtorch side.
#[derive(Debug)]
pub struct Cmap;

impl Execute for Cmap {
    type Wire = neurodiff_protocol::sections::Cmap;
    const NEEDS_BLOCKS: bool = true;

    fn run(
        on: &Run<'_>,
        opts: &CmapOptions,
        progress: Progress<'_>,
    ) -> Result<crate::execute::Step<CmapShard>> {
        run(
            on.pair,
            on.block()?,
            &on.input,
            opts,
            on.ground_truth(),
            progress,
        )
        .map(crate::execute::Step::Done)
    }

    fn steps(spec: &ShardSpec, n_samples: usize) -> usize {
        crate::execute::batches(spec, spec.options.cmap.samples.min(n_samples))
    }
}
