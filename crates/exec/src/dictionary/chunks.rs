//! Chunks of a paired activation store (one corpus slice each, safetensors) and the order
//! training reads them in: epochs of a seeded permutation of the chunks, cut into windows of a
//! few chunks whose rows are shuffled together and cut into whole batches. Only one window is
//! in memory, and the batch of step t is a function of t alone, so a resumed run reads exactly
//! what the straight run would have.
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use super::permutation;
use crate::{ExecError, Result};

/// One slice's activations `(N, M, d)` (f32) with each row's sample, position and token.
#[derive(Debug)]
pub struct Chunk {
    pub acts: Tensor,
    pub sample: Vec<i64>,
    pub position: Vec<i64>,
    pub token: Vec<i64>,
}

fn bad(message: impl Into<String>) -> ExecError {
    ExecError::Io(format!("activation chunk: {}", message.into()))
}

impl Chunk {
    pub fn new(
        acts: Tensor,
        sample: Vec<i64>,
        position: Vec<i64>,
        token: Vec<i64>,
    ) -> Result<Self> {
        let n = acts.size().first().copied().unwrap_or(0) as usize;
        if acts.dim() != 3 || sample.len() != n || position.len() != n || token.len() != n {
            return Err(bad(format!(
                "{:?} rows with {} samples, {} positions and {} tokens",
                acts.size(),
                sample.len(),
                position.len(),
                token.len()
            )));
        }
        Ok(Chunk {
            acts: acts
                .f_to_kind(Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_contiguous()?,
            sample,
            position,
            token,
        })
    }

    pub fn len(&self) -> usize {
        self.sample.len()
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let shape: Vec<usize> = self.acts.size().iter().map(|&s| s as usize).collect();
        let acts = Vec::<f32>::try_from(&self.acts.f_flatten(0, -1)?)
            .map_err(neurodiff_core::CoreError::from)?;
        let acts: Vec<u8> = acts.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ints = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let (s, p, t) = (ints(&self.sample), ints(&self.position), ints(&self.token));
        let n = vec![self.len()];
        fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>> {
            TensorView::new(dtype, shape, data).map_err(|e| bad(e.to_string()))
        }
        let tensors = vec![
            ("acts", view(Dtype::F32, shape, &acts)?),
            ("position", view(Dtype::I64, n.clone(), &p)?),
            ("sample", view(Dtype::I64, n.clone(), &s)?),
            ("token", view(Dtype::I64, n, &t)?),
        ];
        safetensors::tensor::serialize(tensors, None).map_err(|e| bad(e.to_string()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let get = |name: &str| st.tensor(name).map_err(|e| bad(format!("`{name}`: {e}")));
        let acts = get("acts")?;
        if acts.dtype() != Dtype::F32 || acts.shape().len() != 3 {
            return Err(bad(format!(
                "`acts` is {:?} {:?}",
                acts.dtype(),
                acts.shape()
            )));
        }
        let shape: Vec<i64> = acts.shape().iter().map(|&s| s as i64).collect();
        let acts = Tensor::f_from_data_size(acts.data(), &shape, Kind::Float)?;
        let ints = |name: &str| -> Result<Vec<i64>> {
            let t = get(name)?;
            if t.dtype() != Dtype::I64 {
                return Err(bad(format!("`{name}` is {:?}", t.dtype())));
            }
            Ok(t.data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect())
        };
        Chunk::new(acts, ints("sample")?, ints("position")?, ints("token")?)
    }

    /// Σ over rows of the activations and of their squares, `(M, d)` in f64.
    pub fn sums(&self) -> Result<(Tensor, Tensor)> {
        let x = self.acts.f_to_kind(Kind::Double)?;
        Ok((
            x.f_sum_dim_intlist(0, false, Kind::Double)?,
            x.f_square()?.f_sum_dim_intlist(0, false, Kind::Double)?,
        ))
    }
}

/// An epoch's windows: chunk indices and whole batches in each.
type Plan = Vec<(Vec<usize>, usize)>;

/// The training order over the training chunks (see the module's comment).
#[derive(Debug)]
pub struct Windows {
    counts: Vec<u64>,
    batch: usize,
    seed: u64,
    /// The epoch the cursor is in, the step it starts at, and its windows (chunk indices) with
    /// their batch counts: steps only move forward, so each epoch is planned once.
    cursor: Option<(usize, usize, Plan)>,
    /// The window in memory: (epoch, window), its rows and their shuffled order.
    loaded: Option<((usize, usize), Tensor, Tensor)>,
}

impl Windows {
    /// `counts`: rows per training chunk; a window gathers chunks (in the epoch's order) until
    /// it holds four batches.
    pub fn new(counts: Vec<u64>, batch: usize, seed: u64) -> Result<Self> {
        let total: u64 = counts.iter().sum();
        if counts.is_empty() || batch == 0 || (total as usize) < batch {
            return Err(ExecError::Io(format!(
                "a batch of {batch} tokens needs at least that many training tokens (there are {total})"
            )));
        }
        Ok(Windows {
            counts,
            batch,
            seed,
            cursor: None,
            loaded: None,
        })
    }

    fn plan(&self, epoch: usize) -> Plan {
        let order = permutation(
            self.counts.len(),
            self.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let want = 4 * self.batch as u64;
        let mut windows: Vec<(Vec<usize>, u64)> = Vec::new();
        for i in order {
            match windows.last_mut() {
                Some((w, rows)) if *rows < want => {
                    w.push(i);
                    *rows += self.counts[i];
                }
                _ => windows.push((vec![i], self.counts[i])),
            }
        }
        // A short last window joins the one before it, so no rows go unread for want of a
        // whole batch.
        if windows.len() > 1 && windows.last().is_some_and(|(_, rows)| *rows < want) {
            if let Some((w, rows)) = windows.pop() {
                if let Some(prev) = windows.last_mut() {
                    prev.0.extend(w);
                    prev.1 += rows;
                }
            }
        }
        windows
            .into_iter()
            .map(|(w, rows)| (w, rows as usize / self.batch))
            .collect()
    }

    /// Epoch, window and batch within it of step `t`.
    fn locate(&mut self, t: usize) -> Result<(usize, usize, usize)> {
        if self.cursor.as_ref().is_none_or(|c| t < c.1) {
            self.cursor = Some((0, 0, self.plan(0)));
        }
        loop {
            let Some((epoch, first, plan)) = &self.cursor else {
                return Err(ExecError::Io("no training order".into()));
            };
            let total: usize = plan.iter().map(|w| w.1).sum();
            if total == 0 {
                return Err(ExecError::Io(
                    "no window of the store holds a whole batch".into(),
                ));
            }
            if t < first + total {
                let mut left = t - first;
                for (w, (_, n)) in plan.iter().enumerate() {
                    if left < *n {
                        return Ok((*epoch, w, left));
                    }
                    left -= n;
                }
            }
            let (next, start) = (epoch + 1, first + total);
            self.cursor = Some((next, start, self.plan(next)));
        }
    }

    /// The raw rows `(batch, M, d)` of step `t`; `load` reads a chunk by its index.
    pub fn batch(&mut self, t: usize, load: &dyn Fn(usize) -> Result<Chunk>) -> Result<Tensor> {
        let (epoch, window, b) = self.locate(t)?;
        if self.loaded.as_ref().map(|l| l.0) != Some((epoch, window)) {
            let chunks = match &self.cursor {
                Some((_, _, plan)) => plan[window].0.clone(),
                None => return Err(ExecError::Io("no training order".into())),
            };
            // Drop the previous window before reading the next.
            self.loaded = None;
            let mut parts = Vec::with_capacity(chunks.len());
            for i in chunks {
                parts.push(load(i)?.acts);
            }
            let rows = Tensor::f_cat(&parts, 0)?;
            drop(parts);
            let n = rows.size()[0] as usize;
            let seed = self.seed
                ^ ((epoch as u64) << 32 | window as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let order: Vec<i64> = permutation(n, seed).into_iter().map(|i| i as i64).collect();
            self.loaded = Some(((epoch, window), rows, Tensor::from_slice(&order)));
        }
        let Some((_, rows, order)) = &self.loaded else {
            return Err(ExecError::Io("no window loaded".into()));
        };
        let idx = order.f_narrow(0, (b * self.batch) as i64, self.batch as i64)?;
        Ok(rows.f_index_select(0, &idx)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_refuse_garbage() {
        let acts = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., 7., 8.]).reshape([2, 2, 2]);
        let c = Chunk::new(acts, vec![0, 0], vec![0, 1], vec![5, 9]).unwrap();
        let back = Chunk::from_bytes(&c.to_bytes().unwrap()).unwrap();
        assert!(back.acts.equal(&c.acts));
        assert_eq!(back.token, vec![5, 9]);
        assert!(Chunk::from_bytes(b"not a chunk").is_err());
    }

    #[test]
    fn the_order_depends_on_the_step_alone() {
        let counts = vec![10, 12, 9, 11];
        let load = |i: usize| {
            let n = [10, 12, 9, 11][i];
            let acts = Tensor::arange(n, (Kind::Float, Device::Cpu))
                .f_add_scalar(100.0 * i as f64)
                .unwrap()
                .reshape([n, 1, 1]);
            Chunk::new(
                acts,
                vec![0; n as usize],
                vec![0; n as usize],
                vec![0; n as usize],
            )
        };
        let mut a = Windows::new(counts.clone(), 4, 7).unwrap();
        let straight: Vec<Tensor> = (0..30).map(|t| a.batch(t, &load).unwrap()).collect();
        // Each epoch reads every row at most once.
        let mut b = Windows::new(counts, 4, 7).unwrap();
        for t in [17, 3, 29, 0, 18, 29, 5] {
            assert!(b.batch(t, &load).unwrap().equal(&straight[t]), "step {t}");
        }
    }
}
