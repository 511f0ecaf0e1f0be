//! The shard executor: opens what a shard names and runs the core analyses on its tensors.
//! The embedded `neurodiff audit` and the service's workers run the same code.
pub mod confine;
pub mod lease;
pub mod materialize;
mod plan;
pub mod record;
pub mod service;

pub use plan::check_limits;

use std::path::PathBuf;

use neurodiff_core::checkpoint::CONFIG_FILE;
use neurodiff_core::reference::{self, HubOptions};
use neurodiff_core::weights::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use neurodiff_core::weights::{self, lora::Adapter, Target as CoreTarget};
use neurodiff_core::{Checkpoint, CoreError};
use neurodiff_protocol::{ShardResult, ShardSpec, Target};
use tch::Device;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    Io(String),
    /// Object storage failed in a way that may pass (unreachable, throttled): retried, not fatal.
    #[error("{0}")]
    Storage(String),
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

impl WorkerError {
    /// Out of memory (host or GPU) or out of disk: the input may be fine and another worker,
    /// or the same one later, may have room, so the task is retried (a bounded number of
    /// times), not failed.
    pub fn is_resource_exhaustion(&self) -> bool {
        let message = match self {
            WorkerError::Core(CoreError::Io { source, .. }) => {
                if source.raw_os_error() == Some(28)
                    || source.kind() == std::io::ErrorKind::StorageFull
                {
                    return true;
                }
                source.to_string()
            }
            other => other.to_string(),
        };
        let m = message.to_ascii_lowercase();
        [
            "out of memory",
            "can't allocate memory",
            "cannot allocate memory",
            "no space left on device",
        ]
        .iter()
        .any(|s| m.contains(s))
    }
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
}

impl Sources {
    /// Resolves and opens `base` and `target`, refusing pairs that cannot be compared.
    pub fn open(base: &str, target: &Target, hub: &HubOptions) -> Result<Sources> {
        let base_dir = reference::resolve(base, hub)?;
        let base_ckpt = Checkpoint::open(&base_dir)?;
        let target_dir = reference::resolve(target.reference(), hub)?;
        let opened = match target {
            Target::Checkpoint { .. } => {
                let ft = Checkpoint::open(&target_dir)?;
                weights::check_compatible(&base_ckpt, &ft)?;
                OpenTarget::Checkpoint(ft)
            }
            Target::Adapter { .. } => {
                let adapter = Adapter::open(&target_dir)?;
                adapter.check_targets(&base_ckpt)?;
                OpenTarget::Adapter(adapter)
            }
        };
        Ok(Sources {
            base_dir,
            target_dir,
            base: base_ckpt,
            target: opened,
        })
    }

    /// Opens both sides from the directories the policy confined them to, and checks that
    /// what was opened is what was vetted.
    pub fn open_confined(
        base: &confine::Confined,
        target: &Target,
        target_dir: &confine::Confined,
    ) -> Result<Sources> {
        let sources = Sources::open(
            &base.dir.display().to_string(),
            &target.with_reference(target_dir.dir.display().to_string()),
            &HubOptions::from_env(),
        )?;
        sources.confirm_opened(base, target_dir)?;
        Ok(sources)
    }

    /// Checks that what was opened is what the policy vetted, on both sides.
    pub fn confirm_opened(
        &self,
        base: &confine::Confined,
        target: &confine::Confined,
    ) -> Result<()> {
        base.confirm_opened(&self.base)?;
        match &self.target {
            OpenTarget::Checkpoint(c) => target.confirm_opened(c),
            OpenTarget::Adapter(a) => target.confirm_opened(&a.weights),
        }
    }

    pub fn core_target(&self) -> CoreTarget<'_> {
        match &self.target {
            OpenTarget::Checkpoint(c) => CoreTarget::Checkpoint(c),
            OpenTarget::Adapter(a) => CoreTarget::Adapter(a),
        }
    }

    pub fn n_layers(&self) -> Result<usize> {
        Ok(weights::n_layers(&self.base)?)
    }

    /// The files that make up each side: weight files and config (adapter files for adapters).
    pub fn record_files(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut base: Vec<PathBuf> = self.base.files().iter().map(|p| p.to_path_buf()).collect();
        base.push(self.base_dir.join(CONFIG_FILE));
        let target = match &self.target {
            OpenTarget::Checkpoint(c) => c
                .files()
                .iter()
                .map(|p| p.to_path_buf())
                .chain([self.target_dir.join(CONFIG_FILE)])
                .collect(),
            OpenTarget::Adapter(_) => vec![
                self.target_dir.join(ADAPTER_WEIGHTS),
                self.target_dir.join(ADAPTER_CONFIG),
            ],
        };
        (base, target)
    }

    /// How many tensors a shard will analyse (for progress totals).
    pub fn shard_size(&self, shard: &ShardSpec) -> usize {
        weights::shard_tensors(&self.base, self.core_target(), shard.shard).len()
    }

    /// Runs one shard of a weight audit.
    pub fn execute(
        &self,
        shard: &ShardSpec,
        device: Device,
        on_tensor: &mut (dyn FnMut(&str) -> bool + Send),
    ) -> Result<ShardResult> {
        let span = tracing::info_span!("shard", shard = %shard.shard);
        let _entered = span.enter();
        let result = weights::analyze_shard(
            &self.base,
            self.core_target(),
            shard.shard,
            &shard.weights,
            device,
            on_tensor,
        )?;
        tracing::info!(
            tensors = result.tensors.len(),
            elapsed_s = result.elapsed_s,
            "shard done"
        );
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhaustion_is_retried_and_bad_input_is_not() {
        let enospc = WorkerError::Core(CoreError::Io {
            path: "/cache/x".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        assert!(enospc.is_resource_exhaustion());
        for message in [
            "libtorch: CUDA out of memory. Tried to allocate 2.00 GiB",
            "libtorch: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory",
        ] {
            assert!(WorkerError::Io(message.into()).is_resource_exhaustion(), "{message}");
        }
        let bad =
            WorkerError::Io("config.json: field `hidden_size` is 4 here but 8 in the base".into());
        assert!(!bad.is_resource_exhaustion());
    }
}
