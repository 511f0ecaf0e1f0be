//! Finds a scan's complete checkpoints and names each by its content. A checkpoint is a
//! sub-directory of the watched directory (or a sub-prefix of the watched `s3://` prefix) whose
//! name does not start with `.` or `_` (where trainers write before they rename). It is
//! complete when it holds `config.json` (`adapter_config.json` for adapters) and its weights:
//! every shard that `*.safetensors.index.json` names, or else at least one `*.safetensors`, and
//! every safetensors file is exactly as long as its header says (a file still being written is
//! shorter). A directory whose files change while they are hashed is not complete either. The
//! id is the sha256 of every file's name, size and sha256 (objects: name, size and ETag), so a
//! checkpoint is the same checkpoint whatever its path, mtime or the clock say.
//!
//! A hub repository (`org/name[@branch]`) is one checkpoint per commit: each poll reads the
//! commit its branch points at (from the hub, or from the shared hub cache when the deployment
//! is offline, as the workers' resolver reads it) and the checkpoint is `org/name@<commit>`,
//! complete when the commit has the config and the weights named above.
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use neurodiff_protocol::scan::TargetKind;

use crate::fsread::{hash, open_following, read_bounded, Budget, Dir, Partial, Stopped};
use neurodiff_store::Blobs;
use sha2::{Digest, Sha256};

/// Files a checkpoint directory may hold; more and it is refused, not hashed.
pub const MAX_FILES: usize = 4096;
/// A safetensors header larger than this is not a checkpoint's.
const MAX_HEADER: u64 = 100 << 20;

/// A complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub location: String,
}

/// What a poll saw: complete checkpoints in the order they are audited (natural order of their
/// names: `step-2` before `step-10`), and why the others are not complete yet.
#[derive(Debug, Default)]
pub struct Listing {
    pub complete: Vec<Found>,
    pub incomplete: Vec<(String, String)>,
}

/// One file's digest, as it was when hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    pub path: PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
    pub sha256: String,
}

/// File hashes by (path, size, mtime): a checkpoint is read whole once, not on every poll. The
/// scan loop stores what it hashed in PostgreSQL and loads it back for each watched directory,
/// so a restarted scheduler does not read every checkpoint it has already audited again.
#[derive(Debug, Default)]
pub struct HashCache {
    known: Mutex<HashMap<(PathBuf, u64, SystemTime), String>>,
    /// Hashed by this process and not yet stored.
    fresh: Mutex<Vec<FileDigest>>,
    /// Sources whose stored digests are loaded.
    loaded: Mutex<std::collections::HashSet<String>>,
    /// Files read whole by this process (tests: a restart re-reads nothing).
    hashed: std::sync::atomic::AtomicUsize,
    /// Files an earlier poll hashed in part (its budget ran out): resumed by the next.
    partial: Mutex<HashMap<(PathBuf, u64, SystemTime), Partial>>,
}

/// Files hashed in part that are remembered; more and the oldest are hashed from the start.
const MAX_PARTIAL: usize = 256;

impl HashCache {
    fn get(&self, key: &(PathBuf, u64, SystemTime)) -> Option<String> {
        self.known.lock().ok().and_then(|c| c.get(key).cloned())
    }

    fn hashed_now(&self, d: FileDigest) {
        self.hashed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut c) = self.known.lock() {
            c.insert((d.path.clone(), d.size, d.mtime), d.sha256.clone());
        }
        if let Ok(mut f) = self.fresh.lock() {
            f.push(d);
        }
    }

    fn take_partial(&self, key: &(PathBuf, u64, SystemTime)) -> Option<Partial> {
        self.partial.lock().ok().and_then(|mut p| p.remove(key))
    }

    fn keep_partial(&self, key: (PathBuf, u64, SystemTime), partial: Partial) {
        if let Ok(mut p) = self.partial.lock() {
            if p.len() >= MAX_PARTIAL {
                p.clear();
            }
            p.insert(key, partial);
        }
    }

    /// Whether `source`'s stored digests still have to be loaded; marks them loaded.
    pub fn needs_load(&self, source: &str) -> bool {
        self.loaded
            .lock()
            .map(|mut l| l.insert(source.to_string()))
            .unwrap_or(false)
    }

    /// Digests read back from the database.
    pub fn load(&self, digests: impl IntoIterator<Item = FileDigest>) {
        if let Ok(mut c) = self.known.lock() {
            for d in digests {
                c.insert((d.path, d.size, d.mtime), d.sha256);
            }
        }
    }

    /// What this process hashed since the last call, to be stored.
    pub fn take_fresh(&self) -> Vec<FileDigest> {
        self.fresh
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    /// How many files this process has read whole.
    pub fn files_hashed(&self) -> usize {
        self.hashed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Orders names as people number checkpoints.
pub fn natural_key(name: &str) -> Vec<(u8, u128, String)> {
    let mut out = Vec::new();
    let mut chars = name.chars().peekable();
    while let Some(&c) = chars.peek() {
        let digit = c.is_ascii_digit();
        let mut run = String::new();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() != digit {
                break;
            }
            run.push(d);
            chars.next();
        }
        match run.parse::<u128>() {
            Ok(n) if digit => out.push((0, n, run)),
            _ => out.push((1, 0, run)),
        }
    }
    out
}

fn candidate(name: &str) -> bool {
    !(name.is_empty() || name.starts_with('.') || name.starts_with('_'))
}

/// The one `.gguf` of a checkpoint without config.json (a GGUF checkpoint), if that is what
/// `names` are.
fn gguf_file(names: &[String], kind: TargetKind) -> Option<&String> {
    if kind != TargetKind::Checkpoint || names.iter().any(|n| n == marker(kind)) {
        return None;
    }
    let mut ggufs = names.iter().filter(|n| n.ends_with(".gguf"));
    match (ggufs.next(), ggufs.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// At most this much of a GGUF is read to find its header (a 256k vocabulary's metadata is
/// tens of MiB).
const MAX_GGUF_HEADER: u64 = 256 << 20;

/// Whether the GGUF `name` in `dir` is all there: its header parses and every tensor lies
/// inside the file as it is now.
fn gguf_complete(dir: &Dir, name: &str, size: u64) -> Result<(), String> {
    let (f, _) = dir.open_file(name)?;
    let mut head = Vec::new();
    f.take(size.min(MAX_GGUF_HEADER))
        .read_to_end(&mut head)
        .map_err(|e| format!("{name}: {e}"))?;
    neurodiff_gguf::reader::parse_prefix(&head, size as usize)
        .map(|_| ())
        .map_err(|e| format!("{name}: {e}"))
}

fn marker(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Checkpoint => "config.json",
        TargetKind::Adapter => "adapter_config.json",
    }
}

/// The length a safetensors file must have, from its first bytes; None when they are not a
/// safetensors header.
fn expected_len(header_len: u64, header: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut end = 0u64;
    for (name, t) in v.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let offsets = t.get("data_offsets")?.as_array()?;
        end = end.max(offsets.get(1)?.as_u64()?);
    }
    8u64.checked_add(header_len)?.checked_add(end)
}

/// Whether a file is part of what the model is (its id covers these only): the config, the
/// weights and their index, the tokenizer. A trainer's later files (optimizer state, RNG state,
/// logs) do not make a checkpoint another one.
fn defines_model(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".gguf")
        || name.ends_with(".safetensors.index.json")
        || matches!(
            name,
            "config.json"
                | "adapter_config.json"
                | "generation_config.json"
                | "tokenizer.json"
                | "tokenizer_config.json"
                | "special_tokens_map.json"
        )
}

/// `model-00001-of-00003.safetensors`: a shard of a checkpoint that has an index.
fn is_numbered_shard(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".safetensors") else {
        return false;
    };
    let parts: Vec<&str> = stem.rsplitn(3, '-').collect();
    matches!(parts.as_slice(), [total, "of", rest]
        if total.chars().all(|c| c.is_ascii_digit()) && !total.is_empty()
            && rest.rsplit('-').next().is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())))
}

/// The shards an index names, when `files` has an index.
fn indexed_shards(index: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(index).map_err(|e| format!("index: not JSON ({e})"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("index: no weight_map")?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// The checkpoint's weight files, or why it is incomplete: `names` are the files present.
fn weight_files(names: &[String], index: Option<&[u8]>) -> Result<Vec<String>, String> {
    let wanted = match index {
        Some(bytes) => indexed_shards(bytes)?,
        None => names
            .iter()
            .filter(|n| n.ends_with(".safetensors"))
            .cloned()
            .collect(),
    };
    if wanted.is_empty() {
        return Err("no *.safetensors yet".into());
    }
    // Shards are written before their index: numbered shards without one are not all there.
    if index.is_none() {
        if let Some(shard) = wanted.iter().find(|w| is_numbered_shard(w)) {
            return Err(format!(
                "`{shard}` is a shard, and the index is not there yet"
            ));
        }
    }
    if let Some(missing) = wanted.iter().find(|w| !names.contains(w)) {
        return Err(format!("`{missing}` is not there yet"));
    }
    Ok(wanted)
}

/// Whether the safetensors file `name` in `dir` is as long as its header says.
fn safetensors_complete(dir: &Dir, name: &str, size: u64) -> Result<(), String> {
    let (mut f, _) = dir.open_file(name)?;
    header_complete(&mut f, name, size)
}

fn header_complete(f: &mut impl Read, name: &str, size: u64) -> Result<(), String> {
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| format!("{name}: shorter than a safetensors header"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > size {
        return Err(format!("{name}: its header is not all there"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| format!("{name}: {e}"))?;
    match expected_len(n, &header) {
        Some(want) if want == size => Ok(()),
        Some(want) => Err(format!("{name}: {size} of {want} bytes written")),
        None => Err(format!("{name}: not a safetensors header")),
    }
}

/// The sha256 of `name` in `dir`, as it was listed (`size`, `mtime`): from the cache, or read
/// within the poll's budget (resumed where an earlier poll stopped).
fn digest(
    dir: &Dir,
    name: &str,
    (size, mtime): (u64, SystemTime),
    cache: &HashCache,
    budget: &Budget,
) -> Result<String, String> {
    let key = (dir.shown.join(name), size, mtime);
    if let Some(d) = cache.get(&key) {
        return Ok(d);
    }
    let (file, meta) = dir.open_file(name)?;
    if meta.len() != size || meta.modified().ok() != Some(mtime) {
        return Err(format!("{name} changed while it was read"));
    }
    let d = match hash(file, size, cache.take_partial(&key), budget) {
        Ok(d) => d,
        Err(Stopped::Budget { partial }) => {
            let done = partial.0;
            cache.keep_partial(key, partial);
            return Err(format!(
                "{name}: {done} of {size} bytes hashed; this poll's hashing budget is spent, \
                 the next poll goes on"
            ));
        }
        Err(Stopped::Cancelled) => return Err("the poll was stopped".into()),
        Err(Stopped::Io(e)) => return Err(format!("{name}: {e}")),
    };
    let after = std::fs::symlink_metadata(dir.at(name)).map_err(|e| e.to_string())?;
    if after.len() != size || after.modified().ok() != Some(mtime) {
        return Err(format!("{name} changed while it was read"));
    }
    cache.hashed_now(FileDigest {
        path: key.0,
        size,
        mtime,
        sha256: d.clone(),
    });
    Ok(d)
}

/// One local checkpoint directory: its id, or why it is not complete.
fn local_checkpoint(
    dir: &Dir,
    kind: TargetKind,
    cache: &HashCache,
    budget: &Budget,
) -> Result<String, String> {
    let mut files = Vec::new();
    for (name, meta) in dir.entries()? {
        // Links are not followed: what a checkpoint is must be in the directory itself.
        if meta.is_file() && !name.starts_with('.') {
            files.push((
                name,
                meta.len(),
                meta.modified().map_err(|e| e.to_string())?,
            ));
        }
        if files.len() > MAX_FILES {
            return Err(format!("more than {MAX_FILES} files"));
        }
    }
    files.sort();
    let names: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    if let Some(g) = gguf_file(&names, kind) {
        let size = files.iter().find(|f| &f.0 == g).map_or(0, |f| f.1);
        gguf_complete(dir, g, size)?;
    } else {
        if !names.iter().any(|n| n == marker(kind)) {
            return Err(format!("no {} yet", marker(kind)));
        }
        let index = names
            .iter()
            .find(|n| n.ends_with(".safetensors.index.json"))
            .map(|n| dir.read_file(n, MAX_HEADER))
            .transpose()?;
        for w in weight_files(&names, index.as_deref())? {
            let size = files.iter().find(|f| f.0 == w).map_or(0, |f| f.1);
            safetensors_complete(dir, &w, size)?;
        }
    }
    let mut id = Sha256::new();
    for (name, size, mtime) in files.iter().filter(|f| defines_model(&f.0)) {
        let digest = digest(dir, name, (*size, *mtime), cache, budget)?;
        id.update(format!("{name}\0{size}\0{digest}\n"));
    }
    Ok(hex::encode(id.finalize()))
}

/// The checkpoints of a watched local directory, `source` canonical (blocking: call it off the
/// async threads). Hashing stops when `budget` is spent or stopped: the checkpoints not hashed
/// whole are incomplete for this poll.
pub fn list_local(
    source: &str,
    kind: TargetKind,
    cache: &HashCache,
    budget: &Budget,
) -> Result<Listing, String> {
    let root = Dir::open_root(Path::new(source)).map_err(|e| format!("source `{source}`: {e}"))?;
    let mut dirs = Vec::new();
    for (name, meta) in root
        .entries()
        .map_err(|e| format!("source `{source}`: {e}"))?
    {
        if meta.is_dir() && candidate(&name) {
            dirs.push(name);
        }
        if dirs.len() > MAX_FILES {
            return Err(format!(
                "source `{source}`: more than {MAX_FILES} checkpoints"
            ));
        }
    }
    dirs.sort_by_key(|d| natural_key(d));
    let mut out = Listing::default();
    for name in dirs {
        let location = root.shown.join(&name).to_string_lossy().to_string();
        if budget.stopped() {
            out.incomplete
                .push((location, "the poll was stopped".into()));
            continue;
        }
        // Entered through the watched directory's descriptor, never through a link: a
        // sub-directory swapped for one since the listing is refused here.
        let listed = root
            .open_dir(&name)
            .and_then(|dir| local_checkpoint(&dir, kind, cache, budget));
        match listed {
            Ok(id) => out.complete.push(Found { id, location }),
            Err(why) => out.incomplete.push((location, why)),
        }
    }
    Ok(out)
}

/// Where hub repositories are read: the hub (HF_ENDPOINT, default huggingface.co), or only the
/// hub cache when offline (HF_HUB_OFFLINE), which the workers' resolver reads too.
#[derive(Debug, Clone, Default)]
pub struct HubSource {
    pub cache_dir: PathBuf,
    pub offline: bool,
    pub endpoint: Option<String>,
}

impl HubSource {
    /// As `huggingface_hub` reads its environment.
    pub fn from_env() -> HubSource {
        let cache_dir = match std::env::var_os("HF_HUB_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => hf_hub::Cache::from_env().path().clone(),
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubSource {
            cache_dir,
            offline,
            endpoint: std::env::var("HF_ENDPOINT").ok(),
        }
    }
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The head commit of a watched hub repository (blocking: it may ask the hub).
pub fn list_hub(
    org: &str,
    name: &str,
    revision: &str,
    kind: TargetKind,
    hub: &HubSource,
) -> Result<Listing, String> {
    let repo = format!("{org}/{name}");
    let (commit, names, snapshot) = if hub.offline {
        let repo_dir = hub.cache_dir.join(format!("models--{org}--{name}"));
        let commit = if is_commit(revision) {
            revision.to_string()
        } else {
            let refs = repo_dir.join("refs").join(revision);
            let text = read_cached(&refs, "ref", 4096)
                .map_err(|e| format!("source `{repo}@{revision}`: not in the hub cache ({e})"))?;
            String::from_utf8_lossy(&text).trim().to_string()
        };
        if !is_commit(&commit) {
            return Err(format!(
                "source `{repo}@{revision}`: the cache's ref is not a commit"
            ));
        }
        let snapshot = repo_dir.join("snapshots").join(&commit);
        let mut names = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&snapshot) {
            for e in entries.flatten().take(MAX_FILES) {
                names.push(e.file_name().to_string_lossy().to_string());
            }
        }
        (commit, names, Some(snapshot))
    } else {
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(hub.cache_dir.clone()))
                .with_progress(false);
        if let Some(endpoint) = &hub.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder.build().map_err(|e| format!("hub: {e}"))?;
        let info = api
            .repo(hf_hub::Repo::with_revision(
                repo.clone(),
                hf_hub::RepoType::Model,
                revision.to_string(),
            ))
            .info()
            .map_err(|e| format!("source `{repo}@{revision}`: {e}"))?;
        let names = info
            .siblings
            .into_iter()
            .take(MAX_FILES)
            .map(|s| s.rfilename)
            .collect();
        (info.sha, names, None)
    };
    if !is_commit(&commit) {
        return Err(format!(
            "source `{repo}@{revision}`: `{commit}` is not a commit"
        ));
    }
    let location = format!("{repo}@{commit}");
    let mut out = Listing::default();
    let complete = (|| -> Result<(), String> {
        if !names.iter().any(|n| n == marker(kind)) {
            return Err(format!("no {} in this commit", marker(kind)));
        }
        let index = match (
            &snapshot,
            names
                .iter()
                .find(|n| n.ends_with(".safetensors.index.json")),
        ) {
            (Some(dir), Some(n)) => Some(read_cached(&dir.join(n), n, MAX_HEADER)?),
            _ => None,
        };
        let weights = weight_files(&names, index.as_deref())?;
        if let Some(dir) = &snapshot {
            for w in weights {
                let (mut f, meta) = open_following(&dir.join(&w), &w)?;
                header_complete(&mut f, &w, meta.len())?;
            }
        }
        Ok(())
    })();
    match complete {
        Ok(()) => out.complete.push(Found {
            id: commit,
            location,
        }),
        Err(why) => out.incomplete.push((location, why)),
    }
    Ok(out)
}

/// A file of the hub cache, read whole up to `max` bytes.
fn read_cached(path: &Path, name: &str, max: u64) -> Result<Vec<u8>, String> {
    let (file, _) = open_following(path, name)?;
    read_bounded(file, name, max)
}

/// The checkpoints under a watched `s3://bucket/prefix`.
pub async fn list_s3(source: &str, kind: TargetKind) -> Result<Listing, String> {
    let blobs = Blobs::from_url(source).map_err(|e| format!("source `{source}`: {e}"))?;
    let mut dirs = blobs
        .list_dirs("")
        .await
        .map_err(|e| format!("source `{source}`: {e}"))?;
    dirs.retain(|d| candidate(d.rsplit('/').next().unwrap_or(d)));
    if dirs.len() > MAX_FILES {
        return Err(format!(
            "source `{source}`: more than {MAX_FILES} checkpoints"
        ));
    }
    dirs.sort_by_key(|d| natural_key(d));
    let mut out = Listing::default();
    for dir in dirs {
        let location = format!("{}/{dir}", source.trim_end_matches('/'));
        match s3_checkpoint(&blobs, &dir, kind).await {
            Ok(id) => out.complete.push(Found { id, location }),
            Err(why) => out.incomplete.push((location, why)),
        }
    }
    Ok(out)
}

async fn s3_checkpoint(blobs: &Blobs, dir: &str, kind: TargetKind) -> Result<String, String> {
    let objects = blobs.list_sized(dir).await.map_err(|e| e.to_string())?;
    if objects.len() > MAX_FILES {
        return Err(format!("more than {MAX_FILES} objects"));
    }
    let name_of = |key: &str| key.rsplit('/').next().unwrap_or(key).to_string();
    let names: Vec<String> = objects.iter().map(|o| name_of(&o.key)).collect();
    // A GGUF object appears whole (uploads are atomic): its presence is enough.
    let gguf = gguf_file(&names, kind).is_some();
    if !gguf && !names.iter().any(|n| n == marker(kind)) {
        return Err(format!("no {} yet", marker(kind)));
    }
    let index = match objects
        .iter()
        .find(|o| o.key.ends_with(".safetensors.index.json"))
    {
        Some(o) if o.size <= MAX_HEADER => {
            Some(blobs.get(&o.key).await.map_err(|e| e.to_string())?.to_vec())
        }
        Some(o) => return Err(format!("{}: too large for an index", o.key)),
        None => None,
    };
    let weights = if gguf {
        Vec::new()
    } else {
        weight_files(&names, index.as_deref())?
    };
    for w in weights {
        let Some(o) = objects.iter().find(|o| name_of(&o.key) == w) else {
            continue;
        };
        if o.size < 8 {
            return Err(format!("{w}: shorter than a safetensors header"));
        }
        let len = blobs
            .get_range(&o.key, 0..8)
            .await
            .map_err(|e| e.to_string())?;
        let first: [u8; 8] = len
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{w}: shorter than a safetensors header"))?;
        let n = u64::from_le_bytes(first);
        if n > MAX_HEADER || 8 + n > o.size {
            return Err(format!("{w}: its header is not all there"));
        }
        let header = blobs
            .get_range(&o.key, 8..8 + n)
            .await
            .map_err(|e| e.to_string())?;
        match expected_len(n, &header) {
            Some(want) if want == o.size => {}
            _ => return Err(format!("{w}: not the length its header says")),
        }
    }
    let mut id = Sha256::new();
    for o in objects.iter().filter(|o| defines_model(&name_of(&o.key))) {
        id.update(format!("{}\0{}\0{}\n", name_of(&o.key), o.size, o.version));
    }
    Ok(hex::encode(id.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(data_len: usize) -> Vec<u8> {
        let header = format!(
            r#"{{"w":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{}]}}}}"#,
            data_len / 4,
            data_len
        );
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(1u8, data_len));
        out
    }

    #[test]
    fn only_complete_checkpoints_are_listed_in_natural_order() {
        let root = tempfile::tempdir().expect("dir");
        let full = safetensors(64);
        for name in ["step-10", "step-2"] {
            let d = root.path().join(name);
            std::fs::create_dir(&d).expect("dir");
            std::fs::write(d.join("config.json"), "{}").expect("write");
            std::fs::write(d.join("model.safetensors"), &full).expect("write");
        }
        let half = root.path().join("step-30");
        std::fs::create_dir(&half).expect("dir");
        std::fs::write(half.join("config.json"), "{}").expect("write");
        std::fs::write(half.join("model.safetensors"), &full[..full.len() - 10]).expect("write");
        std::fs::create_dir(root.path().join(".tmp-step-40")).expect("dir");
        let source = root.path().canonicalize().expect("canonical");
        let source = source.to_string_lossy().to_string();
        let cache = HashCache::default();
        let budget = Budget::new(u64::MAX, Default::default());
        let l = list_local(&source, TargetKind::Checkpoint, &cache, &budget).expect("listing");
        let names: Vec<&str> = l
            .complete
            .iter()
            .map(|f| f.location.rsplit('/').next().unwrap_or(""))
            .collect();
        assert_eq!(names, ["step-2", "step-10"]);
        // The same content has the same id wherever it lies.
        assert_eq!(l.complete[0].id, l.complete[1].id);
        assert_eq!(l.incomplete.len(), 1);
        assert!(
            l.incomplete[0].1.contains("bytes written"),
            "{:?}",
            l.incomplete
        );
        std::fs::write(half.join("model.safetensors"), &full).expect("write");
        let l = list_local(&source, TargetKind::Checkpoint, &cache, &budget).expect("listing");
        assert_eq!(l.complete.len(), 3);
    }

    #[test]
    fn a_directory_holding_one_gguf_is_a_checkpoint_once_the_file_is_whole() {
        let gguf = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../core/tests/fixtures/gguf/tiny-llama.gguf"),
        )
        .expect("fixture");
        let root = tempfile::tempdir().expect("dir");
        for (name, bytes) in [("q4-a", &gguf[..]), ("q4-b", &gguf[..gguf.len() - 100])] {
            let d = root.path().join(name);
            std::fs::create_dir(&d).expect("dir");
            std::fs::write(d.join("model.gguf"), bytes).expect("write");
        }
        let two = root.path().join("two");
        std::fs::create_dir(&two).expect("dir");
        std::fs::write(two.join("a.gguf"), &gguf).expect("write");
        std::fs::write(two.join("b.gguf"), &gguf).expect("write");
        let source = root.path().canonicalize().expect("canonical");
        let cache = HashCache::default();
        let budget = Budget::new(u64::MAX, Default::default());
        let l = list_local(
            &source.to_string_lossy(),
            TargetKind::Checkpoint,
            &cache,
            &budget,
        )
        .expect("listing");
        let names: Vec<&str> = l
            .complete
            .iter()
            .map(|f| f.location.rsplit('/').next().unwrap_or(""))
            .collect();
        assert_eq!(names, ["q4-a"]);
        let why: Vec<&str> = l.incomplete.iter().map(|(_, w)| w.as_str()).collect();
        assert!(
            why.iter().any(|w| w.contains("run past the end")),
            "{why:?}"
        );
        assert!(why.iter().any(|w| w.contains("no config.json")), "{why:?}");
    }

    fn write_checkpoint(dir: &Path, weights: &[u8]) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("config.json"), "{}").expect("write");
        std::fs::write(dir.join("model.safetensors"), weights).expect("write");
    }

    #[test]
    fn an_offline_hub_cache_gives_the_branch_head_as_the_checkpoint() {
        let cache = tempfile::tempdir().expect("dir");
        let repo = cache.path().join("models--org--tiny");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).expect("dir");
        std::fs::write(repo.join("refs/main"), sha).expect("write");
        let full = safetensors(64);
        write_checkpoint(&repo.join("snapshots").join(sha), &full[..40]);
        let hub = HubSource {
            cache_dir: cache.path().to_path_buf(),
            offline: true,
            endpoint: None,
        };
        let l = list_hub("org", "tiny", "main", TargetKind::Checkpoint, &hub).expect("listing");
        assert!(
            l.complete.is_empty(),
            "a half-downloaded commit is not complete"
        );
        write_checkpoint(&repo.join("snapshots").join(sha), &full);
        let l = list_hub("org", "tiny", "main", TargetKind::Checkpoint, &hub).expect("listing");
        assert_eq!(
            l.complete,
            vec![Found {
                id: sha.to_string(),
                location: format!("org/tiny@{sha}")
            }]
        );
        assert!(list_hub("org", "absent", "main", TargetKind::Checkpoint, &hub).is_err());
    }

    #[test]
    fn the_hub_api_names_the_branch_head_and_its_files() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let sha = "89abcdef0123456789abcdef0123456789abcdef";
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request = String::new();
            reader.read_line(&mut request).expect("request line");
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok() && line.trim() != "" {
                line.clear();
            }
            let body = format!(
                r#"{{"sha": "{sha}", "siblings": [{{"rfilename": "config.json"}}, {{"rfilename": "model.safetensors"}}]}}"#
            );
            let mut stream = stream;
            write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).expect("write");
            request
        });
        let hub = HubSource {
            cache_dir: tempfile::tempdir().expect("dir").path().to_path_buf(),
            offline: false,
            endpoint: Some(endpoint),
        };
        let l = list_hub("org", "tiny", "main", TargetKind::Checkpoint, &hub).expect("listing");
        assert_eq!(l.complete[0].location, format!("org/tiny@{sha}"));
        let request = server.join().expect("server");
        assert!(
            request.starts_with("GET /api/models/org/tiny/revision/main "),
            "{request}"
        );
    }

    #[test]
    fn an_index_names_the_shards_that_must_be_there() {
        let names = vec!["a.safetensors".to_string()];
        let index = br#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#;
        assert!(weight_files(&names, Some(index)).is_err());
        assert_eq!(weight_files(&names, None), Ok(names.clone()));
        assert!(weight_files(&[], None).is_err());
        let shard = vec!["model-00001-of-00002.safetensors".to_string()];
        assert!(weight_files(&shard, None).is_err());
        assert!(is_numbered_shard("model-00002-of-00010.safetensors"));
        assert!(!is_numbered_shard("model.safetensors"));
        assert!(defines_model("config.json") && !defines_model("optimizer.pt"));
    }
}
