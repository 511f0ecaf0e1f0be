//! Task vectors (tau = W_ft - W_base): extract, and apply sums of scaled vectors to a base.
//!
//! A task vector is stored one dtype wider than the checkpoint (f32 weights give an f64 tau,
//! f16/bf16 give f32): the difference of two floats is exact there, so applying an extracted
//! vector with scale 1 gives back the fine-tuned weights bit for bit.
use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind};

use crate::checkpoint::{Checkpoint, CONFIG_FILE};
use crate::error::{CoreError, Result};
use crate::safetensors_out::{write_streaming, Planned};

/// Marks a safetensors file as a NeuroDiff task vector (metadata key `format`).
pub const FORMAT: &str = "neurodiff-task-vector/1";

/// Files copied from the base so that an applied checkpoint loads like the base does.
const SIDE_FILES: [&str; 5] = [
    CONFIG_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

fn wider(kind: Kind) -> Kind {
    match kind {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        _ => Kind::Double,
    }
}

/// Writes tau = ft - base for every tensor of the base to `out` (one tensor in memory at a time).
pub fn extract(
    base: &Checkpoint,
    ft: &Checkpoint,
    out: &Path,
    provenance: BTreeMap<String, String>,
) -> Result<usize> {
    let _guard = tch::no_grad_guard();
    let mut planned = Vec::new();
    for name in base.names() {
        let (Some(mb), Some(mf)) = (base.meta(name), ft.meta(name)) else {
            return Err(CoreError::MissingTensor {
                checkpoint: ft.dir().to_path_buf(),
                tensor: name.to_string(),
                hint: " (a task vector needs every base tensor in the fine-tuned checkpoint)"
                    .into(),
            });
        };
        if mb.shape != mf.shape {
            return Err(CoreError::Shape {
                path: ft.file_of(name),
                tensor: name.to_string(),
                expected: mb.shape_i64(),
                found: mf.shape_i64(),
                why: "a task vector needs equal shapes".into(),
            });
        }
        planned.push(Planned {
            name: name.to_string(),
            kind: wider(base.stored_kind(name)?),
            shape: mb.shape_i64(),
        });
    }
    if let Some(extra) = ft.names().find(|n| !base.contains(n)) {
        return Err(CoreError::MissingTensor {
            checkpoint: base.dir().to_path_buf(),
            tensor: extra.to_string(),
            hint: " (present in the fine-tuned checkpoint only; a task vector cannot add tensors)"
                .into(),
        });
    }
    let mut metadata = provenance;
    metadata.insert("format".into(), FORMAT.into());
    write_streaming(out, &planned, &metadata, |p| {
        let b = base.weight(&p.name, p.kind, Device::Cpu)?;
        let f = ft.weight(&p.name, p.kind, Device::Cpu)?;
        Ok(f.f_sub(&b)?)
    })?;
    Ok(planned.len())
}

/// A task vector file opened for applying, with its weight in the sum.
#[derive(Debug)]
pub struct Scaled {
    pub tau: Checkpoint,
    pub scale: f64,
}

/// Opens a task vector written by [`extract`].
pub fn open(path: &Path) -> Result<Checkpoint> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| CoreError::Input(format!("{}: not a file", path.display())))?
        .to_string_lossy()
        .into_owned();
    Checkpoint::open_files(dir, &[name])
}

/// Writes base + sum_i scale_i * tau_i as a checkpoint directory `out` (weights in the base's
/// dtypes, plus the base's config and tokenizer files).
pub fn apply(base: &Checkpoint, taus: &[Scaled], out: &Path) -> Result<usize> {
    let _guard = tch::no_grad_guard();
    for t in taus {
        if let Some(extra) = t.tau.names().find(|n| !base.contains(n)) {
            return Err(CoreError::MissingTensor {
                checkpoint: base.dir().to_path_buf(),
                tensor: extra.to_string(),
                hint: format!(" (named by the task vector in {})", t.tau.dir().display()),
            });
        }
        for name in t.tau.names() {
            let (tm, bm) = (t.tau.meta(name), base.meta(name));
            if let (Some(tm), Some(bm)) = (tm, bm) {
                if tm.shape != bm.shape {
                    return Err(CoreError::Shape {
                        path: t.tau.file_of(name),
                        tensor: name.to_string(),
                        expected: bm.shape_i64(),
                        found: tm.shape_i64(),
                        why: "the task vector was made for another base".into(),
                    });
                }
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| CoreError::io(out, e))?;
    let planned = base
        .names()
        .map(|name| {
            Ok(Planned {
                name: name.to_string(),
                kind: base.stored_kind(name)?,
                shape: base.meta(name).map(|m| m.shape_i64()).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    write_streaming(
        &out.join(crate::checkpoint::SINGLE_FILE),
        &planned,
        &BTreeMap::from([("format".to_string(), "pt".to_string())]),
        |p| {
            let mut w = base.weight(&p.name, Kind::Double, Device::Cpu)?;
            for t in taus.iter().filter(|t| t.tau.contains(&p.name)) {
                let tau = t.tau.weight(&p.name, Kind::Double, Device::Cpu)?;
                w = w.f_add(&tau.f_mul_scalar(t.scale)?)?;
            }
            Ok(w)
        },
    )?;
    for file in SIDE_FILES {
        let src = base.dir().join(file);
        if src.is_file() {
            std::fs::copy(&src, out.join(file)).map_err(|e| CoreError::io(&src, e))?;
        }
    }
    Ok(planned.len())
}
