//! Llama (transformers' LlamaForCausalLM): RMSNorm, RoPE, grouped-query attention, SwiGLU.
//!
//! Mistral, Qwen2 and Qwen3 run on the same decoder; their files only read their own config into
//! a [`DecoderSpec`] (explicit head_dim and sliding window; qkv bias; per-head q/k norms).
use std::path::Path;

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::config_error;
use super::rope::{apply_rope, Rope, RopeSource};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::models::Decoder;
use crate::nn::{
    attention, causal_mask, mixed_linear, Activation, Embedding, Linear, LoadOpts, RmsNorm,
};

/// Everything the decoder needs, after each architecture's config has been read.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub n_layers: usize,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope: Rope,
    /// The schedule of sliding-window layers where it differs (Gemma 3's local base).
    pub sliding_rope: Option<Rope>,
    /// Leading features of each head that RoPE rotates (head_dim unless partial).
    pub rotary_dim: i64,
    /// Scale of the attention scores (head_dim^-0.5; Gemma's query_pre_attn_scalar^-0.5).
    pub attn_scale: f64,
    /// Gemma 2's tanh soft-capping of the attention scores and of the logits.
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Gemma's scaling of the embeddings by √d.
    pub embed_scale: Option<f64>,
    /// Added to every RMSNorm weight (Gemma's `1 + w`).
    pub norm_offset: f64,
    /// q, k, v in one `qkv_proj` and gate, up in one `gate_up_proj` (Phi-3).
    pub fused: bool,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    /// Norms of queries and keys before RoPE (`self_attn.q_norm`, `self_attn.k_norm`).
    pub qk_norm: QkNorm,
    /// Where the block's norms sit.
    pub norms: NormPlacement,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub act: Activation,
    /// Per layer: the sliding-window size, or None for full causal attention.
    pub windows: Vec<Option<usize>>,
}

/// Norms of the attention's queries and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// An RMSNorm over each head (`head_dim` wide): Qwen3.
    PerHead,
    /// An RMSNorm over the whole projection (`heads × head_dim` wide): OLMo 2.
    Whole,
}

/// Where a block's RMSNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// Before attention (`input_layernorm`) and before the MLP (`post_attention_layernorm`).
    Pre,
    /// After attention (`post_attention_layernorm`) and after the MLP
    /// (`post_feedforward_layernorm`), on what each adds to the residual stream: OLMo 2.
    Post,
    /// Both: `input_layernorm` and `post_attention_layernorm` around attention,
    /// `pre_feedforward_layernorm` and `post_feedforward_layernorm` around the MLP: Gemma.
    Sandwich,
}

/// The config fields shared by the Llama family, in both the transformers 4 spelling
/// (`rope_theta`, `rope_scaling`) and the transformers 5 one (`rope_parameters`).
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub max_position_embeddings: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_act() -> String {
    "silu".into()
}

impl Common {
    /// The spec with no biases and full attention; callers set what their architecture adds.
    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        let heads = self.num_attention_heads;
        let kv = self.num_key_value_heads.unwrap_or(heads);
        if heads <= 0 || kv <= 0 || heads % kv != 0 {
            return Err(config_error(
                path,
                format!(
                    "field `num_key_value_heads`: {kv} must divide num_attention_heads {heads}"
                ),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if self.hidden_size % heads == 0 => self.hidden_size / heads,
            None => {
                return Err(config_error(
                    path,
                    format!(
                        "field `num_attention_heads`: {heads} does not divide hidden_size {}",
                        self.hidden_size
                    ),
                ))
            }
        };
        let act = Activation::parse(&self.hidden_act).ok_or_else(|| {
            config_error(
                path,
                format!(
                    "field `hidden_act`: unsupported `{}`; supported: {}",
                    self.hidden_act,
                    Activation::NAMES
                ),
            )
        })?;
        Ok(DecoderSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_layers: self.num_hidden_layers,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope: self.rope(path)?,
            sliding_rope: None,
            rotary_dim: self.rotary_dim(head_dim, path)?,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embed_scale: None,
            norm_offset: 0.0,
            fused: false,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: false,
            qk_norm: QkNorm::None,
            norms: NormPlacement::Pre,
            o_bias: false,
            mlp_bias: false,
            act,
            windows: vec![None; self.num_hidden_layers],
        })
    }

    /// The RoPE schedule from `rope_parameters` (transformers 5) or `rope_scaling` (4).
    pub fn rope(&self, path: &Path) -> Result<Rope> {
        let (params, field) = match &self.rope_parameters {
            Some(p) => (Some(p), "rope_parameters"),
            None => (self.rope_scaling.as_ref(), "rope_scaling"),
        };
        Rope::parse(
            RopeSource {
                params,
                field,
                theta: self.rope_theta,
                default_theta: 10000.0,
                max_position_embeddings: self.max_position_embeddings,
                original_max_position_embeddings: self.original_max_position_embeddings,
            },
            path,
        )
    }

    /// How many leading features of each head RoPE rotates (`partial_rotary_factor`, top level
    /// or among the RoPE parameters).
    pub fn rotary_dim(&self, head_dim: i64, path: &Path) -> Result<i64> {
        let factor = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(serde_json::Value::as_f64)
            .or(self.partial_rotary_factor)
            .unwrap_or(1.0);
        let dim = (head_dim as f64 * factor) as i64;
        if !(factor > 0.0 && factor <= 1.0) || dim % 2 != 0 || dim == 0 {
            return Err(config_error(
                path,
                format!("field `partial_rotary_factor`: {factor} of head_dim {head_dim} is not an even rotary dimension"),
            ));
        }
        Ok(dim)
    }
}

/// Llama's own config: the common fields plus optional biases.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

impl Config {
    pub fn spec(&self, path: &Path) -> Result<DecoderSpec> {
        let mut spec = self.common.spec(path)?;
        spec.qkv_bias = self.attention_bias;
        spec.o_bias = self.attention_bias;
        spec.mlp_bias = self.mlp_bias;
        Ok(spec)
    }
}

/// The query, key and value projections: three linear layers, or Phi-3's one `qkv_proj`
/// whose output holds q, k and v one after another.
#[derive(Debug)]
enum Qkv {
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    Fused(Linear),
}

#[derive(Debug)]
pub struct Attention {
    qkv: Qkv,
    o_proj: Linear,
    /// Norms of queries and keys, per head or (`qk_whole`) over the whole projection.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    qk_whole: bool,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
    scale: f64,
    softcap: Option<f64>,
}

/// An RMSNorm of `dim` named `name`, with the spec's eps and weight offset.
fn rms(ckpt: &Checkpoint, o: LoadOpts, name: &str, dim: i64, s: &DecoderSpec) -> Result<RmsNorm> {
    Ok(RmsNorm::new(ckpt, o, name, dim, s.rms_norm_eps)?.with_offset(s.norm_offset))
}

impl Attention {
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, prefix: &str, s: &DecoderSpec) -> Result<Self> {
        let (d, hd) = (s.hidden_size, s.head_dim);
        let (q, kv) = (s.n_heads * hd, s.n_kv_heads * hd);
        let linear = |name: &str, d_in: i64, d_out: i64, bias: bool| {
            Linear::new(ckpt, o, &format!("{prefix}.{name}"), d_in, d_out, bias)
        };
        let qkv = if s.fused {
            Qkv::Fused(linear("qkv_proj", d, q + 2 * kv, s.qkv_bias)?)
        } else {
            Qkv::Separate {
                q_proj: linear("q_proj", d, q, s.qkv_bias)?,
                k_proj: linear("k_proj", d, kv, s.qkv_bias)?,
                v_proj: linear("v_proj", d, kv, s.qkv_bias)?,
            }
        };
        let norm = |n: &str, dim: i64| rms(ckpt, o, &format!("{prefix}.{n}.weight"), dim, s);
        let qk_norm = match s.qk_norm {
            QkNorm::None => None,
            QkNorm::PerHead => Some((norm("q_norm", hd)?, norm("k_norm", hd)?)),
            QkNorm::Whole => Some((norm("q_norm", q)?, norm("k_norm", kv)?)),
        };
        Ok(Attention {
            qkv,
            o_proj: linear("o_proj", q, d, s.o_bias)?,
            qk_norm,
            qk_whole: s.qk_norm == QkNorm::Whole,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: hd,
            scale: s.attn_scale,
            softcap: s.attn_softcap,
        })
    }

    /// The projections of `x`: queries, keys and values, each `[b, s, heads × head_dim]`.
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        match &self.qkv {
            Qkv::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => Ok((q_proj.forward(x)?, k_proj.forward(x)?, v_proj.forward(x)?)),
            Qkv::Fused(qkv) => {
                let y = qkv.forward(x)?;
                let (q, kv) = (
                    self.n_heads * self.head_dim,
                    self.n_kv_heads * self.head_dim,
                );
                Ok((
                    y.f_narrow(-1, 0, q)?,
                    y.f_narrow(-1, q, kv)?,
                    y.f_narrow(-1, q + kv, kv)?,
                ))
            }
        }
    }

    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.size3()?;
        // [b, s, n, head_dim] → [b, n, s, head_dim], each head normed first where the model
        // norms queries and keys.
        let heads = |t: Tensor, n: i64, norm: Option<&RmsNorm>| -> Result<Tensor> {
            let t = t.f_view([b, s, n, self.head_dim])?;
            let t = match norm {
                Some(norm) => norm.forward(&t)?,
                None => t,
            };
            Ok(t.f_transpose(1, 2)?)
        };
        let (mut q, mut k, v) = self.project(x)?;
        let (qn, kn) = match &self.qk_norm {
            Some((qn, kn)) if self.qk_whole => {
                q = qn.forward(&q)?;
                k = kn.forward(&k)?;
                (None, None)
            }
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let q = apply_rope(&heads(q, self.n_heads, qn)?, cos, sin)?;
        let k = apply_rope(&heads(k, self.n_kv_heads, kn)?, cos, sin)?;
        let v = heads(v, self.n_kv_heads, None)?;
        let rep = self.n_heads / self.n_kv_heads;
        let repeat = |t: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(t);
            }
            Ok(t.f_unsqueeze(2)?
                .f_expand([b, self.n_kv_heads, rep, s, self.head_dim], false)?
                .f_reshape([b, self.n_heads, s, self.head_dim])?)
        };
        let (k, v) = (repeat(k)?, repeat(v)?);
        let y = match self.softcap {
            None => attention(&q, &k, &v, mask, self.scale)?,
            Some(cap) => softcapped_attention(&q, &k, &v, mask, self.scale, cap)?,
        };
        let y =
            y.f_transpose(1, 2)?
                .f_contiguous()?
                .f_view([b, s, self.n_heads * self.head_dim])?;
        self.o_proj.forward(&y)
    }
}

/// The gate and up projections: two linear layers, or Phi-3's one `gate_up_proj` whose output
/// is the gate, then the up projection.
#[derive(Debug)]
enum GateUp {
    Separate { gate_proj: Linear, up_proj: Linear },
    Fused(Linear),
}

#[derive(Debug)]
pub struct Mlp {
    gate_up: GateUp,
    down_proj: Linear,
    act: Activation,
    intermediate: i64,
}

impl Mlp {
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, prefix: &str, s: &DecoderSpec) -> Result<Self> {
        let (d, i) = (s.hidden_size, s.intermediate_size);
        let linear = |name: &str, d_in: i64, d_out: i64| {
            Linear::new(
                ckpt,
                o,
                &format!("{prefix}.{name}"),
                d_in,
                d_out,
                s.mlp_bias,
            )
        };
        let gate_up = if s.fused {
            GateUp::Fused(linear("gate_up_proj", d, 2 * i)?)
        } else {
            GateUp::Separate {
                gate_proj: linear("gate_proj", d, i)?,
                up_proj: linear("up_proj", d, i)?,
            }
        };
        Ok(Mlp {
            gate_up,
            down_proj: linear("down_proj", i, d)?,
            act: s.act,
            intermediate: i,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate_proj, up_proj } => (gate_proj.forward(x)?, up_proj.forward(x)?),
            GateUp::Fused(gate_up) => {
                let y = gate_up.forward(x)?;
                let i = self.intermediate;
                (y.f_narrow(-1, 0, i)?, y.f_narrow(-1, i, i)?)
            }
        };
        self.down_proj
            .forward(&self.act.forward(&gate)?.f_mul(&up)?)
    }
}

/// Attention with Gemma 2's soft-capping: scores × scale, then cap · tanh(scores / cap), then
/// the mask, as transformers' eager attention computes them.
fn softcapped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    cap: f64,
) -> Result<Tensor> {
    let scores = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_mul_scalar(scale)?;
    let scores = scores
        .f_div_scalar(cap)?
        .f_tanh()?
        .f_mul_scalar(cap)?
        .f_add(mask)?;
    let weights = scores.f_softmax(-1, Kind::Float)?.f_to_kind(q.kind())?;
    Ok(weights.f_matmul(v)?)
}

/// A block's RMSNorms by where they sit: Llama's before attention and the MLP
/// (`input_layernorm`, `post_attention_layernorm`), OLMo 2's after them
/// (`post_attention_layernorm`, `post_feedforward_layernorm`), Gemma's on both sides.
#[derive(Debug)]
struct BlockNorms {
    before_attn: Option<RmsNorm>,
    after_attn: Option<RmsNorm>,
    before_mlp: Option<RmsNorm>,
    after_mlp: Option<RmsNorm>,
}

/// `x` through `norm`, or `x` itself where there is none.
fn normed(norm: &Option<RmsNorm>, x: Tensor) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(&x),
        None => Ok(x),
    }
}

#[derive(Debug)]
pub struct Block {
    norms: BlockNorms,
    self_attn: Attention,
    mlp: Mlp,
    layer: usize,
    window: Option<usize>,
}

impl Block {
    pub fn new(
        ckpt: &Checkpoint,
        o: LoadOpts,
        prefix: &str,
        s: &DecoderSpec,
        layer: usize,
    ) -> Result<Self> {
        let norm = |n: &str| -> Result<Option<RmsNorm>> {
            Ok(Some(rms(
                ckpt,
                o,
                &format!("{prefix}.{n}.weight"),
                s.hidden_size,
                s,
            )?))
        };
        let norms = match s.norms {
            NormPlacement::Pre => BlockNorms {
                before_attn: norm("input_layernorm")?,
                after_attn: None,
                before_mlp: norm("post_attention_layernorm")?,
                after_mlp: None,
            },
            NormPlacement::Post => BlockNorms {
                before_attn: None,
                after_attn: norm("post_attention_layernorm")?,
                before_mlp: None,
                after_mlp: norm("post_feedforward_layernorm")?,
            },
            NormPlacement::Sandwich => BlockNorms {
                before_attn: norm("input_layernorm")?,
                after_attn: norm("post_attention_layernorm")?,
                before_mlp: norm("pre_feedforward_layernorm")?,
                after_mlp: norm("post_feedforward_layernorm")?,
            },
        };
        Ok(Block {
            norms,
            self_attn: Attention::new(ckpt, o, &format!("{prefix}.self_attn"), s)?,
            mlp: Mlp::new(ckpt, o, &format!("{prefix}.mlp"), s)?,
            layer,
            window: s.windows[layer],
        })
    }

    /// `hook_attn_out` and `hook_mlp_out` are what each sublayer adds to the residual stream
    /// (for OLMo 2 and Gemma, the outputs after their post-norms), so resid_mid = resid_pre + attn_out holds everywhere.
    pub fn forward(
        &self,
        x: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let at = |kind| HookPoint::new(self.layer, kind);
        let n = &self.norms;
        let a =
            self.self_attn
                .forward(&normed(&n.before_attn, x.shallow_clone())?, cos, sin, mask)?;
        let a = hooks.apply(at(HookKind::AttnOut), normed(&n.after_attn, a)?)?;
        let x = hooks.apply(at(HookKind::ResidMid), x.f_add(&a)?)?;
        let m = self
            .mlp
            .forward(&normed(&n.before_mlp, x.shallow_clone())?)?;
        let m = hooks.apply(at(HookKind::MlpOut), normed(&n.after_mlp, m)?)?;
        hooks.apply(at(HookKind::ResidPost), x.f_add(&m)?)
    }
}

#[derive(Debug)]
pub struct Llama {
    embed_tokens: Embedding,
    /// Every block for a resident model; empty for a block-streamed one (`load_block`).
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    sliding_rope: Option<Rope>,
    rotary_dim: i64,
    embed_scale: Option<f64>,
    final_softcap: Option<f64>,
    /// What loading a block needs.
    spec: DecoderSpec,
    o: LoadOpts,
}

/// What every block of one forward pass shares: the rotary tables (global and, for models with
/// sliding-window layers of their own base, local) and the full causal mask.
#[derive(Debug)]
pub struct Context {
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
    full: Tensor,
    seq: i64,
}

impl Llama {
    /// Loads the model; with `resident` false the blocks are left to `load_block`.
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, s: &DecoderSpec, resident: bool) -> Result<Self> {
        let embed_tokens = Embedding::new(
            ckpt,
            o,
            "model.embed_tokens.weight",
            s.vocab_size,
            s.hidden_size,
        )?;
        let norm = rms(ckpt, o, "model.norm.weight", s.hidden_size, s)?;
        let lm_head = if s.tie_word_embeddings {
            embed_tokens.weight.shallow_clone()
        } else {
            o.get(ckpt, "lm_head.weight", &[s.vocab_size, s.hidden_size])?
        };
        let mut model = Llama {
            embed_tokens,
            layers: Vec::new(),
            norm,
            lm_head,
            rope: s.rope.clone(),
            sliding_rope: s.sliding_rope.clone(),
            rotary_dim: s.rotary_dim,
            // transformers multiplies by the scale cast to the weights' dtype.
            embed_scale: s.embed_scale.map(|x| f64::from(x as f32)),
            final_softcap: s.final_softcap,
            spec: s.clone(),
            o,
        };
        if resident {
            model.layers = (0..s.n_layers)
                .map(|i| model.load_block(ckpt, i))
                .collect::<Result<Vec<_>>>()?;
        }
        Ok(model)
    }

    pub fn dims(&self) -> (usize, i64, i64) {
        let s = self.embed_tokens.weight.size();
        (self.spec.n_layers, s[1], s[0])
    }

    /// Every linear layer of the blocks, for attaching an adapter.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for b in &mut self.layers {
            match &mut b.self_attn.qkv {
                Qkv::Separate {
                    q_proj,
                    k_proj,
                    v_proj,
                } => out.extend([q_proj, k_proj, v_proj]),
                Qkv::Fused(qkv) => out.push(qkv),
            }
            out.push(&mut b.self_attn.o_proj);
            match &mut b.mlp.gate_up {
                GateUp::Separate { gate_proj, up_proj } => out.extend([gate_proj, up_proj]),
                GateUp::Fused(gate_up) => out.push(gate_up),
            }
            out.push(&mut b.mlp.down_proj);
        }
        out
    }
}

impl Decoder for Llama {
    type Block = Block;
    type Context = Context;

    fn resident(&self) -> &[Block] {
        &self.layers
    }

    fn load_block(&self, ckpt: &Checkpoint, layer: usize) -> Result<Block> {
        Block::new(
            ckpt,
            self.o,
            &format!("model.layers.{layer}"),
            &self.spec,
            layer,
        )
    }

    fn layer_of(block: &Block) -> usize {
        block.layer
    }

    fn in_block(&self, name: &str) -> bool {
        name.starts_with("model.layers.")
    }

    fn embed(&self, ids: &Tensor) -> Result<(Tensor, Context)> {
        let seq = ids.size()[1];
        let device = ids.device();
        let global = self.rope.tables(seq, self.rotary_dim, device)?;
        let local = match &self.sliding_rope {
            Some(rope) => Some(rope.tables(seq, self.rotary_dim, device)?),
            None => None,
        };
        let full = causal_mask(seq, None, Kind::Float, device)?;
        let mut x = self.embed_tokens.forward(ids)?;
        if let Some(scale) = self.embed_scale {
            x = x.f_mul_scalar(scale)?;
        }
        Ok((
            x,
            Context {
                global,
                local,
                full,
                seq,
            },
        ))
    }

    fn run_block(
        &self,
        block: &Block,
        x: Tensor,
        ctx: &Context,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let mask = match block.window {
            Some(w) if (w as i64) < ctx.seq => {
                causal_mask(ctx.seq, Some(w), Kind::Float, ctx.full.device())?
            }
            _ => ctx.full.shallow_clone(),
        };
        let (cos, sin) = match (&ctx.local, block.window) {
            (Some(local), Some(_)) => local,
            _ => &ctx.global,
        };
        block.forward(x, cos, sin, &mask, hooks)
    }

    /// The final norm of a residual state.
    fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        self.norm.forward(h)
    }

    /// The unembedding of a normed state (soft-capped where the model caps its logits).
    fn unembed(&self, x: &Tensor) -> Result<Tensor> {
        let logits = mixed_linear(x, &self.lm_head, None)?;
        match self.final_softcap {
            None => Ok(logits),
            Some(cap) => Ok(logits.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?),
        }
    }
}
