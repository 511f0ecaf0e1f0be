//! Artifacts in object storage, through `object_store`: S3 (configured by the standard AWS_*
//! variables; Garage here), a local directory, or memory (tests). Keys are deterministic
//! (audit/shard/name), so a retried shard overwrites its artifact instead of adding one.
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::{Result, StoreError};

/// The object key of an artifact: `audits/{audit}/{shard}/{name}`.
pub fn artifact_key(audit: &str, shard: &str, name: &str) -> String {
    format!("audits/{audit}/{shard}/{name}")
}

/// The object key of a shard's raw result, written by the attempt that ran it.
pub fn shard_result_key(
    audit: uuid::Uuid,
    shard: &neurodiff_protocol::ShardKey,
    attempt: i32,
) -> String {
    artifact_key(
        &audit.to_string(),
        &shard.to_string(),
        &format!("attempt-{attempt}.json"),
    )
}

/// What was stored, as the artifacts table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

fn blob_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Blob(e.to_string())
}

/// Sorts object-store failures into what retrying can fix (an outage, throttling) and what it
/// cannot (a missing object, refused credentials).
fn classify(key: &str, e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound {
            what: format!("object {key}"),
        },
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => StoreError::Denied(format!("{key}: {e}")),
        other => blob_err(other),
    }
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// The object's ETag, when the store gives one: a download can insist on this version.
    pub e_tag: Option<String>,
    /// What identifies this version of the object: its ETag, else its modification time.
    pub version: String,
}

impl Blobs {
    /// `s3://bucket[/prefix]`, `file:///directory` or `memory://`.
    pub fn from_url(url: &str) -> Result<Blobs> {
        let (store, prefix): (Arc<dyn ObjectStore>, &str) = if let Some(rest) =
            url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(blob_err)?;
            (Arc::new(s3), prefix)
        } else if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Blob(format!("{dir}: {e}")))?;
            (
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(blob_err)?,
                ),
                "",
            )
        } else if url == "memory://" {
            (Arc::new(InMemory::new()), "")
        } else {
            return Err(StoreError::Invalid(format!(
                "object store URL `{url}`: expected s3://bucket[/prefix], file:///dir or memory://"
            )));
        };
        Ok(Blobs {
            store,
            prefix: Path::from(prefix),
        })
    }

    fn path(&self, key: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<StoredObject> {
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let size = bytes.len() as u64;
        self.store
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map_err(blob_err)?;
        Ok(StoredObject {
            key: key.to_string(),
            size,
            sha256,
        })
    }

    /// The object's bytes; a missing key is `NotFound`.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => r.bytes().await.map_err(|e| classify(key, e)),
            Err(e) => Err(classify(key, e)),
        }
    }

    /// Streams the object into `file` chunk by chunk (never whole in memory): exactly `size`
    /// bytes of the version `e_tag` names (when given), or an error: an object replaced since
    /// it was listed is not copied under the old version's name.
    pub async fn download(
        &self,
        key: &str,
        file: &mut tokio::fs::File,
        size: u64,
        e_tag: Option<&str>,
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let options = object_store::GetOptions {
            if_match: e_tag.map(str::to_string),
            ..Default::default()
        };
        let mut stream = match self.store.get_opts(&self.path(key), options).await {
            Ok(r) => r.into_stream(),
            // The object changed between the listing and now: a transient condition.
            Err(object_store::Error::Precondition { .. }) => {
                return Err(StoreError::Blob(format!(
                    "object {key} changed while it was copied"
                )))
            }
            Err(e) => return Err(classify(key, e)),
        };
        let mut written = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(|e| classify(key, e))? {
            written += chunk.len() as u64;
            if written > size {
                break;
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| StoreError::Blob(format!("writing {key}: {e}")))?;
        }
        if written != size {
            return Err(StoreError::Blob(format!(
                "object {key} changed while it was copied ({written} bytes, {size} listed)"
            )));
        }
        file.sync_all()
            .await
            .map_err(|e| StoreError::Blob(format!("writing {key}: {e}")))?;
        Ok(written)
    }

    /// Bytes `start..end` of an object (a safetensors header, say) without reading the rest.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.path(key), range)
            .await
            .map_err(|e| classify(key, e))
    }

    /// What keys start with under this store's prefix (removed from what listings return).
    fn strip(&self) -> String {
        if self.prefix.as_ref().is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// One level of listing under `prefix`, and the store's prefix to strip from its keys.
    async fn one_level(&self, prefix: &str) -> Result<(object_store::ListResult, String)> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.path(prefix)))
            .await
            .map_err(|e| classify(prefix, e))?;
        Ok((listed, self.strip()))
    }

    /// The sub-folders directly under `prefix` (their keys, ending without `/`), sorted.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let (listed, strip) = self.one_level(prefix).await?;
        let mut out: Vec<String> = listed
            .common_prefixes
            .into_iter()
            .map(|p| p.to_string().trim_start_matches(&strip).to_string())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes the object (a missing one is not an error).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify(key, e)),
        }
    }

    /// One object's size and version, without listing its folder (which may hold thousands).
    pub async fn head(&self, key: &str) -> Result<ListedObject> {
        let meta = self
            .store
            .head(&self.path(key))
            .await
            .map_err(|e| classify(key, e))?;
        Ok(ListedObject {
            key: key.to_string(),
            size: meta.size,
            version: meta
                .e_tag
                .clone()
                .unwrap_or_else(|| meta.last_modified.to_rfc3339()),
            e_tag: meta.e_tag,
        })
    }

    /// Objects directly under `prefix` (not in sub-folders), with their sizes, sorted by key.
    pub async fn list_sized(&self, prefix: &str) -> Result<Vec<ListedObject>> {
        let (listed, strip) = self.one_level(prefix).await?;
        let mut out: Vec<ListedObject> = listed
            .objects
            .into_iter()
            .map(|m| ListedObject {
                key: m
                    .location
                    .to_string()
                    .trim_start_matches(&strip)
                    .to_string(),
                size: m.size,
                e_tag: m.e_tag.clone(),
                version: m
                    .e_tag
                    .clone()
                    .unwrap_or_else(|| m.last_modified.to_rfc3339()),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The object's bytes as a stream of chunks, for serving without holding it in memory.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Box::pin(r.into_stream().map_err(blob_err))),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound {
                what: format!("object {key}"),
            }),
            Err(e) => Err(blob_err(e)),
        }
    }

    /// Keys under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let base = self.path(prefix);
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(blob_err)?;
        let strip = self.strip();
        let mut keys: Vec<String> = metas
            .into_iter()
            .map(|m| {
                m.location
                    .to_string()
                    .trim_start_matches(&strip)
                    .to_string()
            })
            .collect();
        keys.sort();
        Ok(keys)
    }
}
