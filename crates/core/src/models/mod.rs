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
use crate::hooks::Hooks;
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

#[derive(Debug)]
enum Arch {
    Gpt2(gpt2::Gpt2),
    Llama(llama::Llama),
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
}

impl Model {
    /// Loads every weight of `ckpt` onto `device` in fp32, checking each shape against the config.
    pub fn load(ckpt: &Checkpoint, device: Device) -> Result<Model> {
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
            kind: Kind::Float,
            device,
        };
        let arch = match model_type.as_str() {
            "gpt2" => Arch::Gpt2(gpt2::Gpt2::new(ckpt, o, &parse(&path, config)?)?),
            "gemma2" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<gemma2::Config>(&path, config)?.spec(&path)?,
            )?),
            "gemma3_text" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<gemma3::Config>(&path, config)?.spec(&path)?,
            )?),
            "phi3" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &phi3::spec(&parse::<mistral::Config>(&path, config)?, &path)?,
            )?),
            "llama" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<llama::Config>(&path, config)?.spec(&path)?,
            )?),
            "mistral" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<mistral::Config>(&path, config)?.spec(&path)?,
            )?),
            "olmo2" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &olmo2::spec(&parse::<llama::Config>(&path, config)?, &path)?,
            )?),
            "qwen2" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<qwen2::Config>(&path, config)?.spec(&path)?,
            )?),
            "qwen3" => Arch::Llama(llama::Llama::new(
                ckpt,
                o,
                &parse::<qwen3::Config>(&path, config)?.spec(&path)?,
            )?),
            other => {
                return Err(CoreError::UnsupportedArchitecture {
                    path,
                    model_type: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES.join(", "),
                })
            }
        };
        let (n_layers, d_model, vocab_size) = match &arch {
            Arch::Gpt2(m) => m.dims(),
            Arch::Llama(m) => m.dims(),
        };
        Ok(Model {
            arch,
            info: ModelInfo {
                model_type,
                n_layers,
                d_model,
                vocab_size,
            },
            device,
        })
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
        match &self.arch {
            Arch::Gpt2(m) => m.read_out(h),
            Arch::Llama(m) => m.read_out(h),
        }
    }

    /// The final norm alone (`read_out` is `unembed(final_norm(h))`).
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        match &self.arch {
            Arch::Gpt2(m) => m.final_norm(h),
            Arch::Llama(m) => m.final_norm(h),
        }
    }

    /// The unembedding alone, of a state already through the final norm.
    pub fn unembed(&self, x: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        match &self.arch {
            Arch::Gpt2(m) => m.unembed(x),
            Arch::Llama(m) => m.unembed(x),
        }
    }

    /// Runs `input_ids` (`[seq]` or `[batch, seq]`, int64) through the model, applying `hooks`.
    pub fn forward(&self, input_ids: &Tensor, hooks: &mut Hooks) -> Result<ForwardOutput> {
        let _guard = tch::no_grad_guard();
        hooks.check_layers(self.info.n_layers)?;
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
        match &self.arch {
            Arch::Gpt2(m) => m.forward(&ids, hooks),
            Arch::Llama(m) => m.forward(&ids, hooks),
        }
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
