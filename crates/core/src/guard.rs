//! How checkpoint files are opened: regular files only (a FIFO or a device would block a
//! reader or never end), opened without blocking, read up to a bound, and shown to an optional
//! guard with the metadata of the descriptor actually opened. A caller that vetted names (the
//! service's workers) checks there that each file is the one it vetted (device and inode), so a
//! name re-pointed after the check is refused before a byte of it is read.
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{CoreError, Result};

/// Called with each file's path and the metadata of its open descriptor; an error refuses it.
pub type Guard = Arc<dyn Fn(&Path, &Metadata) -> Result<()> + Send + Sync>;

/// Opens `path` for reading if it is a regular file that `guard` accepts.
pub fn open_checked(
    path: &Path,
    what: &'static str,
    guard: Option<&Guard>,
) -> Result<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CoreError::MissingFile {
                path: path.to_path_buf(),
                what,
            },
            _ => CoreError::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| CoreError::io(path, e))?;
    if !meta.is_file() {
        return Err(CoreError::io(
            path,
            std::io::Error::other("not a regular file"),
        ));
    }
    if let Some(g) = guard {
        g(path, &meta)?;
    }
    Ok((file, meta))
}

/// The bytes of a file of at most `max` bytes (counted while reading, so a file that grows
/// meanwhile is refused too), and its metadata.
pub fn read_checked(
    path: &Path,
    what: &'static str,
    max: u64,
    guard: Option<&Guard>,
) -> Result<(Vec<u8>, Metadata)> {
    let (file, meta) = open_checked(path, what, guard)?;
    let too_big = |n: u64| CoreError::Config {
        path: path.to_path_buf(),
        message: format!("{n} bytes or more; files of this kind are at most {max}"),
    };
    if meta.len() > max {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CoreError::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    Ok((bytes, meta))
}
