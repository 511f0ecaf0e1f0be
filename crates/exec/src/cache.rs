//! Loaded pairs kept across shards (a warm worker): keyed by what the models are (the sides'
//! content, or their files' identity before hashing), the dtype, whether the blocks stream and
//! the device; within a byte bound, least recently used out first. A shard takes its pair out
//! and puts it back when done, so a pair is never shared between running shards (libtorch
//! tensors are `Send`, not `Sync`).
use std::sync::Mutex;
use std::time::Instant;

use tch::Device;

use crate::forward::{Loading, Pair};
use crate::{OpenTarget, Result, Sources};

/// The default bound of the cache, in bytes of weights held (`--model-cache-bytes`).
pub const DEFAULT_MODEL_CACHE_BYTES: u64 = 8 << 30;

/// What makes two loads the same pair.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    identity: String,
    loading: Loading,
    device: Device,
}

struct Entry {
    key: Key,
    pair: Pair,
    bytes: u64,
}

/// Pairs kept between shards, within `bound` bytes (0 turns the cache off).
pub struct ModelCache {
    bound: u64,
    /// Least recently used first.
    entries: Mutex<Vec<Entry>>,
}

/// A pair taken for one shard, with what it cost to get.
#[derive(Debug)]
pub struct Taken {
    pub pair: Pair,
    /// Seconds spent loading (0 when the cache held it).
    pub load_s: f64,
    pub hit: bool,
    key: Option<Key>,
    bytes: u64,
}

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("bound", &self.bound)
            .field("held", &self.held())
            .finish()
    }
}

impl ModelCache {
    pub fn new(bound: u64) -> ModelCache {
        ModelCache {
            bound,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// A cache that keeps nothing.
    pub fn off() -> ModelCache {
        ModelCache::new(0)
    }

    /// Bytes of weights held now.
    pub fn held(&self) -> u64 {
        self.lock().iter().map(|e| e.bytes).sum()
    }

    /// Whether it holds a pair of these models' content (`Sources::identity`), in any
    /// loading (what a worker answers when a shard of those models could come to it).
    pub fn holds(&self, identity: &str) -> bool {
        self.lock().iter().any(|e| e.key.identity == identity)
    }

    /// The pair of `sources` as `loading` asks, from the cache or loaded.
    pub fn take(&self, sources: &Sources, device: Device, loading: Loading) -> Result<Taken> {
        // An adapter's pair switches its adapter per call: kept, it would need the switch
        // reset, and it is one model anyway; adapters are loaded each time.
        let key = match sources.target {
            OpenTarget::Adapter(_) => None,
            OpenTarget::Checkpoint(_) if self.bound == 0 => None,
            OpenTarget::Checkpoint(_) => Some(Key {
                identity: sources.identity(),
                loading,
                device,
            }),
        };
        if let Some(k) = &key {
            let mut entries = self.lock();
            if let Some(i) = entries.iter().position(|e| &e.key == k) {
                let e = entries.remove(i);
                tracing::debug!(bytes = e.bytes, "model cache hit");
                return Ok(Taken {
                    pair: e.pair,
                    load_s: 0.0,
                    hit: true,
                    key,
                    bytes: e.bytes,
                });
            }
        }
        let started = Instant::now();
        let pair = Pair::load(sources, device, loading)?;
        Ok(Taken {
            bytes: pair.weight_bytes(),
            pair,
            load_s: started.elapsed().as_secs_f64(),
            hit: false,
            key,
        })
    }

    /// Puts a taken pair back, most recently used; the least recently used go while the bound
    /// is passed (a pair larger than the bound is not kept).
    pub fn put_back(&self, taken: Taken) {
        let Some(key) = taken.key else { return };
        if taken.bytes > self.bound {
            return;
        }
        let mut entries = self.lock();
        entries.retain(|e| e.key != key);
        entries.push(Entry {
            key,
            pair: taken.pair,
            bytes: taken.bytes,
        });
        while entries.iter().map(|e| e.bytes).sum::<u64>() > self.bound {
            entries.remove(0);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock leaves a consistent Vec (every change is one call).
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
