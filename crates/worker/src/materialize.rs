//! `s3://bucket/prefix` model references: the checkpoint's objects are copied once into a local
//! cache directory (each file written under a temporary name and renamed, so a file that exists
//! is complete; a marker written last says the whole checkpoint is, so later shards list
//! nothing), and the audit reads the copy through the same loader as any directory. Checkpoints
//! under a prefix are taken to be immutable, as the model records hashed at planning assume.
use std::path::{Path, PathBuf};

use neurodiff_protocol::Target;
use neurodiff_store::{Blobs, StoreError};

use crate::{Result, WorkerError};

/// The local directory to audit for `reference`: itself unless it is an `s3://` reference.
async fn materialize(reference: &str, cache_dir: &Path) -> Result<String> {
    let Some(rest) = reference.strip_prefix("s3://") else {
        return Ok(reference.to_string());
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let local: PathBuf = cache_dir.join("s3").join(bucket).join(prefix);
    let complete = local.join(COMPLETE_MARKER);
    if complete.is_file() {
        return Ok(local.display().to_string());
    }
    let blobs = Blobs::from_url(&format!("s3://{bucket}"))
        .map_err(|e| WorkerError::Io(format!("model reference `{reference}`: {e}")))?;
    let failed = |e: StoreError| {
        let message = format!("model reference `{reference}`: {e}");
        match e {
            StoreError::NotFound { .. } | StoreError::Invalid(_) => WorkerError::Io(message),
            _ => WorkerError::Storage(message),
        }
    };
    let keys = blobs.list(prefix).await.map_err(failed)?;
    if keys.is_empty() {
        return Err(WorkerError::Io(format!(
            "model reference `{reference}`: no objects under this prefix"
        )));
    }
    for key in keys {
        let relative = key
            .strip_prefix(prefix)
            .unwrap_or(&key)
            .trim_start_matches('/');
        if relative.is_empty() || relative.split('/').any(|p| p == "..") {
            continue;
        }
        let dest = local.join(relative);
        if dest.is_file() {
            continue;
        }
        let bytes = blobs.get(&key).await.map_err(failed)?;
        let io = |e: std::io::Error| WorkerError::Io(format!("{}: {e}", dest.display()));
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let tmp = dest.with_extension(format!("part-{}", std::process::id()));
        tokio::fs::write(&tmp, &bytes).await.map_err(io)?;
        tokio::fs::rename(&tmp, &dest).await.map_err(io)?;
    }
    tokio::fs::write(&complete, b"")
        .await
        .map_err(|e| WorkerError::Io(format!("{}: {e}", complete.display())))?;
    Ok(local.display().to_string())
}

/// Written into a cached copy once every object of the checkpoint is there.
const COMPLETE_MARKER: &str = ".neurodiff-complete";

/// Both sides of an audit as local references: the base, and the target pointing at its copy.
pub async fn materialize_pair(
    base: &str,
    target: &Target,
    cache_dir: &Path,
) -> Result<(String, Target)> {
    let base = materialize(base, cache_dir).await?;
    let local = materialize(target.reference(), cache_dir).await?;
    let target = match target {
        Target::Checkpoint { .. } => Target::Checkpoint { reference: local },
        Target::Adapter { .. } => Target::Adapter { reference: local },
    };
    Ok((base, target))
}
