//! `neurodiff task-vector extract | apply`: task arithmetic on checkpoints.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use neurodiff_core::reference::{self, HubOptions};
use neurodiff_core::task_vector::{self, Scaled};
use neurodiff_core::Checkpoint;

use crate::staging::Staging;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// tau = FT - BASE for every tensor, written as safetensors (one dtype wider, so exact).
    Extract {
        base: String,
        finetuned: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// BASE + SCALE * sum_i w_i tau_i, written as a loadable checkpoint directory.
    Apply {
        base: String,
        /// One or more task vectors made by `extract`.
        #[arg(required = true)]
        taus: Vec<PathBuf>,
        /// Multiplies the (weighted) sum; -1 negates it.
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        scale: f64,
        /// One weight per task vector (comma-separated), default all 1.
        #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
        weights: Vec<f64>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn open(reference: &str) -> anyhow::Result<Checkpoint> {
    let dir = reference::resolve(reference, &HubOptions::from_env())?;
    Ok(Checkpoint::open(dir)?)
}

/// Runs `write` on a hidden sibling of `out`, then moves the result into place.
fn atomically(out: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let staging = Staging::new(out)?;
    write(staging.path())?;
    staging.commit()?;
    Ok(())
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Extract {
            base,
            finetuned,
            out,
        } => {
            let (b, f) = (open(&base)?, open(&finetuned)?);
            let provenance = BTreeMap::from([
                ("base".to_string(), base.clone()),
                ("finetuned".to_string(), finetuned.clone()),
            ]);
            let mut n = 0;
            atomically(&out, |tmp| {
                n = task_vector::extract(&b, &f, tmp, provenance)?;
                Ok(())
            })?;
            eprintln!("wrote {} ({n} tensors)", out.display());
        }
        Command::Apply {
            base,
            taus,
            scale,
            weights,
            out,
        } => {
            if !weights.is_empty() && weights.len() != taus.len() {
                bail!(
                    "--weights: {} weights for {} task vectors",
                    weights.len(),
                    taus.len()
                );
            }
            let b = open(&base)?;
            let scaled = taus
                .iter()
                .enumerate()
                .map(|(i, path)| {
                    let tau = task_vector::open(path)
                        .with_context(|| format!("task vector {}", path.display()))?;
                    Ok(Scaled {
                        tau,
                        scale: scale * weights.get(i).copied().unwrap_or(1.0),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut n = 0;
            atomically(&out, |tmp| {
                n = task_vector::apply(&b, &scaled, tmp)?;
                Ok(())
            })?;
            eprintln!("wrote {} ({n} tensors)", out.display());
        }
    }
    Ok(())
}
