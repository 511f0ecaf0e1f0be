//! Streaming safetensors writer: the header first (shapes are known up front), then each
//! tensor's bytes as it is computed, so writing a checkpoint holds one tensor at a time.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{CoreError, Result};

/// One tensor to be written: its name, dtype and shape.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<i64>,
}

fn dtype_name(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Float => "F32",
        Kind::Double => "F64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        other => {
            return Err(CoreError::Input(format!(
                "cannot write dtype {other:?} to safetensors"
            )))
        }
    })
}

/// Writes `planned` tensors to `path` in order; `produce` returns each one (any device/dtype;
/// it is converted to the planned dtype).
pub fn write_streaming(
    path: &Path,
    planned: &[Planned],
    metadata: &BTreeMap<String, String>,
    mut produce: impl FnMut(&Planned) -> Result<Tensor>,
) -> Result<()> {
    let io = |e: std::io::Error| CoreError::io(path, e);
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).map_err(|e| CoreError::Input(e.to_string()))?,
        );
    }
    let mut offset = 0usize;
    for p in planned {
        let numel: i64 = p.shape.iter().product();
        let len = numel as usize * p.kind.elt_size_in_bytes();
        header.insert(
            p.name.clone(),
            serde_json::json!({"dtype": dtype_name(p.kind)?, "shape": p.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| CoreError::Input(e.to_string()))?;
    // The data section starts 8-byte aligned, as the reference implementation writes it.
    while (text.len() + 8) % 8 != 0 {
        text.push(' ');
    }
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(text.as_bytes()).map_err(io)?;
    for p in planned {
        let t = produce(p)?
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(p.kind)?
            .f_contiguous()?;
        if t.size() != p.shape {
            return Err(CoreError::Input(format!(
                "tensor `{}`: produced shape {:?}, planned {:?}",
                p.name,
                t.size(),
                p.shape
            )));
        }
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * p.kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        out.write_all(&bytes).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(())
}
