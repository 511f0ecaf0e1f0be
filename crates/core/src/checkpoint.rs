//! Hugging Face checkpoints on disk: memory-mapped safetensors (single or sharded), read by name.
//!
//! Opening a checkpoint reads only the safetensors headers; a tensor's bytes are touched when
//! it is asked for, so a caller that needs one layer pays for one layer.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::Dtype;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{CoreError, Result};
use crate::guard::{open_checked, read_checked, Guard};

pub use crate::files::{CONFIG_FILE, SHARD_INDEX, SINGLE_FILE, TOKENIZER_FILE};

/// Where one tensor lives and what it holds, read from a safetensors header.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    file: usize,
    /// Byte range in the file (header included), validated against the file's length.
    start: usize,
    end: usize,
}

impl TensorMeta {
    pub fn shape_i64(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The bytes it takes as stored (what holding it costs before any conversion).
    pub fn stored_bytes(&self) -> u64 {
        (self.end - self.start) as u64
    }

    /// The libtorch dtype of the stored bytes, if libtorch has one.
    pub fn kind(&self) -> Option<Kind> {
        kind_of(self.dtype)
    }
}

#[derive(Debug)]
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    /// The open descriptor's metadata (identity, size, times): what was actually mapped.
    meta: std::fs::Metadata,
}

/// A checkpoint directory in Hugging Face layout, or a GGUF file read as one.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorMeta>,
    /// Shown every file this checkpoint opens, config.json included.
    guard: Option<Guard>,
    /// A GGUF's decoded tensors and config (the tensors' byte ranges index these bytes).
    decoded: Option<Decoded>,
}

/// What a GGUF file decodes to: the config its metadata implies and the tensors' bytes.
struct Decoded {
    config: serde_json::Value,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .field("guarded", &self.guard.is_some())
            .field("gguf", &self.decoded.is_some())
            .finish()
    }
}

/// One mapped weight file: its path, its bytes and its open descriptor's metadata.
#[derive(Clone, Copy)]
pub struct MappedView<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
    pub meta: &'a std::fs::Metadata,
    mmap: &'a Mmap,
}

impl std::fmt::Debug for MappedView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedView")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl MappedView<'_> {
    /// Drops this process's resident pages of `bytes[offset..offset + len]`, as
    /// [`Checkpoint::release_pages`] does for whole files (a long read, such as hashing, then
    /// holds no more than its window).
    pub fn release(&self, offset: usize, len: usize) {
        release_range(self.mmap, self.path, offset, len);
    }
}

/// Drops this process's resident pages of `mmap[offset..offset + len]` (widened to whole
/// pages by memmap2).
fn release_range(mmap: &Mmap, path: &Path, offset: usize, len: usize) {
    let len = len.min(mmap.len().saturating_sub(offset));
    if len == 0 {
        return;
    }
    // SAFETY: as in `release_pages`: a read-only shared file mapping, whose discarded pages are
    // read again from the file on the next access.
    #[allow(unsafe_code)]
    let released =
        unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    if let Err(e) = released {
        tracing::debug!(file = %path.display(), error = %e, "cannot release mapped pages");
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Checkpoint {
    /// The weight files `dir` holds, relative to it: `model.safetensors`, or the files a
    /// sharded index maps tensors to (each a plain relative name that stays inside `dir`), and
    /// the index's weight map. Reads only the index, so a caller can vet the files first.
    #[allow(clippy::type_complexity)]
    pub fn weight_files(
        dir: &Path,
        guard: Option<&Guard>,
    ) -> Result<(Vec<String>, Option<HashMap<String, String>>)> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(SHARD_INDEX);
        // exists(), not is_file(): something that is there but not a regular file is refused
        // by name when it is opened, not reported missing.
        if single.exists() {
            return Ok((vec![SINGLE_FILE.to_string()], None));
        }
        if !index.exists() {
            return Err(CoreError::MissingFile {
                path: single,
                what: "weights: neither model.safetensors nor model.safetensors.index.json",
            });
        }
        let (text, _) = read_checked(&index, "shard index", MAX_JSON_BYTES, guard)?;
        let parsed: ShardIndex =
            serde_json::from_slice(&text).map_err(|e| CoreError::ShardIndex {
                path: index.clone(),
                message: e.to_string(),
            })?;
        let mut files: Vec<String> = parsed.weight_map.values().cloned().collect();
        files.sort();
        files.dedup();
        if files.len() > MAX_SHARD_FILES {
            return Err(CoreError::ShardIndex {
                path: index,
                message: format!(
                    "{} weight files; at most {MAX_SHARD_FILES} are opened",
                    files.len()
                ),
            });
        }
        if let Some(bad) = files.iter().find(|f| !inside_name(f)) {
            return Err(CoreError::ShardIndex {
                path: index,
                message: format!(
                    "file `{bad}` is not a relative name inside the checkpoint directory"
                ),
            });
        }
        Ok((files, Some(parsed.weight_map)))
    }

    /// Opens `dir`, preferring `model.safetensors` and falling back to a sharded index.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_guarded(dir, None)
    }

    /// Like [`Checkpoint::open`], every file (index, weights, config) shown to `guard` first.
    /// A path ending in `.gguf`, or a directory holding one GGUF and no config.json, is read as
    /// a GGUF file.
    pub fn open_guarded(dir: impl AsRef<Path>, guard: Option<Guard>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if let Some(file) = crate::gguf::model_file(&dir)? {
            return Self::open_gguf(&file, guard);
        }
        if !dir.is_dir() {
            return Err(CoreError::MissingFile {
                path: dir,
                what: "checkpoint directory",
            });
        }
        let index = dir.join(SHARD_INDEX);
        let (file_names, weight_map) = Self::weight_files(&dir, guard.as_ref())?;
        let ckpt = Self::open_files_guarded(&dir, &file_names, guard)?;
        if let Some(weight_map) = weight_map {
            let (files, tensors) = (&ckpt.files, &ckpt.tensors);
            for (tensor, file) in &weight_map {
                let listed = tensors.get(tensor).map(|m| &files[m.file].path);
                if listed != Some(&dir.join(file)) {
                    return Err(CoreError::ShardIndex {
                        path: index,
                        message: format!(
                            "tensor `{tensor}` is mapped to {file}, which does not contain it"
                        ),
                    });
                }
            }
        }
        Ok(ckpt)
    }

    /// Opens a GGUF file: every tensor decoded now (dequantized, renamed, reshaped), so the
    /// checkpoint holds them in memory rather than mapped.
    pub fn open_gguf(path: &Path, guard: Option<Guard>) -> Result<Self> {
        let mapped = map_file(path, "GGUF file", guard.as_ref())?;
        let decoded = crate::gguf::decode(path, &mapped.mmap)?;
        let tensors = decoded
            .tensors
            .into_iter()
            .map(|t| {
                let meta = TensorMeta {
                    dtype: t.dtype,
                    shape: t.shape,
                    file: 0,
                    start: t.start,
                    end: t.end,
                };
                (t.name, meta)
            })
            .collect();
        Ok(Checkpoint {
            dir: path.to_path_buf(),
            files: vec![mapped],
            tensors,
            guard,
            decoded: Some(Decoded {
                config: decoded.config,
                bytes: decoded.bytes,
            }),
        })
    }

    /// Whether this checkpoint was read from a GGUF file.
    pub fn is_gguf(&self) -> bool {
        self.decoded.is_some()
    }

    /// Opens the named safetensors files of `dir` (a PEFT adapter's, say) as one checkpoint.
    pub fn open_files(dir: &Path, file_names: &[String]) -> Result<Self> {
        Self::open_files_guarded(dir, file_names, None)
    }

    /// Like [`Checkpoint::open_files`], every file shown to `guard` first.
    pub fn open_files_guarded(
        dir: &Path,
        file_names: &[String],
        guard: Option<Guard>,
    ) -> Result<Self> {
        let mut files = Vec::with_capacity(file_names.len());
        let mut tensors = BTreeMap::new();
        let mut header_bytes = 0u64;
        for (i, name) in file_names.iter().enumerate() {
            let mapped = map_file(&dir.join(name), "safetensors file", guard.as_ref())?;
            header_bytes += read_header(&mapped, i, &mut tensors)?;
            // Many files of large headers add up: the headers of one checkpoint are bounded
            // together, not only one by one.
            if header_bytes > MAX_HEADER_BYTES {
                return Err(CoreError::Safetensors {
                    path: mapped.path.clone(),
                    message: format!(
                        "the checkpoint's headers reach {header_bytes} bytes; at most {MAX_HEADER_BYTES} are read"
                    ),
                });
            }
            files.push(mapped);
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            tensors,
            guard,
            decoded: None,
        })
    }

    /// The guard this checkpoint's files are shown to, if any.
    /// Drops this process's resident pages of the mapped weight files (the page cache keeps
    /// them; a later read faults them back in from the file). Called once the weights are
    /// loaded into tensors or hashed, so a long analysis does not hold both copies.
    pub fn release_pages(&self) {
        for f in &self.files {
            // SAFETY: the mapping is read-only and backed by the file (memmap2's `Mmap::map`:
            // PROT_READ, MAP_SHARED). MADV_DONTNEED on such a mapping only discards resident
            // pages, which are read again from the file on the next access: every slice into
            // the map stays valid and sees the same bytes (the file not changing while mapped
            // is the assumption the map itself rests on, see `map_file`).
            #[allow(unsafe_code)]
            let released = unsafe { f.mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
            if let Err(e) = released {
                tracing::debug!(file = %f.path.display(), error = %e, "cannot release mapped pages");
            }
        }
    }

    pub fn guard(&self) -> Option<&Guard> {
        self.guard.as_ref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config.json next to the weights, parsed as JSON (a GGUF's: the one its metadata
    /// implies).
    pub fn config_json(&self) -> Result<serde_json::Value> {
        if let Some(d) = &self.decoded {
            return Ok(d.config.clone());
        }
        read_json(&self.dir.join(CONFIG_FILE), self.guard.as_ref())
    }

    /// Where the config comes from, for messages: config.json, or the GGUF file itself.
    pub fn config_path(&self) -> PathBuf {
        if self.decoded.is_some() {
            self.dir.clone()
        } else {
            self.dir.join(CONFIG_FILE)
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The file holding `name` (for error messages that must name the file).
    pub fn file_of(&self, name: &str) -> PathBuf {
        match self.tensors.get(name) {
            Some(m) => self.files[m.file].path.clone(),
            None => self.dir.clone(),
        }
    }

    fn require(&self, name: &str) -> Result<&TensorMeta> {
        self.tensors.get(name).ok_or_else(|| {
            let near: Vec<&str> = self
                .names()
                .filter(|n| n.ends_with(name.rsplit('.').next().unwrap_or(name)))
                .take(3)
                .collect();
            CoreError::MissingTensor {
                checkpoint: self.dir.clone(),
                tensor: name.to_string(),
                hint: if near.is_empty() {
                    String::new()
                } else {
                    format!(" (present, for instance: {})", near.join(", "))
                },
            }
        })
    }

    /// The tensor's stored bytes (little-endian, row-major), straight from the memory map.
    pub fn bytes(&self, name: &str) -> Result<(&TensorMeta, &[u8])> {
        let meta = self.require(name)?;
        let bytes: &[u8] = match &self.decoded {
            Some(d) => &d.bytes,
            None => &self.files[meta.file].mmap,
        };
        Ok((meta, &bytes[meta.start..meta.end]))
    }

    /// Each mapped weight file, with its bytes and what its descriptor says of it.
    pub fn mapped(&self) -> Vec<MappedView<'_>> {
        self.files
            .iter()
            .map(|f| MappedView {
                path: &f.path,
                bytes: &f.mmap,
                meta: &f.meta,
                mmap: &f.mmap,
            })
            .collect()
    }

    /// The weight files (for content hashing), in name order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The error for tensor `name` stored as a `dtype` the caller cannot use.
    pub fn dtype_error(&self, name: &str, dtype: Dtype) -> CoreError {
        CoreError::Dtype {
            path: self.file_of(name),
            tensor: name.to_string(),
            dtype: format!("{dtype:?}"),
        }
    }

    /// The libtorch dtype `name` is stored in.
    pub fn stored_kind(&self, name: &str) -> Result<Kind> {
        let meta = self.require(name)?;
        meta.kind()
            .ok_or_else(|| self.dtype_error(name, meta.dtype))
    }

    /// The tensor as stored (its own dtype), on the CPU.
    pub fn raw(&self, name: &str) -> Result<Tensor> {
        let kind = self.stored_kind(name)?;
        let (meta, bytes) = self.bytes(name)?;
        Ok(Tensor::f_from_data_size(bytes, &meta.shape_i64(), kind)?)
    }

    /// A floating-point weight converted to `kind` on `device`; refuses integer tensors.
    pub fn weight(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        let meta = self.require(name)?;
        if !matches!(
            meta.dtype,
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        ) {
            return Err(self.dtype_error(name, meta.dtype));
        }
        let t = self.raw(name)?.f_to_device(device)?.f_to_kind(kind)?;
        // The tensor holds its own copy: the mapped pages it was read from go, so loading a
        // model (or a block) never holds the file resident beside it.
        if self.decoded.is_none() {
            let f = &self.files[meta.file];
            release_range(&f.mmap, &f.path, meta.start, meta.end - meta.start);
        }
        Ok(t)
    }

    /// Like [`Checkpoint::weight`], and checks the shape the model's config implies.
    pub fn weight_shaped(
        &self,
        name: &str,
        expected: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let meta = self.require(name)?;
        let found = meta.shape_i64();
        if found != expected {
            return Err(CoreError::Shape {
                path: self.files[meta.file].path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found,
                why: format!("implied by {}", self.config_path().display()),
            });
        }
        self.weight(name, kind, device)
    }
}

/// config.json, adapter configs and shard indexes are small; a bigger one is refused before
/// it is read.
pub const MAX_JSON_BYTES: u64 = 16 << 20;

/// A safetensors header (JSON) bigger than this is refused before it is parsed; so are the
/// headers of one checkpoint's files together.
pub const MAX_HEADER_BYTES: u64 = 64 << 20;

/// A name a shard index may map tensors to: relative, no `..`, no absolute path.
pub(crate) fn inside_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// At most this many weight files are opened for one checkpoint (each has a header to parse).
pub const MAX_SHARD_FILES: usize = 4096;

/// Reads a text file of at most `max` bytes (unguarded: for the hub cache's own files).
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<String> {
    let (bytes, _) = read_checked(path, "file", max, None)?;
    String::from_utf8(bytes).map_err(|_| CoreError::Config {
        path: path.to_path_buf(),
        message: "not UTF-8 text".into(),
    })
}

pub(crate) fn read_json(path: &Path, guard: Option<&Guard>) -> Result<serde_json::Value> {
    let (bytes, _) = read_checked(path, "model config", MAX_JSON_BYTES, guard)?;
    serde_json::from_slice(&bytes).map_err(|e| CoreError::Config {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}

fn map_file(path: &Path, what: &'static str, guard: Option<&Guard>) -> Result<MappedFile> {
    let (file, meta) = open_checked(path, what, guard)?;
    // SAFETY: the map is read-only. A process that truncates the file while it is mapped makes
    // reads past the new end raise SIGBUS (the process dies; the task is retried elsewhere):
    // workers should read model roots that teams cannot modify in place (docs/security.md).
    #[allow(unsafe_code)]
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| CoreError::io(path, e))?;
    Ok(MappedFile {
        path: path.to_path_buf(),
        mmap,
        meta,
    })
}

/// Reads one file's header into `out`; the header's length in bytes.
fn read_header(
    mapped: &MappedFile,
    file: usize,
    out: &mut BTreeMap<String, TensorMeta>,
) -> Result<u64> {
    let declared = mapped
        .mmap
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes);
    if let Some(n) = declared.filter(|&n| n > MAX_HEADER_BYTES) {
        return Err(CoreError::Safetensors {
            path: mapped.path.clone(),
            message: format!("header of {n} bytes; at most {MAX_HEADER_BYTES} are read"),
        });
    }
    // read_metadata checks the header and that the data section covers every tensor exactly,
    // so a truncated download is caught here, not as garbage weights later.
    let (header_len, metadata) =
        safetensors::SafeTensors::read_metadata(&mapped.mmap).map_err(|e| {
            CoreError::Safetensors {
                path: mapped.path.clone(),
                message: e.to_string(),
            }
        })?;
    let data_start = 8 + header_len;
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        out.insert(
            name,
            TensorMeta {
                dtype: info.dtype,
                shape: info.shape.clone(),
                file,
                start: start + data_start,
                end: end + data_start,
            },
        );
    }
    Ok(header_len as u64)
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}
