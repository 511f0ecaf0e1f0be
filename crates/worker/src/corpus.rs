//! Reading a service audit's corpus under the reference policy: a file under an allowed root
//! or an `s3://` object, bounded in size before it is read (the built-in corpora and parsing
//! are the executor's, `neurodiff_exec::corpus`).
use std::path::Path;

use neurodiff_exec::corpus::{
    file_name, from_bytes, load_local, read_bounded, read_file_bounded, refused, CorpusText,
};
use neurodiff_exec::{ExecError, Result};
use neurodiff_protocol::{CorpusOptions, ModelRef, BUILTIN_CHAT_CORPUS};
use neurodiff_store::{Blobs, StoreError};

use crate::confine::Enforcer;

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
                .map_err(|e| ExecError::Io(format!("corpus reader: {e}")))?;
        };
        let parsed = self
            .policy
            .check(team, "corpus.source", &source)
            .map_err(|e| ExecError::Io(e.0))?;
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
                .map_err(|e| ExecError::Io(format!("corpus reader: {e}")))??
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
        .map_err(|e| ExecError::Io(format!("corpus reader: {e}")))?
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
            ExecError::Storage(format!("corpus `{source}`: {e}"))
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
