//! Trained organisms: a tiny Llama pretrained on the built-in corpus, then fine-tuned narrowly
//! on synthetic domains in three ways, each with the truth an analysis should find.
//!
//! Layout under the output directory:
//! - `base/`: the pretrained model (config.json, model.safetensors, tokenizer.json);
//! - `{domain}-full/`: every weight fine-tuned on the domain;
//! - `{domain}-blocks/`: only the blocks in `trained_blocks` fine-tuned, the rest bit-identical;
//! - `{domain}-lora/`: a PEFT LoRA adapter on every linear layer of every block;
//! - `data/{domain}.jsonl`: the fine-tuning texts, `data/{domain}-heldout.jsonl` unseen ones;
//! - `manifest.json`: spec, seed, version, the organisms and how long each took.
//!
//! Everything follows from the seed through SplitMix64 (initial weights, data, data order; never
//! libtorch's global generator, which other threads share); training runs on a fixed number
//! of threads because a reduction split differently rounds differently.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use tch::Tensor;

use super::write_json;
use crate::corpus;
use crate::error::{CoreError, Result};

pub mod bpe;
pub mod domains;
mod files;
mod finetune;
pub mod model;
pub mod rng;
pub mod train;

pub use domains::{Domain, DOMAINS};
pub use model::{Arch, Lora, TinyLlama};
pub use train::{Observer, Quiet};

use files::{domain_tokens, encode_all, io, write_jsonl, write_model_dir};
use finetune::{FineTune, Shared};
use rng::Rng;
use train::{Schedule, Windows};

/// Bumped whenever a change to this module changes what it writes (the cache key).
pub const VERSION: u32 = 2;

/// How the organisms are made.
#[derive(Debug, Clone)]
pub struct TrainedSpec {
    pub seed: u64,
    pub vocab: usize,
    pub hidden: i64,
    pub intermediate: i64,
    pub layers: usize,
    pub heads: i64,
    pub kv_heads: i64,
    /// Tokens per training window.
    pub seq_len: usize,
    pub batch: usize,
    pub pretrain_steps: usize,
    pub finetune_steps: usize,
    /// The blocks a `-blocks` fine-tune changes.
    pub trained_blocks: Vec<usize>,
    pub lora_rank: i64,
    /// Domains to fine-tune on (names from [`DOMAINS`]).
    pub domains: Vec<String>,
    /// Built-in corpus samples used for the tokenizer and pretraining (0: all).
    pub corpus_samples: usize,
    /// libtorch threads while training (results are reproducible at a fixed count).
    pub threads: i32,
}

impl Default for TrainedSpec {
    fn default() -> Self {
        TrainedSpec {
            seed: 0,
            vocab: 4096,
            hidden: 128,
            intermediate: 352,
            layers: 6,
            heads: 4,
            kv_heads: 2,
            seq_len: 64,
            batch: 32,
            pretrain_steps: 800,
            finetune_steps: 80,
            trained_blocks: vec![3, 4],
            lora_rank: 8,
            domains: DOMAINS.iter().map(|d| d.name.to_string()).collect(),
            corpus_samples: 0,
            threads: 2,
        }
    }
}

/// The three ways each domain is fine-tuned.
pub const KINDS: [&str; 3] = ["full", "blocks", "lora"];

/// Trains the base and every fine-tune into `out`; returns the organisms' names.
pub fn write_trained(
    out: &Path,
    spec: &TrainedSpec,
    observer: &mut dyn Observer,
) -> Result<Vec<String>> {
    let domains: Vec<&Domain> = spec
        .domains
        .iter()
        .map(|n| {
            domains::domain(n).ok_or_else(|| {
                let known: Vec<&str> = DOMAINS.iter().map(|d| d.name).collect();
                CoreError::Input(format!("unknown domain `{n}`; known: {}", known.join(", ")))
            })
        })
        .collect::<Result<_>>()?;
    if let Some(b) = spec.trained_blocks.iter().find(|&&b| b >= spec.layers) {
        return Err(CoreError::Input(format!(
            "trained block {b} is not below the {} layers",
            spec.layers
        )));
    }
    let threads = tch::get_num_threads();
    tch::set_num_threads(spec.threads);
    let made = train_all(out, spec, &domains, observer);
    tch::set_num_threads(threads);
    made
}

fn train_all(
    out: &Path,
    spec: &TrainedSpec,
    domains: &[&Domain],
    observer: &mut dyn Observer,
) -> Result<Vec<String>> {
    let started = Instant::now();
    std::fs::create_dir_all(out.join("data")).map_err(io(out))?;
    let (pretrain, heldout) = generic_texts(spec)?;
    let texts = domain_texts(out, spec, domains)?;
    let tokenizer = train_tokenizer(spec, &pretrain, &texts, observer)?;
    let tok_json = tokenizer
        .to_string(false)
        .map_err(|e| CoreError::Input(format!("serialising the tokenizer: {e}")))?;
    observer.step(0.0);
    let arch = arch_of(spec, &tokenizer)?;

    let base = arch.init(&mut Rng::fork(spec.seed, "init"))?;
    let generic_windows = Windows::new(encode_all(&tokenizer, &pretrain)?, spec.seq_len);
    let generic_eval = Windows::new(encode_all(&tokenizer, &heldout)?, spec.seq_len).head(64)?;
    let t0 = Instant::now();
    let pretrain_loss = train::run(
        "pretrain",
        base.values().map(Tensor::shallow_clone).collect(),
        &Schedule {
            steps: spec.pretrain_steps,
            batch: spec.batch,
            peak_lr: 3e-3,
            warmup: spec.pretrain_steps / 20 + 1,
        },
        &generic_windows,
        &mut Rng::fork(spec.seed, "pretrain"),
        observer,
        &|b| TinyLlama::new(&arch, &base, None).loss(b),
    )?;
    let pretrain_secs = t0.elapsed().as_secs_f64();
    write_model_dir(&out.join("base"), &arch, &tok_json, &base)?;
    let base_generic = train::evaluate(&generic_eval, &|b| {
        TinyLlama::new(&arch, &base, None).loss(b)
    })?;
    let shared = Shared {
        spec,
        arch: &arch,
        base: &base,
        tok_json: &tok_json,
        generic_eval: &generic_eval,
        base_generic,
    };

    let mut organisms = Vec::new();
    let mut timings = BTreeMap::new();
    for d in domains {
        let fine_tunes = DomainRun {
            out,
            domain: d,
            texts: &texts[d.name],
            tokenizer: &tokenizer,
        };
        for (name, secs) in fine_tunes.train(&shared, observer)? {
            timings.insert(name.clone(), secs);
            organisms.push(name);
        }
    }
    write_json(
        &out.join("manifest.json"),
        &json!({
            "version": VERSION, "seed": spec.seed, "organisms": organisms,
            "domains": spec.domains, "threads": spec.threads,
            "arch": arch.config(),
            "pretrain": {"steps": spec.pretrain_steps, "batch": spec.batch, "seq_len": spec.seq_len,
                         "tokens": generic_windows.ids.len(), "final_loss": pretrain_loss,
                         "generic_heldout_loss": base_generic, "seconds": pretrain_secs},
            "finetune": {"steps": spec.finetune_steps, "trained_blocks": spec.trained_blocks,
                         "lora_rank": spec.lora_rank, "seconds": timings},
            "seconds": started.elapsed().as_secs_f64(),
        }),
    )?;
    Ok(organisms)
}

/// The built-in generic corpus (cut to `corpus_samples`), split into pretraining text and
/// held-out text: every tenth sample is held out of pretraining, for evaluation.
fn generic_texts(spec: &TrainedSpec) -> Result<(Vec<String>, Vec<String>)> {
    let mut generic = corpus::parse(corpus::BUILTIN_FILE, corpus::BUILTIN, u64::MAX)?;
    if spec.corpus_samples > 0 {
        generic.truncate(spec.corpus_samples);
    }
    let (mut pretrain, mut heldout) = (Vec::new(), Vec::new());
    for (i, text) in generic.into_iter().enumerate() {
        if i % 10 == 0 {
            heldout.push(text);
        } else {
            pretrain.push(text);
        }
    }
    Ok((pretrain, heldout))
}

/// A domain's fine-tuning text and its unseen held-out text.
type DomainTexts = (Vec<String>, Vec<String>);

/// Each domain's texts, sampled from its own seeded stream and written under `data/`.
fn domain_texts(
    out: &Path,
    spec: &TrainedSpec,
    domains: &[&Domain],
) -> Result<BTreeMap<&'static str, DomainTexts>> {
    let mut texts = BTreeMap::new();
    for d in domains {
        let mut rng = Rng::fork(spec.seed, &format!("data/{}", d.name));
        let train: Vec<String> = (0..4000).map(|_| d.sample(&mut rng, 4)).collect();
        let unseen: Vec<String> = (0..200).map(|_| d.sample(&mut rng, 4)).collect();
        write_jsonl(&out.join(format!("data/{}.jsonl", d.name)), &train)?;
        write_jsonl(&out.join(format!("data/{}-heldout.jsonl", d.name)), &unseen)?;
        texts.insert(d.name, (train, unseen));
    }
    Ok(texts)
}

/// The organisms' BPE tokenizer. It sees the domains' text too, so that domain words are whole
/// tokens (as in any large vocabulary) and traces can be graded token by token.
fn train_tokenizer(
    spec: &TrainedSpec,
    pretrain: &[String],
    texts: &BTreeMap<&'static str, DomainTexts>,
    observer: &mut dyn Observer,
) -> Result<tokenizers::Tokenizer> {
    observer.stage("tokenizer", 1);
    let mut tok_texts = pretrain.to_vec();
    for (train, _) in texts.values() {
        tok_texts.extend(train.iter().take(500).cloned());
    }
    bpe::train(&tok_texts, spec.vocab)
}

/// The organisms' architecture: the spec's sizes, and the tokenizer's vocabulary and marks.
fn arch_of(spec: &TrainedSpec, tokenizer: &tokenizers::Tokenizer) -> Result<Arch> {
    let id = |t: &str| -> Result<i64> {
        tokenizer
            .token_to_id(t)
            .map(i64::from)
            .ok_or_else(|| CoreError::Input(format!("the tokenizer has no `{t}`")))
    };
    Ok(Arch {
        vocab: tokenizer.get_vocab_size(true) as i64,
        hidden: spec.hidden,
        intermediate: spec.intermediate,
        layers: spec.layers,
        heads: spec.heads,
        kv_heads: spec.kv_heads,
        bos: id(bpe::BOS)?,
        eos: id(bpe::EOS)?,
    })
}

/// One domain's fine-tunes, one per kind, from the shared base.
struct DomainRun<'a> {
    out: &'a Path,
    domain: &'a Domain,
    texts: &'a DomainTexts,
    tokenizer: &'a tokenizers::Tokenizer,
}

impl DomainRun<'_> {
    /// Trains each kind's organism and writes its ground truth; each organism's name and its
    /// training seconds.
    fn train(
        &self,
        shared: &Shared<'_>,
        observer: &mut dyn Observer,
    ) -> Result<Vec<(String, f64)>> {
        let (d, tokenizer, spec) = (self.domain, self.tokenizer, shared.spec);
        let (train_texts, unseen) = self.texts;
        let data = Windows::new(encode_all(tokenizer, train_texts)?, spec.seq_len);
        let eval = Windows::new(encode_all(tokenizer, unseen)?, spec.seq_len).head(64)?;
        let (arch, base) = (shared.arch, shared.base);
        let base_domain = train::evaluate(&eval, &|b| TinyLlama::new(arch, base, None).loss(b))?;
        let mut made = Vec::new();
        for kind in KINDS {
            let name = format!("{}-{kind}", d.name);
            let t0 = Instant::now();
            let dir = self.out.join(&name);
            let run = FineTune {
                name: &name,
                kind,
                data: &data,
                eval: &eval,
                dir: &dir,
            };
            let (trained_blocks, losses) = run.train(shared, observer)?;
            let secs = t0.elapsed().as_secs_f64();
            write_json(
                &dir.join("ground_truth.json"),
                &json!({
                    "organism": name, "base": "base", "kind": kind,
                    "format": if kind == "lora" { "adapter" } else { "checkpoint" },
                    "domain": d.name, "domain_words": d.words(),
                    "domain_tokens": domain_tokens(tokenizer, &d.words())?,
                    "trained_blocks": trained_blocks,
                    "finetuning_data": format!("data/{}.jsonl", d.name),
                    "heldout_data": format!("data/{}-heldout.jsonl", d.name),
                    "seed": spec.seed, "version": VERSION, "steps": spec.finetune_steps,
                    "peak_lr": finetune::peak_lr(kind),
                    "loss": {
                        "final_train": losses.final_train,
                        "domain_heldout": {"base": base_domain, "finetuned": losses.domain},
                        "generic_heldout": {"base": shared.base_generic, "finetuned": losses.generic},
                    },
                    "seconds": secs,
                }),
            )?;
            made.push((name, secs));
        }
        Ok(made)
    }
}

/// Where trained organisms are cached: `$NEURODIFF_CACHE`, else `$XDG_CACHE_HOME/neurodiff`,
/// else `~/.cache/neurodiff`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("NEURODIFF_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("neurodiff");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/neurodiff")
}

static CACHE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The default organisms for `seed`, trained once and cached under [`cache_root`] by seed and
/// [`VERSION`]; a half-written cache is never used (it is built aside and renamed into place).
pub fn cached(seed: u64, observer: &mut dyn Observer) -> Result<PathBuf> {
    let _lock = CACHE_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = cache_root().join("organisms");
    let dir = root.join(format!("trained-v{VERSION}-seed{seed}"));
    if dir.join("manifest.json").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    // Across processes too (tests run the CLI beside the library): one trains, the others wait
    // for its result instead of training the same organisms on the same cores.
    let lock_path = root.join(format!(".trained-v{VERSION}-seed{seed}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if dir.join("manifest.json").is_file() {
        return Ok(dir);
    }
    let tmp = root.join(format!(
        ".trained-v{VERSION}-seed{seed}.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let spec = TrainedSpec {
        seed,
        ..TrainedSpec::default()
    };
    write_trained(&tmp, &spec, observer)?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process finished first; its copy is the same.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("manifest.json").is_file() {
            return Err(CoreError::Input(format!(
                "cannot move organisms into {}",
                dir.display()
            )));
        }
    }
    Ok(dir)
}
