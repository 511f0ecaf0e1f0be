//! Rotary position embeddings: the frequency schedules transformers' `modeling_rope_utils.py`
//! defines (default, linear, llama3, longrope), read from a config, and their application to a
//! leading part of each head (`partial_rotary_factor`).
use std::path::Path;

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::config_error;
use crate::error::Result;

/// RoPE frequency schedule (`rope_type`).
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
    /// Phi-3's LongRoPE: per-frequency factors, the long ones past the pretraining length, and
    /// cos/sin scaled by `attention_factor`.
    LongRope {
        theta: f64,
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: f64,
        attention_factor: f64,
    },
}

/// Where a config keeps its RoPE parameters, and the top-level fields they may default from.
#[derive(Debug, Clone, Copy)]
pub struct RopeSource<'a> {
    /// The parameters object (`rope_parameters`, `rope_scaling`, or a per-layer-type entry).
    pub params: Option<&'a Value>,
    /// Its name in config.json, for errors.
    pub field: &'a str,
    /// A top-level `rope_theta` (transformers 4), which wins over the object's.
    pub theta: Option<f64>,
    pub default_theta: f64,
    pub max_position_embeddings: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
}

impl Rope {
    /// Reads a schedule from `src`, naming config.json's field on error.
    pub fn parse(src: RopeSource<'_>, path: &Path) -> Result<Rope> {
        let RopeSource { params, field, .. } = src;
        let get = |key: &str| params.and_then(|p| p.get(key)).filter(|v| !v.is_null());
        let missing = |key: &str| {
            config_error(
                path,
                format!("field `{field}.{key}` is missing or not a number"),
            )
        };
        let num = |key: &str| -> Result<f64> {
            get(key).and_then(Value::as_f64).ok_or_else(|| missing(key))
        };
        let theta = match (src.theta, get("rope_theta")) {
            (Some(theta), _) => theta,
            (None, Some(_)) => num("rope_theta")?,
            (None, None) => src.default_theta,
        };
        let kind = get("rope_type")
            .or_else(|| get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        Ok(match kind {
            "default" => Rope::Default { theta },
            "linear" => Rope::Linear {
                theta,
                factor: num("factor")?,
            },
            "llama3" => Rope::Llama3 {
                theta,
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            "longrope" | "su" => {
                let factors = |key: &str| -> Result<Vec<f64>> {
                    get(key)
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                        .ok_or_else(|| {
                            config_error(path, format!("field `{field}.{key}` is missing or not a list of numbers"))
                        })
                };
                let original = match get("original_max_position_embeddings") {
                    Some(_) => num("original_max_position_embeddings")?,
                    None => src
                        .original_max_position_embeddings
                        .ok_or_else(|| missing("original_max_position_embeddings"))?,
                };
                let factor = match get("factor") {
                    Some(_) => num("factor")?,
                    None => src.max_position_embeddings.unwrap_or(original) / original,
                };
                let attention_factor = match get("attention_factor") {
                    Some(_) => num("attention_factor")?,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / original.ln()).sqrt(),
                };
                Rope::LongRope {
                    theta,
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    original_max_position_embeddings: original,
                    attention_factor,
                }
            }
            other => {
                return Err(config_error(
                    path,
                    format!("field `{field}.rope_type`: unsupported `{other}`; supported: default, linear, llama3, longrope"),
                ))
            }
        })
    }

    fn theta(&self) -> f64 {
        match self {
            Rope::Default { theta }
            | Rope::Linear { theta, .. }
            | Rope::Llama3 { theta, .. }
            | Rope::LongRope { theta, .. } => *theta,
        }
    }

    /// cos and sin tables `[seq, dim]` for positions 0..seq over the first `dim` features of a
    /// head, as transformers builds them.
    pub fn tables(&self, seq: i64, dim: i64, device: Device) -> Result<(Tensor, Tensor)> {
        let exponents = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(dim as f64)?;
        let powers = Tensor::f_full([1], self.theta(), (Kind::Float, device))?.f_pow(&exponents)?;
        let mut inv_freq = powers.f_reciprocal()?;
        let mut scale = 1.0;
        match self {
            Rope::Default { .. } => {}
            Rope::Linear { factor, .. } => inv_freq = inv_freq.f_div_scalar(*factor)?,
            Rope::Llama3 { .. } => inv_freq = self.llama3(inv_freq)?,
            Rope::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
                ..
            } => {
                let ext = if seq as f64 > *original_max_position_embeddings {
                    long_factor
                } else {
                    short_factor
                };
                if ext.len() as i64 != dim / 2 {
                    return Err(crate::error::CoreError::Input(format!(
                        "longrope factors have {} entries for a rotary dimension of {dim}",
                        ext.len()
                    )));
                }
                let ext = Tensor::f_from_slice(ext)?
                    .f_to_kind(Kind::Float)?
                    .f_to_device(device)?;
                inv_freq = ext.f_mul(&powers)?.f_reciprocal()?;
                scale = *attention_factor;
            }
        }
        let positions = Tensor::f_arange(seq, (Kind::Float, device))?;
        let freqs = positions.f_unsqueeze(1)?.f_mul(&inv_freq.f_unsqueeze(0)?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok((
            emb.f_cos()?.f_mul_scalar(scale)?,
            emb.f_sin()?.f_mul_scalar(scale)?,
        ))
    }

    /// Llama 3's smoothed scaling of the frequencies (`_compute_llama3_parameters`).
    fn llama3(&self, inv_freq: Tensor) -> Result<Tensor> {
        let Rope::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
            ..
        } = self
        else {
            return Ok(inv_freq);
        };
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
        Ok(smoothed.f_where_self(&medium, &base)?)
    }
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?)
}

/// Rotates the first `cos.size(-1)` features of each head of `x` (`[b, heads, seq, head_dim]`);
/// the rest pass through (partial rotary embeddings).
pub(crate) fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (rot, full) = (cos.size()[cos.dim() - 1], x.size()[x.dim() - 1]);
    if rot == full {
        return Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?);
    }
    let head = x.f_narrow(-1, 0, rot)?;
    let rotated = head.f_mul(cos)?.f_add(&rotate_half(&head)?.f_mul(sin)?)?;
    Ok(Tensor::f_cat(
        &[&rotated, &x.f_narrow(-1, rot, full - rot)?],
        -1,
    )?)
}
