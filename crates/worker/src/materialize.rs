//! `s3://bucket/prefix` model references: the checkpoint's objects are copied into the
//! worker's cache directory, under a name derived from the normalised location and the version
//! of every object listed (so no key or prefix can name a path outside the cache, and a prefix
//! whose objects changed is copied afresh, never mixed with an older copy), streamed to disk
//! chunk by chunk into a temporary directory of its own, bounded by the model byte limit before
//! anything is written, and renamed into place whole (concurrent copies never interleave; a
//! directory that exists is complete). Whether the content is what planning hashed is checked
//! by the caller against the plan's records.
use std::path::{Path, PathBuf};

use neurodiff_store::{Blobs, StoreError};
use rand::Rng;
use sha2::{Digest, Sha256};

use neurodiff_exec::{ExecError, Result};

/// Object names copied: the files of a checkpoint or adapter (no sub-folders, no dot-files).
fn copied_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn hex16(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache directory holding copies of `bucket/prefix` (both already normalised), one
/// sub-directory per version of its contents.
pub fn cache_path(cache_dir: &Path, bucket: &str, prefix: &str) -> PathBuf {
    cache_dir
        .join("s3")
        .join(hex16(format!("{bucket}/{prefix}").as_bytes()))
}

/// Removes a temporary copy that did not make it into place.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Copies the objects directly under `bucket/prefix` into the cache (once); the directory.
pub async fn materialize_s3(
    reference: &str,
    bucket: &str,
    prefix: &str,
    cache_dir: &Path,
    max_bytes: u64,
) -> Result<PathBuf> {
    let failed = |e: StoreError| {
        let message = format!("model reference `{reference}`: {e}");
        match e {
            // An outage or throttling may pass: retried. A missing object or refused access
            // will not: the audit fails with the reason.
            StoreError::Blob(_) | StoreError::Queue(_) | StoreError::Database(_) => {
                ExecError::Storage(message)
            }
            _ => ExecError::Io(message),
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
        return Err(ExecError::Io(format!(
            "model reference `{reference}`: no objects under this prefix"
        )));
    }
    let total: u64 = objects.iter().map(|(_, o)| o.size).sum();
    if total > max_bytes {
        return Err(ExecError::Io(format!(
            "model reference `{reference}`: {total} bytes under this prefix, more than the limit of {max_bytes} bytes per model"
        )));
    }
    let listing: String = objects
        .iter()
        .map(|(name, o)| format!("{name}\0{}\0{}\n", o.size, o.version))
        .collect();
    let home = cache_path(cache_dir, bucket, prefix);
    let local = home.join(hex16(listing.as_bytes()));
    if local.is_dir() {
        return Ok(local);
    }
    let io = |path: &Path, e: std::io::Error| {
        let message = format!("copying `{reference}` into the worker cache: {e}");
        // A full disk or a quota may clear: retried like an outage.
        if e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull {
            ExecError::Storage(message)
        } else {
            ExecError::Io(format!("{message} ({})", path.display()))
        }
    };
    let nonce: u64 = rand::rng().random();
    let tmp = home.join(format!(".copy-{}-{nonce:016x}", std::process::id()));
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(|e| io(&tmp, e))?;
    let mut scratch = Scratch(Some(tmp.clone()));
    for (name, object) in &objects {
        let dest = tmp.join(name);
        let mut file = tokio::fs::File::create(&dest)
            .await
            .map_err(|e| io(&dest, e))?;
        blobs
            .download(&object.key, &mut file, object.size, object.e_tag.as_deref())
            .await
            .map_err(failed)?;
    }
    match tokio::fs::rename(&tmp, &local).await {
        Ok(()) => {
            scratch.0 = None;
            Ok(local)
        }
        // Another copy of the same version got there first: it is complete, use it.
        Err(_) if local.is_dir() => Ok(local),
        Err(e) => Err(io(&local, e)),
    }
}
