//! Tier III: dictionaries over activations. A BatchTopK crosscoder over the base's and the
//! fine-tune's activations at one block (what the models share and what only one has), an SAE
//! on their difference, their training with autograd, and latent scaling (docs/crosscoder.md).
pub mod eval;
pub mod model;
pub mod train;

use tch::{Kind, Tensor};

pub use eval::{class_of, delta_norm, Accumulator, Evaluation};
pub use model::{Codes, Dictionary, Normalization, Shape};
pub use train::{geometric_median, StepStats, TrainOptions, Trainer};

use crate::error::{CoreError, Result};
use crate::organisms::trained::rng::Rng;

/// The order training reads rows of an activation set in: epochs of a seeded permutation,
/// each cut into whole batches. A function of the step alone, so a resumed run reads what the
/// uninterrupted run would have.
#[derive(Debug)]
pub struct Order {
    n: usize,
    batch: usize,
    seed: u64,
    epoch: Option<usize>,
    perm: Vec<i64>,
}

impl Order {
    pub fn new(n: usize, batch: usize, seed: u64) -> Result<Self> {
        if batch == 0 || n < batch {
            return Err(CoreError::Input(format!(
                "a dictionary batch of {batch} tokens needs at least that many training tokens \
                 (there are {n})"
            )));
        }
        Ok(Order {
            n,
            batch,
            seed,
            epoch: None,
            perm: Vec::new(),
        })
    }

    /// The rows of step `t`.
    pub fn rows(&mut self, t: usize) -> &[i64] {
        let per_epoch = self.n / self.batch;
        let (epoch, within) = (t / per_epoch, t % per_epoch);
        if self.epoch != Some(epoch) {
            let mut rng = Rng::new(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            self.perm = (0..self.n as i64).collect();
            for i in (1..self.n).rev() {
                let j = rng.below(i + 1);
                self.perm.swap(i, j);
            }
            self.epoch = Some(epoch);
        }
        &self.perm[within * self.batch..(within + 1) * self.batch]
    }
}

/// What a training loop is told after each step; returns false to stop (interrupted).
pub type OnStep<'a> = &'a mut dyn FnMut(&Trainer, &StepStats) -> Result<bool>;

/// Trains on rows of `data` `(N, M, d)` (raw activations; normalised per batch) until
/// `steps`, from wherever `trainer` is. Returns the stats of every step it ran; stops early
/// with [`CoreError::Interrupted`] when `on_step` says so.
pub fn train(
    trainer: &mut Trainer,
    data: &Tensor,
    batch: usize,
    steps: usize,
    seed: u64,
    on_step: OnStep<'_>,
) -> Result<Vec<StepStats>> {
    let n = data.size()[0] as usize;
    let mut order = Order::new(n, batch, seed)?;
    let mut out = Vec::new();
    while trainer.step < steps {
        let rows = Tensor::from_slice(order.rows(trainer.step)).f_to_device(data.device())?;
        let x = trainer
            .dict
            .norm
            .apply(&data.f_index_select(0, &rows)?, trainer.dict.kind())?;
        let stats = trainer.step(&x)?;
        let go_on = on_step(trainer, &stats)?;
        out.push(stats);
        if !go_on {
            return Err(CoreError::Interrupted);
        }
    }
    Ok(out)
}

/// The normalisation of `data` `(N, M, d)`: its mean and one scale per model.
pub fn normalization_of(data: &Tensor, target_rms: f64) -> Result<Normalization> {
    let x = data.f_to_kind(Kind::Double)?;
    let sum = x.f_sum_dim_intlist(0, false, Kind::Double)?;
    let sum_sq = x.f_square()?.f_sum_dim_intlist(0, false, Kind::Double)?;
    Normalization::from_sums(&sum, &sum_sq, data.size()[0] as u64, target_rms)
}
