//! `neurodiff audit BASE [FT] [--adapter PATH]`: the embedded audit, no servers. Plans layer
//! shards, runs them with the worker's executor, fans in, writes results.json, plots and
//! report.html into a directory that appears only when complete.
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use neurodiff_core::device;
use neurodiff_core::reference::HubOptions;
use neurodiff_protocol::{
    parse_layers, plan_shards, Analyses, AnalysisKind, AuditResults, AuditSpec, Spectrum, Target,
    WeightOptions, WeightsReport, RESULTS_SCHEMA_VERSION,
};
use neurodiff_worker::record::{record_with, HashCache};
use neurodiff_worker::Sources;

use crate::staging::Staging;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SpectrumArg {
    /// Every singular value: spectral, nuclear, stable and effective rank, top-k.
    Full,
    /// Norms only (Frobenius, relative, cosine, max): one pass over the bytes.
    None,
}

/// What to audit and how deeply: shared by `audit` and `submit`.
#[derive(Debug, clap::Args)]
pub struct ScopeArgs {
    /// Blocks to audit: `all`, or indices and ranges like `0,3,10-12`.
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Spectral metrics: `full` or `none` (norms only).
    #[arg(long, value_enum, default_value = "full")]
    pub spectrum: SpectrumArg,
    /// Leading singular values to report per tensor.
    #[arg(long, default_value_t = 16)]
    pub top_k: usize,
}

impl ScopeArgs {
    pub fn weights(&self) -> WeightOptions {
        WeightOptions {
            spectrum: match self.spectrum {
                SpectrumArg::Full => Spectrum::Full,
                SpectrumArg::None => Spectrum::None,
            },
            top_k: self.top_k,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model: a checkpoint directory or a hub id `org/name[@revision]`.
    pub base: String,
    /// The fine-tuned checkpoint (omit when auditing an adapter with --adapter).
    pub finetuned: Option<String>,
    /// A PEFT LoRA adapter directory, analysed exactly in factored form against BASE.
    #[arg(long, conflicts_with = "finetuned")]
    pub adapter: Option<String>,
    /// Analyses to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "weights")]
    pub analyses: Vec<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// cpu, cuda or cuda:N: where the spectra are computed.
    #[arg(long, default_value = "cpu", env = "NEURODIFF_DEVICE")]
    pub device: String,
    /// The report directory; replaced if it holds an earlier NeuroDiff report.
    #[arg(long, default_value = "neurodiff-report")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn spec_from(args: &Args) -> anyhow::Result<AuditSpec> {
    let target = match (&args.finetuned, &args.adapter) {
        (Some(ft), None) => Target::Checkpoint {
            reference: ft.clone(),
        },
        (None, Some(adapter)) => Target::Adapter {
            reference: adapter.clone(),
        },
        _ => bail!("give a fine-tuned checkpoint (FT) or an adapter (--adapter PATH)"),
    };
    let analyses = args
        .analyses
        .iter()
        .map(|a| match a.as_str() {
            "weights" => Ok(AnalysisKind::Weights),
            other => bail!("--analyses: unknown analysis `{other}`; available: weights"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AuditSpec {
        base: args.base.clone(),
        target,
        analyses,
        layers: parse_layers(&args.scope.layers).context("--layers")?,
        weights: args.scope.weights(),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = spec_from(&args)?;
    let device = device::parse_device(&args.device)?;
    if args.out.exists()
        && !args.out.join("results.json").is_file()
        && args
            .out
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "--out {}: exists and is not a NeuroDiff report; refusing to replace it",
            args.out.display()
        );
    }
    let staging = Staging::new(&args.out)?;
    std::fs::create_dir(staging.path()).with_context(|| format!("--out {}", args.out.display()))?;
    let sources = Sources::open(&spec.base, &spec.target, &HubOptions::from_env())?;
    let shards = plan_shards(&spec, sources.n_layers()?)?;

    let total: usize = shards.iter().map(|s| sources.shard_size(s)).sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tensors  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    // Set when the analysis fails, so the scope does not wait for hashing to finish.
    let stop = AtomicBool::new(false);
    let (results, (base, finetuned)) = std::thread::scope(|scope| -> anyhow::Result<_> {
        // Hashing every weight file (the mapped bytes) runs beside the analysis.
        let (base_files, target_files) = sources.contents()?;
        let (base_dir, target_dir) = (&sources.base_dir, &sources.target_dir);
        let (spec, stop) = (&spec, &stop);
        let hashing = scope.spawn(move || {
            let record = |reference: &str, dir: &std::path::Path, files| {
                record_with(
                    reference,
                    &dir.display().to_string(),
                    files,
                    &HashCache::default(),
                    stop,
                )
            };
            Ok::<_, neurodiff_worker::WorkerError>((
                record(&spec.base, base_dir, &base_files)?,
                record(spec.target.reference(), target_dir, &target_files)?,
            ))
        });
        let analysed = shards
            .iter()
            .map(|shard| {
                bar.set_message(shard.shard.to_string());
                sources.execute(shard, device, &mut |_| {
                    bar.inc(1);
                    true
                })
            })
            .collect::<Result<Vec<_>, _>>();
        if analysed.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let hashed = hashing
            .join()
            .map_err(|_| anyhow::anyhow!("the hashing thread panicked"));
        let results = analysed?;
        Ok((results, hashed??))
    })?;
    bar.finish_and_clear();
    let analysis_s = started.elapsed().as_secs_f64();

    let report = WeightsReport::from_shards(results);
    let audit = AuditResults {
        schema_version: RESULTS_SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        base,
        finetuned,
        target: spec.target.clone(),
        analyses: Analyses {
            weights: Some(report),
        },
    };
    neurodiff_scheduler::write_report(&audit, staging.path())?;
    let out = staging.commit()?;
    let w = audit.analyses.weights.as_ref();
    eprintln!(
        "audited {} tensors in {} shards in {analysis_s:.2}s; most changed: {}",
        w.map_or(0, |w| w.tensors.len()),
        shards.len(),
        w.and_then(|w| w.tensors.first())
            .map_or("-".to_string(), |t| format!(
                "{} (rel_fro {})",
                t.name,
                t.rel_fro
                    .map_or("undefined: the base is zero".into(), |r| format!("{r:.3e}"))
            )),
    );
    writeln!(std::io::stdout(), "{}", out.join("report.html").display())?;
    Ok(())
}
