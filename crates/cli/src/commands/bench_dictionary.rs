//! `neurodiff bench-dictionary DATA`: trains a BatchTopK crosscoder on the activations in a
//! safetensors file (`acts`, `(N, M, d)` float32) for a number of steps and prints one JSON line:
//! training tokens per second (after warm-up steps) and peak memory. scripts/bench_crosscoder.py
//! runs it beside the same loop in PyTorch, in one run, and prints the ratios.
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use neurodiff_core::device;
use neurodiff_core::dictionary::{self, Dictionary, TrainOptions, Trainer};
use tch::{Device, Kind, Tensor};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A safetensors file with `acts`: `(N, M, d)` float32 activations.
    pub data: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub expansion: i64,
    #[arg(long, default_value_t = 100)]
    pub k: i64,
    #[arg(long, default_value_t = 2048)]
    pub batch: usize,
    /// Timed steps (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = device::parse_device(&args.device)?;
    let tensors = Tensor::read_safetensors(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let Some((_, acts)) = tensors.into_iter().find(|(n, _)| n == "acts") else {
        bail!("{}: no tensor `acts`", args.data.display());
    };
    if acts.dim() != 3 {
        bail!(
            "{}: `acts` must be (N, M, d), not {:?}",
            args.data.display(),
            acts.size()
        );
    }
    let data = acts.f_to_kind(Kind::Float)?.f_to_device(device)?;
    let (models, d) = (data.size()[1], data.size()[2]);
    let norm = dictionary::normalization_of(&data.f_to_device(Device::Cpu)?, 1.0)?;
    let norm = dictionary::Normalization {
        mean: norm.mean.f_to_device(device)?,
        scale: norm.scale.f_to_device(device)?,
    };
    let shape = dictionary::Shape {
        models,
        width: d,
        size: args.expansion * d,
        k: args.k,
    };
    let dict = Dictionary::init(shape, 0.1, norm, 0, (Kind::Float, device))?;
    let opts = TrainOptions {
        k: args.k,
        lr: 1e-4,
        warmup_steps: 0,
        dead_tokens: (args.batch * 4) as i64,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(dict, opts)?;
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let total = args.warmup + args.steps;
    let mut started = (args.warmup == 0).then(Instant::now);
    dictionary::train(&mut trainer, &data, args.batch, total, 0, &mut |t, _| {
        if t.step == args.warmup {
            sync();
            started = Some(Instant::now());
        }
        Ok(true)
    })?;
    sync();
    let secs = started.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    let line = serde_json::json!({
        "impl": "neurodiff",
        "device": args.device,
        "dict_size": args.expansion * d,
        "steps": args.steps,
        "batch": args.batch,
        "seconds": secs,
        "tokens_per_s": (args.steps * args.batch) as f64 / secs,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": serde_json::Value::Null,
    });
    writeln!(std::io::stdout(), "{line}")?;
    Ok(())
}
