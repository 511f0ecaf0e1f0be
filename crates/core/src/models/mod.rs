//! Causal language models on libtorch, dispatched on config.json's `model_type`.
pub mod gemma2;
pub mod gemma3;
pub mod gpt2;
pub mod llama;
pub mod mistral;
pub mod olmo2;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod rope;

use std::path::Path;

use serde::de::DeserializeOwned;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{Checkpoint, CONFIG_FILE};
use crate::error::{CoreError, Result};
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::nn::LoadOpts;

/// The `model_type`s NeuroDiff can run.
pub const SUPPORTED_MODEL_TYPES: [&str; 9] = [
    "gemma2",
    "gemma3_text",
    "gpt2",
    "llama",
    "mistral",
    "olmo2",
    "phi3",
    "qwen2",
    "qwen3",
];

/// What a forward pass returns, following transformers' `output_hidden_states` convention:
/// `hidden_states[0]` is the embedding output, `hidden_states[i]` the input of block i, and the
/// last entry (index n_layers) the final norm's output.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[batch, seq, vocab]`; empty when the hooks asked for none (`Hooks::without_logits`)
    pub logits: Tensor,
    /// n_layers + 1 tensors of `[batch, seq, d_model]`
    pub hidden_states: Vec<Tensor>,
    /// The last block's output before the final norm (`hook_resid_post` of the last block).
    pub last_resid: Tensor,
}

impl ForwardOutput {
    /// `hook_resid_post` of `layer`: the block's output, before any final norm. For every block
    /// but the last this is `hidden_states[layer + 1]`; for the last, transformers' last hidden
    /// state is already normed, so the block's own output is kept apart (`read_out` of it equals
    /// the logits, and the state means the same at every block in every analysis).
    pub fn resid_post(&self, layer: usize) -> &Tensor {
        if layer + 1 >= self.hidden_states.len() - 1 {
            &self.last_resid
        } else {
            &self.hidden_states[layer + 1]
        }
    }
}

/// Facts about a loaded model that analyses need without matching on the architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub model_type: String,
    pub n_layers: usize,
    pub d_model: i64,
    pub vocab_size: i64,
}

// One per loaded model, never in a collection: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Arch {
    Gpt2(gpt2::Gpt2),
    Llama(llama::Llama),
}

/// `$body` with `$m` bound to the architecture's model, whichever it is.
macro_rules! each_arch {
    ($arch:expr, $m:ident => $body:expr) => {
        match $arch {
            Arch::Gpt2($m) => $body,
            Arch::Llama($m) => $body,
        }
    };
}

/// How a model is loaded: the dtype of its linear and embedding weights, and whether its blocks
/// stay in memory (resident) or are read from the checkpoint when a pass reaches them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub kind: Kind,
    pub resident: bool,
}

impl Load {
    pub const FP32: Load = Load {
        kind: Kind::Float,
        resident: true,
    };
}

/// What the block-by-block forward needs of an architecture: the embedding (and what its
/// blocks share), its blocks resident or loaded one at a time, and its head.
pub trait Decoder {
    type Block;
    type Context;

    /// The blocks kept in memory: all of them, or none for a block-streamed model.
    fn resident(&self) -> &[Self::Block];
    /// Block `layer`'s weights, read from `ckpt`.
    fn load_block(&self, ckpt: &Checkpoint, layer: usize) -> Result<Self::Block>;
    fn layer_of(block: &Self::Block) -> usize;
    /// Whether the checkpoint's tensor `name` belongs to a block.
    fn in_block(&self, name: &str) -> bool;
    /// The embedding output of `ids` (`[batch, seq]` on the model's device), in fp32.
    fn embed(&self, ids: &Tensor) -> Result<(Tensor, Self::Context)>;
    /// One block on the residual state `x` (its `hook_resid_pre` already applied).
    fn run_block(
        &self,
        block: &Self::Block,
        x: Tensor,
        ctx: &Self::Context,
        hooks: &mut Hooks,
    ) -> Result<Tensor>;
    fn final_norm(&self, h: &Tensor) -> Result<Tensor>;
    fn unembed(&self, x: &Tensor) -> Result<Tensor>;
}

/// The whole forward of a resident model, in transformers' `output_hidden_states` layout.
fn resident_forward<D: Decoder>(m: &D, ids: &Tensor, hooks: &mut Hooks) -> Result<ForwardOutput> {
    let (mut x, ctx) = m.embed(ids)?;
    let mut hidden_states = Vec::with_capacity(m.resident().len() + 1);
    for block in m.resident() {
        x = hooks.apply(HookPoint::new(D::layer_of(block), HookKind::ResidPre), x)?;
        hidden_states.push(x.shallow_clone());
        x = m.run_block(block, x, &ctx, hooks)?;
    }
    let last_resid = x.shallow_clone();
    let x = m.final_norm(&x)?;
    let logits = if hooks.wants_logits() {
        m.unembed(&x)?
    } else {
        Tensor::f_zeros([0], (x.kind(), x.device()))?
    };
    hidden_states.push(x);
    Ok(ForwardOutput {
        logits,
        hidden_states,
        last_resid,
    })
}

/// One block's weights for a pass: borrowed from a resident model, or read for this block.
// Two alive at a time (one block per side): boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum BlockWeights<'a> {
    Gpt2(Held<'a, gpt2::Block>),
    Llama(Held<'a, llama::Block>),
}

/// A value borrowed or owned (the blocks are not `Clone`, so not a `Cow`).
#[derive(Debug)]
pub enum Held<'a, T> {
    Borrowed(&'a T),
    Owned(T),
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Held::Borrowed(t) => t,
            Held::Owned(t) => t,
        }
    }
}

fn held<'a, D: Decoder>(m: &'a D, ckpt: &Checkpoint, layer: usize) -> Result<Held<'a, D::Block>> {
    match m.resident().get(layer) {
        Some(block) => Ok(Held::Borrowed(block)),
        None => Ok(Held::Owned(m.load_block(ckpt, layer)?)),
    }
}

/// The pass context of each architecture.
#[derive(Debug)]
enum PassContext {
    Gpt2(gpt2::Context),
    Llama(llama::Context),
}

/// One forward pass advanced a block at a time ([`Model::start`], [`Model::advance`]): the
/// residual state entering the next block, `[batch, seq, d_model]` in fp32.
#[derive(Debug)]
pub struct Pass {
    state: Tensor,
    ctx: PassContext,
}

impl Pass {
    /// The residual state: the embedding output, then each block's output (`hook_resid_post`).
    pub fn state(&self) -> &Tensor {
        &self.state
    }

    /// Continues from a residual state a pass reached before (a layer range's hand-over):
    /// `state` must have the shape of the current one, and is kept in fp32.
    pub fn resume(&mut self, state: Tensor) -> Result<()> {
        if state.size() != self.state.size() {
            return Err(CoreError::Input(format!(
                "a resumed residual state is {:?}; the pass's is {:?}",
                state.size(),
                self.state.size()
            )));
        }
        self.state = state
            .f_to_kind(self.state.kind())?
            .f_to_device(self.state.device())?;
        Ok(())
    }
}

fn step<D: Decoder>(
    m: &D,
    block: &D::Block,
    x: Tensor,
    ctx: &D::Context,
    hooks: &mut Hooks,
) -> Result<Tensor> {
    let x = hooks.apply(HookPoint::new(D::layer_of(block), HookKind::ResidPre), x)?;
    m.run_block(block, x, ctx, hooks)
}

/// Turns an attached adapter on (the adapted model) and off (the base).
#[derive(Debug, Clone)]
pub struct AdapterSwitch(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl AdapterSwitch {
    pub fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A loaded causal LM.
#[derive(Debug)]
pub struct Model {
    arch: Arch,
    info: ModelInfo,
    device: Device,
    load: Load,
    bytes: u64,
}

impl Model {
    /// Loads every weight of `ckpt` onto `device` in fp32, checking each shape against the config.
    pub fn load(ckpt: &Checkpoint, device: Device) -> Result<Model> {
        Self::load_with(ckpt, device, Load::FP32)
    }

    /// Loads `ckpt` onto `device` as `load` says: in its dtype, every block or none (a
    /// block-streamed model reads each block from `ckpt` when a pass reaches it, see
    /// [`Model::block`]).
    pub fn load_with(ckpt: &Checkpoint, device: Device, load: Load) -> Result<Model> {
        let _guard = tch::no_grad_guard();
        let config = ckpt.config_json()?;
        let path = ckpt.dir().join(CONFIG_FILE);
        let model_type = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| CoreError::Config {
                path: path.clone(),
                message: "field `model_type` is missing or not a string".into(),
            })?
            .to_string();
        let o = LoadOpts {
            kind: load.kind,
            device,
        };
        let arch = match model_type.as_str() {
            "gpt2" => Arch::Gpt2(gpt2::Gpt2::new(
                ckpt,
                o,
                &parse(&path, config)?,
                load.resident,
            )?),
            "gemma2" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<gemma2::Config>(&path, config)?.spec(&path)?,
                load.resident,
            )?),
            "gemma3_text" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<gemma3::Config>(&path, config)?.spec(&path)?,
                load.resident,
            )?),
            "phi3" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &phi3::spec(&parse::<mistral::Config>(&path, config)?, &path)?,
                load.resident,
            )?),
            "llama" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<llama::Config>(&path, config)?.spec(&path)?,
                load.resident,
            )?),
            "mistral" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<mistral::Config>(&path, config)?.spec(&path)?,
                load.resident,
            )?),
            "olmo2" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &olmo2::spec(&parse::<llama::Config>(&path, config)?, &path)?,
                load.resident,
            )?),
            "qwen2" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<qwen2::Config>(&path, config)?.spec(&path)?,
                load.resident,
            )?),
            "qwen3" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<qwen3::Config>(&path, config)?.spec(&path)?,
                load.resident,
            )?),
            other => {
                return Err(CoreError::UnsupportedArchitecture {
                    path,
                    model_type: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES.join(", "),
                })
            }
        };
        let (n_layers, d_model, vocab_size) = each_arch!(&arch, m => m.dims());
        // What the loaded tensors hold: every tensor in the load's dtype (norms are fp32, a
        // few bytes), the blocks' only when resident.
        let bytes = ckpt
            .names()
            .filter(|n| load.resident || !each_arch!(&arch, m => m.in_block(n)))
            .filter_map(|n| ckpt.meta(n))
            .map(|m| m.numel() as u64 * load.kind.elt_size_in_bytes() as u64)
            .sum();
        Ok(Model {
            arch,
            info: ModelInfo {
                model_type,
                n_layers,
                d_model,
                vocab_size,
            },
            device,
            load,
            bytes,
        })
    }

    /// Bytes of weights this model holds (the embeddings and heads alone when block-streamed).
    pub fn weight_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Applies `adapter`'s LoRA pairs to this model (loaded from `base`) as deltas in factored
    /// form behind one switch, off at first: one model serves as the base (off) and as the
    /// adapted model (on), never two in memory. Every pair must adapt a linear layer of a block.
    pub fn attach_adapter(
        &mut self,
        adapter: &crate::weights::lora::Adapter,
        base: &Checkpoint,
    ) -> Result<AdapterSwitch> {
        if !self.load.resident {
            return Err(CoreError::Input(
                "an adapter attaches to a model whose blocks are resident".into(),
            ));
        }
        let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let device = self.device;
        let mut linears = match &mut self.arch {
            Arch::Gpt2(m) => m.linears_mut(),
            Arch::Llama(m) => m.linears_mut(),
        };
        for pair in adapter.pairs.values() {
            let linear = linears
                .iter_mut()
                .find(|l| l.name == pair.base_name)
                .ok_or_else(|| {
                    CoreError::Input(format!(
                        "adapter {}: `{}` is not a linear layer of a block; the activation \
                         analyses apply adapters on the blocks' linear layers only",
                        adapter.dir.display(),
                        pair.base_name
                    ))
                })?;
            let (a, b) = adapter.factors_for(base, pair, device)?;
            linear.lora = Some(crate::nn::LoraDelta {
                a: a.f_to_kind(Kind::Float)?,
                b: b.f_to_kind(Kind::Float)?,
                scale: pair.scale,
                on: on.clone(),
            });
        }
        Ok(AdapterSwitch(on))
    }

    /// The logit lens: a residual state `[..., d_model]` read through this model's own final
    /// norm and unembedding.
    pub fn read_out(&self, h: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        each_arch!(&self.arch, m => m.unembed(&m.final_norm(h)?))
    }

    /// The final norm alone (`read_out` is `unembed(final_norm(h))`).
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        each_arch!(&self.arch, m => m.final_norm(h))
    }

    /// The unembedding alone, of a state already through the final norm.
    pub fn unembed(&self, x: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        each_arch!(&self.arch, m => m.unembed(x))
    }

    /// Runs `input_ids` (`[seq]` or `[batch, seq]`, int64) through the model, applying `hooks`.
    /// A block-streamed model runs through [`Model::start`] and [`Model::advance`] instead.
    pub fn forward(&self, input_ids: &Tensor, hooks: &mut Hooks) -> Result<ForwardOutput> {
        let _guard = tch::no_grad_guard();
        hooks.check_layers(self.info.n_layers)?;
        if !self.load.resident && self.info.n_layers > 0 {
            return Err(CoreError::Input(
                "this model was loaded block-streamed: its passes advance a block at a time".into(),
            ));
        }
        let ids = self.checked_ids(input_ids)?;
        each_arch!(&self.arch, m => resident_forward(m, &ids, hooks))
    }

    /// Whether every block is in memory (else each is read when a pass reaches it).
    pub fn is_resident(&self) -> bool {
        self.load.resident
    }

    /// The dtype of the linear and embedding weights.
    pub fn kind(&self) -> Kind {
        self.load.kind
    }

    /// A pass over `input_ids` at the embedding output, to be advanced block by block.
    pub fn start(&self, input_ids: &Tensor) -> Result<Pass> {
        let _guard = tch::no_grad_guard();
        let ids = self.checked_ids(input_ids)?;
        Ok(match &self.arch {
            Arch::Gpt2(m) => {
                let (state, ctx) = m.embed(&ids)?;
                Pass {
                    state,
                    ctx: PassContext::Gpt2(ctx),
                }
            }
            Arch::Llama(m) => {
                let (state, ctx) = m.embed(&ids)?;
                Pass {
                    state,
                    ctx: PassContext::Llama(ctx),
                }
            }
        })
    }

    /// Block `layer`'s weights: the resident block, or for a block-streamed model the block read
    /// from `ckpt` (the checkpoint this model was loaded from), freed when dropped.
    pub fn block(&self, layer: usize, ckpt: &Checkpoint) -> Result<BlockWeights<'_>> {
        let _guard = tch::no_grad_guard();
        if layer >= self.info.n_layers {
            return Err(CoreError::Input(format!(
                "block {layer} is beyond the model's {} blocks",
                self.info.n_layers
            )));
        }
        Ok(match &self.arch {
            Arch::Gpt2(m) => BlockWeights::Gpt2(held(m, ckpt, layer)?),
            Arch::Llama(m) => BlockWeights::Llama(held(m, ckpt, layer)?),
        })
    }

    /// Runs `pass` through `block` (its `hook_resid_pre`, then the block), applying `hooks`.
    pub fn advance(
        &self,
        pass: &mut Pass,
        block: &BlockWeights<'_>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let x = pass.state.shallow_clone();
        pass.state = match (&self.arch, &pass.ctx, block) {
            (Arch::Gpt2(m), PassContext::Gpt2(c), BlockWeights::Gpt2(b)) => {
                step(m, b, x, c, hooks)?
            }
            (Arch::Llama(m), PassContext::Llama(c), BlockWeights::Llama(b)) => {
                step(m, b, x, c, hooks)?
            }
            _ => {
                return Err(CoreError::Input(
                    "a pass advanced through a block of another architecture".into(),
                ))
            }
        };
        Ok(())
    }

    /// `input_ids` as `[batch, seq]` int64 on the model's device, every id in the vocabulary.
    fn checked_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = match input_ids.dim() {
            1 => input_ids.f_unsqueeze(0)?,
            2 => input_ids.shallow_clone(),
            d => {
                return Err(CoreError::Input(format!(
                    "input_ids must be [seq] or [batch, seq], got {d} dimensions"
                )))
            }
        };
        if ids.size()[1] == 0 {
            return Err(CoreError::Input("input_ids is empty".into()));
        }
        let ids = ids.f_to_device(self.device)?.f_to_kind(Kind::Int64)?;
        let max_id = ids.f_max()?.f_int64_value(&[])?;
        let min_id = ids.f_min()?.f_int64_value(&[])?;
        if min_id < 0 || max_id >= self.info.vocab_size {
            return Err(CoreError::Input(format!(
                "token id {} is outside the vocabulary (0..{})",
                if min_id < 0 { min_id } else { max_id },
                self.info.vocab_size
            )));
        }
        Ok(ids)
    }
}

/// Deserialises an architecture's config, naming config.json and the field on failure.
fn parse<T: DeserializeOwned>(path: &Path, config: serde_json::Value) -> Result<T> {
    serde_json::from_value(config).map_err(|e| CoreError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

pub(crate) fn config_error(path: &Path, message: impl Into<String>) -> CoreError {
    CoreError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}
