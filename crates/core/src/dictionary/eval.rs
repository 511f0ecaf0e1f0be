//! Evaluating a trained dictionary on held-back tokens in one streamed pass: FVE per model, L0,
//! dead fraction, per-latent firing counts, and the sums latent scaling needs, from which β^r,
//! β^ε and ν follow in closed form for every latent at once (docs/crosscoder.md).
use tch::{Device, Kind, Tensor};

use super::model::Dictionary;
use crate::error::{CoreError, Result};

/// Running sums over normalised batches.
#[derive(Debug)]
pub struct Accumulator {
    n: u64,
    /// Per model: Σ||x̃ − x̂||², Σ||x̃||², and Σx̃ `(M, d)`.
    sse: Vec<f64>,
    ssq: Vec<f64>,
    sum: Tensor,
    /// Per model `(M, d, F)`: X̂ᵀF and EᵀF.
    rec_f: Tensor,
    err_f: Tensor,
    /// `(F)`: Σ f², tokens fired on, largest activation.
    f_sq: Tensor,
    fired: Tensor,
    max_f: Tensor,
    nonzero: f64,
}

/// What evaluation found.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub n_tokens: u64,
    /// Per model.
    pub fve: Vec<f64>,
    pub l0: f64,
    pub dead_fraction: f64,
    /// Per latent: tokens fired on and the largest activation.
    pub fired: Vec<i64>,
    pub max_activation: Vec<f64>,
    /// `[model][latent]` (NaN for a latent that never fired).
    pub beta_r: Vec<Vec<f64>>,
    pub beta_eps: Vec<Vec<f64>>,
}

impl Accumulator {
    pub fn new(dict: &Dictionary) -> Result<Self> {
        let (m, d, f) = (dict.models(), dict.width(), dict.dict_size());
        let opts = (Kind::Double, dict.device());
        Ok(Accumulator {
            n: 0,
            sse: vec![0.0; m as usize],
            ssq: vec![0.0; m as usize],
            sum: Tensor::f_zeros([m, d], opts)?,
            rec_f: Tensor::f_zeros([m, d, f], opts)?,
            err_f: Tensor::f_zeros([m, d, f], opts)?,
            f_sq: Tensor::f_zeros([f], opts)?,
            fired: Tensor::f_zeros([f], (Kind::Int64, dict.device()))?,
            max_f: Tensor::f_zeros([f], opts)?,
            nonzero: 0.0,
        })
    }

    /// Adds a normalised batch `(B, M, d)`; returns its codes `(B, F)` (for top examples).
    pub fn add(&mut self, dict: &Dictionary, x: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let x = x.f_to_kind(dict.kind())?.f_to_device(dict.device())?;
        let codes = dict.encode(&x, None)?;
        let x_hat = dict.decode(&codes.f, true)?;
        let (x64, xh64, f64_) = (
            x.f_to_kind(Kind::Double)?,
            x_hat.f_to_kind(Kind::Double)?,
            codes.f.f_to_kind(Kind::Double)?,
        );
        let e = x64.f_sub(&xh64)?;
        let sse = to_vec(&e.f_square()?.f_sum_dim_intlist(
            [0, 2].as_slice(),
            false,
            Kind::Double,
        )?)?;
        let ssq = to_vec(&x64.f_square()?.f_sum_dim_intlist(
            [0, 2].as_slice(),
            false,
            Kind::Double,
        )?)?;
        for m in 0..self.sse.len() {
            self.sse[m] += sse[m];
            self.ssq[m] += ssq[m];
        }
        self.sum = self
            .sum
            .f_add(&x64.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        // (M, d, B) × (B, F)
        self.rec_f = self
            .rec_f
            .f_add(&xh64.f_permute([1, 2, 0])?.f_matmul(&f64_)?)?;
        self.err_f = self
            .err_f
            .f_add(&e.f_permute([1, 2, 0])?.f_matmul(&f64_)?)?;
        self.f_sq =
            self.f_sq
                .f_add(&f64_.f_square()?.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        let active = f64_.f_gt(0.0)?;
        self.fired = self
            .fired
            .f_add(&active.f_sum_dim_intlist(0, false, Kind::Int64)?)?;
        self.nonzero += active.f_sum(Kind::Double)?.f_double_value(&[])?;
        self.max_f = self.max_f.f_maximum(&f64_.f_amax([0].as_slice(), false)?)?;
        self.n += x.size()[0] as u64;
        Ok(codes.f)
    }

    /// FVE, L0, dead fraction and latent scaling (fitted along each latent's last model's
    /// decoder row: the fine-tune's, for a crosscoder), with the targets of the anchors'
    /// `latent_scaling/utils.py`: β^r on the full reconstruction x̂_m, β^ε on the error with
    /// latent j's own part (its model-m decoder row) put back.
    pub fn finish(self, dict: &Dictionary) -> Result<Evaluation> {
        let _guard = tch::no_grad_guard();
        if self.n == 0 {
            return Err(CoreError::Input(
                "no held-back tokens to evaluate the dictionary on".into(),
            ));
        }
        let n = self.n as f64;
        let means = to_vec(&self.sum.f_div_scalar(n)?.f_square()?.f_sum_dim_intlist(
            -1,
            false,
            Kind::Double,
        )?)?;
        let fve = (0..self.sse.len())
            .map(|m| {
                let total = self.ssq[m] - n * means[m];
                1.0 - self.sse[m] / total.max(1e-30)
            })
            .collect();
        let w_dec = dict.w_dec.f_detach()?.f_to_kind(Kind::Double)?;
        let models = dict.models();
        let dir = w_dec.f_select(0, models - 1)?; // (F, d)
        let dn2 = dir.f_square()?.f_sum_dim_intlist(-1, false, Kind::Double)?;
        let denom = dn2.f_mul(&self.f_sq)?;
        let (mut beta_r, mut beta_eps) = (Vec::new(), Vec::new());
        for m in 0..models {
            let cross = w_dec
                .f_select(0, m)?
                .f_mul(&dir)?
                .f_sum_dim_intlist(-1, false, Kind::Double)?
                .f_mul(&self.f_sq)?;
            // d_j · (Yᵀ F)_j for every j: (F, d) ⊙ (d, F)ᵀ summed over d.
            let along = |a: &Tensor| -> Result<Tensor> {
                Ok(dir
                    .f_mul(&a.f_select(0, m)?.f_transpose(0, 1)?)?
                    .f_sum_dim_intlist(-1, false, Kind::Double)?)
            };
            // The anchors fit β^r on the full reconstruction x̂_m (latent j's own part
            // included); only the error target puts latent j's part back.
            beta_r.push(to_vec(&along(&self.rec_f)?.f_div(&denom)?)?);
            beta_eps.push(to_vec(&along(&self.err_f)?.f_add(&cross)?.f_div(&denom)?)?);
        }
        let fired =
            Vec::<i64>::try_from(&self.fired.f_to_device(Device::Cpu)?).map_err(CoreError::from)?;
        let dead = fired.iter().filter(|&&c| c == 0).count();
        Ok(Evaluation {
            n_tokens: self.n,
            fve,
            l0: self.nonzero / n,
            dead_fraction: dead as f64 / fired.len().max(1) as f64,
            fired,
            max_activation: to_vec(&self.max_f)?,
            beta_r,
            beta_eps,
        })
    }
}

impl Evaluation {
    /// `ν_ε` and `ν_r` per latent: the first model's β over the last's (crosscoders).
    pub fn nu(&self) -> (Vec<f64>, Vec<f64>) {
        let ratio = |b: &[Vec<f64>]| -> Vec<f64> {
            match (b.first(), b.last()) {
                (Some(base), Some(ft)) => base.iter().zip(ft).map(|(x, y)| x / y).collect(),
                _ => Vec::new(),
            }
        };
        (ratio(&self.beta_eps), ratio(&self.beta_r))
    }
}

/// The decoder-norm ratio `Δ_j` of a crosscoder (0: fine-tune only, 1: base only).
pub fn delta_norm(dict: &Dictionary) -> Result<Vec<f64>> {
    let norms = dict
        .w_dec
        .f_detach()?
        .f_to_kind(Kind::Double)?
        .f_norm_scalaropt_dim(2, [2], false)?;
    if dict.models() != 2 {
        return Err(CoreError::Input(
            "the decoder-norm ratio needs a crosscoder of two models".into(),
        ));
    }
    let (b, f) = (
        to_vec(&norms.f_select(0, 0)?)?,
        to_vec(&norms.f_select(0, 1)?)?,
    );
    Ok(b.iter()
        .zip(&f)
        .map(|(&b, &f)| ((b - f) / b.max(f) + 1.0) / 2.0)
        .collect())
}

/// A latent's class by its decoder-norm ratio.
pub fn class_of(delta: f64) -> neurodiff_protocol::LatentClass {
    neurodiff_protocol::LatentClass::of_delta(delta)
}

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    let t = t
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?
        .f_flatten(0, -1)?;
    Vec::<f64>::try_from(&t).map_err(CoreError::from)
}
