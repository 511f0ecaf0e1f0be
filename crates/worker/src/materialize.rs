//! `s3://bucket/prefix` model references: the checkpoint's objects are copied once into the
//! worker's cache directory, under a name derived from the normalised location (so no key or
//! prefix can name a path outside the cache), streamed to disk chunk by chunk, each file under a
//! temporary name of its own and renamed (concurrent copies of one model never interleave, and
//! a file that exists is complete), bounded by the model byte limit before anything is written.
//! A marker written last says the copy is whole, so later shards list nothing. Whether the
//! content is what planning hashed is checked by the caller against the plan's records.
use std::path::{Path, PathBuf};

use neurodiff_store::{Blobs, StoreError};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::{Result, WorkerError};

/// Written into a cached copy once every object of the checkpoint is there.
const COMPLETE_MARKER: &str = ".neurodiff-complete";

/// Object names copied: the files of a checkpoint or adapter (no sub-folders, no dot-files).
fn copied_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// A temporary name no other copy (in this process or another) will use.
fn temporary(dir: &Path, name: &str) -> PathBuf {
    let nonce: u64 = rand::rng().random();
    dir.join(format!(".{name}.part-{}-{nonce:016x}", std::process::id()))
}

/// The cache directory holding the copy of `bucket/prefix` (both already normalised).
pub fn cache_path(cache_dir: &Path, bucket: &str, prefix: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{bucket}/{prefix}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    cache_dir.join("s3").join(hex)
}

/// Copies the objects directly under `bucket/prefix` into the cache (once); the directory.
pub async fn materialize_s3(
    reference: &str,
    bucket: &str,
    prefix: &str,
    cache_dir: &Path,
    max_bytes: u64,
) -> Result<PathBuf> {
    let local = cache_path(cache_dir, bucket, prefix);
    if local.join(COMPLETE_MARKER).is_file() {
        return Ok(local);
    }
    let failed = |e: StoreError| {
        let message = format!("model reference `{reference}`: {e}");
        match e {
            // An outage or throttling may pass: retried. A missing object or refused access
            // will not: the audit fails with the reason.
            StoreError::Blob(_) | StoreError::Queue(_) | StoreError::Database(_) => {
                WorkerError::Storage(message)
            }
            _ => WorkerError::Io(message),
        }
    };
    let blobs = Blobs::from_url(&format!("s3://{bucket}")).map_err(failed)?;
    let objects: Vec<_> = blobs
        .list_sized(prefix)
        .await
        .map_err(failed)?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next().unwrap_or_default().to_string();
            copied_name(&name).then_some((name, o))
        })
        .collect();
    if objects.is_empty() {
        return Err(WorkerError::Io(format!(
            "model reference `{reference}`: no objects under this prefix"
        )));
    }
    let total: u64 = objects.iter().map(|(_, o)| o.size).sum();
    if total > max_bytes {
        return Err(WorkerError::Io(format!(
            "model reference `{reference}`: {total} bytes under this prefix, more than the limit of {max_bytes} bytes per model"
        )));
    }
    let io = |path: &Path, e: std::io::Error| {
        let message = format!("copying `{reference}` into the worker cache: {e}");
        // A full disk or a quota may clear: retried like an outage.
        if e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull {
            WorkerError::Storage(message)
        } else {
            WorkerError::Io(format!("{message} ({})", path.display()))
        }
    };
    tokio::fs::create_dir_all(&local)
        .await
        .map_err(|e| io(&local, e))?;
    for (name, object) in objects {
        let dest = local.join(&name);
        if dest.is_file() {
            continue;
        }
        let tmp = temporary(&local, &name);
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io(&tmp, e))?;
        let copied = blobs.download(&object.key, &mut file, object.size).await;
        drop(file);
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(failed(e));
        }
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(|e| io(&dest, e))?;
    }
    let marker = temporary(&local, COMPLETE_MARKER);
    tokio::fs::write(&marker, b"")
        .await
        .map_err(|e| io(&marker, e))?;
    tokio::fs::rename(&marker, local.join(COMPLETE_MARKER))
        .await
        .map_err(|e| io(&marker, e))?;
    Ok(local)
}
