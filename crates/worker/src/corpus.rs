//! Reading an audit's corpus: the built-in one, a local file, or (in the service, under the
//! reference policy) a file under an allowed root or an `s3://` object, bounded in size before
//! it is read, pinned by its sha256.
use std::io::Read;
use std::path::Path;

use neurodiff_core::corpus;
use neurodiff_core::guard::open_checked;
use neurodiff_protocol::{
    CorpusOptions, CorpusRecord, Limits, ModelRef, BUILTIN_CHAT_CORPUS, BUILTIN_CORPUS,
};
use neurodiff_store::{Blobs, StoreError};
use sha2::{Digest, Sha256};

use crate::confine::Enforcer;
use crate::exec::CorpusText;
use crate::{Result, WorkerError};

fn refused(source: &str, why: impl std::fmt::Display) -> WorkerError {
    WorkerError::Io(format!("corpus `{source}`: {why}"))
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

fn file_name(source: &str) -> String {
    source.rsplit('/').next().unwrap_or(source).to_string()
}

fn read_bounded(source: &str, path: &Path, max: u64) -> Result<Vec<u8>> {
    read_file_bounded(source, open_file(source, path)?, max)
}

/// The corpus file at `path`, opened as every file a request names is: without blocking (a
/// FIFO's open would wait for a writer for good), a regular file only (a FIFO or a device is
/// refused once open, never read).
pub(crate) fn open_file(source: &str, path: &Path) -> Result<std::fs::File> {
    let (file, _) = open_checked(path, "corpus", None).map_err(|e| match e {
        neurodiff_core::CoreError::MissingFile { .. } => refused(source, "no file there"),
        _ => refused(source, "not a regular file"),
    })?;
    Ok(file)
}

fn read_file_bounded(source: &str, file: std::fs::File, max: u64) -> Result<Vec<u8>> {
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

impl Enforcer {
    /// The corpus of a service audit for `team`: `corpus.source` checked against the policy
    /// like a model reference (local roots, s3 prefixes, reserved locations), then read.
    pub async fn read_corpus(&self, team: &str, opts: &CorpusOptions) -> Result<CorpusText> {
        let limits = self.limits;
        let builtin = opts.source.as_deref() == Some(BUILTIN_CHAT_CORPUS);
        let Some(source) = opts.source.clone().filter(|_| !builtin) else {
            let opts = opts.clone();
            return tokio::task::spawn_blocking(move || load_local(&opts, &limits))
                .await
                .map_err(|e| WorkerError::Io(format!("corpus reader: {e}")))?;
        };
        let parsed = self
            .policy
            .check(team, "corpus.source", &source)
            .map_err(|e| WorkerError::Io(e.0))?;
        let bytes = match &parsed {
            ModelRef::Local { path } => {
                let roots = self.local_roots(team, &parsed, &source)?;
                let file = self.open_vetted_file(&source, Path::new(path), &roots)?;
                // Reading up to --max-corpus-bytes is blocking work: off the async threads,
                // where a shutdown's grace can abandon it.
                let shown = source.clone();
                tokio::task::spawn_blocking(move || {
                    read_file_bounded(&shown, file, limits.max_corpus_bytes)
                })
                .await
                .map_err(|e| WorkerError::Io(format!("corpus reader: {e}")))??
            }
            ModelRef::S3 { bucket, prefix } => {
                fetch_s3(
                    &source,
                    bucket,
                    prefix,
                    &self.cache_dir,
                    limits.max_corpus_bytes,
                )
                .await?
            }
            ModelRef::Hub { .. } => {
                return Err(refused(
                    &source,
                    "hub datasets are not read; give a file or an s3:// object",
                ))
            }
        };
        // Decompressing and splitting up to --max-corpus-bytes is blocking work.
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || {
            from_bytes(&source, &file_name(&source), &bytes, &opts, &limits)
        })
        .await
        .map_err(|e| WorkerError::Io(format!("corpus reader: {e}")))?
    }
}

/// One object, its size checked (HEAD) before it is copied, read back whole.
async fn fetch_s3(
    source: &str,
    bucket: &str,
    key: &str,
    scratch: &Path,
    max: u64,
) -> Result<Vec<u8>> {
    let failed = |e: StoreError| match e {
        StoreError::Blob(_) | StoreError::Queue(_) | StoreError::Database(_) => {
            WorkerError::Storage(format!("corpus `{source}`: {e}"))
        }
        _ => refused(source, e),
    };
    let blobs = Blobs::from_url(&format!("s3://{bucket}")).map_err(failed)?;
    let object = blobs.head(key).await.map_err(|e| match e {
        StoreError::NotFound { .. } => refused(source, "no such object"),
        e => failed(e),
    })?;
    if object.size > max {
        return Err(refused(
            source,
            format!(
                "{} bytes, more than {max} (--max-corpus-bytes)",
                object.size
            ),
        ));
    }
    tokio::fs::create_dir_all(scratch)
        .await
        .map_err(|e| refused(source, e))?;
    let tmp = tempfile::NamedTempFile::new_in(scratch).map_err(|e| refused(source, e))?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|e| refused(source, e))?);
    blobs
        .download(&object.key, &mut file, object.size, object.e_tag.as_deref())
        .await
        .map_err(failed)?;
    drop(file);
    read_bounded(source, tmp.path(), max)
}

/// Whether the corpus a shard read is the one planning recorded.
pub fn verify(planned: &CorpusRecord, read: &CorpusRecord) -> Result<()> {
    if planned.sha256 != read.sha256 || planned.samples_used != read.samples_used {
        return Err(WorkerError::Io(format!(
            "corpus `{}` changed since the audit was planned ({} then, {} now)",
            planned.source, planned.sha256, read.sha256
        )));
    }
    Ok(())
}
