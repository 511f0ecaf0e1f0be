//! How the scan lister reads a watched directory, which a team can write while it is read: every
//! directory is opened once (no link followed) and everything under it is reached through that
//! descriptor, so a sub-directory swapped for a link to another team's checkpoint is never
//! entered; files are opened without blocking and must be regular (a FIFO swapped in after the
//! listing is refused, not waited on); and hashing is bounded per poll (a byte budget, a stop
//! flag that a timeout or SIGTERM raises), resuming where it stopped at the next poll.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// An open directory; names under it resolve from the descriptor, not from its path.
#[derive(Debug)]
pub struct Dir {
    file: File,
    /// As shown in messages and used as the key of stored digests.
    pub shown: PathBuf,
}

fn open_flags(extra: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | extra);
    o
}

impl Dir {
    /// Opens the watched directory `path`, which must be canonical: what the descriptor refers
    /// to must be `path` itself (a component swapped for a link meanwhile is refused).
    pub fn open_root(path: &Path) -> Result<Dir, String> {
        let file = open_flags(libc::O_DIRECTORY)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let dir = Dir {
            file,
            shown: path.to_path_buf(),
        };
        let opened =
            std::fs::read_link(dir.proc_path()).map_err(|e| format!("{}: {e}", path.display()))?;
        if opened != path {
            return Err(format!("{}: changed while it was opened", path.display()));
        }
        Ok(dir)
    }

    /// The path through which the kernel resolves names from this descriptor.
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Where `name` is reached through the descriptor (the last component is never followed:
    /// every open below passes `O_NOFOLLOW`, and metadata is read with `lstat`).
    pub fn at(&self, name: &str) -> PathBuf {
        self.proc_path().join(name)
    }

    /// The sub-directory `name`, if it is a directory and not a link.
    pub fn open_dir(&self, name: &str) -> Result<Dir, String> {
        let file = open_flags(libc::O_DIRECTORY)
            .open(self.at(name))
            .map_err(|e| format!("{name}: not a directory ({e})"))?;
        Ok(Dir {
            file,
            shown: self.shown.join(name),
        })
    }

    /// The entries' names, with their metadata (links not followed).
    pub fn entries(&self) -> Result<Vec<(String, std::fs::Metadata)>, String> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(self.proc_path())
            .map_err(|e| format!("{}: {e}", self.shown.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            // `lstat` relative to the directory (links not followed); gone meanwhile: not listed.
            if let Ok(meta) = entry.metadata() {
                out.push((entry.file_name().to_string_lossy().to_string(), meta));
            }
        }
        Ok(out)
    }

    /// The regular file `name`, opened without blocking and without following a link.
    pub fn open_file(&self, name: &str) -> Result<(File, std::fs::Metadata), String> {
        regular(open_flags(0).open(self.at(name)), name)
    }

    /// The whole of the regular file `name`, refused past `max` bytes (counted while reading).
    pub fn read_file(&self, name: &str, max: u64) -> Result<Vec<u8>, String> {
        let (file, _) = self.open_file(name)?;
        read_bounded(file, name, max)
    }
}

/// The regular file at `path` (named `name` in messages), opened without blocking; links are
/// followed (the hub cache's snapshots are links into its blobs, and no team writes there).
pub fn open_following(path: &Path, name: &str) -> Result<(File, std::fs::Metadata), String> {
    let mut o = OpenOptions::new();
    o.read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC);
    regular(o.open(path), name)
}

/// An opened file if it is a regular one (a FIFO or a device is refused, never read).
fn regular(opened: std::io::Result<File>, name: &str) -> Result<(File, std::fs::Metadata), String> {
    let file = opened.map_err(|e| format!("{name}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name}: not a regular file"));
    }
    Ok((file, meta))
}

/// The whole of an open file, refused past `max` bytes (counted while reading, so a file that
/// grows meanwhile is refused too).
pub fn read_bounded(file: File, name: &str, max: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("{name}: more than {max} bytes"));
    }
    Ok(bytes)
}

/// What one poll may still hash, and whether it must stop (its time ran out, or the scheduler
/// is leaving). Shared by the poll's task and the thread that hashes.
#[derive(Debug)]
pub struct Budget {
    bytes: AtomicU64,
    /// Raised for every poll at once (the scheduler is leaving).
    all: Arc<AtomicBool>,
    /// Raised for this poll (its time ran out).
    this: AtomicBool,
}

impl Budget {
    pub fn new(bytes: u64, all: Arc<AtomicBool>) -> Budget {
        Budget {
            bytes: AtomicU64::new(bytes),
            all,
            this: AtomicBool::new(false),
        }
    }

    /// Stops this poll's hashing.
    pub fn stop(&self) {
        self.this.store(true, Ordering::SeqCst);
    }

    pub fn stopped(&self) -> bool {
        self.this.load(Ordering::SeqCst) || self.all.load(Ordering::SeqCst)
    }

    /// How many of `want` bytes may be read now (0: the budget is spent or the poll stopped).
    fn take(&self, want: u64) -> u64 {
        if self.stopped() {
            return 0;
        }
        let mut granted = 0;
        let _ = self
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                granted = left.min(want);
                Some(left - granted)
            });
        granted
    }
}

/// A file hashed in part by an earlier poll: how many bytes, and the hash state there.
pub type Partial = (u64, Sha256);

/// Why hashing stopped before the end of a file.
#[derive(Debug)]
pub enum Stopped {
    /// The poll's budget is spent: `partial` is where the next poll resumes.
    Budget {
        partial: Partial,
    },
    /// The poll was stopped (its time ran out, or shutdown).
    Cancelled,
    Io(String),
}

/// The sha256 of `file` (`size` bytes), resuming from `resume`, within `budget`.
pub fn hash(
    mut file: File,
    size: u64,
    resume: Option<Partial>,
    budget: &Budget,
) -> Result<String, Stopped> {
    let (mut offset, mut h) = resume.unwrap_or_else(|| (0, Sha256::new()));
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Stopped::Io(e.to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    while offset < size {
        let want = budget.take((size - offset).min(buf.len() as u64));
        if want == 0 {
            return Err(if budget.stopped() {
                Stopped::Cancelled
            } else {
                Stopped::Budget {
                    partial: (offset, h),
                }
            });
        }
        let n = file
            .read(&mut buf[..want as usize])
            .map_err(|e| Stopped::Io(e.to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_and_links_are_not_entered() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().canonicalize().expect("canonical");
        let fifo = root.join("model.safetensors");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        std::fs::create_dir(root.join("real")).expect("dir");
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).expect("link");
        let dir = Dir::open_root(&root).expect("root");
        let e = dir.open_file("model.safetensors").expect_err("a FIFO");
        assert!(e.contains("not a regular file"), "{e}");
        assert!(dir.open_dir("real").is_ok());
        assert!(dir.open_dir("link").is_err());
        // A root that passes through a link is not the canonical path it claims.
        assert!(Dir::open_root(&root.join("link")).is_err());
    }

    #[test]
    fn hashing_resumes_where_the_budget_ran_out() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().canonicalize().expect("canonical");
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("w"), &data).expect("write");
        let dir = Dir::open_root(&root).expect("root");
        let stop = Arc::new(AtomicBool::new(false));
        let mut resume = None;
        let mut polls = 0;
        let digest = loop {
            polls += 1;
            let budget = Budget::new(2 << 20, stop.clone());
            let (file, meta) = dir.open_file("w").expect("open");
            match hash(file, meta.len(), resume.take(), &budget) {
                Ok(d) => break d,
                Err(Stopped::Budget { partial }) => resume = Some(partial),
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(polls, 3);
        assert_eq!(digest, hex::encode(Sha256::digest(&data)));
        stop.store(true, Ordering::SeqCst);
        let (file, meta) = dir.open_file("w").expect("open");
        let budget = Budget::new(u64::MAX, stop);
        assert!(matches!(
            hash(file, meta.len(), None, &budget),
            Err(Stopped::Cancelled)
        ));
    }
}
