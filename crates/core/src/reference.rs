//! Model references: a local directory, or a hub id `org/name[@revision]` resolved through the
//! Hugging Face cache (offline when HF_HUB_OFFLINE=1) or downloaded with `hf-hub`.
use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::checkpoint::{CONFIG_FILE, SHARD_INDEX, SINGLE_FILE, TOKENIZER_FILE};
use crate::error::{CoreError, Result};

/// How hub ids are resolved.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache (the folder holding `models--org--name`).
    pub cache_dir: PathBuf,
    /// Never touch the network; only what the cache already holds.
    pub offline: bool,
}

impl HubOptions {
    /// As `huggingface_hub` does: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub;
    /// offline when HF_HUB_OFFLINE is 1/true/yes.
    pub fn from_env() -> Self {
        let cache_dir = match std::env::var_os("HF_HUB_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => Cache::from_env().path().clone(),
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubOptions { cache_dir, offline }
    }
}

/// A parsed hub id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// `org/name` or `org/name@revision`; `None` if `s` is not shaped like one.
    pub fn parse(s: &str) -> Option<HubId> {
        let (repo, revision) = match s.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, rev),
            Some(_) => return None,
            None => (s, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let ok = |part: &str| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        // A revision is joined into cache paths (snapshots/{rev}, refs/{rev}): only branch,
        // tag and commit names, never `..`.
        (ok(org) && ok(name) && neurodiff_protocol::policy::revision_ok(revision)).then(|| HubId {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// Resolves `reference` to a local directory holding config.json and the weights.
pub fn resolve(reference: &str, hub: &HubOptions) -> Result<PathBuf> {
    let local = Path::new(reference);
    if local.is_dir() || (crate::gguf::is_gguf(local) && local.is_file()) {
        return Ok(local.to_path_buf());
    }
    let Some(id) = HubId::parse(reference) else {
        return Err(CoreError::Reference {
            reference: reference.to_string(),
            message:
                "no such directory or .gguf file, and not a hub id of the form org/name[@revision]"
                    .into(),
        });
    };
    if let Some(dir) = cached_snapshot(&id, &hub.cache_dir) {
        return Ok(dir);
    }
    if hub.offline {
        return Err(CoreError::Reference {
            reference: reference.to_string(),
            message: format!(
                "not in the hub cache {} (HF_HUB_OFFLINE is set, so nothing is downloaded)",
                hub.cache_dir.display()
            ),
        });
    }
    download(&id, hub).map_err(|message| CoreError::Reference {
        reference: reference.to_string(),
        message,
    })
}

/// A hub id resolved to fixed content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSnapshot {
    /// The snapshot directory (files in it are links into the repository's blob store).
    pub dir: PathBuf,
    /// The repository's folder in the cache: every file read must resolve inside it.
    pub repo_dir: PathBuf,
    /// The commit the revision pointed at (the snapshot directory's name).
    pub commit: String,
}

/// Resolves a hub id (never a local directory, whatever exists under the same relative name)
/// to its snapshot and the commit it pins.
pub fn resolve_hub(reference: &str, hub: &HubOptions) -> Result<HubSnapshot> {
    let bad = |message: String| CoreError::Reference {
        reference: reference.to_string(),
        message,
    };
    let id = HubId::parse(reference)
        .ok_or_else(|| bad("not a hub id of the form org/name[@revision]".into()))?;
    let dir = match cached_snapshot(&id, &hub.cache_dir) {
        Some(dir) => dir,
        None if hub.offline => {
            return Err(bad(
                "not in the hub cache (HF_HUB_OFFLINE is set, so nothing is downloaded)".into(),
            ))
        }
        None => download(&id, hub).map_err(bad)?,
    };
    let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone());
    let commit = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(HubSnapshot {
        repo_dir: hub.cache_dir.join(repo.folder_name()),
        dir,
        commit,
    })
}

/// The cached snapshot directory of `id`, if config.json and complete weights are there.
fn cached_snapshot(id: &HubId, cache_dir: &Path) -> Option<PathBuf> {
    let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone());
    let cache = Cache::new(cache_dir.to_path_buf()).repo(repo.clone());
    // A commit hash names a snapshot directly; a branch or tag goes through refs/.
    let snapshot = match cache.get(CONFIG_FILE) {
        Some(config) => config.parent()?.to_path_buf(),
        None => {
            let dir = cache_dir
                .join(repo.folder_name())
                .join("snapshots")
                .join(&id.revision);
            dir.join(CONFIG_FILE).is_file().then_some(dir)?
        }
    };
    weights_complete(&snapshot).then_some(snapshot)
}

fn weights_complete(dir: &Path) -> bool {
    if dir.join(SINGLE_FILE).is_file() {
        return true;
    }
    let Ok(text) =
        crate::checkpoint::read_bounded(&dir.join(SHARD_INDEX), crate::checkpoint::MAX_JSON_BYTES)
    else {
        return false;
    };
    shard_files(&text)
        .map(|files| files.iter().all(|f| dir.join(f).is_file()))
        .unwrap_or(false)
}

fn shard_files(index_json: &str) -> std::result::Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_str(index_json).map_err(|e| e.to_string())?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no weight_map")?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    // The names are joined into cache paths and URLs: plain relative names only.
    if let Some(bad) = files.iter().find(|f| !crate::checkpoint::inside_name(f)) {
        return Err(format!(
            "file `{bad}` is not a relative name inside the repository"
        ));
    }
    Ok(files)
}

fn download(id: &HubId, hub: &HubOptions) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(hub.cache_dir.clone()))
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let config = repo
        .get(CONFIG_FILE)
        .map_err(|e| format!("{CONFIG_FILE}: {e}"))?;
    match repo.get(SINGLE_FILE) {
        Ok(_) => {}
        Err(single_err) => {
            let index = repo
                .get(SHARD_INDEX)
                .map_err(|e| format!("{SINGLE_FILE}: {single_err}; {SHARD_INDEX}: {e}"))?;
            let text = crate::checkpoint::read_bounded(&index, crate::checkpoint::MAX_JSON_BYTES)
                .map_err(|e| e.to_string())?;
            for file in shard_files(&text).map_err(|e| format!("{SHARD_INDEX}: {e}"))? {
                repo.get(&file).map_err(|e| format!("{file}: {e}"))?;
            }
        }
    }
    // The tokenizer is optional for weight-only analyses.
    let _ = repo.get(TOKENIZER_FILE);
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "hub cache returned a file without a directory".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids() {
        assert_eq!(
            HubId::parse("org/name@v1"),
            Some(HubId {
                repo: "org/name".into(),
                revision: "v1".into()
            })
        );
        assert_eq!(
            HubId::parse("gpt2-org/gpt2").map(|i| i.revision),
            Some("main".into())
        );
        assert_eq!(HubId::parse("no-slash"), None);
        assert_eq!(HubId::parse("a/b/c"), None);
        assert_eq!(HubId::parse("org/name@"), None);
        assert_eq!(HubId::parse("../x"), None);
        assert_eq!(HubId::parse("org/name@../../x"), None);
        assert_eq!(HubId::parse("org/name@refs/../../x"), None);
    }
}
