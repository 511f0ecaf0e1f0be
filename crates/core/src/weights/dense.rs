//! Metrics of one tensor's delta between two checkpoints.
//!
//! Norms (Frobenius, relative, cosine, max) come from one pass over the memory-mapped bytes of
//! both tensors, accumulated in float64, on every core; spectra go through libtorch in float64.
use rayon::prelude::*;
use safetensors::Dtype;
use tch::{Device, Kind};

use neurodiff_protocol::{AddedRows, ShapeMismatch, Spectrum, TensorMetrics, WeightOptions};

use super::spectrum::{singular_values, spectral_metrics};
use crate::checkpoint::Checkpoint;
use crate::error::Result;

/// Sums over the elements of two equally shaped tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NormSums {
    /// sum (f - b)^2
    pub d2: f64,
    /// sum b^2
    pub b2: f64,
    /// sum f^2
    pub f2: f64,
    /// sum b * f
    pub bf: f64,
    /// max |f - b|
    pub max_abs: f64,
}

impl NormSums {
    fn merge(self, o: NormSums) -> NormSums {
        NormSums {
            d2: self.d2 + o.d2,
            b2: self.b2 + o.b2,
            f2: self.f2 + o.f2,
            bf: self.bf + o.bf,
            max_abs: self.max_abs.max(o.max_abs),
        }
    }

    pub fn cosine(&self) -> f64 {
        match (self.b2 > 0.0, self.f2 > 0.0) {
            (true, true) => self.bf / (self.b2.sqrt() * self.f2.sqrt()),
            (false, false) => 1.0,
            _ => 0.0,
        }
    }
}

/// An element type a checkpoint may store, read as f64.
trait Elem: bytemuck::Pod + Send + Sync {
    fn f64(self) -> f64;
}

impl Elem for f32 {
    #[inline(always)]
    fn f64(self) -> f64 {
        f64::from(self)
    }
}

impl Elem for f64 {
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
}

impl Elem for half::f16 {
    #[inline(always)]
    fn f64(self) -> f64 {
        self.to_f64()
    }
}

impl Elem for half::bf16 {
    #[inline(always)]
    fn f64(self) -> f64 {
        self.to_f64()
    }
}

const LANES: usize = 8;

/// The sums over two equally long slices, on every core. Eight independent accumulators per
/// sum let the compiler keep them in SIMD registers (float sums cannot be reassociated for it).
fn sums_of<B: Elem, F: Elem>(base: &[B], ft: &[F]) -> NormSums {
    const CHUNK: usize = 1 << 16;
    base.par_chunks(CHUNK)
        .zip(ft.par_chunks(CHUNK))
        .map(|(bs, fs)| {
            let (mut d2, mut b2, mut f2, mut bf, mut mx) = (
                [0.0f64; LANES],
                [0.0f64; LANES],
                [0.0f64; LANES],
                [0.0f64; LANES],
                [0.0f64; LANES],
            );
            let mut bi = bs.chunks_exact(LANES);
            let mut fi = fs.chunks_exact(LANES);
            for (cb, cf) in (&mut bi).zip(&mut fi) {
                for l in 0..LANES {
                    let (b, f) = (cb[l].f64(), cf[l].f64());
                    let d = f - b;
                    d2[l] += d * d;
                    b2[l] += b * b;
                    f2[l] += f * f;
                    bf[l] += b * f;
                    mx[l] = if d.abs() > mx[l] { d.abs() } else { mx[l] };
                }
            }
            let mut s = NormSums {
                d2: d2.iter().sum(),
                b2: b2.iter().sum(),
                f2: f2.iter().sum(),
                bf: bf.iter().sum(),
                max_abs: mx.iter().copied().fold(0.0, f64::max),
            };
            for (b, f) in bi.remainder().iter().zip(fi.remainder()) {
                let (b, f) = (b.f64(), f.f64());
                let d = f - b;
                s.d2 += d * d;
                s.b2 += b * b;
                s.f2 += f * f;
                s.bf += b * f;
                s.max_abs = s.max_abs.max(d.abs());
            }
            s
        })
        .reduce(NormSums::default, NormSums::merge)
}

/// Views stored bytes as elements; copies only when the bytes are not aligned for the type.
fn elems<T: Elem>(bytes: &[u8]) -> std::borrow::Cow<'_, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(slice) => std::borrow::Cow::Borrowed(slice),
        Err(_) => std::borrow::Cow::Owned(
            bytes
                .chunks_exact(size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        ),
    }
}

fn with_ft<B: Elem>(
    base: &[B],
    ft: &Checkpoint,
    name: &str,
    dtype: Dtype,
    bytes: &[u8],
) -> Result<NormSums> {
    let n = base.len();
    Ok(match dtype {
        Dtype::F32 => sums_of(base, &elems::<f32>(bytes)[..n]),
        Dtype::F64 => sums_of(base, &elems::<f64>(bytes)[..n]),
        Dtype::F16 => sums_of(base, &elems::<half::f16>(bytes)[..n]),
        Dtype::BF16 => sums_of(base, &elems::<half::bf16>(bytes)[..n]),
        other => return Err(ft.dtype_error(name, other)),
    })
}

/// Norm sums over the first `count` elements of `name` in both checkpoints.
pub fn norm_sums(base: &Checkpoint, ft: &Checkpoint, name: &str, count: usize) -> Result<NormSums> {
    let (mb, bb) = base.bytes(name)?;
    let (mf, fb) = ft.bytes(name)?;
    let (bd, fd) = (mb.dtype, mf.dtype);
    match bd {
        Dtype::F32 => with_ft(&elems::<f32>(bb)[..count], ft, name, fd, fb),
        Dtype::F64 => with_ft(&elems::<f64>(bb)[..count], ft, name, fd, fb),
        Dtype::F16 => with_ft(&elems::<half::f16>(bb)[..count], ft, name, fd, fb),
        Dtype::BF16 => with_ft(&elems::<half::bf16>(bb)[..count], ft, name, fd, fb),
        other => Err(base.dtype_error(name, other)),
    }
}

/// Sum of squares of elements `from..` of a tensor (the rows a grown vocabulary added).
fn tail_sum_squares(ckpt: &Checkpoint, name: &str, from: usize) -> Result<f64> {
    fn sq<T: Elem>(xs: &[T]) -> f64 {
        xs.par_iter().map(|x| x.f64().powi(2)).sum()
    }
    let (meta, bytes) = ckpt.bytes(name)?;
    Ok(match meta.dtype {
        Dtype::F32 => sq(&elems::<f32>(bytes)[from..]),
        Dtype::F64 => sq(&elems::<f64>(bytes)[from..]),
        Dtype::F16 => sq(&elems::<half::f16>(bytes)[from..]),
        Dtype::BF16 => sq(&elems::<half::bf16>(bytes)[from..]),
        other => return Err(ckpt.dtype_error(name, other)),
    })
}

/// What comparing one tensor found.
#[derive(Debug)]
pub enum Compared {
    Metrics(Box<TensorMetrics>, Option<AddedRows>),
    ShapeMismatch(ShapeMismatch),
}

/// Compares tensor `name`, present in both checkpoints.
pub fn compare(
    base: &Checkpoint,
    ft: &Checkpoint,
    name: &str,
    opts: &WeightOptions,
    device: Device,
) -> Result<Compared> {
    let (mb, _) = base.bytes(name)?;
    let (mf, _) = ft.bytes(name)?;
    let (bshape, fshape) = (mb.shape.clone(), mf.shape.clone());
    let grown = bshape.len() == fshape.len()
        && !bshape.is_empty()
        && bshape[1..] == fshape[1..]
        && fshape[0] > bshape[0];
    if bshape != fshape && !grown {
        return Ok(Compared::ShapeMismatch(ShapeMismatch {
            name: name.to_string(),
            base: bshape,
            finetuned: fshape,
        }));
    }
    let count = mb.numel();
    let sums = norm_sums(base, ft, name, count)?;
    let added = if grown {
        Some(AddedRows {
            name: name.to_string(),
            base_rows: bshape[0],
            finetuned_rows: fshape[0],
            added_fro: tail_sum_squares(ft, name, count)?.sqrt(),
        })
    } else {
        None
    };
    let fro = sums.d2.sqrt();
    let base_fro = sums.b2.sqrt();
    let mut metrics =
        TensorMetrics::from_norms(name, bshape.clone(), fro, base_fro, sums.cosine(), "none");
    metrics.max_abs = Some(sums.max_abs);
    metrics.rows_compared = grown.then_some(bshape[0]);
    if bshape.len() == 2 && opts.spectrum == Spectrum::Full {
        let sigma = if fro > 0.0 {
            let rows = bshape[0] as i64;
            // Only the delta outlives this block: one tensor's worth of float64 at a time.
            let delta = {
                let b = base.weight(name, Kind::Double, device)?;
                let f = ft
                    .weight(name, Kind::Double, device)?
                    .f_narrow(0, 0, rows)?;
                f.f_sub(&b)?
            };
            let (sigma, method) = singular_values(&delta)?;
            metrics.method = method.into();
            sigma
        } else {
            metrics.method = "zero".into();
            Vec::new()
        };
        fill_spectral(&mut metrics, &sigma, sums.d2, opts.top_k);
    }
    Ok(Compared::Metrics(Box::new(metrics), added))
}

/// Writes the spectral fields of `m` from singular values `sigma` (largest first).
pub fn fill_spectral(m: &mut TensorMetrics, sigma: &[f64], fro2: f64, top_k: usize) {
    let s = spectral_metrics(sigma, fro2, top_k);
    m.spectral = Some(s.spectral);
    m.nuclear = Some(s.nuclear);
    m.stable_rank = s.stable_rank;
    m.effective_rank = s.effective_rank;
    m.top_singular_values = s.top;
    m.energy_top_k = s.energy_top_k;
    m.rank_90 = s.rank_90;
    m.rank_99 = s.rank_99;
    let tol =
        s.spectral * m.shape.iter().copied().max().unwrap_or(0) as f64 * f64::from(f32::EPSILON);
    m.numerical_rank = Some(sigma.iter().filter(|&&x| x > tol).count());
}
