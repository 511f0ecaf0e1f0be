//! A BatchTopK dictionary over M models' activations (M = 2: a crosscoder; M = 1: an SAE), its
//! normalisation, encoding and decoding, as docs/crosscoder.md defines them.
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{CoreError, Result};
use crate::organisms::trained::rng::Rng;

/// Per-model centring and one scale each, so every model's activations have RMS norm
/// `target_rms`: `x̃_m = (x_m − μ_m) · s_m`.
#[derive(Debug)]
pub struct Normalization {
    /// `(M, d)`
    pub mean: Tensor,
    /// `(M)`
    pub scale: Tensor,
}

impl Normalization {
    /// From running sums over `n` tokens: `sum` and `sum_sq` `(M, d)` in f64.
    pub fn from_sums(sum: &Tensor, sum_sq: &Tensor, n: u64, target_rms: f64) -> Result<Self> {
        if n == 0 {
            return Err(CoreError::Input(
                "no activations to normalise the dictionary with".into(),
            ));
        }
        let mean = sum.f_div_scalar(n as f64)?;
        let var = sum_sq
            .f_div_scalar(n as f64)?
            .f_sub(&mean.f_square()?)?
            .f_clamp_min(0.0)?;
        let total = var.f_sum_dim_intlist(-1, false, Kind::Double)?;
        let scale = total
            .f_add_scalar(1e-8)?
            .f_sqrt()?
            .f_reciprocal()?
            .f_mul_scalar(target_rms)?;
        Ok(Normalization { mean, scale })
    }

    /// `x` `(B, M, d)` normalised, in `kind`.
    pub fn apply(&self, x: &Tensor, kind: Kind) -> Result<Tensor> {
        let mean = self.mean.f_to_kind(kind)?.f_to_device(x.device())?;
        let scale = self.scale.f_to_kind(kind)?.f_to_device(x.device())?;
        Ok(x.f_to_kind(kind)?
            .f_sub(&mean.f_unsqueeze(0)?)?
            .f_mul(&scale.f_unsqueeze(0)?.f_unsqueeze(-1)?)?)
    }
}

/// The parameters and buffers of a dictionary.
#[derive(Debug)]
pub struct Dictionary {
    /// `(M, d, F)`
    pub w_enc: Tensor,
    /// `(F)`
    pub b_enc: Tensor,
    /// `(M, F, d)`
    pub w_dec: Tensor,
    /// `(M, d)`
    pub b_dec: Tensor,
    /// The inference threshold on `post · c` (negative until training sets it).
    pub threshold: f64,
    pub k: i64,
    pub norm: Normalization,
}

/// What one encoding produced: the codes and what training and metrics need besides.
#[derive(Debug)]
pub struct Codes {
    /// `(B, F)`: `post` where selected, 0 elsewhere.
    pub f: Tensor,
    /// `(B, F)`: `ReLU(pre)`.
    pub post: Tensor,
    /// `(B, F)`: `post · c`.
    pub scaled: Tensor,
    /// `(F)`: `c_j = Σ_m ||W_dec[m, j]||`.
    pub code_norm: Tensor,
}

/// A dictionary's size: how many models it reads (2 for a crosscoder, 1 for an SAE), their
/// width d, its latents F and the k latents each token keeps on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub models: i64,
    pub width: i64,
    pub size: i64,
    pub k: i64,
}

impl Dictionary {
    /// A fresh dictionary: encoder columns in random directions with norm `init_norm` per
    /// model, the decoder their transpose, biases zero (the decoder's is set from the first
    /// batch). Drawn from `seed` alone, so the same on every machine.
    pub fn init(
        shape: Shape,
        init_norm: f64,
        norm: Normalization,
        seed: u64,
        (kind, device): (Kind, Device),
    ) -> Result<Self> {
        let Shape {
            models,
            width: d,
            size: dict_size,
            k,
        } = shape;
        if models < 1 || d < 1 || dict_size < 1 || k < 1 {
            return Err(CoreError::Input(format!(
                "dictionary shape: models {models}, width {d}, size {dict_size}, k {k} \
                 (each must be at least 1)"
            )));
        }
        let mut rng = Rng::new(seed);
        let w = rng
            .tensor(&[models, d, dict_size], |r| r.normal())?
            .f_to_kind(kind)?;
        let norms = w.f_norm_scalaropt_dim(2, [1], true)?.f_clamp_min(1e-12)?;
        let w_enc = w
            .f_div(&norms)?
            .f_mul_scalar(init_norm)?
            .f_to_device(device)?;
        let w_dec = w_enc.f_transpose(1, 2)?.f_contiguous()?;
        Ok(Dictionary {
            b_enc: Tensor::f_zeros([dict_size], (kind, device))?,
            b_dec: Tensor::f_zeros([models, d], (kind, device))?,
            w_enc,
            w_dec,
            threshold: -1.0,
            k,
            norm,
        })
    }

    pub fn models(&self) -> i64 {
        self.w_enc.size()[0]
    }

    pub fn width(&self) -> i64 {
        self.w_enc.size()[1]
    }

    pub fn dict_size(&self) -> i64 {
        self.w_enc.size()[2]
    }

    pub fn kind(&self) -> Kind {
        self.w_enc.kind()
    }

    pub fn device(&self) -> Device {
        self.w_enc.device()
    }

    /// The parameters, in a fixed order (encoder weight and bias, decoder weight and bias).
    pub fn params(&self) -> [&Tensor; 4] {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
    }

    pub(crate) fn params_mut(&mut self) -> [&mut Tensor; 4] {
        [
            &mut self.w_enc,
            &mut self.b_enc,
            &mut self.w_dec,
            &mut self.b_dec,
        ]
    }

    /// The decoder as one `(F, M·d)` matrix.
    fn dec_flat(&self) -> Result<Tensor> {
        let (m, f, d) = (self.models(), self.dict_size(), self.width());
        Ok(self.w_dec.f_permute([1, 0, 2])?.f_reshape([f, m * d])?)
    }

    /// `c_j = Σ_m ||W_dec[m, j]||` `(F)`.
    pub fn code_norm(&self) -> Result<Tensor> {
        Ok(self
            .w_dec
            .f_norm_scalaropt_dim(2, [2], false)?
            .f_sum_dim_intlist(0, false, self.kind())?)
    }

    /// `ReLU(Σ_m x̃_m W_enc[m] + b_enc)` for normalised `x` `(B, M, d)`.
    pub fn post(&self, x: &Tensor) -> Result<Tensor> {
        let (m, d, f) = (self.models(), self.width(), self.dict_size());
        let b = x.size()[0];
        Ok(x.f_reshape([b, m * d])?
            .f_matmul(&self.w_enc.f_reshape([m * d, f])?)?
            .f_add(&self.b_enc)?
            .f_relu()?)
    }

    /// Encodes normalised `x` `(B, M, d)`: BatchTopK with `k` (training, and before a
    /// threshold exists) or the threshold.
    pub fn encode(&self, x: &Tensor, k: Option<i64>) -> Result<Codes> {
        let post = self.post(x)?;
        let code_norm = self.code_norm()?.f_detach()?;
        let scaled = post.f_mul(&code_norm.f_unsqueeze(0)?)?;
        let mask = match k {
            Some(k) => batch_topk_mask(&scaled, k)?,
            None if self.threshold < 0.0 => batch_topk_mask(&scaled, self.k)?,
            None => scaled.f_gt(self.threshold)?.f_to_kind(post.kind())?,
        };
        Ok(Codes {
            f: post.f_mul(&mask)?,
            post,
            scaled,
            code_norm,
        })
    }

    /// `x̂ = f W_dec + b_dec` `(B, M, d)`; without the bias when `bias` is false.
    pub fn decode(&self, f: &Tensor, bias: bool) -> Result<Tensor> {
        let (m, d) = (self.models(), self.width());
        let b = f.size()[0];
        let x = f.f_matmul(&self.dec_flat()?)?.f_reshape([b, m, d])?;
        Ok(if bias {
            x.f_add(&self.b_dec.f_unsqueeze(0)?)?
        } else {
            x
        })
    }

    /// Writes the dictionary (and its normalisation) as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let cpu = |t: &Tensor| t.f_detach()?.f_to_device(Device::Cpu);
        let scalars = Tensor::from_slice(&[self.threshold, self.k as f64]);
        let named = [
            ("W_enc", cpu(&self.w_enc)?),
            ("b_enc", cpu(&self.b_enc)?),
            ("W_dec", cpu(&self.w_dec)?),
            ("b_dec", cpu(&self.b_dec)?),
            ("norm.mean", cpu(&self.norm.mean)?),
            ("norm.scale", cpu(&self.norm.scale)?),
            ("threshold_k", scalars),
        ];
        Tensor::write_safetensors(&named, path).map_err(|e| CoreError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads a dictionary [`Dictionary::save`] wrote, checking its shapes.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let mut named: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| CoreError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
            .into_iter()
            .collect();
        let mut take = |name: &str| {
            named
                .remove(name)
                .ok_or_else(|| CoreError::MissingTensor {
                    checkpoint: path.to_path_buf(),
                    tensor: name.to_string(),
                    hint: String::new(),
                })
                .and_then(|t| Ok(t.f_to_device(device)?))
        };
        let (w_enc, b_enc, w_dec, b_dec) = (
            take("W_enc")?,
            take("b_enc")?,
            take("W_dec")?,
            take("b_dec")?,
        );
        let norm = Normalization {
            mean: take("norm.mean")?,
            scale: take("norm.scale")?,
        };
        let scalars = Vec::<f64>::try_from(&take("threshold_k")?.f_to_kind(Kind::Double)?)
            .map_err(CoreError::from)?;
        let enc = w_enc.size();
        let shape_err = |tensor: &str, expected: Vec<i64>, found: Vec<i64>| CoreError::Shape {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            expected,
            found,
            why: "a dictionary's tensors must agree with W_enc (M, d, F)".into(),
        };
        if enc.len() != 3 {
            return Err(shape_err("W_enc", vec![2, -1, -1], enc));
        }
        let (m, d, f) = (enc[0], enc[1], enc[2]);
        for (name, t, expected) in [
            ("b_enc", &b_enc, vec![f]),
            ("W_dec", &w_dec, vec![m, f, d]),
            ("b_dec", &b_dec, vec![m, d]),
            ("norm.mean", &norm.mean, vec![m, d]),
            ("norm.scale", &norm.scale, vec![m]),
        ] {
            if t.size() != expected {
                return Err(shape_err(name, expected, t.size()));
            }
        }
        let [threshold, k] = scalars[..] else {
            return Err(shape_err(
                "threshold_k",
                vec![2],
                vec![scalars.len() as i64],
            ));
        };
        Ok(Dictionary {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            threshold,
            k: k as i64,
            norm,
        })
    }
}

/// 1 at the `k·B` largest entries of `scaled` `(B, F)` over the whole batch, 0 elsewhere.
pub fn batch_topk_mask(scaled: &Tensor, k: i64) -> Result<Tensor> {
    let size = scaled.size();
    let total = size.iter().product::<i64>();
    let keep = (k * size[0]).clamp(0, total);
    let flat = scaled.f_detach()?.f_flatten(0, -1)?;
    let (_, idx) = flat.f_topk(keep, -1, true, false)?;
    let mask = flat
        .f_zeros_like()?
        .f_scatter_value(0, &idx, 1.0)?
        .f_reshape(size)?;
    Ok(mask)
}
