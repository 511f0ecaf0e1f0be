//! The paired forward pass the activation analyses share: both models loaded once, the
//! shard's samples run through each in the same right-padded batches.
use neurodiff_core::corpus::Batch;
use neurodiff_core::tokenizer::{self, Tokenizer};
use neurodiff_core::{AdapterSwitch, Checkpoint, Load, Model, ModelInfo};
use neurodiff_protocol::Dtype;
use tch::{Device, Kind, Tensor};

use crate::{ExecError, OpenTarget, Result, Sources};

/// Both models of an audit, and the base's tokenizer (which tokenizes the corpus for both).
/// For an adapter, one model: the base with the adapter attached behind a switch.
#[derive(Debug)]
pub struct Pair {
    base: Model,
    /// The fine-tuned checkpoint, absent for an adapter.
    ft: Option<Model>,
    switch: Option<AdapterSwitch>,
    pub tokenizer: Tokenizer,
    /// The fine-tuned model's own tokenizer, when it has one (names the tokens it added).
    pub ft_tokenizer: Option<Tokenizer>,
}

/// Which model of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Base,
    Finetuned,
}

/// How a shard loads its pair: the weights' dtype, and whether the blocks stay resident or
/// stream (read one at a time as [`crate::stream::PairedPass`] reaches them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loading {
    pub dtype: Dtype,
    pub streamed: bool,
}

impl Loading {
    /// Every block resident, in `dtype`.
    pub fn resident(dtype: Dtype) -> Loading {
        Loading {
            dtype,
            streamed: false,
        }
    }

    /// The weights' dtype on `device`: `auto` is the checkpoint's own half-precision dtype on a
    /// GPU (fp32 when it is stored wider or quantized) and fp32 on the CPU.
    pub fn kind(&self, device: Device, ckpt: &Checkpoint) -> Kind {
        match self.dtype {
            Dtype::Fp32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::Fp16 => Kind::Half,
            Dtype::Auto if device.is_cuda() => ckpt
                .names()
                .filter_map(|n| ckpt.meta(n).and_then(|m| m.kind()))
                .find(|k| matches!(k, Kind::BFloat16 | Kind::Half | Kind::Float))
                .filter(|k| *k != Kind::Float)
                .unwrap_or(Kind::Float),
            Dtype::Auto => Kind::Float,
        }
    }
}

impl Pair {
    /// Loads the models of `sources`; their mapped pages are released once loaded (the
    /// tensors hold the weights for the rest of the shard). An adapter's pair is always
    /// resident (its deltas attach to the blocks).
    pub fn load(sources: &Sources, device: Device, loading: Loading) -> Result<Pair> {
        let pair = Self::load_models(sources, device, loading);
        sources.release_pages();
        pair
    }

    fn load_models(sources: &Sources, device: Device, loading: Loading) -> Result<Pair> {
        let tok = tokenizer::load_guarded(&sources.base_dir, sources.base.guard())?;
        let load = |ckpt: &Checkpoint, resident: bool| {
            let kind = loading.kind(device, ckpt);
            Model::load_with(ckpt, device, Load { kind, resident })
        };
        let adapter = matches!(sources.target, OpenTarget::Adapter(_));
        let mut base = load(&sources.base, adapter || !loading.streamed)?;
        match &sources.target {
            OpenTarget::Checkpoint(ft) => {
                let ft_model = load(ft, !loading.streamed)?;
                let (b, f) = (base.info(), ft_model.info());
                if b.n_layers != f.n_layers || b.d_model != f.d_model {
                    return Err(ExecError::Io(format!(
                        "the models differ in shape: base {} blocks of width {}, fine-tuned {} of {}",
                        b.n_layers, b.d_model, f.n_layers, f.d_model
                    )));
                }
                Ok(Pair {
                    base,
                    ft: Some(ft_model),
                    switch: None,
                    tokenizer: tok,
                    ft_tokenizer: tokenizer::load_guarded(&sources.target_dir, ft.guard()).ok(),
                })
            }
            OpenTarget::Adapter(adapter) => {
                let switch = base.attach_adapter(adapter, &sources.base)?;
                Ok(Pair {
                    base,
                    ft: None,
                    switch: Some(switch),
                    tokenizer: tok,
                    ft_tokenizer: None,
                })
            }
        }
    }

    /// The model of `side`, an attached adapter switched to match.
    pub fn model(&self, side: Side) -> &Model {
        if let Some(switch) = &self.switch {
            switch.set(side == Side::Finetuned);
        }
        match (side, &self.ft) {
            (Side::Finetuned, Some(ft)) => ft,
            _ => &self.base,
        }
    }

    pub fn info(&self) -> &ModelInfo {
        self.base.info()
    }

    /// The ids both vocabularies have: `0..shared` (a fine-tune may add tokens at the end).
    pub fn shared_vocab(&self) -> i64 {
        let (b, f) = (
            self.model(Side::Base).info().vocab_size,
            self.model(Side::Finetuned).info().vocab_size,
        );
        b.min(f)
    }

    pub fn device(&self) -> Device {
        self.base.device()
    }

    /// Bytes of weights both models hold.
    pub fn weight_bytes(&self) -> u64 {
        self.base.weight_bytes() + self.ft.as_ref().map_or(0, Model::weight_bytes)
    }

    /// The checkpoint `side` reads its blocks from (the base for an adapter's both sides).
    pub fn checkpoint<'s>(&self, sources: &'s Sources, side: Side) -> &'s Checkpoint {
        match (side, &sources.target) {
            (Side::Finetuned, OpenTarget::Checkpoint(ft)) => ft,
            _ => &sources.base,
        }
    }

    /// The text of `ids`, as the base's tokenizer decodes it, bounded as results show text
    /// ([`crate::dist::shown_text`]).
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        crate::dist::shown_text(&self.tokenizer, &ids)
    }
}

/// One shard's samples.
#[derive(Debug)]
pub struct ShardInput<'a> {
    /// The index of the first sample in the corpus.
    pub start: usize,
    pub samples: &'a [String],
    pub tokens: &'a [Vec<i64>],
    /// For a chat corpus: which of each sample's tokens the token filter keeps.
    pub keep: Option<&'a [Vec<bool>]>,
    pub batch_size: usize,
    /// Leading positions left out of the statistics the BOS would dominate
    /// (`corpus.skip_first`, resolved against the tokenizer).
    pub skip_first: usize,
}

/// The real tokens of a batch: flat index into `[batch * seq]`, the sample (its index in the
/// corpus) and the position of each, in sample order.
#[derive(Debug)]
pub struct Tokens {
    pub index: Tensor,
    pub sample: Vec<usize>,
    pub position: Vec<usize>,
}

impl Tokens {
    pub fn of(batch: &Batch, first_sample: usize) -> Result<Tokens> {
        let index = batch.token_index()?;
        let seq = batch.ids.size()[1] as usize;
        let flat = Vec::<i64>::try_from(&index).map_err(neurodiff_core::CoreError::from)?;
        Ok(Tokens {
            sample: flat
                .iter()
                .map(|&i| first_sample + i as usize / seq)
                .collect(),
            position: flat.iter().map(|&i| i as usize % seq).collect(),
            index,
        })
    }

    /// The tokens at positions `first` and later (all of them for 0).
    pub fn skipping(self, first: usize) -> Result<Tokens> {
        if first == 0 {
            return Ok(self);
        }
        self.retain(|_, p| p >= first)
    }

    /// The tokens the shard's token filter keeps (all of them without one). Samples are
    /// numbered from `input.start`.
    pub fn filtered(self, input: &ShardInput) -> Result<Tokens> {
        let Some(keep) = input.keep else {
            return Ok(self);
        };
        self.retain(|s, p| {
            keep.get(s - input.start)
                .and_then(|k| k.get(p))
                .copied()
                .unwrap_or(false)
        })
    }

    /// The tokens for which `wanted(sample, position)` holds.
    fn retain(self, wanted: impl Fn(usize, usize) -> bool) -> Result<Tokens> {
        let keep: Vec<usize> = (0..self.position.len())
            .filter(|&i| wanted(self.sample[i], self.position[i]))
            .collect();
        let rows = Tensor::from_slice(&keep.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .f_to_device(self.index.device())?;
        Ok(Tokens {
            index: self.index.f_index_select(0, &rows)?,
            sample: keep.iter().map(|&i| self.sample[i]).collect(),
            position: keep.iter().map(|&i| self.position[i]).collect(),
        })
    }

    /// The rows of `x` (`[batch, seq, d]`) at the real tokens: `[n, d]`.
    pub fn select(&self, x: &Tensor) -> Result<Tensor> {
        let d = *x.size().last().unwrap_or(&1);
        Ok(x.f_reshape([-1, d])?.f_index_select(0, &self.index)?)
    }
}

/// Both models' activations at `point` on the real tokens of `batch`, `(base, finetuned)`,
/// each `[n, d]` in the models' dtype (the paired forward the block analyses share).
pub fn paired_at(
    pair: &Pair,
    batch: &Batch,
    tokens: &Tokens,
    point: neurodiff_core::HookPoint,
) -> Result<(Tensor, Tensor)> {
    let mut out = Vec::with_capacity(2);
    for side in [Side::Base, Side::Finetuned] {
        let mut hooks = neurodiff_core::Hooks::new().cache(point).without_logits();
        pair.model(side).forward(&batch.ids, &mut hooks)?;
        let x = hooks
            .cached(&point)
            .ok_or_else(|| ExecError::Io(format!("{point} was not cached")))?;
        out.push(tokens.select(x)?);
    }
    let finetuned = out
        .pop()
        .ok_or_else(|| ExecError::Io("no activations".into()))?;
    let base = out
        .pop()
        .ok_or_else(|| ExecError::Io("no activations".into()))?;
    Ok((base, finetuned))
}

/// The leading positions the BOS-dominated statistics leave out: the request's
/// `corpus.skip_first`, or the tokens the tokenizer prepends.
pub fn skip_first(spec: &neurodiff_protocol::ShardSpec, pair: &Pair) -> usize {
    spec.corpus
        .skip_first
        .unwrap_or_else(|| tokenizer::prefix_len(&pair.tokenizer))
}
