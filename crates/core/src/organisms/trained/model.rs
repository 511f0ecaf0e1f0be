//! The organisms' tiny Llama as a trainable function of named parameters (transformers'
//! checkpoint names), with optional LoRA factors on its linear layers.
//!
//! Training needs tensors that carry gradients, which the audit's model (loaded from mapped
//! checkpoint files) does not hold; this forward shares its rotary tables, attention and norm
//! with it, and a test checks that both give the same loss on the written checkpoint.
use std::collections::BTreeMap;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::rng::Rng;
use crate::error::{CoreError, Result};
use crate::models::rope::{apply_rope, Rope};
use crate::nn::{attention, causal_mask, RmsNorm};

/// The shape of the tiny Llama.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    pub vocab: i64,
    pub hidden: i64,
    pub intermediate: i64,
    pub layers: usize,
    pub heads: i64,
    pub kv_heads: i64,
    pub bos: i64,
    pub eos: i64,
}

pub const EPS: f64 = 1e-5;
pub const THETA: f64 = 10000.0;
/// The linear layers of one block, as transformers names them.
pub const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl Arch {
    pub fn head_dim(&self) -> i64 {
        self.hidden / self.heads
    }

    /// `[out, in]` of one block's linear layer.
    pub fn linear_shape(&self, linear: &str) -> [i64; 2] {
        let (d, i, kv) = (
            self.hidden,
            self.intermediate,
            self.kv_heads * self.head_dim(),
        );
        match linear {
            "self_attn.k_proj" | "self_attn.v_proj" => [kv, d],
            "mlp.gate_proj" | "mlp.up_proj" => [i, d],
            "mlp.down_proj" => [d, i],
            _ => [d, d],
        }
    }

    /// transformers' config.json for this shape.
    pub fn config(&self) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.hidden, "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "vocab_size": self.vocab,
            "rms_norm_eps": EPS, "rope_theta": THETA, "tie_word_embeddings": false,
            "hidden_act": "silu", "max_position_embeddings": 512,
            "bos_token_id": self.bos, "eos_token_id": self.eos, "torch_dtype": "float32"
        })
    }

    /// Freshly initialised parameters (normal, std 0.02 as transformers initialises Llama;
    /// norms at one).
    pub fn init(&self, rng: &mut Rng) -> Result<BTreeMap<String, Tensor>> {
        let opts = (Kind::Float, Device::Cpu);
        let mut p = BTreeMap::new();
        let mut normal =
            |shape: &[i64], std: f64| -> Result<Tensor> { rng.tensor(shape, |r| r.normal() * std) };
        p.insert(
            "model.embed_tokens.weight".to_string(),
            normal(&[self.vocab, self.hidden], 0.02)?,
        );
        for l in 0..self.layers {
            for linear in LINEARS {
                let shape = self.linear_shape(linear);
                // GPT-2's scaling of the residual projections keeps the stream's size at init.
                let std = if linear.ends_with("o_proj") || linear.ends_with("down_proj") {
                    0.02 / (2.0 * self.layers as f64).sqrt()
                } else {
                    0.02
                };
                p.insert(
                    format!("model.layers.{l}.{linear}.weight"),
                    normal(&shape, std)?,
                );
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                p.insert(
                    format!("model.layers.{l}.{norm}.weight"),
                    Tensor::f_ones([self.hidden], opts)?,
                );
            }
        }
        p.insert(
            "model.norm.weight".to_string(),
            Tensor::f_ones([self.hidden], opts)?,
        );
        p.insert(
            "lm_head.weight".to_string(),
            normal(&[self.vocab, self.hidden], 0.02)?,
        );
        Ok(p)
    }
}

/// LoRA factors keyed by module (`model.layers.3.self_attn.q_proj`): `a` is `[r, in]`, `b` is
/// `[out, r]`, and the delta is `scale · x aᵀ bᵀ` (PEFT's convention, scale = alpha / r).
#[derive(Debug)]
pub struct Lora {
    pub factors: BTreeMap<String, (Tensor, Tensor)>,
    pub scale: f64,
}

/// The forward pass over borrowed parameters.
#[derive(Debug)]
pub struct TinyLlama<'a> {
    pub arch: &'a Arch,
    pub params: &'a BTreeMap<String, Tensor>,
    pub lora: Option<&'a Lora>,
}

impl<'a> TinyLlama<'a> {
    pub fn new(
        arch: &'a Arch,
        params: &'a BTreeMap<String, Tensor>,
        lora: Option<&'a Lora>,
    ) -> Self {
        TinyLlama { arch, params, lora }
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.params
            .get(name)
            .ok_or_else(|| CoreError::Input(format!("organism parameter `{name}` is missing")))
    }

    fn linear(&self, x: &Tensor, module: &str) -> Result<Tensor> {
        let y = x.f_linear(self.get(&format!("{module}.weight"))?, None::<&Tensor>)?;
        match self
            .lora
            .and_then(|l| l.factors.get(module).map(|f| (f, l.scale)))
        {
            Some(((a, b), scale)) => Ok(y.f_add(
                &x.f_linear(a, None::<&Tensor>)?
                    .f_linear(b, None::<&Tensor>)?
                    .f_mul_scalar(scale)?,
            )?),
            None => Ok(y),
        }
    }

    fn norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        RmsNorm {
            weight: self.get(name)?.shallow_clone(),
            eps: EPS,
            offset: 0.0,
        }
        .forward(x)
    }

    /// Logits `[batch, seq, vocab]` for ids `[batch, seq]` (no padding: training windows are full).
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let a = self.arch;
        let (b, s) = ids.size2()?;
        let hd = a.head_dim();
        let (cos, sin) = Rope::Default { theta: THETA }.tables(s, hd, ids.device())?;
        let mask = causal_mask(s, None, Kind::Float, ids.device())?;
        let rep = a.heads / a.kv_heads;
        let mut h = Tensor::f_embedding(
            self.get("model.embed_tokens.weight")?,
            ids,
            -1,
            false,
            false,
        )?;
        for l in 0..a.layers {
            let p = format!("model.layers.{l}");
            let x = self.norm(&h, &format!("{p}.input_layernorm.weight"))?;
            let heads = |t: Tensor, n: i64| -> Result<Tensor> {
                Ok(t.f_view([b, s, n, hd])?.f_transpose(1, 2)?)
            };
            let q = apply_rope(
                &heads(self.linear(&x, &format!("{p}.self_attn.q_proj"))?, a.heads)?,
                &cos,
                &sin,
            )?;
            let k = apply_rope(
                &heads(
                    self.linear(&x, &format!("{p}.self_attn.k_proj"))?,
                    a.kv_heads,
                )?,
                &cos,
                &sin,
            )?;
            let v = heads(
                self.linear(&x, &format!("{p}.self_attn.v_proj"))?,
                a.kv_heads,
            )?;
            let (k, v) = (
                k.f_repeat_interleave_self_int(rep, Some(1), None)?,
                v.f_repeat_interleave_self_int(rep, Some(1), None)?,
            );
            let att = attention(&q, &k, &v, &mask, 1.0 / (hd as f64).sqrt())?
                .f_transpose(1, 2)?
                .f_reshape([b, s, a.hidden])?;
            h = h.f_add(&self.linear(&att, &format!("{p}.self_attn.o_proj"))?)?;
            let x = self.norm(&h, &format!("{p}.post_attention_layernorm.weight"))?;
            let gate = self.linear(&x, &format!("{p}.mlp.gate_proj"))?.f_silu()?;
            let up = self.linear(&x, &format!("{p}.mlp.up_proj"))?;
            h = h.f_add(&self.linear(&gate.f_mul(&up)?, &format!("{p}.mlp.down_proj"))?)?;
        }
        let h = self.norm(&h, "model.norm.weight")?;
        Ok(h.f_linear(self.get("lm_head.weight")?, None::<&Tensor>)?)
    }

    /// Mean next-token cross-entropy (nats) over the windows `ids` `[batch, seq]`.
    pub fn loss(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, s) = ids.size2()?;
        let logits = self.logits(&ids.f_narrow(1, 0, s - 1)?)?;
        let targets = ids.f_narrow(1, 1, s - 1)?;
        Ok(logits.f_flatten(0, 1)?.f_cross_entropy_loss::<&Tensor>(
            &targets.f_flatten(0, 1)?,
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?)
    }
}
