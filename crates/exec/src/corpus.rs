//! Reading an audit's corpus: the built-in one or a local file, bounded in size before it is
//! read, pinned by its sha256. (The service's workers read files under an allowed root and
//! `s3://` objects through the reference policy, then parse them here.)
use std::io::Read;
use std::path::Path;

use neurodiff_core::corpus;
use neurodiff_core::guard::open_checked;
use neurodiff_protocol::{
    CorpusOptions, CorpusRecord, Limits, BUILTIN_CHAT_CORPUS, BUILTIN_CORPUS,
};
use sha2::{Digest, Sha256};

use crate::{ExecError, Result};

pub fn refused(source: &str, why: impl std::fmt::Display) -> ExecError {
    ExecError::Io(format!("corpus `{source}`: {why}"))
}

/// The corpus samples an audit uses, as planning read them.
#[derive(Debug, Clone)]
pub struct CorpusText {
    pub record: CorpusRecord,
    pub samples: Vec<String>,
    /// The samples are conversations (JSON lines with `messages`), rendered with the base
    /// model's chat template when they are tokenized.
    pub chat: bool,
}

/// The samples of a corpus file's `bytes` (named `file_name`, which says its format) that an
/// audit with `opts` uses.
pub fn from_bytes(
    source: &str,
    file_name: &str,
    bytes: &[u8],
    opts: &CorpusOptions,
    limits: &Limits,
) -> Result<CorpusText> {
    let parsed = corpus::parse_corpus(file_name, bytes, limits.max_corpus_bytes, opts.max_samples)
        .map_err(|e| {
            // Name the corpus as given, not the file it was read from.
            match e {
                neurodiff_core::CoreError::Corpus { message, .. } => refused(source, message),
                other => other.into(),
            }
        })?;
    let digest: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(CorpusText {
        record: CorpusRecord {
            source: source.to_string(),
            sha256: format!("sha256:{digest}"),
            samples_total: parsed.total,
            samples_used: parsed.samples.len(),
            seq_len: opts.seq_len,
        },
        samples: parsed.samples,
        chat: parsed.chat,
    })
}

/// The corpus of an embedded audit: the built-in one, or a local file (no policy applies).
pub fn load_local(opts: &CorpusOptions, limits: &Limits) -> Result<CorpusText> {
    let Some(source) = &opts.source else {
        return from_bytes(
            BUILTIN_CORPUS,
            corpus::BUILTIN_FILE,
            corpus::BUILTIN,
            opts,
            limits,
        );
    };
    if source == BUILTIN_CHAT_CORPUS {
        return from_bytes(
            BUILTIN_CHAT_CORPUS,
            corpus::BUILTIN_CHAT_FILE,
            corpus::BUILTIN_CHAT,
            opts,
            limits,
        );
    }
    if source.starts_with("s3://") {
        return Err(refused(
            source,
            "s3:// corpora are read by the service's workers; give a local file here",
        ));
    }
    let bytes = read_bounded(source, Path::new(source), limits.max_corpus_bytes)?;
    from_bytes(source, &file_name(source), &bytes, opts, limits)
}

/// The file name of a corpus source (which says how to parse it).
pub fn file_name(source: &str) -> String {
    source.rsplit('/').next().unwrap_or(source).to_string()
}

/// The file at `path`, refused past `max` bytes.
pub fn read_bounded(source: &str, path: &Path, max: u64) -> Result<Vec<u8>> {
    read_file_bounded(source, open_file(source, path)?, max)
}

/// The corpus file at `path`, opened as every file a request names is: without blocking (a
/// FIFO's open would wait for a writer for good), a regular file only (a FIFO or a device is
/// refused once open, never read).
pub fn open_file(source: &str, path: &Path) -> Result<std::fs::File> {
    let (file, _) = open_checked(path, "corpus", None).map_err(|e| match e {
        neurodiff_core::CoreError::MissingFile { .. } => refused(source, "no file there"),
        _ => refused(source, "not a regular file"),
    })?;
    Ok(file)
}

/// An opened file, refused unless regular and at most `max` bytes.
pub fn read_file_bounded(source: &str, file: std::fs::File, max: u64) -> Result<Vec<u8>> {
    let meta = file.metadata().map_err(|e| refused(source, e))?;
    if !meta.is_file() {
        return Err(refused(source, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refused(source, e))?;
    if bytes.len() as u64 > max {
        return Err(refused(
            source,
            format!("larger than {max} bytes (--max-corpus-bytes)"),
        ));
    }
    Ok(bytes)
}

/// Whether the corpus a shard read is the one planning recorded.
pub fn verify(planned: &CorpusRecord, read: &CorpusRecord) -> Result<()> {
    if planned.sha256 != read.sha256 || planned.samples_used != read.samples_used {
        return Err(ExecError::Io(format!(
            "corpus `{}` changed since the audit was planned ({} then, {} now)",
            planned.source, planned.sha256, read.sha256
        )));
    }
    Ok(())
}
