//! `neurodiff organisms`: model pairs whose difference is known, with their ground truth —
//! planted weight changes (seconds), or with `--trained` a tiny Llama pretrained and narrowly
//! fine-tuned on CPU (minutes; cached by seed and version).
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::ProgressBar;
use neurodiff_core::organisms::trained::{self, Observer, TrainedSpec};
use neurodiff_core::organisms::{write_organisms, OrganismSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write them (planted: base/, rank-update/, attn-scaled/, lora/; trained: base/
    /// and {domain}-{full,blocks,lora}/).
    #[arg(long, default_value = "organisms")]
    pub out: PathBuf,
    /// Random seed of the weights, the data and the planted changes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of transformer blocks of the base.
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    /// Train the organisms: a base pretrained on the built-in corpus with its own BPE
    /// tokenizer, fine-tuned on synthetic domains (full, chosen blocks, LoRA).
    #[arg(long)]
    pub trained: bool,
    /// With --trained: optimisation steps of pretraining.
    #[arg(long, default_value_t = TrainedSpec::default().pretrain_steps)]
    pub pretrain_steps: usize,
    /// With --trained: optimisation steps of each fine-tune.
    #[arg(long, default_value_t = TrainedSpec::default().finetune_steps)]
    pub finetune_steps: usize,
    /// With --trained: the domains, comma-separated (astronomy, cooking, sailing).
    #[arg(long, value_delimiter = ',')]
    pub domains: Vec<String>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

struct Bar(ProgressBar);

impl Observer for Bar {
    fn stage(&mut self, name: &str, steps: usize) {
        self.0.set_length(steps as u64);
        self.0.set_position(0);
        self.0.set_message(name.to_string());
    }
    fn step(&mut self, loss: f64) {
        self.0.inc(1);
        if loss > 0.0 {
            self.0.set_prefix(format!("loss {loss:.3}"));
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn run_trained(args: &Args) -> anyhow::Result<Vec<String>> {
    let bar = super::progress_bar(
        args.quiet,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg} {prefix}",
    );
    let mut spec = TrainedSpec {
        seed: args.seed,
        layers: args.layers,
        pretrain_steps: args.pretrain_steps,
        finetune_steps: args.finetune_steps,
        ..TrainedSpec::default()
    };
    if !args.domains.is_empty() {
        spec.domains = args.domains.clone();
    }
    let default = TrainedSpec {
        seed: args.seed,
        ..TrainedSpec::default()
    };
    let mut observer = Bar(bar.clone());
    let is_default = spec.layers == default.layers
        && spec.pretrain_steps == default.pretrain_steps
        && spec.finetune_steps == default.finetune_steps
        && spec.domains == default.domains;
    if is_default {
        // The default organisms are the ones the tests use: trained once per seed and version.
        let cache = trained::cached(args.seed, &mut observer)?;
        super::finish(&bar);
        copy_dir(&cache, &args.out)
            .with_context(|| format!("copying {} to --out", cache.display()))?;
    } else {
        trained::write_trained(&args.out, &spec, &mut observer)?;
        super::finish(&bar);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(args.out.join("manifest.json"))?)?;
    let names = manifest["organisms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(names)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.layers >= 5,
        "--layers: at least 5, so that the planted and trained blocks exist"
    );
    let made = if args.trained {
        run_trained(&args).with_context(|| format!("--out {}", args.out.display()))?
    } else {
        let spec = OrganismSpec {
            seed: args.seed as i64,
            layers: args.layers,
            ..OrganismSpec::default()
        };
        write_organisms(&args.out, &spec)
            .with_context(|| format!("--out {}", args.out.display()))?
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {}/base and organisms {} (each with ground_truth.json)",
        args.out.display(),
        made.join(", ")
    )?;
    Ok(())
}
