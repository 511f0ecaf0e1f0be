//! The worker's half of the reference policy: a reference the API accepted is checked again
//! when its files are opened. Local paths are canonicalised (symbolic links resolved) and must
//! stay inside the canonical roots the team may read, and so must every file the checkpoint
//! would open (config, weights, the files a shard index names, adapter files); hub ids resolve
//! only through the hub cache, to a commit, inside the repository's folder; `s3://` prefixes
//! are copied into the cache under a name derived from the normalised location.
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use neurodiff_core::checkpoint::{CONFIG_FILE, SHARD_INDEX, SINGLE_FILE, TOKENIZER_FILE};
use neurodiff_core::guard::Guard;
use neurodiff_core::reference::{resolve_hub, HubOptions};
use neurodiff_core::weights::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use neurodiff_core::{Checkpoint, CoreError};
use neurodiff_protocol::{Limits, ModelRef, ReferencePolicy};

use neurodiff_exec::dist::GROUND_TRUTH_FILE;
use neurodiff_exec::{ExecError, Result, Sources};
use neurodiff_protocol::Target;

use crate::materialize::materialize_s3;

/// A reference opened under the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    /// As the team submitted it: what every message shows.
    pub reference: String,
    /// The local directory to read.
    pub dir: PathBuf,
    /// Fixed content: `org/name@commit` for a hub id, else the reference itself.
    pub pinned: String,
    /// (device, inode) of each file vetted, by its name in `dir`: what is opened must be these
    /// files, even if a name was re-pointed after the check.
    pub vetted: BTreeMap<String, (u64, u64)>,
}

impl Confined {
    /// A guard for opening this model's files: each must be the very file the policy vetted
    /// (same device and inode), so a name re-pointed after the check is refused before a byte
    /// of it is read. Names only, in the error: not where the name points now.
    pub fn guard(&self) -> Guard {
        let (dir, vetted, reference) = (
            self.dir.clone(),
            self.vetted.clone(),
            self.reference.clone(),
        );
        Arc::new(move |path: &Path, meta: &std::fs::Metadata| {
            let name = path
                .strip_prefix(&dir)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| {
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                });
            if vetted.get(&name) == Some(&(meta.dev(), meta.ino())) {
                Ok(())
            } else {
                Err(CoreError::Reference {
                    reference: reference.clone(),
                    message: format!(
                        "`{name}` is not the file that was checked (replaced or re-linked meanwhile)"
                    ),
                })
            }
        })
    }
}

/// Everything a worker needs to enforce the policy.
#[derive(Debug, Clone)]
pub struct Enforcer {
    pub policy: ReferencePolicy,
    pub limits: Limits,
    pub hub: HubOptions,
    pub cache_dir: PathBuf,
}

fn refused(reference: &str, why: impl std::fmt::Display) -> ExecError {
    ExecError::Io(format!("model reference `{reference}`: {why}"))
}

fn canonical(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

impl Enforcer {
    /// Checks `reference` (request field `field`) for `team`, resolves it to a local directory
    /// and vets every file in it the audit may open.
    pub async fn open(&self, team: &str, field: &str, reference: &str) -> Result<Confined> {
        let parsed = self
            .policy
            .check(team, field, reference)
            .map_err(|e| ExecError::Io(e.0))?;
        match &parsed {
            ModelRef::Local { path } => {
                let roots = self.local_roots(team, &parsed, reference)?;
                let dir = canonical(Path::new(path))
                    .filter(|d| d.is_dir())
                    .ok_or_else(|| refused(reference, "no checkpoint directory there"))?;
                let vetted = self.vet(reference, &dir, &roots, None)?;
                Ok(Confined {
                    reference: reference.to_string(),
                    dir,
                    pinned: reference.to_string(),
                    vetted,
                })
            }
            ModelRef::S3 { bucket, prefix } => {
                let dir = materialize_s3(
                    reference,
                    bucket,
                    prefix,
                    &self.cache_dir,
                    self.limits.max_model_bytes,
                )
                .await?;
                let root =
                    canonical(&dir).ok_or_else(|| refused(reference, "cache copy vanished"))?;
                let vetted = self.vet(
                    reference,
                    &root,
                    std::slice::from_ref(&root),
                    Some(&self.cache_dir),
                )?;
                Ok(Confined {
                    reference: reference.to_string(),
                    dir: root,
                    pinned: reference.to_string(),
                    vetted,
                })
            }
            ModelRef::Hub { .. } => {
                let (hub, r) = (self.hub.clone(), reference.to_string());
                let snap = tokio::task::spawn_blocking(move || resolve_hub(&r, &hub))
                    .await
                    .map_err(|e| ExecError::Io(format!("hub resolver: {e}")))?
                    .map_err(|e| ExecError::Io(e.to_string()))?;
                let (root, dir) = canonical(&snap.repo_dir)
                    .zip(canonical(&snap.dir))
                    .ok_or_else(|| refused(reference, "not in the hub cache"))?;
                let vetted = self.vet(
                    reference,
                    &dir,
                    std::slice::from_ref(&root),
                    Some(&self.hub.cache_dir),
                )?;
                let pinned = parsed
                    .hub_id()
                    .and_then(|id| id.split_once('@').map(|(repo, _)| repo.to_string()))
                    .map_or_else(
                        || reference.to_string(),
                        |repo| format!("{repo}@{}", snap.commit),
                    );
                Ok(Confined {
                    reference: reference.to_string(),
                    dir,
                    pinned,
                    vetted,
                })
            }
        }
    }

    /// The canonical roots a local path must stay inside: every allowed root (deployment's and
    /// the team's own) it lies under lexically. None of them may be missing.
    pub(crate) fn local_roots(
        &self,
        team: &str,
        parsed: &ModelRef,
        reference: &str,
    ) -> Result<Vec<PathBuf>> {
        let roots: Vec<PathBuf> = self
            .policy
            .roots_under(team, parsed)
            .iter()
            .map(|r| canonical(Path::new(r)))
            .collect::<Option<_>>()
            .ok_or_else(|| refused(reference, "an allowed root does not exist on this worker"))?;
        if roots.is_empty() {
            return Err(refused(reference, "not under an allowed root"));
        }
        Ok(roots)
    }

    /// The locations the service reserves, canonical: the denied local paths, this worker's
    /// cache and the hub cache, except `home`, the reserved location a model is read from on
    /// purpose (the worker's cache for its own copy of an s3:// model, the hub cache for a hub
    /// snapshot).
    fn reserved(&self, home: Option<&Path>) -> Vec<PathBuf> {
        let home = home.and_then(canonical);
        self.policy
            .denied
            .iter()
            .filter(|d| d.starts_with('/'))
            .map(PathBuf::from)
            .chain([self.cache_dir.clone(), self.hub.cache_dir.clone()])
            .filter_map(|d| canonical(&d))
            .filter(|d| Some(d) != home.as_ref())
            .collect()
    }

    /// A single file (a corpus) named by `reference`, opened: what the open descriptor
    /// refers to (not the name, which may be re-pointed meanwhile) must lie inside all `roots`
    /// and outside the reserved locations, and be a regular file.
    pub(crate) fn open_vetted_file(
        &self,
        reference: &str,
        path: &Path,
        roots: &[PathBuf],
    ) -> Result<std::fs::File> {
        let refuse = |why: &str| ExecError::Io(format!("corpus `{reference}`: {why}"));
        let file = neurodiff_exec::corpus::open_file(reference, path)?;
        // The path the kernel has for the open descriptor.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|_| refuse("cannot tell where the open file lies"))?;
        let reserved = self.reserved(None);
        if !roots.iter().all(|r| opened.starts_with(r))
            || reserved.iter().any(|d| opened.starts_with(d))
        {
            return Err(refuse(
                "resolves outside the locations this team may read (a symbolic link?)",
            ));
        }
        Ok(file)
    }

    /// Every file the audit may open in `dir` must resolve inside all `roots`, and outside the
    /// locations the service reserves (artifacts; this worker's cache, unless `dir` is the
    /// worker's own copy of an s3:// model).
    fn vet(
        &self,
        reference: &str,
        dir: &Path,
        roots: &[PathBuf],
        home: Option<&Path>,
    ) -> Result<BTreeMap<String, (u64, u64)>> {
        let reserved = self.reserved(home);
        let inside = |p: &Path| {
            roots.iter().all(|r| p.starts_with(r)) && !reserved.iter().any(|d| p.starts_with(d))
        };
        if !inside(dir) {
            return Err(refused(
                reference,
                "resolves outside the locations this team may read (a symbolic link?)",
            ));
        }
        let mut vetted = BTreeMap::new();
        let vet_one = |name: &str, vetted: &mut BTreeMap<String, (u64, u64)>| {
            let path = dir.join(name);
            if std::fs::symlink_metadata(&path).is_err() {
                return Ok(());
            }
            match canonical(&path) {
                Some(p) if inside(&p) => match std::fs::metadata(&p) {
                    // Regular files only: a FIFO or a device would block or never end.
                    Ok(m) if m.is_file() => {
                        vetted.insert(name.to_string(), (m.dev(), m.ino()));
                        Ok(())
                    }
                    _ => Err(refused(
                        reference,
                        format!("`{name}` is not a regular file"),
                    )),
                },
                _ => Err(refused(
                    reference,
                    format!("`{name}` resolves outside the locations this team may read"),
                )),
            }
        };
        for name in [
            CONFIG_FILE,
            TOKENIZER_FILE,
            SINGLE_FILE,
            SHARD_INDEX,
            ADAPTER_CONFIG,
            ADAPTER_WEIGHTS,
            GROUND_TRUTH_FILE,
            "tokenizer_config.json",
            neurodiff_core::chat::TEMPLATE_FILE,
        ] {
            vet_one(name, &mut vetted)?;
        }
        // A directory holding a GGUF (and no config.json) is that file.
        if let Ok(Some(file)) = neurodiff_core::gguf::model_file(dir) {
            if let Some(name) = file.file_name().and_then(|n| n.to_str()) {
                vet_one(name, &mut vetted)?;
            }
        }
        // The index is parsed only once it is vetted, and read through a guard pinned to the
        // vetted file; then the files it names are vetted in turn.
        if !vetted.contains_key(SINGLE_FILE) && vetted.contains_key(SHARD_INDEX) {
            let pinned = Confined {
                reference: reference.to_string(),
                dir: dir.to_path_buf(),
                pinned: reference.to_string(),
                vetted: vetted.clone(),
            };
            let (files, _) = Checkpoint::weight_files(dir, Some(&pinned.guard()))
                .map_err(|e| refused(reference, redact_path(&e.to_string(), dir, reference)))?;
            for name in files {
                vet_one(&name, &mut vetted)?;
            }
        }
        Ok(vetted)
    }
}

/// Opens both sides from the directories the policy confined them to; every file must be the
/// one the policy vetted (a name re-pointed since is refused before it is read).
pub fn open_sources(base: &Confined, target: &Target, target_dir: &Confined) -> Result<Sources> {
    Sources::open_guarded(
        &base.dir.display().to_string(),
        &target.with_reference(target_dir.dir.display().to_string()),
        &HubOptions::from_env(),
        Some(base.guard()),
        Some(target_dir.guard()),
    )
}

/// `message` with the worker-local `dir` replaced by the reference as submitted.
pub fn redact_path(message: &str, dir: &Path, reference: &str) -> String {
    message.replace(&dir.display().to_string(), reference)
}

/// `message` with every confined directory replaced by its reference, and the worker's own
/// directories (its cache, the hub cache) hidden: errors go to the team that submitted.
pub fn redact(message: &str, confined: &[&Confined], hidden: &[&Path]) -> String {
    let mut out = message.to_string();
    let mut pairs: Vec<(&Path, &str)> = confined
        .iter()
        .map(|c| (c.dir.as_path(), c.reference.as_str()))
        .collect();
    // Longest first, so a directory inside another is replaced by its own reference.
    pairs.sort_by_key(|(d, _)| std::cmp::Reverse(d.as_os_str().len()));
    for (dir, reference) in pairs {
        out = redact_path(&out, dir, reference);
    }
    for dir in hidden {
        for shown in [Some(dir.to_path_buf()), canonical(dir)]
            .into_iter()
            .flatten()
        {
            out = out.replace(&shown.display().to_string(), "<worker cache>");
        }
    }
    out
}

impl Enforcer {
    /// The worker's own directories, never shown in a team's errors.
    pub fn hidden(&self) -> [&Path; 2] {
        [self.cache_dir.as_path(), self.hub.cache_dir.as_path()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_references_not_worker_paths() {
        let copy = Confined {
            reference: "s3://models/shared/llama".into(),
            dir: PathBuf::from("/var/cache/nd/s3/0123abcd"),
            pinned: "s3://models/shared/llama".into(),
            vetted: BTreeMap::new(),
        };
        let local = Confined {
            reference: "/models/ft".into(),
            dir: PathBuf::from("/mnt/real/models/ft"),
            pinned: "/models/ft".into(),
            vetted: BTreeMap::new(),
        };
        let message = "/var/cache/nd/s3/0123abcd/model.safetensors: not a valid safetensors file; \
                       /mnt/real/models/ft/config.json: missing; /var/cache/nd/other";
        let shown = redact(message, &[&copy, &local], &[Path::new("/var/cache/nd")]);
        assert_eq!(
            shown,
            "s3://models/shared/llama/model.safetensors: not a valid safetensors file; \
             /models/ft/config.json: missing; <worker cache>/other"
        );
    }
}
