//! `neurodiff organisms --out DIR`: model pairs with planted changes and their ground truth.
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use neurodiff_core::organisms::{write_organisms, OrganismSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write base/, rank-update/, attn-scaled/ and lora/.
    #[arg(long, default_value = "organisms")]
    pub out: PathBuf,
    /// Random seed of the base weights and the planted changes.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Number of transformer blocks of the base.
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.layers >= 5,
        "--layers: at least 5, so that the planted layers exist"
    );
    let spec = OrganismSpec {
        seed: args.seed,
        layers: args.layers,
        ..OrganismSpec::default()
    };
    let made = write_organisms(&args.out, &spec)
        .with_context(|| format!("--out {}", args.out.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {}/base and organisms {} (each with ground_truth.json)",
        args.out.display(),
        made.join(", ")
    )?;
    Ok(())
}
