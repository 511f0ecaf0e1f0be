//! The text the corpus analyses read: options (source, samples, length, batch, token filter) and
//! the record of what was read.
use serde::{Deserialize, Serialize};

use crate::error::{within, SpecError};

/// Which text to run the models on, and how much of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusOptions {
    /// A local file or `s3://bucket/key`; absent: the built-in generic corpus. A name ending in
    /// `.jsonl` (or `.jsonl.gz`) is JSON Lines with a `text` field, or a `messages` list of
    /// `{role, content}` (a chat corpus, rendered with the base model's chat template); anything
    /// else plain text with one sample per non-empty line; `.gz` is decompressed.
    #[serde(default)]
    pub source: Option<String>,
    /// Tokens per sample (with the BOS the tokenizer adds); longer samples are cut, never packed.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Samples used, from the start of the corpus.
    #[serde(default = "default_max_samples")]
    pub max_samples: usize,
    /// Samples per forward pass (results do not depend on it).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Samples per shard: the unit of work a worker runs.
    #[serde(default = "default_shard_samples")]
    pub shard_samples: usize,
    /// Leading positions left out of the statistics a first token's outsized state (the BOS, an
    /// attention sink) would dominate: the dictionaries' training and evaluation tokens,
    /// steering's mean difference, the activations' top examples and distributions. Absent: the
    /// tokens the tokenizer prepends (1 for a BOS, else 0). The traces keep position 0 (the
    /// ADL's δ_0), and the per-token means of the activations and the logit lens keep every
    /// token (they are what transformers' outputs give).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_first: Option<usize>,
    /// Which tokens of a chat corpus the token statistics read (the activations, the logit
    /// lens, CMAP and stitching): every token, the assistant's or the user's message contents,
    /// or the chat template's own text. Anything but `all` needs a chat corpus.
    #[serde(default, skip_serializing_if = "TokenFilter::is_all")]
    pub token_filter: TokenFilter,
}

/// Which tokens of a chat conversation an analysis reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFilter {
    #[default]
    All,
    Assistant,
    User,
    Template,
}

impl TokenFilter {
    pub const NAMES: &'static str = "all, assistant, user, template";

    pub fn is_all(&self) -> bool {
        *self == TokenFilter::All
    }
}

impl std::str::FromStr for TokenFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "all" => TokenFilter::All,
            "assistant" => TokenFilter::Assistant,
            "user" => TokenFilter::User,
            "template" => TokenFilter::Template,
            other => {
                return Err(format!(
                    "unknown token filter `{other}`; one of {}",
                    TokenFilter::NAMES
                ))
            }
        })
    }
}

fn default_seq_len() -> usize {
    128
}

fn default_max_samples() -> usize {
    256
}

fn default_batch_size() -> usize {
    16
}

fn default_shard_samples() -> usize {
    128
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            source: None,
            seq_len: default_seq_len(),
            max_samples: default_max_samples(),
            batch_size: default_batch_size(),
            shard_samples: default_shard_samples(),
            skip_first: None,
            token_filter: TokenFilter::All,
        }
    }
}

/// The longest sample, in tokens.
pub const MAX_SEQ_LEN: usize = 8192;

/// The most samples one audit may use.
pub const MAX_SAMPLES: usize = 1_000_000;

/// The largest batch.
pub const MAX_BATCH: usize = 1024;

impl CorpusOptions {
    pub fn validate(&self) -> Result<(), SpecError> {
        within("corpus.seq_len", self.seq_len, 1, MAX_SEQ_LEN)?;
        within("corpus.max_samples", self.max_samples, 1, MAX_SAMPLES)?;
        within("corpus.batch_size", self.batch_size, 1, MAX_BATCH)?;
        within("corpus.shard_samples", self.shard_samples, 1, MAX_SAMPLES)?;
        if let Some(n) = self.skip_first {
            within("corpus.skip_first", n, 0, 64)?;
        }
        if let Some(s) = &self.source {
            if s.trim().is_empty() || s.len() > 4096 || s.contains('\0') {
                return Err(SpecError::Field(
                    "corpus.source".into(),
                    "must be a non-empty path or s3:// URL".into(),
                ));
            }
        }
        Ok(())
    }

    /// What results.json calls the corpus.
    pub fn name(&self) -> &str {
        self.source.as_deref().unwrap_or(BUILTIN_CORPUS)
    }
}

/// The name of the built-in generic corpus.
pub const BUILTIN_CORPUS: &str = "builtin:generic";

/// The name of the built-in chat set (a `corpus.source` value).
pub const BUILTIN_CHAT_CORPUS: &str = "builtin:chat";

/// The corpus an audit ran on, pinned by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusRecord {
    /// `builtin:generic`, or the path or URL as given.
    pub source: String,
    /// `sha256:` of the corpus file's bytes (as stored, compressed or not).
    pub sha256: String,
    /// Samples in the file, and how many the audit uses (`max_samples` applied).
    pub samples_total: usize,
    pub samples_used: usize,
    pub seq_len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ActivationOptions, LensOptions};

    #[test]
    fn misspelt_options_are_refused_by_name() {
        let e = serde_json::from_str::<CorpusOptions>(r#"{"seq_length": 64}"#).unwrap_err();
        assert!(e.to_string().contains("seq_length"), "{e}");
        assert!(serde_json::from_str::<ActivationOptions>(r#"{"position": 8}"#).is_err());
        assert!(serde_json::from_str::<LensOptions>(r#"{"top_token": 8}"#).is_err());
        let ok: CorpusOptions = serde_json::from_str(r#"{"seq_len": 64}"#).unwrap();
        assert_eq!(ok.seq_len, 64);
    }
}
