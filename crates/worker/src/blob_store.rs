//! The service's shard store: what shards keep (activation stores, training checkpoints,
//! dictionaries) in the team's space in object storage.
use neurodiff_exec::store::{check_key, ShardStore, Stored};
use neurodiff_exec::{ExecError, Result};

/// A team's space in the service's object storage: `teams/{team}/{key}`. Blocks on the
/// runtime's handle (shards run on blocking threads).
#[derive(Debug, Clone)]
pub struct BlobStore {
    blobs: neurodiff_store::Blobs,
    prefix: String,
    handle: tokio::runtime::Handle,
}

impl BlobStore {
    pub fn new(blobs: neurodiff_store::Blobs, team: &str, handle: tokio::runtime::Handle) -> Self {
        BlobStore {
            blobs,
            prefix: format!("teams/{team}"),
            handle,
        }
    }

    fn full(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}/{key}", self.prefix))
    }
}

fn storage(e: neurodiff_store::StoreError) -> ExecError {
    ExecError::Storage(e.to_string())
}

impl ShardStore for BlobStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let full = self.full(key)?;
        match self.handle.block_on(self.blobs.get(&full)) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(neurodiff_store::StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Stored> {
        let full = self.full(key)?;
        let stored = self
            .handle
            .block_on(self.blobs.put(&full, bytes::Bytes::from(bytes)))
            .map_err(storage)?;
        Ok(Stored {
            key: key.to_string(),
            bytes: stored.size,
            sha256: stored.sha256,
        })
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let full = self.full(key)?;
        match self.handle.block_on(self.blobs.head(&full)) {
            Ok(_) => Ok(true),
            Err(neurodiff_store::StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage(e)),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let full = self.full(key)?;
        self.handle
            .block_on(self.blobs.delete(&full))
            .map_err(storage)
    }

    fn locate(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }
}
