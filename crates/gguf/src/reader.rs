//! The GGUF container (llama.cpp's `gguf.h`, versions 2 and 3): header, metadata key/values and
//! tensor infos, read from a byte slice with every count, length, dimension, type and offset
//! checked before it is used.
use std::collections::BTreeMap;

use serde_json::Value;

use super::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
/// At most this many tensors and metadata entries (llama.cpp's own models have a few thousand).
pub const MAX_TENSORS: u64 = 1 << 16;
pub const MAX_KV: u64 = 1 << 16;
/// One string (a key, a token, a chat template) is at most this long.
pub const MAX_STRING: u64 = 1 << 24;
/// The elements of all metadata arrays together (a 256k vocabulary has three such arrays).
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 23;
/// A tensor has at most 4 dimensions (GGML_MAX_DIMS) and at most 2^40 elements.
pub const MAX_DIMS: u32 = 4;
pub const MAX_ELEMENTS: u64 = 1 << 40;
const MAX_ALIGNMENT: u64 = 1 << 16;

/// One tensor as the file describes it: llama.cpp's name, ggml type, dims (`ne`, fastest
/// first) and its byte range inside the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    pub ne: Vec<u64>,
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// A parsed header: metadata (as JSON values) and the tensors in file order.
#[derive(Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    array_elements: u64,
}

type Res<T> = Result<T, String>;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Res<&'a [u8]> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(format!(
                "{what} needs {n} bytes at offset {} but the file ends {left} bytes later",
                self.pos
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Res<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Res<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Res<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Res<String> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(format!(
                "{what}: a string of {n} bytes; at most {MAX_STRING}"
            ));
        }
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
    }

    /// One metadata value of type `ty`; arrays may hold scalars or strings, not arrays.
    fn value(&mut self, ty: u32, what: &str, nested: bool) -> Res<Value> {
        Ok(match ty {
            0 => Value::from(self.array::<1>(what)?[0]),
            1 => Value::from(i8::from_le_bytes(self.array(what)?)),
            2 => Value::from(u16::from_le_bytes(self.array(what)?)),
            3 => Value::from(i16::from_le_bytes(self.array(what)?)),
            4 => Value::from(self.u32(what)?),
            5 => Value::from(i32::from_le_bytes(self.array(what)?)),
            6 => Value::from(f64::from(f32::from_le_bytes(self.array(what)?))),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: bool byte {b}")),
            },
            8 => Value::String(self.string(what)?),
            9 if nested => return Err(format!("{what}: an array of arrays")),
            9 => {
                let inner = self.u32(what)?;
                let n = self.u64(what)?;
                self.array_elements = self.array_elements.saturating_add(n);
                if self.array_elements > MAX_ARRAY_ELEMENTS {
                    return Err(format!(
                        "{what}: metadata arrays reach {} elements; at most {MAX_ARRAY_ELEMENTS}",
                        self.array_elements
                    ));
                }
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(inner, what, true)?);
                }
                Value::Array(items)
            }
            10 => Value::from(self.u64(what)?),
            11 => Value::from(i64::from_le_bytes(self.array(what)?)),
            12 => Value::from(f64::from_le_bytes(self.array(what)?)),
            other => return Err(format!("{what}: unknown metadata type {other}")),
        })
    }
}

/// Parses and checks the header of a GGUF file held in `bytes`.
pub fn parse(bytes: &[u8]) -> Res<Header> {
    parse_prefix(bytes, bytes.len())
}

/// Parses the header from `bytes`, the first bytes of a GGUF file of `file_len` bytes, and
/// checks every tensor's range against the whole file (a file still being written is refused:
/// its tensors run past its end).
pub fn parse_prefix(bytes: &[u8], file_len: usize) -> Res<Header> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        array_elements: 0,
    };
    if c.take(4, "magic")? != MAGIC {
        return Err("not a GGUF file (the magic bytes are not `GGUF`)".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version}; versions 2 and 3 are read"));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    if n_tensors > MAX_TENSORS {
        return Err(format!("{n_tensors} tensors; at most {MAX_TENSORS}"));
    }
    if n_kv > MAX_KV {
        return Err(format!("{n_kv} metadata entries; at most {MAX_KV}"));
    }
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key {i}"))?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, false)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor {i} name"))?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}`: {n_dims} dimensions; 1 to {MAX_DIMS}"
            ));
        }
        let ne = (0..n_dims)
            .map(|_| c.u64(&name))
            .collect::<Res<Vec<u64>>>()?;
        let ty_id = c.u32(&name)?;
        let offset = c.u64(&name)?;
        infos.push((name, ne, ty_id, offset));
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => v
            .as_u64()
            .filter(|a| a.is_power_of_two() && *a <= MAX_ALIGNMENT)
            .ok_or_else(|| {
                format!("general.alignment {v} is not a power of two up to {MAX_ALIGNMENT}")
            })?,
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let tensors = infos
        .into_iter()
        .map(|(name, ne, ty_id, offset)| {
            tensor(name, ne, ty_id, offset, alignment, data_start, file_len)
        })
        .collect::<Res<Vec<_>>>()?;
    check_disjoint(&tensors)?;
    Ok(Header {
        version,
        metadata,
        tensors,
    })
}

/// Checks one tensor's dims, type and byte range against the file.
fn tensor(
    name: String,
    ne: Vec<u64>,
    ty_id: u32,
    offset: u64,
    alignment: u64,
    data_start: u64,
    file_len: usize,
) -> Res<TensorInfo> {
    let ty = GgmlType::from_id(ty_id).map_err(|t| format!("tensor `{name}`: {t}"))?;
    let mut numel: u64 = 1;
    for &d in &ne {
        numel = match numel.checked_mul(d) {
            Some(n) if d > 0 && n <= MAX_ELEMENTS => n,
            _ => {
                return Err(format!(
                "tensor `{name}`: dims {ne:?} (each at least 1, at most {MAX_ELEMENTS} elements)"
            ))
            }
        };
    }
    let block = ty.block_size();
    if !ne[0].is_multiple_of(block) {
        return Err(format!(
            "tensor `{name}`: its rows of {} elements are not whole {} blocks of {block}",
            ne[0],
            ty.name()
        ));
    }
    let nbytes = numel / block * ty.type_size();
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
        ));
    }
    let start = data_start.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(nbytes));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len as u64 => Ok(TensorInfo {
            name,
            ty,
            ne,
            start: start as usize,
            end: end as usize,
        }),
        _ => Err(format!(
            "tensor `{name}`: {nbytes} bytes at data offset {offset} run past the end of the file ({file_len} bytes)"
        )),
    }
}

/// No two tensors share a name or a byte.
fn check_disjoint(tensors: &[TensorInfo]) -> Res<()> {
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(format!("tensor `{}` appears twice", t.name));
        }
    }
    let mut by_start: Vec<&TensorInfo> = tensors.iter().collect();
    by_start.sort_by_key(|t| t.start);
    for pair in by_start.windows(2) {
        if pair[1].start < pair[0].end {
            return Err(format!(
                "tensors `{}` and `{}` overlap in the file",
                pair[0].name, pair[1].name
            ));
        }
    }
    Ok(())
}
