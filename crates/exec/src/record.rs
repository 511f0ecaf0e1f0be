//! Content records of the compared models: sha256 of every weight file, hashed in parallel
//! from the bytes that were opened (never by reopening a name), stoppable between chunks (a
//! worker told to stop must not finish hashing a large checkpoint first), and remembered per
//! file identity so that every shard can verify it reads the content planning recorded
//! without hashing the whole model again.
use std::borrow::Cow;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use neurodiff_core::CoreError;
use neurodiff_protocol::{FileHash, ModelRecord};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{ExecError, Result};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file of a model as it was opened: its name, its bytes (mapped, or read through the
/// guard) and its descriptor's metadata.
#[derive(Debug)]
pub struct Content<'a> {
    pub name: String,
    pub bytes: Cow<'a, [u8]>,
    pub meta: std::fs::Metadata,
    /// The mapping the bytes are, when they are a mapped file: hashing releases its pages
    /// behind it, so hashing a large checkpoint never holds it resident.
    pub mapped: Option<neurodiff_core::checkpoint::MappedView<'a>>,
}

/// Bytes hashed between two releases of a mapped file's pages.
const RELEASE_EVERY: usize = 64 << 20;

fn hash_bytes(content: &Content<'_>, stop: &AtomicBool) -> Result<String> {
    let mut hasher = Sha256::new();
    for (i, chunk) in content.bytes.chunks(1 << 20).enumerate() {
        if stop.load(Ordering::Relaxed) {
            return Err(ExecError::Core(CoreError::Interrupted));
        }
        hasher.update(chunk);
        let end = (i + 1) << 20;
        if let (Some(view), true) = (&content.mapped, end % RELEASE_EVERY == 0) {
            view.release(end - RELEASE_EVERY, RELEASE_EVERY);
        }
    }
    if let Some(view) = &content.mapped {
        let len = content.bytes.len();
        let tail = len % RELEASE_EVERY;
        view.release(len - tail, tail);
    }
    Ok(hex(&hasher.finalize()))
}

/// What identifies a file's content without reading it: if any of these changed, so may have
/// the bytes, and the file is hashed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    }
}

/// Hashes already computed by this process, by file identity (device, inode, size, times).
#[derive(Debug, Default)]
pub struct HashCache {
    known: Mutex<HashMap<Stamp, String>>,
}

impl HashCache {
    /// The file's hash: remembered if this very file is unchanged since, else computed from
    /// the bytes that were opened.
    pub fn hash(&self, content: &Content<'_>, stop: &AtomicBool) -> Result<FileHash> {
        let key = stamp(&content.meta);
        let known = self.known.lock().ok().and_then(|k| k.get(&key).cloned());
        let sha256 = match known {
            Some(h) => h,
            None => {
                let h = hash_bytes(content, stop)?;
                if let Ok(mut k) = self.known.lock() {
                    k.insert(key, h.clone());
                }
                h
            }
        };
        Ok(FileHash {
            name: content.name.clone(),
            sha256,
            bytes: content.bytes.len() as u64,
        })
    }
}

/// The record of a model from its files as opened: `resolved` as given (a directory, a pinned
/// hub commit), hashes remembered in `cache`, hashing stopped when `stop` turns true.
pub fn record_with(
    reference: &str,
    resolved: &str,
    files: &[Content<'_>],
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
    files: &[Content<'_>],
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
            // Only the planned hash is shown: the new content's is not the team's to learn.
            (was != is).then(|| {
                let short = |h: Option<&str>| {
                    h.map_or("absent".to_string(), |h| h.chars().take(12).collect())
                };
                format!("`{name}` (sha256 {} at planning)", short(was))
            })
        })
        .unwrap_or_else(|| "its file list".to_string());
    Err(ExecError::Io(format!(
        "model `{}` changed since planning: {changed}; the audit would mix two versions",
        planned.reference
    )))
}
