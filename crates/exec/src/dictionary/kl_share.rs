//! Each reported latent's share of the output KL between the models: on held-back samples,
//! the latent's part of the fine-tune's activation at the block (f_j · d_j in the model's
//! units) is taken out of the fine-tuned model's forward pass, and the share is how much of
//! Σ KL(P_ft ‖ P_base) over the samples' tokens that removes.
use neurodiff_core::corpus::Batch;
use neurodiff_core::dictionary::Dictionary;
use neurodiff_core::{HookKind, HookPoint, Hooks};
use tch::{Kind, Tensor};

use super::chunks::Chunk;
use crate::dist::kl_rows;
use crate::forward::{Pair, Side, Tokens};
use crate::progress::{check, Progress};
use crate::Result;

/// Samples of the held-back chunks the shares are measured on.
pub const KL_SAMPLES: usize = 64;
/// Latents whose share is measured (each costs one forward pass over those samples).
pub const KL_LATENTS: usize = 16;
/// Samples per forward pass.
const SAMPLES_PER_PASS: usize = 4;

/// The corpus's encoded samples (by their index in the corpus) and the leading positions the
/// chunks left out (`corpus.skip_first`): the held-back samples are run whole, BOS included,
/// as the chunks' activations were taken.
#[derive(Debug, Clone, Copy)]
pub struct Text<'a> {
    pub samples: &'a [Vec<i64>],
    pub skip_first: usize,
}

/// Held-back samples as token sequences, with their rows' activations `(N, M, d)` (the rows
/// are the positions from `skip_first` on).
pub struct Held {
    tokens: Vec<Vec<i64>>,
    acts: Tensor,
    skip_first: usize,
}

impl Held {
    /// The first [`KL_SAMPLES`] whole samples of `chunks` (rows in sample, then position
    /// order), each with the positions before its first row put back from `text`.
    pub fn of(chunks: &[Chunk], text: Text<'_>) -> Result<Self> {
        let (mut tokens, mut parts) = (Vec::<Vec<i64>>::new(), Vec::new());
        'chunks: for c in chunks {
            let mut start = 0;
            while start < c.len() {
                let s = c.sample[start];
                let end = (start..c.len())
                    .find(|&i| c.sample[i] != s)
                    .unwrap_or(c.len());
                if tokens.len() == KL_SAMPLES {
                    break 'chunks;
                }
                let first = usize::try_from(c.position[start]).unwrap_or(0);
                let prefix = usize::try_from(s)
                    .ok()
                    .and_then(|s| text.samples.get(s))
                    .and_then(|t| t.get(..first))
                    .filter(|_| first == text.skip_first)
                    .ok_or_else(|| {
                        crate::ExecError::Io(format!(
                            "held-back sample {s}: its first row is at position {first}, not \
                             {} (the store does not match the corpus)",
                            text.skip_first
                        ))
                    })?;
                let mut whole = prefix.to_vec();
                whole.extend_from_slice(&c.token[start..end]);
                tokens.push(whole);
                parts.push(c.acts.f_narrow(0, start as i64, (end - start) as i64)?);
                start = end;
            }
        }
        Ok(Held {
            tokens,
            acts: Tensor::f_cat(&parts, 0)?,
            skip_first: text.skip_first,
        })
    }
}

/// The total KL(P_ft ‖ P_base) over the held-back tokens, and each latent's share of it.
pub fn shares(
    pair: &Pair,
    dict: &Dictionary,
    layer: usize,
    held: &Held,
    latents: &[usize],
    progress: Progress<'_>,
) -> Result<(f64, Vec<f64>)> {
    let _guard = tch::no_grad_guard();
    let device = pair.device();
    let point = HookPoint::new(layer, HookKind::ResidPost);
    let shared = pair.shared_vocab();
    let m = dict.models() - 1;
    let scale = dict.norm.scale.f_select(0, m)?.f_double_value(&[])?;
    let d = dict.width();
    let (mut total, mut kept) = (0.0, vec![0.0; latents.len()]);
    let mut row = 0i64;
    // A few samples at a time: the logits of a batch are [tokens, vocabulary].
    for group in held.tokens.chunks(SAMPLES_PER_PASS) {
        let batch = Batch::new(group, device)?;
        // The KL and the ablation at the rows the dictionary encoded (the BOS left out).
        let t = Tokens::of(&batch, 0)?.skipping(held.skip_first)?;
        let n = t.sample.len() as i64;
        let x = dict.norm.apply(
            &held.acts.f_narrow(0, row, n)?.f_to_device(device)?,
            dict.kind(),
        )?;
        row += n;
        let codes = dict.encode(&x, None)?.f;
        let logits = |side: Side, hooks: &mut Hooks| -> Result<Tensor> {
            t.select(&pair.model(side).forward(&batch.ids, hooks)?.logits)
        };
        let base = logits(Side::Base, &mut Hooks::new())?;
        let ft = logits(Side::Finetuned, &mut Hooks::new())?;
        total += kl_rows(&ft, &base, shared)?.iter().sum::<f64>();
        let (rows, seq) = (batch.ids.size()[0], batch.ids.size()[1]);
        for (i, &j) in latents.iter().enumerate() {
            check(progress, "kl share")?;
            let f_j = codes.f_select(1, j as i64)?.f_unsqueeze(1)?;
            let dir = dict.w_dec.f_select(0, m)?.f_select(0, j as i64)?;
            // Per token: −f_j · d_j / s, at the token's (row, position) of the batch.
            let part = f_j
                .f_mul(&dir.f_unsqueeze(0)?)?
                .f_div_scalar(-scale)?
                .f_to_kind(Kind::Float)?;
            let delta = Tensor::f_zeros([rows * seq, d], (Kind::Float, device))?
                .f_index_copy(0, &t.index, &part)?
                .f_view([rows, seq, d])?;
            let ablated = logits(Side::Finetuned, &mut Hooks::new().add(point, delta))?;
            kept[i] += kl_rows(&ablated, &base, shared)?.iter().sum::<f64>();
        }
    }
    let tokens = row.max(1) as f64;
    let shares = kept
        .iter()
        .map(|k| if total > 0.0 { 1.0 - k / total } else { 0.0 })
        .collect();
    Ok((total / tokens, shares))
}
