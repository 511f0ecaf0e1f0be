//! GPT-2 (transformers' GPT2LMHeadModel): learned positions, LayerNorm, Conv1D weights.
//!
//! Hub checkpoints name tensors with or without the `transformer.` prefix (the original `gpt2`
//! repository has none); both load.
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::checkpoint::Checkpoint;
use crate::error::{CoreError, Result};
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::models::Decoder;
use crate::nn::{
    attention, causal_mask, mixed_linear, Activation, Embedding, LayerNorm, Linear, LoadOpts,
};

fn default_true() -> bool {
    true
}

fn default_eps() -> f64 {
    1e-5
}

fn default_act() -> String {
    "gelu_new".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub n_positions: i64,
    pub n_embd: i64,
    pub n_layer: usize,
    pub n_head: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

#[derive(Debug)]
pub struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: i64,
    scale: f64,
}

impl Attention {
    pub fn new(
        ckpt: &Checkpoint,
        o: LoadOpts,
        prefix: &str,
        cfg: &Config,
        layer: usize,
    ) -> Result<Self> {
        let d = cfg.n_embd;
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= ((d / cfg.n_head) as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Attention {
            c_attn: Linear::new_conv1d(ckpt, o, &format!("{prefix}.c_attn"), d, 3 * d)?,
            c_proj: Linear::new_conv1d(ckpt, o, &format!("{prefix}.c_proj"), d, d)?,
            n_head: cfg.n_head,
            scale,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s, d) = x.size3()?;
        let head_dim = d / self.n_head;
        let qkv = self.c_attn.forward(x)?;
        let heads = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_view([b, s, self.n_head, head_dim])?.f_transpose(1, 2)?)
        };
        let parts = qkv.f_split(d, -1)?;
        let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
        let y = attention(&q, &k, &v, mask, self.scale)?;
        let y = y.f_transpose(1, 2)?.f_contiguous()?.f_view([b, s, d])?;
        self.c_proj.forward(&y)
    }
}

#[derive(Debug)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(
        ckpt: &Checkpoint,
        o: LoadOpts,
        prefix: &str,
        cfg: &Config,
        act: Activation,
    ) -> Result<Self> {
        let inner = cfg.n_inner.unwrap_or(4 * cfg.n_embd);
        Ok(Mlp {
            c_fc: Linear::new_conv1d(ckpt, o, &format!("{prefix}.c_fc"), cfg.n_embd, inner)?,
            c_proj: Linear::new_conv1d(ckpt, o, &format!("{prefix}.c_proj"), inner, cfg.n_embd)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj
            .forward(&self.act.forward(&self.c_fc.forward(x)?)?)
    }
}

#[derive(Debug)]
pub struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
    layer: usize,
}

impl Block {
    pub fn new(
        ckpt: &Checkpoint,
        o: LoadOpts,
        prefix: &str,
        cfg: &Config,
        layer: usize,
        act: Activation,
    ) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Block {
            ln_1: LayerNorm::new(ckpt, o, &format!("{prefix}.ln_1"), cfg.n_embd, eps)?,
            attn: Attention::new(ckpt, o, &format!("{prefix}.attn"), cfg, layer)?,
            ln_2: LayerNorm::new(ckpt, o, &format!("{prefix}.ln_2"), cfg.n_embd, eps)?,
            mlp: Mlp::new(ckpt, o, &format!("{prefix}.mlp"), cfg, act)?,
            layer,
        })
    }

    pub fn forward(&self, x: Tensor, mask: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let at = |kind| HookPoint::new(self.layer, kind);
        let a = self.attn.forward(&self.ln_1.forward(&x)?, mask)?;
        let a = hooks.apply(at(HookKind::AttnOut), a)?;
        let x = hooks.apply(at(HookKind::ResidMid), x.f_add(&a)?)?;
        let m = self.mlp.forward(&self.ln_2.forward(&x)?)?;
        let m = hooks.apply(at(HookKind::MlpOut), m)?;
        hooks.apply(at(HookKind::ResidPost), x.f_add(&m)?)
    }
}

#[derive(Debug)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    /// Every block for a resident model; empty for a block-streamed one ([`Gpt2::load_block`]).
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor,
    n_positions: i64,
    /// What loading a block needs: the config, the weights' prefix, the options and activation.
    cfg: Config,
    prefix: String,
    o: LoadOpts,
    act: Activation,
}

/// What every block of one forward pass shares: the causal mask.
#[derive(Debug)]
pub struct Context {
    mask: Tensor,
}

impl Gpt2 {
    /// Loads the model; with `resident` false the blocks are left to [`Gpt2::load_block`].
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, cfg: &Config, resident: bool) -> Result<Self> {
        let path = ckpt.dir().join(crate::checkpoint::CONFIG_FILE);
        let act = Activation::parse(&cfg.activation_function).ok_or_else(|| {
            super::config_error(
                &path,
                format!(
                    "field `activation_function`: unsupported `{}`; supported: {}",
                    cfg.activation_function,
                    Activation::NAMES
                ),
            )
        })?;
        if cfg.n_head <= 0 || cfg.n_embd % cfg.n_head != 0 {
            return Err(super::config_error(
                &path,
                format!(
                    "field `n_head`: {} does not divide n_embd {}",
                    cfg.n_head, cfg.n_embd
                ),
            ));
        }
        let p = if ckpt.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let wte = Embedding::new(
            ckpt,
            o,
            &format!("{p}wte.weight"),
            cfg.vocab_size,
            cfg.n_embd,
        )?;
        let wpe = Embedding::new(
            ckpt,
            o,
            &format!("{p}wpe.weight"),
            cfg.n_positions,
            cfg.n_embd,
        )?;
        let ln_f = LayerNorm::new(
            ckpt,
            o,
            &format!("{p}ln_f"),
            cfg.n_embd,
            cfg.layer_norm_epsilon,
        )?;
        let lm_head = if cfg.tie_word_embeddings {
            wte.weight.shallow_clone()
        } else {
            o.get(ckpt, "lm_head.weight", &[cfg.vocab_size, cfg.n_embd])?
        };
        let mut model = Gpt2 {
            wte,
            wpe,
            blocks: Vec::new(),
            ln_f,
            lm_head,
            n_positions: cfg.n_positions,
            cfg: cfg.clone(),
            prefix: p.to_string(),
            o,
            act,
        };
        if resident {
            model.blocks = (0..cfg.n_layer)
                .map(|i| model.load_block(ckpt, i))
                .collect::<Result<Vec<_>>>()?;
        }
        Ok(model)
    }

    pub fn dims(&self) -> (usize, i64, i64) {
        let s = self.wte.weight.size();
        (self.cfg.n_layer, s[1], s[0])
    }

    /// Every linear layer of the blocks, for attaching an adapter.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                [
                    &mut b.attn.c_attn,
                    &mut b.attn.c_proj,
                    &mut b.mlp.c_fc,
                    &mut b.mlp.c_proj,
                ]
            })
            .collect()
    }
}

impl Decoder for Gpt2 {
    type Block = Block;
    type Context = Context;

    fn resident(&self) -> &[Block] {
        &self.blocks
    }

    fn load_block(&self, ckpt: &Checkpoint, layer: usize) -> Result<Block> {
        let prefix = format!("{}h.{layer}", self.prefix);
        Block::new(ckpt, self.o, &prefix, &self.cfg, layer, self.act)
    }

    fn layer_of(block: &Block) -> usize {
        block.layer
    }

    fn in_block(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .is_some_and(|n| n.starts_with("h."))
    }

    fn embed(&self, ids: &Tensor) -> Result<(Tensor, Context)> {
        let seq = ids.size()[1];
        if seq > self.n_positions {
            return Err(CoreError::Input(format!(
                "{seq} tokens exceed n_positions = {}",
                self.n_positions
            )));
        }
        let device = ids.device();
        let positions = Tensor::f_arange(seq, (Kind::Int64, device))?;
        let x = self
            .wte
            .forward(ids)?
            .f_add(&self.wpe.forward(&positions)?)?;
        let mask = causal_mask(seq, None, Kind::Float, device)?;
        Ok((x, Context { mask }))
    }

    fn run_block(
        &self,
        block: &Block,
        x: Tensor,
        ctx: &Context,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        block.forward(x, &ctx.mask, hooks)
    }

    fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        self.ln_f.forward(h)
    }

    fn unembed(&self, x: &Tensor) -> Result<Tensor> {
        mixed_linear(x, &self.lm_head, None)
    }
}
