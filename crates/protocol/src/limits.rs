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

/// Bytes of one token's text in any result (top tokens, examples, latents, vocabularies): a
/// longer one is cut at a character boundary and ends with `…`. A tokenizer is the team's
/// input; without this a vocabulary of 100 KiB tokens turns every token list into megabytes.
pub const MAX_TOKEN_TEXT_BYTES: usize = 64;
/// Bytes of an example's context (the text around a token) in any result.
pub const MAX_CONTEXT_TEXT_BYTES: usize = 512;
/// Bytes of a generated continuation (steering, traces) in any result.
pub const MAX_GENERATED_TEXT_BYTES: usize = 4096;
/// Bytes of one shard's output (its JSON): a worker refuses to store a larger one and fails
/// the audit naming this limit.
pub const MAX_SHARD_OUTPUT_BYTES: u64 = 256 << 20;
/// Bytes of all of an audit's shard outputs together: the fan-in holds them at once while it
/// merges, so it refuses a larger total (the audit fails naming this limit) before reading any.
pub const MAX_FANIN_BYTES: u64 = 512 << 20;

/// `text` cut to at most `max` bytes at a character boundary; a cut text ends with `…` (within
/// the `max` bytes).
pub fn clip_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_text_stays_within_its_bound() {
        assert_eq!(clip_text("short".into(), 64), "short");
        let long = clip_text("é".repeat(100), 64);
        assert!(long.len() <= 64 && long.ends_with('…'), "{long}");
        assert_eq!(clip_text("abcdef".into(), 5), "ab…");
    }
}
