//! PEFT LoRA adapters, analysed exactly in factored form: dW = scale * B A is never built.
//!
//! With B = Q_b R_b and A^T = Q_a R_a (thin QR), dW = Q_b (scale R_b R_a^T) Q_a^T, so the
//! singular values of dW are those of the r x r core, and ||dW||_F = ||core||_F: O((m+n) r^2).
//! The cosine with the base needs <W, dW> = scale * <B^T W, A>, one r x m by m x n product.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use neurodiff_protocol::{TensorMetrics, WeightOptions};

use super::dense::fill_spectral;
use super::spectrum::svdvals;
use crate::checkpoint::{read_json, Checkpoint};
use crate::error::{CoreError, Result};
use crate::guard::Guard;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    /// GPT-2's Conv1D stores weights as [in, out]; PEFT then sets this.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub target_modules: Option<serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
}

/// One adapted weight: where its factors are and its scale.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub base_name: String,
    pub a_key: String,
    pub b_key: String,
    pub scale: f64,
}

/// A PEFT LoRA adapter directory.
#[derive(Debug)]
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub weights: Checkpoint,
    /// Keyed by the base tensor each pair adapts.
    pub pairs: BTreeMap<String, LoraPair>,
}

impl Adapter {
    pub fn open(dir: &Path) -> Result<Adapter> {
        Self::open_guarded(dir, None)
    }

    /// Like [`Adapter::open`], both files shown to `guard` first.
    pub fn open_guarded(dir: &Path, guard: Option<Guard>) -> Result<Adapter> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let config: AdapterConfig =
            serde_json::from_value(read_json(&config_path, guard.as_ref())?).map_err(|e| {
                CoreError::Config {
                    path: config_path.clone(),
                    message: e.to_string(),
                }
            })?;
        let bad = |message: String| CoreError::Config {
            path: config_path.clone(),
            message,
        };
        if let Some(kind) = &config.peft_type {
            if kind != "LORA" {
                return Err(bad(format!(
                    "field `peft_type`: `{kind}` adapters are not supported; only LORA"
                )));
            }
        }
        if config.use_dora {
            return Err(bad(
                "field `use_dora`: DoRA adapters are not supported".into()
            ));
        }
        if config.r == 0 {
            return Err(bad("field `r` must be positive".into()));
        }
        let weights = Checkpoint::open_files_guarded(dir, &[ADAPTER_WEIGHTS.to_string()], guard)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let mut pairs = BTreeMap::new();
        for key in weights.names() {
            let Some(stem) = key
                .strip_suffix(".lora_A.weight")
                .or_else(|| key.strip_suffix(".lora_A.default.weight"))
            else {
                if key.contains(".lora_B.") {
                    continue;
                }
                return Err(CoreError::Config {
                    path: weights_path.clone(),
                    message: format!("tensor `{key}` is not a LoRA factor (lora_A/lora_B); embedding LoRA, DoRA and modules_to_save are not supported"),
                });
            };
            let suffix = &key[stem.len()..].replace("lora_A", "lora_B");
            let b_key = format!("{stem}{suffix}");
            if !weights.contains(&b_key) {
                return Err(CoreError::MissingTensor {
                    checkpoint: weights_path.clone(),
                    tensor: b_key,
                    hint: format!(" (the partner of `{key}`)"),
                });
            }
            let base_name = format!(
                "{}.weight",
                stem.strip_prefix("base_model.model.").unwrap_or(stem)
            );
            let module = stem.rsplit('.').next().unwrap_or(stem);
            let alpha = pattern_value(&config.alpha_pattern, stem).unwrap_or(config.lora_alpha);
            let r = weights
                .meta(key)
                .map(|m| m.shape.first().copied().unwrap_or(0))
                .unwrap_or(0);
            if r == 0 {
                return Err(CoreError::Config {
                    path: weights_path.clone(),
                    message: format!("tensor `{key}` has rank 0 (module {module})"),
                });
            }
            let scale = if config.use_rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            };
            pairs.insert(
                base_name.clone(),
                LoraPair {
                    base_name,
                    a_key: key.to_string(),
                    b_key,
                    scale,
                },
            );
        }
        if pairs.is_empty() {
            return Err(CoreError::Config {
                path: weights_path,
                message: "no lora_A/lora_B tensors".into(),
            });
        }
        Ok(Adapter {
            dir: dir.to_path_buf(),
            config,
            weights,
            pairs,
        })
    }

    /// Every adapted base tensor must exist in the base; a miss is an error naming it.
    pub fn check_targets(&self, base: &Checkpoint) -> Result<()> {
        match self.pairs.values().find(|p| !base.contains(&p.base_name)) {
            None => Ok(()),
            Some(p) => Err(CoreError::MissingTensor {
                checkpoint: base.dir().to_path_buf(),
                tensor: p.base_name.clone(),
                hint: format!(
                    " (adapted by `{}` in {})",
                    p.a_key,
                    self.dir.join(ADAPTER_WEIGHTS).display()
                ),
            }),
        }
    }

    /// `A` [r, in] and `B` [out, r] in float64, checked against the base weight's shape.
    fn factors(
        &self,
        base: &Checkpoint,
        pair: &LoraPair,
        device: Device,
    ) -> Result<(Tensor, Tensor, Vec<i64>)> {
        let meta = base
            .meta(&pair.base_name)
            .ok_or_else(|| CoreError::MissingTensor {
                checkpoint: base.dir().to_path_buf(),
                tensor: pair.base_name.clone(),
                hint: String::new(),
            })?;
        let shape = meta.shape_i64();
        let (out_dim, in_dim) = match (shape.as_slice(), self.config.fan_in_fan_out) {
            (&[rows, cols], false) => (rows, cols),
            (&[rows, cols], true) => (cols, rows),
            _ => {
                return Err(CoreError::Input(format!(
                    "base tensor `{}` has shape {shape:?}; LoRA needs a 2-D weight",
                    pair.base_name
                )))
            }
        };
        let a = self.weights.weight(&pair.a_key, Kind::Double, device)?;
        let b = self.weights.weight(&pair.b_key, Kind::Double, device)?;
        let path = self.dir.join(ADAPTER_WEIGHTS);
        let (r, a_in) = a.size2()?;
        let (b_out, b_r) = b.size2()?;
        let why = format!(
            "an adapter for base tensor `{}` of shape {shape:?}",
            pair.base_name
        );
        if a_in != in_dim {
            return Err(CoreError::Shape {
                path,
                tensor: pair.a_key.clone(),
                expected: vec![r, in_dim],
                found: vec![r, a_in],
                why,
            });
        }
        if b_out != out_dim || b_r != r {
            return Err(CoreError::Shape {
                path,
                tensor: pair.b_key.clone(),
                expected: vec![out_dim, r],
                found: vec![b_out, b_r],
                why,
            });
        }
        Ok((a, b, shape))
    }

    /// Exact metrics of `scale * B A` against the base tensor, from the factors.
    pub fn metrics(
        &self,
        base: &Checkpoint,
        pair: &LoraPair,
        opts: &WeightOptions,
        device: Device,
    ) -> Result<TensorMetrics> {
        let (a, b, shape) = self.factors(base, pair, device)?;
        let (_, r_b) = Tensor::f_linalg_qr(&b, "reduced")?;
        let (_, r_a) = Tensor::f_linalg_qr(&a.f_transpose(0, 1)?, "reduced")?;
        let core = r_b
            .f_matmul(&r_a.f_transpose(0, 1)?)?
            .f_mul_scalar(pair.scale)?;
        let fro2 = core.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let mut w = base.weight(&pair.base_name, Kind::Double, device)?;
        if self.config.fan_in_fan_out {
            w = w.f_transpose(0, 1)?;
        }
        let b2 = w.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let inner = b
            .f_transpose(0, 1)?
            .f_matmul(&w)?
            .f_mul(&a)?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?
            * pair.scale;
        let f2 = b2 + 2.0 * inner + fro2;
        let (fro, base_fro) = (fro2.sqrt(), b2.sqrt());
        let cosine = if b2 > 0.0 && f2 > 0.0 {
            (b2 + inner) / (base_fro * f2.sqrt())
        } else {
            0.0
        };
        let shape_usize = shape.iter().map(|&d| d as usize).collect();
        let mut m = TensorMetrics::from_norms(
            &pair.base_name,
            shape_usize,
            fro,
            base_fro,
            cosine,
            "lora-factored",
        );
        // dW has rank <= r: its other min(m, n) - r singular values are exactly zero.
        let mut sigma = svdvals(&core)?;
        sigma.resize(
            sigma
                .len()
                .max(shape.iter().copied().min().unwrap_or(0) as usize),
            0.0,
        );
        fill_spectral(&mut m, &sigma, fro2, opts.top_k);
        Ok(m)
    }

    /// The factors of `pair` (A `[r, in]`, B `[out, r]`, float64 on `device`), checked
    /// against the base tensor's shape.
    pub fn factors_for(
        &self,
        base: &Checkpoint,
        pair: &LoraPair,
        device: Device,
    ) -> Result<(Tensor, Tensor)> {
        let (a, b, _) = self.factors(base, pair, device)?;
        Ok((a, b))
    }

    /// The dense delta (only for tests and for merging; analysis never calls this).
    pub fn dense_delta(&self, base: &Checkpoint, pair: &LoraPair) -> Result<Tensor> {
        let (a, b, _) = self.factors(base, pair, Device::Cpu)?;
        let delta = b.f_matmul(&a)?.f_mul_scalar(pair.scale)?;
        Ok(if self.config.fan_in_fan_out {
            delta.f_transpose(0, 1)?.f_contiguous()?
        } else {
            delta
        })
    }
}

/// PEFT's per-module override: a pattern key matches a module path ending in it at a `.` boundary.
fn pattern_value(patterns: &BTreeMap<String, f64>, module_path: &str) -> Option<f64> {
    patterns
        .iter()
        .find(|(key, _)| module_path == key.as_str() || module_path.ends_with(&format!(".{key}")))
        .map(|(_, &v)| v)
}
