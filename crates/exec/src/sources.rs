//! The two sides of an audit, opened once (headers only) and shared by all its shards: the
//! base checkpoint and the fine-tuned checkpoint or adapter, checked to be comparable.
use std::path::PathBuf;

use neurodiff_core::checkpoint::{CONFIG_FILE, MAX_JSON_BYTES};
use neurodiff_core::guard::{read_checked, Guard};
use neurodiff_core::reference::{self, HubOptions};
use neurodiff_core::weights::lora::ADAPTER_CONFIG;
use neurodiff_core::weights::{self, lora::Adapter, Target as CoreTarget};
use neurodiff_core::Checkpoint;
use neurodiff_protocol::{ShardSpec, Target};

use crate::record::Content;
use crate::Result;

/// The mapped weight files of `ckpt` and its config file, read through `ckpt`'s guard (a GGUF
/// is its one file: its config is in it).
fn side<'a>(ckpt: &'a Checkpoint, config: &std::path::Path) -> Result<Vec<Content<'a>>> {
    let mut out: Vec<Content<'a>> = ckpt
        .mapped()
        .into_iter()
        .map(|v| Content {
            name: file_name(v.path),
            bytes: std::borrow::Cow::Borrowed(v.bytes),
            meta: v.meta.clone(),
            mapped: Some(v),
        })
        .collect();
    if ckpt.is_gguf() {
        return Ok(out);
    }
    let (bytes, meta) = read_checked(config, "model config", MAX_JSON_BYTES, ckpt.guard())?;
    out.push(Content {
        name: file_name(config),
        bytes: std::borrow::Cow::Owned(bytes),
        meta,
        mapped: None,
    });
    Ok(out)
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The opened fine-tuned side.
#[derive(Debug)]
pub enum OpenTarget {
    Checkpoint(Checkpoint),
    Adapter(Adapter),
}

/// Both sides of an audit, opened once (headers only) and shared by all its shards.
#[derive(Debug)]
pub struct Sources {
    pub base_dir: PathBuf,
    pub target_dir: PathBuf,
    pub base: Checkpoint,
    pub target: OpenTarget,
    /// What the two sides' content is, when it was hashed (the plan's content hashes): keys
    /// what shards keep in storage to the models' bytes, not to their names.
    pub content_id: std::sync::OnceLock<String>,
}

impl Sources {
    /// Resolves and opens `base` and `target`, refusing pairs that cannot be compared.
    pub fn open(base: &str, target: &Target, hub: &HubOptions) -> Result<Sources> {
        Self::open_guarded(base, target, hub, None, None)
    }

    /// Like [`Sources::open`], every file of each side shown to its guard before it is read.
    pub fn open_guarded(
        base: &str,
        target: &Target,
        hub: &HubOptions,
        base_guard: Option<Guard>,
        target_guard: Option<Guard>,
    ) -> Result<Sources> {
        let base_dir = reference::resolve(base, hub)?;
        let base_ckpt = Checkpoint::open_guarded(&base_dir, base_guard)?;
        let target_dir = reference::resolve(target.reference(), hub)?;
        let opened = match target {
            Target::Checkpoint { .. } => {
                let ft = Checkpoint::open_guarded(&target_dir, target_guard)?;
                weights::check_compatible(&base_ckpt, &ft)?;
                OpenTarget::Checkpoint(ft)
            }
            Target::Adapter { .. } => {
                let adapter = Adapter::open_guarded(&target_dir, target_guard)?;
                adapter.check_targets(&base_ckpt)?;
                OpenTarget::Adapter(adapter)
            }
        };
        Ok(Sources {
            base_dir,
            target_dir,
            base: base_ckpt,
            target: opened,
            content_id: std::sync::OnceLock::new(),
        })
    }

    /// The guard the fine-tuned side's files are opened through (the service's workers: each
    /// file must be the one the policy vetted).
    pub fn target_guard(&self) -> Option<&Guard> {
        match &self.target {
            OpenTarget::Checkpoint(c) => c.guard(),
            OpenTarget::Adapter(a) => a.weights.guard(),
        }
    }

    pub fn core_target(&self) -> CoreTarget<'_> {
        match &self.target {
            OpenTarget::Checkpoint(c) => CoreTarget::Checkpoint(c),
            OpenTarget::Adapter(a) => CoreTarget::Adapter(a),
        }
    }

    /// The content id when the sides were hashed; otherwise their canonical directories and
    /// every file's name, size and modification time (a model rewritten in place changes it).
    pub fn identity(&self) -> String {
        if let Some(id) = self.content_id.get() {
            return format!("content:{id}");
        }
        let mut parts = Vec::new();
        for dir in [&self.base_dir, &self.target_dir] {
            let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            parts.push(canonical.display().to_string());
            let mut files: Vec<String> = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| {
                            let meta = e.metadata().ok()?;
                            let modified = meta
                                .modified()
                                .ok()?
                                .duration_since(std::time::UNIX_EPOCH)
                                .ok()?
                                .as_nanos();
                            Some(format!(
                                "{}:{}:{modified}",
                                e.file_name().to_string_lossy(),
                                meta.len()
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            parts.extend(files);
        }
        format!("files:{}", parts.join("|"))
    }

    pub fn n_layers(&self) -> Result<usize> {
        Ok(weights::n_layers(&self.base)?)
    }

    /// What each side is made of (weight files and config, or the adapter's two files), read
    /// through the files that were opened and mapped, never reopened by name.
    pub fn contents(&self) -> Result<(Vec<Content<'_>>, Vec<Content<'_>>)> {
        let base = side(&self.base, &self.base_dir.join(CONFIG_FILE))?;
        let target = match &self.target {
            OpenTarget::Checkpoint(c) => side(c, &self.target_dir.join(CONFIG_FILE))?,
            OpenTarget::Adapter(a) => side(&a.weights, &self.target_dir.join(ADAPTER_CONFIG))?,
        };
        Ok((base, target))
    }

    /// Releases the resident pages of both sides' mapped files (see
    /// `Checkpoint::release_pages`).
    pub fn release_pages(&self) {
        self.base.release_pages();
        match &self.target {
            OpenTarget::Checkpoint(c) => c.release_pages(),
            OpenTarget::Adapter(a) => a.weights.release_pages(),
        }
    }

    /// How many tensors a shard will analyse (for progress totals).
    pub fn shard_size(&self, shard: &ShardSpec) -> usize {
        weights::shard_tensors(&self.base, self.core_target(), shard.shard).len()
    }
}
