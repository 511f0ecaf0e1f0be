//! GGUF checkpoints (llama.cpp's single-file format: weights, config and tokenizer): read
//! natively, every tensor dequantized to f32 (float tensors kept in their own dtype) under its
//! transformers name and shape, with the config.json and tokenizer.json the metadata implies,
//! so the rest of NeuroDiff sees a checkpoint like a directory.
pub mod convert;
pub mod tokenizer;

pub use neurodiff_gguf::{quant, reader};

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::Dtype;
use serde_json::Value;

use crate::error::{CoreError, Result};
use convert::GgufArch;
use quant::GgmlType;

/// The extension that marks a model path as a GGUF file.
pub const EXTENSION: &str = "gguf";

/// Whether `path` names a GGUF file (by its extension; the magic is checked on open).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(EXTENSION))
}

/// The GGUF a model path stands for: the path itself when it names a `.gguf` file, or the one
/// `.gguf` file of a directory that holds no safetensors weights and no config.json (an
/// object-storage prefix or model root holding a GGUF). None for a Hugging Face directory.
pub fn model_file(path: &Path) -> Result<Option<std::path::PathBuf>> {
    if is_gguf(path) {
        return Ok(Some(path.to_path_buf()));
    }
    if !path.is_dir() {
        return Ok(None);
    }
    let hf = [
        crate::files::CONFIG_FILE,
        crate::files::SINGLE_FILE,
        crate::files::SHARD_INDEX,
    ];
    if hf.iter().any(|f| path.join(f).exists()) {
        return Ok(None);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| CoreError::io(path, e))? {
        let entry = entry.map_err(|e| CoreError::io(path, e))?;
        let name = entry.path();
        if is_gguf(&name) && !entry.file_name().to_string_lossy().starts_with('.') {
            found.push(name);
        }
        if found.len() > 1 {
            return Err(error(
                path,
                "the directory holds more than one .gguf file; name the one to read",
            ));
        }
    }
    Ok(found.pop())
}

/// One tensor of the decoded checkpoint: its transformers name, dtype, shape and byte range
/// in [`Decoded::bytes`].
#[derive(Debug, Clone)]
pub struct DecodedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A GGUF file in Hugging Face terms.
#[derive(Debug)]
pub struct Decoded {
    pub config: Value,
    pub tensors: Vec<DecodedTensor>,
    pub bytes: Vec<u8>,
}

pub(crate) fn error(path: &Path, message: impl Into<String>) -> CoreError {
    CoreError::Gguf {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The parsed header of `bytes`, the GGUF file at `path`.
pub fn header(path: &Path, bytes: &[u8]) -> Result<reader::Header> {
    reader::parse(bytes).map_err(|m| error(path, m))
}

/// The tokenizer.json (as JSON text) the GGUF's metadata describes.
pub fn tokenizer_json(path: &Path, metadata: &BTreeMap<String, Value>) -> Result<String> {
    let json = tokenizer::tokenizer_json(metadata).map_err(|m| error(path, m))?;
    Ok(json.to_string())
}

/// Decodes the GGUF at `path` (its bytes): the config, then each tensor renamed, reshaped,
/// dequantized and (for Llama's q and k) un-permuted.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Decoded> {
    let head = header(path, bytes)?;
    let err = |m: String| error(path, m);
    let arch_name = head
        .metadata
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| err("metadata `general.architecture` is missing".into()))?;
    let arch = GgufArch::parse(arch_name).map_err(err)?;
    let embed = head
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .ok_or_else(|| err("tensor `token_embd.weight` is missing".into()))?;
    let vocab_size = embed.ne.get(1).copied().unwrap_or(0);
    let tied = !head.tensors.iter().any(|t| t.name == "output.weight");
    let config = convert::config(arch, &head.metadata, vocab_size, tied).map_err(err)?;
    let mut out = Vec::new();
    let mut tensors = Vec::with_capacity(head.tensors.len());
    for t in &head.tensors {
        let name = convert::hf_name(arch, &t.name).map_err(err)?;
        let (dtype, data) = tensor_bytes(t, &bytes[t.start..t.end]).map_err(err)?;
        let shape: Vec<usize> = t.ne.iter().rev().map(|&d| d as usize).collect();
        let data = match convert::permuted_heads(arch, &t.name, &config) {
            Some(heads) => {
                let row_bytes = data.len() / shape[0].max(1);
                convert::unpermute_rows(&data, heads, row_bytes)
                    .map_err(|m| err(format!("tensor `{}`: {m}", t.name)))?
            }
            None => data,
        };
        let start = out.len();
        out.extend_from_slice(&data);
        tensors.push(DecodedTensor {
            name,
            dtype,
            shape,
            start,
            end: out.len(),
        });
    }
    Ok(Decoded {
        config,
        tensors,
        bytes: out,
    })
}

/// A tensor's bytes as stored (float types) or dequantized to little-endian f32.
fn tensor_bytes(
    t: &reader::TensorInfo,
    raw: &[u8],
) -> std::result::Result<(Dtype, Vec<u8>), String> {
    let kept = match t.ty {
        GgmlType::F32 => Some(Dtype::F32),
        GgmlType::F16 => Some(Dtype::F16),
        GgmlType::Bf16 => Some(Dtype::BF16),
        _ => None,
    };
    if let Some(dtype) = kept {
        return Ok((dtype, raw.to_vec()));
    }
    let mut values = vec![0f32; t.numel() as usize];
    quant::dequantize(t.ty, raw, &mut values).map_err(|m| format!("tensor `{}`: {m}", t.name))?;
    Ok((
        Dtype::F32,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ))
}
