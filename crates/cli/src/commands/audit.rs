//! `neurodiff audit BASE [FT] [--adapter PATH]`: the embedded audit, no servers. The flags make
//! the same request the API takes, planned, run shard by shard and assembled by the same code
//! as the service's workers and fan-in; results.json, plots, report.html and artifacts go into
//! a directory that appears only when complete.
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use neurodiff_core::device;
use neurodiff_core::reference::HubOptions;
use neurodiff_exec::record::HashCache;
use neurodiff_exec::store::{DirStore, ShardStore};
use neurodiff_exec::{
    corpus, hash_sides, plan_audit, planned_steps, run_shard, Named, ShardEnv, Sources,
};
use neurodiff_protocol::{AuditResults, Limits, PlanRecord, ShardKey};

use crate::commands::scope::ScopeArgs;
use crate::staging::Staging;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model: a checkpoint directory or a hub id `org/name[@revision]`.
    pub base: String,
    /// The fine-tuned checkpoint (omit when auditing an adapter with --adapter).
    pub finetuned: Option<String>,
    /// A PEFT LoRA adapter directory, analysed exactly in factored form against BASE.
    #[arg(long, conflicts_with = "finetuned")]
    pub adapter: Option<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// cpu, cuda or cuda:N: where the analyses run.
    #[arg(long, default_value = "cpu", env = "NEURODIFF_DEVICE")]
    pub device: String,
    /// The report directory; replaced if it holds an earlier NeuroDiff report.
    #[arg(long, default_value = "neurodiff-report")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Where shards keep what outlives them (activation stores, training checkpoints,
    /// dictionaries): reused by later audits of the same models and corpus, and where an
    /// interrupted training resumes from. Default: $NEURODIFF_CACHE/store.
    #[arg(long, env = "NEURODIFF_STORE")]
    pub store: Option<PathBuf>,
    /// Bytes of loaded models kept between shards (least recently used out first); 0: none.
    #[arg(long, env = "NEURODIFF_MODEL_CACHE_BYTES", default_value_t = neurodiff_exec::cache::DEFAULT_MODEL_CACHE_BYTES)]
    pub model_cache_bytes: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.finetuned.is_none() && args.adapter.is_none() {
        bail!("give a fine-tuned checkpoint (FT) or an adapter (--adapter PATH)");
    }
    let spec = args
        .scope
        .request(
            &args.base,
            args.finetuned.as_deref(),
            args.adapter.as_deref(),
            str::to_string,
        )?
        .into_spec()?;
    let limits = Limits::default();
    spec.check_limits(&limits)?;
    let device = device::parse_device(&args.device)?;
    let store = DirStore::new(args.store.clone().unwrap_or_else(DirStore::default_root));
    refuse_foreign(&args.out)?;
    let staging = Staging::new(&args.out)?;
    std::fs::create_dir(staging.path()).with_context(|| format!("--out {}", args.out.display()))?;
    let sources = Sources::open(&spec.base, &spec.target, &HubOptions::from_env())?;
    let corpus = if spec.needs_corpus() {
        Some(corpus::load_local(&spec.corpus_read(), &limits)?)
    } else {
        None
    };
    let n_layers = sources.n_layers()?;
    let bar = super::progress_bar(
        args.quiet,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} steps (tensors, batches)  {msg}",
    );
    let started = Instant::now();
    let (base_files, target_files) = sources.contents()?;
    let files = [base_files.as_slice(), target_files.as_slice()];
    let shards = plan_audit(&sources, &spec, files, corpus.as_ref(), &limits)?;
    let audit = Audit {
        sources: &sources,
        spec: &spec,
        corpus: corpus.as_ref(),
        store: &store,
        device,
        models: &neurodiff_exec::ModelCache::new(args.model_cache_bytes),
        bar: &bar,
    };
    let (outputs, (base, finetuned)) = audit.analyse(&shards, files)?;
    super::finish(&bar);
    let analysis_s = started.elapsed().as_secs_f64();
    let record = PlanRecord {
        n_layers,
        base,
        finetuned,
        corpus: corpus.map(|c| c.record),
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let results = neurodiff_analyses::assemble(&spec, record, outputs, created)?;
    let out = write_report(&results, &store, staging)?;
    eprintln!(
        "ran {} shards in {analysis_s:.2}s; {}",
        shards.len(),
        summary(&results)
    );
    writeln!(std::io::stdout(), "{}", out.join("report.html").display())?;
    Ok(())
}

/// Refuses an `--out` that holds something other than an earlier report (it is replaced).
fn refuse_foreign(out: &std::path::Path) -> anyhow::Result<()> {
    if out.exists()
        && !out.join("results.json").is_file()
        && out
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "--out {}: exists and is not a NeuroDiff report; refusing to replace it",
            out.display()
        );
    }
    Ok(())
}

/// What the embedded audit's shards run with.
struct Audit<'a> {
    sources: &'a Sources,
    spec: &'a neurodiff_protocol::AuditSpec,
    corpus: Option<&'a corpus::CorpusText>,
    store: &'a DirStore,
    device: tch::Device,
    models: &'a neurodiff_exec::ModelCache,
    bar: &'a indicatif::ProgressBar,
}

impl Audit<'_> {
    /// Runs every shard, with both sides' files hashed beside them (stopped early when a shard
    /// fails): the outputs and the model records.
    fn analyse(
        &self,
        shards: &[neurodiff_protocol::ShardSpec],
        files: [&[neurodiff_exec::Content<'_>]; 2],
    ) -> anyhow::Result<(
        Vec<neurodiff_protocol::ShardOutput>,
        (
            neurodiff_protocol::ModelRecord,
            neurodiff_protocol::ModelRecord,
        ),
    )> {
        let sources = self.sources;
        let n_samples = self.corpus.map_or(0, |c| c.samples.len());
        let total: usize = shards
            .iter()
            .map(|s| match s.shard {
                ShardKey::Layer(_) | ShardKey::NonLayer => sources.shard_size(s),
                _ => planned_steps(s, n_samples),
            })
            .sum();
        self.bar.set_length(total as u64);
        // Set when the analysis fails, so the scope does not wait for hashing to finish.
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let stop = &stop;
            // Hashing every weight file (the mapped bytes) runs beside the analysis.
            let hashing = scope.spawn(move || {
                let dirs =
                    [&sources.base_dir, &sources.target_dir].map(|d| d.display().to_string());
                let names = [self.spec.base.as_str(), self.spec.target.reference()];
                let records = hash_sides(
                    [0, 1].map(|i| Named {
                        reference: names[i],
                        pinned: &dirs[i],
                    }),
                    files,
                    &HashCache::default(),
                    stop,
                )?;
                // Hashing touched every page of both sides; the analyses have their own copies.
                sources.release_pages();
                Ok::<_, neurodiff_exec::ExecError>(records)
            });
            let analysed = shards
                .iter()
                .map(|shard| self.run(shard))
                .collect::<Result<Vec<_>, _>>();
            if analysed.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let hashed = hashing
                .join()
                .map_err(|_| anyhow::anyhow!("the hashing thread panicked"));
            let outputs = analysed?;
            Ok((outputs, hashed??))
        })
    }

    fn run(
        &self,
        shard: &neurodiff_protocol::ShardSpec,
    ) -> neurodiff_exec::Result<neurodiff_protocol::ShardOutput> {
        self.bar.set_message(shard.shard.to_string());
        run_shard(
            self.sources,
            shard,
            self.corpus,
            ShardEnv {
                store: self.store,
                device: self.device,
                models: self.models,
                ready: None,
            },
            &mut |_| {
                self.bar.inc(1);
                true
            },
        )
    }
}

/// The report, and the trained dictionaries beside it, written to the staging directory and
/// moved into place: where it is.
fn write_report(
    results: &AuditResults,
    store: &DirStore,
    staging: Staging,
) -> anyhow::Result<PathBuf> {
    let files = neurodiff_report::render(results)?;
    neurodiff_report::write_dir(&files, staging.path())?;
    for d in results.analyses.dictionaries() {
        let name = d.section;
        if let Some(file) = &d.report.dictionary {
            let to = staging.path().join(format!("{name}.safetensors"));
            std::fs::copy(store.locate(&file.key), &to)
                .with_context(|| format!("copying the {name} dictionary to {}", to.display()))?;
        }
    }
    staging.commit()
}

/// One line on what moved most, per analysis that ran (the report's findings).
fn summary(r: &AuditResults) -> String {
    neurodiff_analyses::findings::summary_line(r)
}
