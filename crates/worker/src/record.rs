//! Content records of the compared models: sha256 of every weight file, hashed in parallel,
//! stoppable between chunks (a worker told to stop must not finish hashing a large checkpoint
//! first), and remembered per file identity so that every shard can verify it reads the
//! content planning recorded without hashing the whole model again.
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use neurodiff_core::CoreError;
use neurodiff_protocol::{FileHash, ModelRecord};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{Result, WorkerError};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_file(path: &Path, stop: &AtomicBool) -> Result<FileHash> {
    let io = |e: std::io::Error| WorkerError::Io(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(WorkerError::Core(CoreError::Interrupted));
        }
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileHash {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: hex(&hasher.finalize()),
        bytes,
    })
}

/// What identifies a file's content without reading it: if any of these changed, so may have
/// the bytes, and the file is hashed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// Hashes already computed by this process, by canonical path and file identity.
#[derive(Debug, Default)]
pub struct HashCache {
    known: Mutex<HashMap<PathBuf, (Stamp, FileHash)>>,
}

impl HashCache {
    /// The file's hash: remembered if the file is unchanged since, else computed.
    pub fn hash(&self, path: &Path, stop: &AtomicBool) -> Result<FileHash> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let before = stamp(&key);
        if let (Some(s), Ok(known)) = (before, self.known.lock()) {
            if let Some((st, h)) = known.get(&key) {
                if *st == s {
                    let mut h = h.clone();
                    h.name = file_name(path);
                    return Ok(h);
                }
            }
        }
        let mut h = hash_file(&key, stop)?;
        h.name = file_name(path);
        // Remembered only if the file did not change while it was read.
        if let (Some(s), true) = (before, before == stamp(&key)) {
            if let Ok(mut known) = self.known.lock() {
                known.insert(key, (s, h.clone()));
            }
        }
        Ok(h)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The record of a model: `files` are its weight files (and adapter or config files).
pub fn model_record(reference: &str, resolved: &Path, files: &[PathBuf]) -> Result<ModelRecord> {
    record_with(
        reference,
        &resolved.display().to_string(),
        files,
        &HashCache::default(),
        &AtomicBool::new(false),
    )
}

/// Like [`model_record`], with `resolved` as given (a pinned hub commit, say), hashes
/// remembered in `cache`, and hashing stopped when `stop` turns true.
pub fn record_with(
    reference: &str,
    resolved: &str,
    files: &[PathBuf],
    cache: &HashCache,
    stop: &AtomicBool,
) -> Result<ModelRecord> {
    let mut hashes = files
        .par_iter()
        .map(|f| cache.hash(f, stop))
        .collect::<Result<Vec<_>>>()?;
    hashes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut combined = Sha256::new();
    for h in &hashes {
        combined.update(h.name.as_bytes());
        combined.update([0]);
        combined.update(h.sha256.as_bytes());
        combined.update([0]);
    }
    Ok(ModelRecord {
        reference: reference.to_string(),
        resolved: resolved.to_string(),
        content_hash: format!("sha256:{}", hex(&combined.finalize())),
        files: hashes,
    })
}

/// Checks that `files` hold what `planned` recorded: the first file that differs, named.
pub fn verify(
    planned: &ModelRecord,
    files: &[PathBuf],
    cache: &HashCache,
    stop: &AtomicBool,
) -> Result<()> {
    let now = record_with(&planned.reference, &planned.resolved, files, cache, stop)?;
    if now.content_hash == planned.content_hash {
        return Ok(());
    }
    let changed = planned
        .files
        .iter()
        .map(|f| (f.name.as_str(), Some(f.sha256.as_str())))
        .chain(now.files.iter().map(|f| (f.name.as_str(), None)))
        .find_map(|(name, was)| {
            let is = now
                .files
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.sha256.as_str());
            let was = was.or_else(|| {
                planned
                    .files
                    .iter()
                    .find(|f| f.name == name)
                    .map(|f| f.sha256.as_str())
            });
            (was != is).then(|| {
                let short = |h: Option<&str>| {
                    h.map_or("absent".to_string(), |h| h.chars().take(12).collect())
                };
                format!(
                    "`{name}` (sha256 {} at planning, {} now)",
                    short(was),
                    short(is)
                )
            })
        })
        .unwrap_or_else(|| "its file list".to_string());
    Err(WorkerError::Io(format!(
        "model `{}` changed since planning: {changed}; the audit would mix two versions",
        planned.reference
    )))
}
