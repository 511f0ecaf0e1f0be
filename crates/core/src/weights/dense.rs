//! Metrics of one tensor's delta between two checkpoints.
//!
//! Norms (Frobenius, relative, cosine, max) come from one pass over the memory-mapped bytes of
//! both tensors, accumulated in float64, on every core; spectra go through libtorch in float64.
use rayon::prelude::*;
use safetensors::Dtype;
use tch::{Device, Kind};

use neurodiff_protocol::{
    naming, AddedRows, ShapeMismatch, Spectrum, TensorMetrics, WeightOptions,
};

use super::spectrum::{singular_values, spectral_metrics};
use crate::checkpoint::Checkpoint;
use crate::error::{CoreError, Result};

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

/// ||dW|| / ||W_base||; a tensor that was all zeros and moved ranks first (huge, finite, JSON-safe).
pub fn relative(fro: f64, base_fro: f64) -> f64 {
    if fro == 0.0 {
        0.0
    } else {
        fro / base_fro.max(f64::MIN_POSITIVE)
    }
}

/// Bytes per element, and how to read one element as f64.
type Decoder = (usize, fn(&[u8]) -> f64);

fn decoder(dtype: Dtype) -> Option<Decoder> {
    fn f32le(b: &[u8]) -> f64 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64
    }
    fn f16le(b: &[u8]) -> f64 {
        half::f16::from_le_bytes([b[0], b[1]]).to_f64()
    }
    fn bf16le(b: &[u8]) -> f64 {
        half::bf16::from_le_bytes([b[0], b[1]]).to_f64()
    }
    fn f64le(b: &[u8]) -> f64 {
        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    Some(match dtype {
        Dtype::F32 => (4, f32le),
        Dtype::F16 => (2, f16le),
        Dtype::BF16 => (2, bf16le),
        Dtype::F64 => (8, f64le),
        _ => return None,
    })
}

/// The decoder of a floating-point tensor, or an error naming it.
fn float_decoder(ckpt: &Checkpoint, name: &str, dtype: Dtype) -> Result<Decoder> {
    decoder(dtype).ok_or_else(|| CoreError::Dtype {
        path: ckpt.file_of(name),
        tensor: name.to_string(),
        dtype: format!("{dtype:?}"),
    })
}

/// Norm sums over the first `count` elements of `name` in both checkpoints.
pub fn norm_sums(base: &Checkpoint, ft: &Checkpoint, name: &str, count: usize) -> Result<NormSums> {
    let (mb, bb) = base.bytes(name)?;
    let (mf, fb) = ft.bytes(name)?;
    let (sb, db) = float_decoder(base, name, mb.dtype)?;
    let (sf, df) = float_decoder(ft, name, mf.dtype)?;
    const CHUNK: usize = 1 << 15;
    let sums = (0..count.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(count));
            let mut s = NormSums::default();
            let base = bb[lo * sb..hi * sb].chunks_exact(sb);
            let ft = fb[lo * sf..hi * sf].chunks_exact(sf);
            for (x, y) in base.zip(ft) {
                let (b, f) = (db(x), df(y));
                let d = f - b;
                s.d2 += d * d;
                s.b2 += b * b;
                s.f2 += f * f;
                s.bf += b * f;
                s.max_abs = s.max_abs.max(d.abs());
            }
            s
        })
        .reduce(NormSums::default, NormSums::merge);
    Ok(sums)
}

/// Sum of squares of elements `from..` of a tensor (the rows a grown vocabulary added).
fn tail_sum_squares(ckpt: &Checkpoint, name: &str, from: usize) -> Result<f64> {
    let (meta, bytes) = ckpt.bytes(name)?;
    let (size, decode) = float_decoder(ckpt, name, meta.dtype)?;
    Ok(bytes[from * size..]
        .par_chunks(size * 4096)
        .map(|c| c.chunks_exact(size).map(|x| decode(x).powi(2)).sum::<f64>())
        .sum())
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
    let mut metrics = TensorMetrics {
        name: name.to_string(),
        layer: naming::layer_of(name),
        module: naming::module_of(name),
        shape: bshape.clone(),
        fro,
        base_fro,
        rel_fro: relative(fro, base_fro),
        cosine: sums.cosine(),
        max_abs: Some(sums.max_abs),
        spectral: None,
        nuclear: None,
        stable_rank: None,
        effective_rank: None,
        top_singular_values: Vec::new(),
        energy_top_k: Vec::new(),
        rank_90: None,
        rank_99: None,
        numerical_rank: None,
        rows_compared: grown.then_some(bshape[0]),
        method: "none".into(),
    };
    if bshape.len() == 2 && opts.spectrum == Spectrum::Full {
        let sigma = if fro > 0.0 {
            let rows = bshape[0] as i64;
            let b = base.weight(name, Kind::Double, device)?;
            let f = ft
                .weight(name, Kind::Double, Device::Cpu)?
                .f_narrow(0, 0, rows)?;
            let (sigma, method) = singular_values(&f.f_sub(&b)?)?;
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
