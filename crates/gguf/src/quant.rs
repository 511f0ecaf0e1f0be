//! ggml tensor types and their dequantization to f32, block by block as llama.cpp's
//! `ggml-quants.c` (`dequantize_row_*`) defines them, with the same order of float operations
//! so the values are bit-identical to gguf-py's `quants.py`.
use half::f16;
use rayon::prelude::*;

/// The ggml types a GGUF may state (`ggml.h`'s `enum ggml_type`). Only some are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    /// A type ggml has that NeuroDiff does not dequantize: its id and name.
    Other(u32, &'static str),
}

/// QK_K: the super-block of the K-quants.
const QK_K: usize = 256;

const OTHER_NAMES: [(u32, &str); 24] = [
    (6, "Q5_0"),
    (7, "Q5_1"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
    (40, "NVFP4"),
];

impl GgmlType {
    /// The names of the types that are read, for messages.
    pub const SUPPORTED: &'static str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K";

    /// The type with ggml id `id`; an id ggml does not define is an error.
    pub fn from_id(id: u32) -> Result<Self, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            30 => GgmlType::Bf16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            _ => match OTHER_NAMES.iter().find(|(i, _)| *i == id) {
                Some(&(i, name)) => GgmlType::Other(i, name),
                None => return Err(format!("unknown ggml type id {id}")),
            },
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Other(_, name) => name,
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K as u64,
            GgmlType::Other(id, _) => match id {
                6 | 7 | 9 | 20 => 32,
                24..=28 => 1,
                _ => QK_K as u64,
            },
        }
    }

    /// Bytes per block. For a type that is not read, a size that keeps the range checks
    /// meaningful is not needed: such a tensor is refused before its bytes are used.
    pub fn type_size(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Other(id, _) => match id {
                6 => 22,
                7 => 24,
                9 => 36,
                10 => 84,
                11 => 110,
                15 => 292,
                24 => 1,
                25 => 2,
                26 => 4,
                27 | 28 => 8,
                _ => 1,
            },
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out` (one f32 per element).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let bs = ty.block_size() as usize;
    let ts = ty.type_size() as usize;
    if bytes.len() / ts * bs != out.len() || !bytes.len().is_multiple_of(ts) {
        return Err(format!(
            "{} bytes of {} do not hold {} elements",
            bytes.len(),
            ty.name(),
            out.len()
        ));
    }
    let block: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::Bf16 => {
            |b, y| y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4K => q4_k,
        GgmlType::Q5K => q5_k,
        GgmlType::Q6K => q6_k,
        GgmlType::Other(_, name) => {
            return Err(format!(
                "type {name} is not supported; supported: {}",
                GgmlType::SUPPORTED
            ))
        }
    };
    // Blocks are independent: many per task so the scheduling cost stays small.
    let per_task = (1 << 14) / bs.max(1) + 1;
    bytes
        .par_chunks(ts * per_task)
        .zip(out.par_chunks_mut(bs * per_task))
        .for_each(|(b, y)| {
            for (bb, yy) in b.chunks_exact(ts).zip(y.chunks_exact_mut(bs)) {
                block(bb, yy);
            }
        });
    Ok(())
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * f32::from((qs[j] & 0x0F) as i8 - 8);
        y[j + 16] = d * f32::from((qs[j] >> 4) as i8 - 8);
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = d * f32::from(qs[j] & 0x0F) + m;
        y[j + 16] = d * f32::from(qs[j] >> 4) + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = f32::from(b[2 + j] as i8) * d;
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K super-block (`get_scale_min_k4`).
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for j in 0..8 {
        let (sc, m) = scale_min(j, scales);
        let (dj, mj) = (d * f32::from(sc), dmin * f32::from(m));
        let (group, shift) = (j / 2, 4 * (j % 2));
        for l in 0..32 {
            let q = (qs[group * 32 + l] >> shift) & 0x0F;
            y[j * 32 + l] = dj * f32::from(q) - mj;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for j in 0..8 {
        let (sc, m) = scale_min(j, scales);
        let (dj, mj) = (d * f32::from(sc), dmin * f32::from(m));
        let (group, shift) = (j / 2, 4 * (j % 2));
        for l in 0..32 {
            let low = (qs[group * 32 + l] >> shift) & 0x0F;
            let high = (qh[l] >> j) & 1;
            y[j * 32 + l] = dj * f32::from(low | (high << 4)) - mj;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        for r in 0..128 {
            let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
            let q = (low | (high << 4)) as i8 - 32;
            let p = half * 128 + r;
            let scale = d * f32::from(scales[p / 16] as i8);
            y[p] = scale * f32::from(q);
        }
    }
}
