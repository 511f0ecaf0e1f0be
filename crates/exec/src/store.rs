//! Object storage as a shard sees it: synchronous (shards run on blocking threads) and scoped to
//! one team's space, so a shard can keep what outlives it (activation chunks, training
//! checkpoints, dictionaries) and find it again on a retry. The embedded audit keeps it in a
//! directory; the service's workers in S3 under `teams/{team}/`.
use std::path::{Path, PathBuf};

use crate::{ExecError, Result};

/// What a shard wrote: its key (within the shard's space), size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}

pub trait ShardStore: Send + Sync {
    /// The object's bytes, or `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes the object whole (a reader never sees half of it).
    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Stored>;
    fn exists(&self, key: &str) -> Result<bool>;
    fn delete(&self, key: &str) -> Result<()>;
    /// Where the object lives for someone outside the shard (a path, or the full object key).
    fn locate(&self, key: &str) -> String;
}

/// Keys are made by the shard from hashes and numbers; refuse anything else on principle.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(ExecError::Io(format!("invalid storage key `{key}`")))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A directory (the embedded audit's: `$NEURODIFF_CACHE/store` by default).
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }

    /// `$NEURODIFF_CACHE/store` (default `~/.cache/neurodiff/store`).
    pub fn default_root() -> PathBuf {
        neurodiff_core::organisms::trained::cache_root().join("store")
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io(path: &Path, e: std::io::Error) -> ExecError {
    ExecError::Io(format!("{}: {e}", path.display()))
}

impl ShardStore for DirStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Stored> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let tmp = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        Ok(Stored {
            key: key.to_string(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        })
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key)?.is_file())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn locate(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_relative_paths() {
        for bad in [
            "", "/a", "a//b", "../a", "a/../b", "a/./b", "a b", "a\\b", "a/",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        check_key("activations/0a1b/00000000-00000128.safetensors").unwrap();
    }

    #[test]
    fn a_directory_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::new(dir.path());
        assert_eq!(s.get("x/y.bin").unwrap(), None);
        let stored = s.put("x/y.bin", b"abc".to_vec()).unwrap();
        assert_eq!(stored.bytes, 3);
        assert!(s.exists("x/y.bin").unwrap());
        assert_eq!(s.get("x/y.bin").unwrap().unwrap(), b"abc");
        s.delete("x/y.bin").unwrap();
        assert!(!s.exists("x/y.bin").unwrap());
        assert!(s.put("../escape", vec![]).is_err());
    }
}
