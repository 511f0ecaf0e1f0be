//! Llama (transformers' LlamaForCausalLM): RMSNorm, RoPE, grouped-query attention, SwiGLU.
//!
//! Mistral, Qwen2 and Qwen3 run on the same decoder; their files only read their own config into
//! a [`DecoderSpec`] (explicit head_dim and sliding window; qkv bias; per-head q/k norms).
use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::config_error;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::models::ForwardOutput;
use crate::nn::{attention, causal_mask, Activation, Embedding, Linear, LoadOpts, RmsNorm};

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
}

/// RoPE frequency schedule (`rope_type` default, linear or llama3).
#[derive(Debug, Clone, PartialEq)]
pub enum Rope {
    Default {
        theta: f64,
    },
    Linear {
        theta: f64,
        factor: f64,
    },
    Llama3 {
        theta: f64,
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
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

    fn rope(&self, path: &Path) -> Result<Rope> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let field = if self.rope_parameters.is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        let num = |key: &str| -> Result<f64> {
            params
                .and_then(|p| p.get(key))
                .and_then(|v| v.as_f64())
                .ok_or_else(|| {
                    config_error(
                        path,
                        format!("field `{field}.{key}` is missing or not a number"),
                    )
                })
        };
        let theta = match (self.rope_theta, params.and_then(|p| p.get("rope_theta"))) {
            (Some(theta), _) => theta,
            (None, Some(_)) => num("rope_theta")?,
            (None, None) => 10000.0,
        };
        let kind = params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        Ok(match kind {
            "default" => Rope::Default { theta },
            "linear" => Rope::Linear { theta, factor: num("factor")? },
            "llama3" => Rope::Llama3 {
                theta,
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => return Err(config_error(path, format!("field `{field}.rope_type`: unsupported `{other}`; supported: default, linear, llama3"))),
        })
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

impl Rope {
    /// cos and sin tables `[seq, head_dim]` for positions 0..seq, as transformers builds them.
    pub fn tables(&self, seq: i64, head_dim: i64, device: Device) -> Result<(Tensor, Tensor)> {
        let theta = match self {
            Rope::Default { theta } | Rope::Linear { theta, .. } | Rope::Llama3 { theta, .. } => {
                *theta
            }
        };
        let exponents = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(head_dim as f64)?;
        let mut inv_freq = Tensor::f_full([1], theta, (Kind::Float, device))?
            .f_pow(&exponents)?
            .f_reciprocal()?;
        match self {
            Rope::Default { .. } => {}
            Rope::Linear { factor, .. } => inv_freq = inv_freq.f_div_scalar(*factor)?,
            Rope::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
                ..
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = inv_freq
                    .f_reciprocal()?
                    .f_mul_scalar(2.0 * std::f64::consts::PI)?;
                let scaled = inv_freq.f_div_scalar(*factor)?;
                let long = wavelen.f_gt(low_wavelen)?;
                let base = scaled.f_where_self(&long, &inv_freq)?;
                let smooth = wavelen
                    .f_reciprocal()?
                    .f_mul_scalar(*old)?
                    .f_sub_scalar(*low_freq_factor)?
                    .f_div_scalar(high_freq_factor - low_freq_factor)?;
                let smoothed = base
                    .f_div_scalar(*factor)?
                    .f_mul(&smooth.f_neg()?.f_add_scalar(1.0)?)?
                    .f_add(&smooth.f_mul(&base)?)?;
                let medium = wavelen
                    .f_lt(high_wavelen)?
                    .f_logical_not()?
                    .f_logical_and(&long.f_logical_not()?)?;
                inv_freq = smoothed.f_where_self(&medium, &base)?;
            }
        }
        let positions = Tensor::f_arange(seq, (Kind::Float, device))?;
        let freqs = positions.f_unsqueeze(1)?.f_mul(&inv_freq.f_unsqueeze(0)?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok((emb.f_cos()?, emb.f_sin()?))
    }
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?)
}

pub(crate) fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?)
}

#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Norms of queries and keys, per head or (`qk_whole`) over the whole projection.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    qk_whole: bool,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, prefix: &str, s: &DecoderSpec) -> Result<Self> {
        let (d, hd) = (s.hidden_size, s.head_dim);
        Ok(Attention {
            q_proj: Linear::new(
                ckpt,
                o,
                &format!("{prefix}.q_proj"),
                d,
                s.n_heads * hd,
                s.qkv_bias,
            )?,
            k_proj: Linear::new(
                ckpt,
                o,
                &format!("{prefix}.k_proj"),
                d,
                s.n_kv_heads * hd,
                s.qkv_bias,
            )?,
            v_proj: Linear::new(
                ckpt,
                o,
                &format!("{prefix}.v_proj"),
                d,
                s.n_kv_heads * hd,
                s.qkv_bias,
            )?,
            o_proj: Linear::new(
                ckpt,
                o,
                &format!("{prefix}.o_proj"),
                s.n_heads * hd,
                d,
                s.o_bias,
            )?,
            qk_norm: {
                let norm = |n: &str, dim: i64| {
                    RmsNorm::new(
                        ckpt,
                        o,
                        &format!("{prefix}.{n}.weight"),
                        dim,
                        s.rms_norm_eps,
                    )
                };
                match s.qk_norm {
                    QkNorm::None => None,
                    QkNorm::PerHead => Some((norm("q_norm", hd)?, norm("k_norm", hd)?)),
                    QkNorm::Whole => Some((
                        norm("q_norm", s.n_heads * hd)?,
                        norm("k_norm", s.n_kv_heads * hd)?,
                    )),
                }
            },
            qk_whole: s.qk_norm == QkNorm::Whole,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: hd,
        })
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
        let (mut q, mut k) = (self.q_proj.forward(x)?, self.k_proj.forward(x)?);
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
        let v = heads(self.v_proj.forward(x)?, self.n_kv_heads, None)?;
        let rep = self.n_heads / self.n_kv_heads;
        let repeat = |t: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(t);
            }
            Ok(t.f_unsqueeze(2)?
                .f_expand([b, self.n_kv_heads, rep, s, self.head_dim], false)?
                .f_reshape([b, self.n_heads, s, self.head_dim])?)
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let y = attention(&q, &repeat(k)?, &repeat(v)?, mask, scale)?;
        let y =
            y.f_transpose(1, 2)?
                .f_contiguous()?
                .f_view([b, s, self.n_heads * self.head_dim])?;
        self.o_proj.forward(&y)
    }
}

#[derive(Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, prefix: &str, s: &DecoderSpec) -> Result<Self> {
        let (d, i) = (s.hidden_size, s.intermediate_size);
        Ok(Mlp {
            gate_proj: Linear::new(ckpt, o, &format!("{prefix}.gate_proj"), d, i, s.mlp_bias)?,
            up_proj: Linear::new(ckpt, o, &format!("{prefix}.up_proj"), d, i, s.mlp_bias)?,
            down_proj: Linear::new(ckpt, o, &format!("{prefix}.down_proj"), i, d, s.mlp_bias)?,
            act: s.act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = self
            .act
            .forward(&self.gate_proj.forward(x)?)?
            .f_mul(&self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}

/// A block's RMSNorms by where they sit: Llama's before attention and the MLP
/// (`input_layernorm`, `post_attention_layernorm`), OLMo 2's after them
/// (`post_attention_layernorm`, `post_feedforward_layernorm`).
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
        let (d, eps) = (s.hidden_size, s.rms_norm_eps);
        let norm = |n: &str| -> Result<Option<RmsNorm>> {
            Ok(Some(RmsNorm::new(
                ckpt,
                o,
                &format!("{prefix}.{n}.weight"),
                d,
                eps,
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
    /// (for OLMo 2, the normed outputs), so resid_mid = resid_pre + attn_out holds everywhere.
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
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    head_dim: i64,
}

impl Llama {
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, s: &DecoderSpec) -> Result<Self> {
        let embed_tokens = Embedding::new(
            ckpt,
            o,
            "model.embed_tokens.weight",
            s.vocab_size,
            s.hidden_size,
        )?;
        let layers = (0..s.n_layers)
            .map(|i| Block::new(ckpt, o, &format!("model.layers.{i}"), s, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(ckpt, o, "model.norm.weight", s.hidden_size, s.rms_norm_eps)?;
        let lm_head = if s.tie_word_embeddings {
            embed_tokens.weight.shallow_clone()
        } else {
            o.get(ckpt, "lm_head.weight", &[s.vocab_size, s.hidden_size])?
        };
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: s.rope.clone(),
            head_dim: s.head_dim,
        })
    }

    pub fn dims(&self) -> (usize, i64, i64) {
        let s = self.embed_tokens.weight.size();
        (self.layers.len(), s[1], s[0])
    }

    /// Every linear layer of the blocks, for attaching an adapter.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|b| {
                let a = &mut b.self_attn;
                let m = &mut b.mlp;
                [
                    &mut a.q_proj,
                    &mut a.k_proj,
                    &mut a.v_proj,
                    &mut a.o_proj,
                    &mut m.gate_proj,
                    &mut m.up_proj,
                    &mut m.down_proj,
                ]
            })
            .collect()
    }

    /// The final norm of a residual state.
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        self.norm.forward(h)
    }

    /// The unembedding of a normed state.
    pub fn unembed(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.lm_head, None::<&Tensor>)?)
    }

    /// The logits of a residual state: the final norm, then the unembedding.
    pub fn read_out(&self, h: &Tensor) -> Result<Tensor> {
        Ok(self
            .norm
            .forward(h)?
            .f_linear(&self.lm_head, None::<&Tensor>)?)
    }

    pub fn forward(&self, ids: &Tensor, hooks: &mut Hooks) -> Result<ForwardOutput> {
        let seq = ids.size()[1];
        let device = ids.device();
        let (cos, sin) = self.rope.tables(seq, self.head_dim, device)?;
        let full = causal_mask(seq, None, Kind::Float, device)?;
        let mut x = self.embed_tokens.forward(ids)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        for block in &self.layers {
            x = hooks.apply(HookPoint::new(block.layer, HookKind::ResidPre), x)?;
            hidden_states.push(x.shallow_clone());
            let mask = match block.window {
                Some(w) if (w as i64) < seq => causal_mask(seq, Some(w), Kind::Float, device)?,
                _ => full.shallow_clone(),
            };
            x = block.forward(x, &cos, &sin, &mask, hooks)?;
        }
        let last_resid = x.shallow_clone();
        let x = self.norm.forward(&x)?;
        let logits = if hooks.wants_logits() {
            x.f_linear(&self.lm_head, None::<&Tensor>)?
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
}
