//! The few layers the supported architectures are made of, loaded by checkpoint name.
use tch::{Device, Kind, Tensor};

use crate::checkpoint::Checkpoint;
use crate::error::Result;

/// Where weights go when loaded: which dtype and which device. Linear and embedding weights
/// take `kind`; norms stay in fp32, and every activation between layers is fp32.
#[derive(Debug, Clone, Copy)]
pub struct LoadOpts {
    pub kind: Kind,
    pub device: Device,
}

impl LoadOpts {
    /// The same device, in fp32: norms keep their (small) weights in fp32, as they compute.
    pub fn fp32(self) -> LoadOpts {
        LoadOpts {
            kind: Kind::Float,
            ..self
        }
    }

    pub fn get(&self, ckpt: &Checkpoint, name: &str, shape: &[i64]) -> Result<Tensor> {
        ckpt.weight_shaped(name, shape, self.kind, self.device)
    }
}

/// y = x W^T + b with W stored as `[out, in]` (torch.nn.Linear), plus a LoRA delta
/// scale · x Aᵀ Bᵀ while its switch is on.
#[derive(Debug)]
pub struct Linear {
    /// The weight's checkpoint name, which an adapter's targets are matched against.
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraDelta>,
}

/// A LoRA adapter's factors on one linear layer, applied in factored form (never merged).
#[derive(Debug)]
pub struct LoraDelta {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub scale: f64,
    pub on: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Linear {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`).
    pub fn new(
        ckpt: &Checkpoint,
        o: LoadOpts,
        prefix: &str,
        d_in: i64,
        d_out: i64,
        bias: bool,
    ) -> Result<Self> {
        let weight = o.get(ckpt, &format!("{prefix}.weight"), &[d_out, d_in])?;
        let bias = if bias {
            Some(o.get(ckpt, &format!("{prefix}.bias"), &[d_out])?)
        } else {
            None
        };
        Ok(Linear {
            name: format!("{prefix}.weight"),
            weight,
            bias,
            lora: None,
        })
    }

    /// GPT-2's Conv1D stores `[in, out]`; transposed once here so forward is the same matmul.
    pub fn new_conv1d(
        ckpt: &Checkpoint,
        o: LoadOpts,
        prefix: &str,
        d_in: i64,
        d_out: i64,
    ) -> Result<Self> {
        let weight = o.get(ckpt, &format!("{prefix}.weight"), &[d_in, d_out])?;
        let bias = o.get(ckpt, &format!("{prefix}.bias"), &[d_out])?;
        Ok(Linear {
            name: format!("{prefix}.weight"),
            weight: weight.f_transpose(0, 1)?.f_contiguous()?,
            bias: Some(bias),
            lora: None,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = mixed_linear(x, &self.weight, self.bias.as_ref())?;
        match &self.lora {
            Some(l) if l.on.load(std::sync::atomic::Ordering::Relaxed) => {
                let delta = x
                    .f_linear(&l.a, None::<&Tensor>)?
                    .f_linear(&l.b, None::<&Tensor>)?
                    .f_mul_scalar(l.scale)?;
                Ok(y.f_add(&delta)?)
            }
            _ => Ok(y),
        }
    }
}

/// `x Wᵀ + b` computed in W's dtype and returned in x's: with weights in half precision the
/// residual stream stays in fp32 (the matmul runs in the weights' dtype, its output is widened).
pub fn mixed_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (kind, wkind) = (x.kind(), weight.kind());
    if kind == wkind {
        return Ok(x.f_linear(weight, bias)?);
    }
    Ok(x.f_to_kind(wkind)?
        .f_linear(weight, bias)?
        .f_to_kind(kind)?)
}

#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, name: &str, vocab: i64, dim: i64) -> Result<Self> {
        Ok(Embedding {
            weight: o.get(ckpt, name, &[vocab, dim])?,
        })
    }

    /// The rows of `ids`, in fp32 whatever the weights' dtype (the residual stream's dtype).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(&self.weight, ids, -1, false, false)?.f_to_kind(Kind::Float)?)
    }
}

/// x / sqrt(mean(x^2) + eps) * (weight + offset), computed in fp32 as transformers does.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    /// Gemma stores w and scales by `1 + w`; 0 elsewhere.
    pub offset: f64,
}

impl RmsNorm {
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, name: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: o.fp32().get(ckpt, name, &[dim])?,
            eps,
            offset: 0.0,
        })
    }

    pub fn with_offset(self, offset: f64) -> Self {
        RmsNorm { offset, ..self }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        let x32 = x.f_to_kind(Kind::Float)?;
        let var = x32.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
        let normed = x32.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        if self.offset == 0.0 {
            // Llama casts back, then scales.
            return Ok(normed.f_to_kind(kind)?.f_mul(&self.weight)?);
        }
        // Gemma scales in fp32, then casts back.
        let scale = self
            .weight
            .f_to_kind(Kind::Float)?
            .f_add_scalar(self.offset)?;
        Ok(normed.f_mul(&scale)?.f_to_kind(kind)?)
    }
}

#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(ckpt: &Checkpoint, o: LoadOpts, prefix: &str, dim: i64, eps: f64) -> Result<Self> {
        let o = o.fp32();
        Ok(LayerNorm {
            weight: o.get(ckpt, &format!("{prefix}.weight"), &[dim])?,
            bias: o.get(ckpt, &format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.weight.size()[0];
        Ok(x.f_layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, false)?)
    }
}

/// Scaled dot-product attention over `[batch, heads, seq, head_dim]` with an additive mask,
/// through libtorch's fused kernel: the `[seq, seq]` scores are never held for every head at
/// once, and the softmax accumulates in fp32 as transformers' eager path does.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention(
        q,
        k,
        v,
        Some(mask),
        0.0,
        false,
        scale,
        false,
    )?)
}

/// Additive causal mask `[seq, seq]`: 0 where key j may be seen from query i (j <= i and, with
/// a sliding window w, i - j < w), -inf elsewhere.
pub fn causal_mask(seq: i64, window: Option<usize>, kind: Kind, device: Device) -> Result<Tensor> {
    let i = Tensor::f_arange(seq, (Kind::Int64, device))?.f_unsqueeze(1)?;
    let j = Tensor::f_arange(seq, (Kind::Int64, device))?.f_unsqueeze(0)?;
    let mut allowed = j.f_le_tensor(&i)?;
    if let Some(w) = window {
        allowed = allowed.f_logical_and(&i.f_sub(&j)?.f_lt(w as i64)?)?;
    }
    let zeros = Tensor::f_zeros([seq, seq], (kind, device))?;
    Ok(zeros.f_masked_fill(&allowed.f_logical_not()?, f64::NEG_INFINITY)?)
}

/// The MLP nonlinearities the supported configs name (`hidden_act`, `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluTanh,
    GeluErf,
    Relu,
    Silu,
}

impl Activation {
    pub const NAMES: &'static str =
        "gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu, silu, swish";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }

    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::GeluTanh => x.f_gelu("tanh")?,
            Activation::GeluErf => x.f_gelu("none")?,
            Activation::Relu => x.f_relu()?,
            Activation::Silu => x.f_silu()?,
        })
    }
}
