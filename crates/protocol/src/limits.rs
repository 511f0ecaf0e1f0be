//! Bounds on the work one audit may cause, shared by the API (checked at submission) and the
//! workers (checked at planning, before anything is allocated from what a config claims).
use serde::{Deserialize, Serialize};

/// Documented defaults; each is a flag of the process that enforces it (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Transformer blocks a model may have (a config claiming more is refused at planning).
    pub max_blocks: usize,
    /// Tensors a checkpoint (all its files together) may hold.
    pub max_tensors: usize,
    /// Elements of one 2-D tensor whose full spectrum is computed (`spectrum: full`).
    pub max_spectrum_elements: u64,
    /// Bytes of weight files per model (and of an `s3://` model copied into the cache).
    pub max_model_bytes: u64,
    /// Seconds planning (resolve, check, hash) may take.
    pub planning_timeout_s: u64,
    /// Seconds one shard may take.
    pub task_deadline_s: u64,
    /// Bytes of a corpus file, as stored and once decompressed.
    #[serde(default = "default_corpus_bytes")]
    pub max_corpus_bytes: u64,
    /// Tokens an audit may run each model on (`max_samples` × `seq_len`), checked at submission.
    #[serde(default = "default_corpus_tokens")]
    pub max_corpus_tokens: u64,
}

fn default_corpus_bytes() -> u64 {
    1 << 30
}

fn default_corpus_tokens() -> u64 {
    1 << 26
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blocks: 1024,
            max_tensors: 100_000,
            max_spectrum_elements: 1 << 30,
            max_model_bytes: 1 << 40,
            planning_timeout_s: 1800,
            task_deadline_s: 7200,
            max_corpus_bytes: default_corpus_bytes(),
            max_corpus_tokens: default_corpus_tokens(),
        }
    }
}
