//! Training the organisms: packed token windows, Adam with warm-up and cosine decay, gradient
//! clipping, on whichever parameters a fine-tune may change (the others are never touched, so
//! they stay bit-identical to the base).
use tch::{Device, Kind, Tensor};

use super::rng::Rng;
use crate::error::Result;

/// What a long step of training reports, for progress bars.
pub trait Observer {
    /// A new stage begins (`"pretrain"`, `"astronomy-full"`, ...) with this many steps.
    fn stage(&mut self, _name: &str, _steps: usize) {}
    /// One optimisation step ended with this training loss.
    fn step(&mut self, _loss: f64) {}
}

/// Reports nothing.
#[derive(Debug)]
pub struct Quiet;
impl Observer for Quiet {}

/// Token ids of many texts, each with its `<s>`, concatenated and cut into windows of `len`.
#[derive(Debug)]
pub struct Windows {
    pub ids: Vec<i64>,
    pub len: usize,
}

impl Windows {
    pub fn new(streams: impl IntoIterator<Item = Vec<u32>>, len: usize) -> Windows {
        let mut ids: Vec<i64> = streams.into_iter().flatten().map(i64::from).collect();
        ids.truncate(ids.len() / len * len);
        Windows { ids, len }
    }

    pub fn count(&self) -> usize {
        self.ids.len() / self.len.max(1)
    }

    /// `[rows, len]` of windows chosen by `rng` (with replacement).
    pub fn batch(&self, rows: usize, rng: &mut Rng) -> Result<Tensor> {
        let mut out = Vec::with_capacity(rows * self.len);
        for _ in 0..rows {
            let w = rng.below(self.count());
            out.extend_from_slice(&self.ids[w * self.len..(w + 1) * self.len]);
        }
        Ok(Tensor::f_from_slice(&out)?.f_view([rows as i64, self.len as i64])?)
    }

    /// The first `rows` windows in order, for evaluation.
    pub fn head(&self, rows: usize) -> Result<Tensor> {
        let rows = rows.min(self.count());
        Ok(Tensor::f_from_slice(&self.ids[..rows * self.len])?
            .f_view([rows as i64, self.len as i64])?)
    }
}

/// How one run of training is scheduled.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub steps: usize,
    pub batch: usize,
    pub peak_lr: f64,
    pub warmup: usize,
}

impl Schedule {
    /// Linear warm-up, then cosine decay to a tenth of the peak.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak_lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let t = (step - self.warmup) as f64 / span;
        self.peak_lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// Adam (β = 0.9, 0.95) over a fixed list of parameters.
#[derive(Debug)]
pub struct Adam {
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i32,
}

const B1: f64 = 0.9;
const B2: f64 = 0.95;
const ADAM_EPS: f64 = 1e-8;
const CLIP: f64 = 1.0;

impl Adam {
    /// Marks `params` as requiring gradients and keeps them as the ones it updates.
    pub fn new(params: Vec<Tensor>) -> Result<Adam> {
        let mut m = Vec::with_capacity(params.len());
        let mut v = Vec::with_capacity(params.len());
        for p in &params {
            let _ = p.shallow_clone().f_requires_grad_(true)?;
            m.push(p.f_zeros_like()?);
            v.push(p.f_zeros_like()?);
        }
        Ok(Adam { params, m, v, t: 0 })
    }

    /// One step at learning rate `lr` after clipping the gradients' global norm to 1; clears them.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.t += 1;
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        let mut sq = Tensor::f_zeros([], (Kind::Double, Device::Cpu))?;
        for g in grads.iter().filter(|g| g.defined()) {
            sq = sq.f_add(&g.f_square()?.f_sum(Kind::Double)?)?;
        }
        let norm = sq.f_sqrt()?.f_double_value(&[])?;
        let clip = if norm > CLIP { CLIP / norm } else { 1.0 };
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        for (((p, g), m), v) in self
            .params
            .iter()
            .zip(&grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            if !g.defined() {
                continue;
            }
            let g = g.f_mul_scalar(clip)?;
            let _ = m.f_mul_scalar_(B1)?.f_add_(&g.f_mul_scalar(1.0 - B1)?)?;
            let _ = v
                .f_mul_scalar_(B2)?
                .f_add_(&g.f_square()?.f_mul_scalar(1.0 - B2)?)?;
            let update = m
                .f_div_scalar(c1)?
                .f_div(&v.f_div_scalar(c2)?.f_sqrt()?.f_add_scalar(ADAM_EPS)?)?
                .f_mul_scalar(lr)?;
            let _ = p.shallow_clone().f_sub_(&update)?;
        }
        for g in grads.iter().filter(|g| g.defined()) {
            let _ = g.shallow_clone().f_zero_()?;
        }
        Ok(())
    }

    /// Stops tracking gradients on the parameters (they are plain tensors again).
    pub fn finish(self) -> Result<()> {
        for p in &self.params {
            let _ = p.shallow_clone().f_requires_grad_(false)?;
        }
        Ok(())
    }
}

/// Runs `schedule` on `loss_of(batch)`, updating `params`; returns the mean loss of the last
/// tenth of the steps.
pub fn run(
    stage: &str,
    params: Vec<Tensor>,
    schedule: &Schedule,
    data: &Windows,
    rng: &mut Rng,
    observer: &mut dyn Observer,
    loss_of: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<f64> {
    observer.stage(stage, schedule.steps);
    let mut adam = Adam::new(params)?;
    let tail = (schedule.steps / 10).max(1);
    let mut tail_sum = 0.0;
    for step in 0..schedule.steps {
        let batch = data.batch(schedule.batch, rng)?;
        let loss = loss_of(&batch)?;
        loss.f_backward()?;
        adam.step(schedule.lr(step))?;
        let value = loss.f_double_value(&[])?;
        if step + tail >= schedule.steps {
            tail_sum += value;
        }
        observer.step(value);
    }
    adam.finish()?;
    Ok(tail_sum / tail as f64)
}

/// Mean loss of `loss_of` over `batch` without gradients.
pub fn evaluate(batch: &Tensor, loss_of: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    Ok(loss_of(batch)?.f_double_value(&[])?)
}
