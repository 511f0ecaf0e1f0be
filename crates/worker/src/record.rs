//! Content records of the compared models: sha256 of every weight file, hashed in parallel.
use std::io::Read;
use std::path::{Path, PathBuf};

use neurodiff_protocol::{FileHash, ModelRecord};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{Result, WorkerError};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_file(path: &Path) -> Result<FileHash> {
    let io = |e: std::io::Error| WorkerError::Io(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
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

/// The record of a model: `files` are its weight files (and adapter or config files).
pub fn model_record(reference: &str, resolved: &Path, files: &[PathBuf]) -> Result<ModelRecord> {
    let mut hashes = files
        .par_iter()
        .map(|f| hash_file(f))
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
        resolved: resolved.display().to_string(),
        content_hash: format!("sha256:{}", hex(&combined.finalize())),
        files: hashes,
    })
}
