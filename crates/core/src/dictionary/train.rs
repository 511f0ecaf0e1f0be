//! Training a BatchTopK dictionary with libtorch autograd, as docs/crosscoder.md defines a step:
//! L2 (not squared) reconstruction loss plus the auxiliary loss over dead latents, global-norm
//! gradient clipping, Adam with linear warm-up, optional k annealing, the inference threshold
//! as an EMA of the smallest selected score. The whole state (parameters, Adam's moments, dead
//! counters, threshold, step) saves to and restores from one safetensors file, so a run resumed
//! from a checkpoint continues exactly as it would have (bit for bit on CPU).
use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::model::{Dictionary, Normalization};
use crate::error::{CoreError, Result};

/// Training options (defaults: the anchors', except the dead window, scaled to the run).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub k: i64,
    /// Start k for annealing down to `k` over `k_anneal_steps` (none: no annealing).
    pub k_max: Option<i64>,
    pub k_anneal_steps: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    /// The threshold is updated after this step.
    pub threshold_start: usize,
    pub threshold_beta: f64,
    /// A latent that fired in none of the last this many tokens is dead.
    pub dead_tokens: i64,
    pub aux_alpha: f64,
    pub max_grad_norm: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            k: 100,
            k_max: None,
            k_anneal_steps: 0,
            lr: 1e-4,
            warmup_steps: 1000,
            threshold_start: 1000,
            threshold_beta: 0.999,
            dead_tokens: 10_000_000,
            aux_alpha: 1.0 / 32.0,
            max_grad_norm: 1.0,
        }
    }
}

/// What one step measured (before its update).
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    pub step: usize,
    pub loss: f64,
    pub l2: f64,
    pub aux: f64,
    pub k: i64,
    pub n_dead: i64,
    pub threshold: f64,
    pub lr: f64,
    /// Fraction of the batch's variance the dictionary explains (all models together).
    pub fve: f64,
}

/// A dictionary being trained, with Adam's state and the dead-latent counters.
#[derive(Debug)]
pub struct Trainer {
    pub dict: Dictionary,
    pub opts: TrainOptions,
    /// The next step's index.
    pub step: usize,
    exp_avg: [Tensor; 4],
    exp_avg_sq: [Tensor; 4],
    /// Tokens since each latent last fired `(F)`, int64.
    pub since_fired: Tensor,
    /// The clipped gradients of the last backward pass (until the update consumes them).
    grads: Option<[Tensor; 4]>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Trainer {
    pub fn new(dict: Dictionary, opts: TrainOptions) -> Result<Self> {
        let zeros = |t: &Tensor| t.f_zeros_like();
        let [a, b, c, d] = dict.params();
        let exp_avg = [zeros(a)?, zeros(b)?, zeros(c)?, zeros(d)?];
        let exp_avg_sq = [zeros(a)?, zeros(b)?, zeros(c)?, zeros(d)?];
        let since_fired = Tensor::f_zeros([dict.dict_size()], (Kind::Int64, dict.device()))?;
        Ok(Trainer {
            dict,
            opts,
            step: 0,
            exp_avg,
            exp_avg_sq,
            since_fired,
            grads: None,
        })
    }

    /// The k of step `t`.
    pub fn k_at(&self, t: usize) -> i64 {
        match self.opts.k_max {
            Some(k_max) if self.opts.k_anneal_steps > 0 && t < self.opts.k_anneal_steps => {
                let frac = t as f64 / self.opts.k_anneal_steps as f64;
                let k = k_max as f64 - (k_max - self.opts.k) as f64 * frac;
                (k.round_ties_even() as i64).max(1)
            }
            _ => self.opts.k,
        }
    }

    /// The learning rate of step `t`.
    pub fn lr_at(&self, t: usize) -> f64 {
        let w = self.opts.warmup_steps;
        if t < w {
            self.opts.lr * t as f64 / w as f64
        } else {
            self.opts.lr
        }
    }

    /// One step on a normalised batch `(B, M, d)`: [`Trainer::backward`] then
    /// [`Trainer::update`].
    pub fn step(&mut self, x: &Tensor) -> Result<StepStats> {
        let stats = self.backward(x)?;
        self.update()?;
        Ok(stats)
    }

    /// The loss of a normalised batch and its clipped gradients (kept for the update); sets
    /// the decoder bias at step 0 and updates the threshold and the dead counters.
    pub fn backward(&mut self, x: &Tensor) -> Result<StepStats> {
        let t = self.step;
        let x = x
            .f_to_kind(self.dict.kind())?
            .f_to_device(self.dict.device())?;
        if t == 0 {
            let median = geometric_median(&x, 100, 1e-5)?;
            tch::no_grad(|| self.dict.b_dec.f_copy_(&median))?;
        }
        let k = self.k_at(t);
        for p in self.dict.params_mut() {
            *p = p.f_detach()?.f_set_requires_grad(true)?;
        }
        let codes = self.dict.encode(&x, Some(k))?;
        let scaled_f = codes
            .f
            .f_detach()?
            .f_mul(&codes.code_norm.f_unsqueeze(0)?)?;
        if t > self.opts.threshold_start {
            let positive = scaled_f.f_masked_select(&scaled_f.f_gt(0.0)?)?;
            let smallest = if positive.numel() == 0 {
                0.0
            } else {
                positive.f_min()?.f_double_value(&[])?
            };
            let b = self.opts.threshold_beta;
            self.dict.threshold = if self.dict.threshold < 0.0 {
                smallest
            } else {
                b * self.dict.threshold + (1.0 - b) * smallest
            };
        }
        let x_hat = self.dict.decode(&codes.f, true)?;
        let e = x.f_sub(&x_hat)?;
        let batch = x.size()[0];
        let fired = codes
            .f
            .f_detach()?
            .f_sum_dim_intlist(0, false, None)?
            .f_gt(0.0)?;
        self.since_fired = self
            .since_fired
            .f_add_scalar(batch)?
            .f_masked_fill(&fired, 0)?;
        let dead = self.since_fired.f_ge(self.opts.dead_tokens)?;
        let n_dead = dead.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        let l2 = e
            .f_norm_scalaropt_dim(2, [-1], false)?
            .f_mean(self.dict.kind())?;
        let aux = if n_dead > 0 {
            self.aux_loss(&e.f_detach()?, &codes.post, &codes.scaled, &dead, n_dead)?
        } else {
            Tensor::f_zeros([], (self.dict.kind(), self.dict.device()))?
        };
        let loss = l2.f_add(&aux.f_mul_scalar(self.opts.aux_alpha)?)?;
        let params = self.dict.params();
        let grads = Tensor::f_run_backward(&[&loss], &params, false, false)?;
        let grads = clip_global_norm(grads, self.opts.max_grad_norm)?;
        self.grads = Some(grads);
        // One transfer for every figure of the step (each would be a device sync).
        let kind = self.dict.kind();
        let var = x
            .f_sub(&x.f_mean_dim([0i64].as_slice(), true, kind)?)?
            .f_square()?
            .f_sum(kind)?;
        let sse = e.f_square()?.f_sum(kind)?;
        let figures = Tensor::f_stack(&[&loss, &l2, &aux, &sse, &var], 0)?
            .f_detach()?
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?;
        let figures = Vec::<f64>::try_from(&figures).map_err(CoreError::from)?;
        let [loss_v, l2_v, aux_v, sse_v, var_v] = figures[..] else {
            return Err(CoreError::Input("expected five step figures".into()));
        };
        if !loss_v.is_finite() {
            return Err(CoreError::Input(format!(
                "dictionary training diverged at step {t} (loss {loss_v}); a smaller learning \
                 rate may help"
            )));
        }
        Ok(StepStats {
            step: t,
            loss: loss_v,
            l2: l2_v,
            aux: aux_v,
            k,
            n_dead,
            threshold: self.dict.threshold,
            lr: self.lr_at(t),
            fve: 1.0 - sse_v / var_v.max(1e-30),
        })
    }

    /// The auxiliary loss: the top `min(d/2, #dead)` dead latents per row reconstruct the
    /// residual, normalised by the residual's variance.
    fn aux_loss(
        &self,
        residual: &Tensor,
        post: &Tensor,
        scaled: &Tensor,
        dead: &Tensor,
        n_dead: i64,
    ) -> Result<Tensor> {
        let k_aux = (self.dict.width() / 2).min(n_dead);
        let kind = self.dict.kind();
        let b = residual.size()[0];
        let masked = scaled
            .f_detach()?
            .f_masked_fill(&dead.f_logical_not()?.f_unsqueeze(0)?, f64::NEG_INFINITY)?;
        let (_, idx) = masked.f_topk(k_aux, -1, true, false)?;
        let select = post
            .f_zeros_like()?
            .f_detach()?
            .f_scatter_value(-1, &idx, 1.0)?;
        let f_aux = post.f_mul(&select)?;
        let r = residual.f_reshape([b, -1])?;
        let x_aux = self.dict.decode(&f_aux, false)?.f_reshape([b, -1])?;
        let err = r
            .f_sub(&x_aux)?
            .f_square()?
            .f_sum_dim_intlist(-1, false, kind)?
            .f_mean(kind)?;
        let denom = r
            .f_sub(&r.f_mean_dim([0i64].as_slice(), true, kind)?)?
            .f_square()?
            .f_sum_dim_intlist(-1, false, kind)?
            .f_mean(kind)?;
        Ok(err.f_div(&denom)?.f_nan_to_num(0.0, None, None)?)
    }

    /// The gradients of the last backward pass, clipped (for tests).
    pub fn grads(&self) -> Option<&[Tensor; 4]> {
        self.grads.as_ref()
    }

    /// Adam on the last backward pass's gradients, at this step's learning rate.
    pub fn update(&mut self) -> Result<()> {
        let grads = self.grads.take().ok_or_else(|| {
            CoreError::Input("a dictionary update without a backward pass".into())
        })?;
        let t = self.step;
        let lr = self.lr_at(t);
        let n = (t + 1) as i32;
        let bc1 = 1.0 - BETA1.powi(n);
        let bc2_sqrt = (1.0 - BETA2.powi(n)).sqrt();
        let _guard = tch::no_grad_guard();
        let params = self.dict.params_mut();
        for (i, g) in grads.iter().enumerate() {
            let m = self.exp_avg[i]
                .f_mul_scalar(BETA1)?
                .f_add(&g.f_mul_scalar(1.0 - BETA1)?)?;
            let v = self.exp_avg_sq[i]
                .f_mul_scalar(BETA2)?
                .f_add(&g.f_square()?.f_mul_scalar(1.0 - BETA2)?)?;
            let denom = v.f_sqrt()?.f_div_scalar(bc2_sqrt)?.f_add_scalar(EPS)?;
            let p = params[i]
                .f_detach()?
                .f_sub(&m.f_div(&denom)?.f_mul_scalar(lr / bc1)?)?;
            *params[i] = p;
            self.exp_avg[i] = m;
            self.exp_avg_sq[i] = v;
        }
        self.step += 1;
        Ok(())
    }

    /// Writes the whole training state to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        let cpu = |t: &Tensor| t.f_detach()?.f_to_device(Device::Cpu);
        let d = &self.dict;
        let mut named: Vec<(String, Tensor)> = vec![
            ("W_enc".into(), cpu(&d.w_enc)?),
            ("b_enc".into(), cpu(&d.b_enc)?),
            ("W_dec".into(), cpu(&d.w_dec)?),
            ("b_dec".into(), cpu(&d.b_dec)?),
            ("norm.mean".into(), cpu(&d.norm.mean)?),
            ("norm.scale".into(), cpu(&d.norm.scale)?),
            ("since_fired".into(), cpu(&self.since_fired)?),
            (
                "state".into(),
                Tensor::from_slice(&[d.threshold, d.k as f64, self.step as f64]),
            ),
        ];
        for i in 0..4 {
            named.push((format!("adam.m.{i}"), cpu(&self.exp_avg[i])?));
            named.push((format!("adam.v.{i}"), cpu(&self.exp_avg_sq[i])?));
        }
        // Written beside, then renamed: a kill mid-write leaves the last checkpoint whole.
        let tmp = path.with_extension("partial");
        Tensor::write_safetensors(&named, &tmp).map_err(|e| CoreError::Safetensors {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        std::fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))
    }

    /// Restores a state [`Trainer::save`] wrote; `opts` must be the run's.
    pub fn load(path: &Path, opts: TrainOptions, device: Device) -> Result<Self> {
        let mut named: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| CoreError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
            .into_iter()
            .collect();
        let mut take = |name: &str| -> Result<Tensor> {
            let t = named.remove(name).ok_or_else(|| CoreError::MissingTensor {
                checkpoint: path.to_path_buf(),
                tensor: name.to_string(),
                hint: " (not a NeuroDiff training checkpoint)".into(),
            })?;
            Ok(t.f_to_device(device)?)
        };
        let state = Vec::<f64>::try_from(&take("state")?).map_err(CoreError::from)?;
        let [threshold, k, step] = state[..] else {
            return Err(CoreError::Safetensors {
                path: path.to_path_buf(),
                message: "`state` must hold threshold, k and step".into(),
            });
        };
        let dict = Dictionary {
            w_enc: take("W_enc")?,
            b_enc: take("b_enc")?,
            w_dec: take("W_dec")?,
            b_dec: take("b_dec")?,
            threshold,
            k: k as i64,
            norm: Normalization {
                mean: take("norm.mean")?,
                scale: take("norm.scale")?,
            },
        };
        let since_fired = take("since_fired")?;
        let exp_avg = [
            take("adam.m.0")?,
            take("adam.m.1")?,
            take("adam.m.2")?,
            take("adam.m.3")?,
        ];
        let exp_avg_sq = [
            take("adam.v.0")?,
            take("adam.v.1")?,
            take("adam.v.2")?,
            take("adam.v.3")?,
        ];
        for (i, p) in dict.params().iter().enumerate() {
            if p.size() != exp_avg[i].size() || p.size() != exp_avg_sq[i].size() {
                return Err(CoreError::Safetensors {
                    path: path.to_path_buf(),
                    message: format!("Adam's state {i} does not match its parameter's shape"),
                });
            }
        }
        Ok(Trainer {
            dict,
            opts,
            step: step as usize,
            exp_avg,
            exp_avg_sq,
            since_fired,
            grads: None,
        })
    }
}

/// Scales the gradients so their global L2 norm is at most `max` (PyTorch's
/// `clip_grad_norm_`: multiplied by `min(1, max / (norm + 1e-6))`), on the device, without a
/// sync.
fn clip_global_norm(grads: Vec<Tensor>, max: f64) -> Result<[Tensor; 4]> {
    let norms = grads
        .iter()
        .map(|g| g.f_norm())
        .collect::<Result<Vec<_>, _>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let coef = total
        .f_add_scalar(1e-6)?
        .f_reciprocal()?
        .f_mul_scalar(max)?
        .f_clamp_max(1.0)?;
    let mut out = Vec::with_capacity(4);
    for g in grads {
        out.push(g.f_mul(&coef)?);
    }
    out.try_into()
        .map_err(|_| CoreError::Input("expected four gradients".into()))
}

/// The geometric median of `x` `(B, M, d)` per model (Weiszfeld's iteration from the mean).
pub fn geometric_median(x: &Tensor, max_iter: usize, tol: f64) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let kind = x.kind();
    let mut guess = x.f_mean_dim([0i64].as_slice(), false, kind)?;
    for _ in 0..max_iter {
        let prev = guess.shallow_clone();
        let dist = x
            .f_sub(&guess.f_unsqueeze(0)?)?
            .f_norm_scalaropt_dim(2, [-1], false)?;
        // A point at the guess would weigh infinitely (and make NaN): clamp its distance.
        let w = dist.f_clamp_min(1e-12)?.f_reciprocal()?;
        let w = w.f_div(&w.f_sum_dim_intlist(0, true, kind)?)?;
        guess = w
            .f_unsqueeze(-1)?
            .f_mul(x)?
            .f_sum_dim_intlist(0, false, kind)?;
        let moved = guess
            .f_sub(&prev)?
            .f_norm_scalaropt_dim(2, [-1], false)?
            .f_max()?
            .f_double_value(&[])?;
        if moved < tol {
            break;
        }
    }
    Ok(guess)
}
