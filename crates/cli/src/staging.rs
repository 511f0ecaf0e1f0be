//! Outputs that appear only when complete: written to a hidden sibling, renamed into place.
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A hidden sibling path of `out` to write to; removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    /// Makes sure `out`'s parent exists and is writable (so a bad `--out` fails before any work).
    pub fn new(out: &Path) -> anyhow::Result<Staging> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| {
            format!(
                "--out {}: cannot create {}",
                out.display(),
                parent.display()
            )
        })?;
        let name = out
            .file_name()
            .with_context(|| format!("--out {}: not a file or directory name", out.display()))?;
        let tmp = parent.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let probe = std::fs::File::create(&tmp).with_context(|| {
            format!(
                "--out {}: cannot write in {}",
                out.display(),
                parent.display()
            )
        });
        drop(probe?);
        std::fs::remove_file(&tmp).with_context(|| format!("--out {}", out.display()))?;
        Ok(Staging {
            tmp,
            out: out.to_path_buf(),
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Replaces whatever is at `out` with what was written, and returns `out`.
    pub fn commit(mut self) -> anyhow::Result<PathBuf> {
        if self.out.is_dir() {
            std::fs::remove_dir_all(&self.out)
                .with_context(|| format!("--out {}: cannot replace it", self.out.display()))?;
        }
        std::fs::rename(&self.tmp, &self.out).with_context(|| {
            format!(
                "--out {}: cannot move the result into place",
                self.out.display()
            )
        })?;
        self.committed = true;
        Ok(self.out.clone())
    }
}

impl Drop for Staging {
    /// A failed run leaves nothing that looks like a result.
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
