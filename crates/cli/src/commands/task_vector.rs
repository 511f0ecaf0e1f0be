//! `neurodiff task-vector extract | apply`: task arithmetic on checkpoints.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use neurodiff_core::reference::{self, HubOptions};
use neurodiff_core::task_vector::{self, Scaled};
use neurodiff_core::Checkpoint;

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

/// Runs `write` into a sibling temporary path, then renames it over `out`.
fn atomically(out: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: not a path", out.display()))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write(&tmp).and_then(|()| {
        if out.is_dir() {
            std::fs::remove_dir_all(out)?;
        }
        std::fs::rename(&tmp, out).with_context(|| format!("--out {}", out.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
