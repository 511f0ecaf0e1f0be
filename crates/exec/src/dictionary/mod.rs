//! The dictionary shards (Tier III). A collect shard runs both models on one corpus slice and
//! writes the block's activations (or their difference) as one chunk of the paired activation
//! store. The training shard makes sure every chunk is there (collecting any still missing
//! itself, from the last slice back, so it never waits on another worker), writes the store's
//! manifest, trains a BatchTopK crosscoder or SAE by streaming windows of chunks (never the
//! whole store in memory), checkpointing to storage and resuming from the last checkpoint, then
//! measures it on the held-back slices: FVE, L0, dead latents, Δ classes, latent scaling, and for
//! each reported latent its decoder lens through the fine-tune and its top activating examples.
use std::time::Instant;

use neurodiff_analyses::dictionary::Family;
use neurodiff_analyses::dictionary::{block_of, slices};
use neurodiff_core::corpus::Batch;
use neurodiff_core::dictionary::Normalization;
use neurodiff_core::organisms::trained::rng::Rng;
use neurodiff_core::{CoreError, HookKind, HookPoint};
use neurodiff_protocol::{
    ActivationStore, AnalysisKind, CollectShard, DictionaryOptions, DictionaryReport, GroundTruth,
    ShardKey, ShardSpec, StoreManifest, StoreSlice,
};
use tch::{Device, Kind, Tensor};

use crate::corpus::CorpusText;
use crate::forward::{paired_at, Pair, Tokens};
use crate::progress::{check, Progress};
use crate::store::{sha256_hex, ShardStore};
use crate::{ExecError, Result};

mod attribution;
mod chunks;
mod kl_share;
mod training;

use chunks::{Chunk, Windows};
use training::Training;

/// Bumped when what a chunk holds changes (part of the store's id).
/// 2: the BOS (`corpus.skip_first`) left out of the chunks.
const STORE_VERSION: u32 = 2;

/// What every dictionary shard of an audit agrees on.
#[derive(Debug)]
pub struct Setup<'a> {
    pub kind: AnalysisKind,
    pub family: Family,
    pub diff: bool,
    pub opts: &'a DictionaryOptions,
    pub layer: usize,
    /// Leading positions left out of the collected tokens (the BOS).
    pub skip_first: usize,
    pub store_id: String,
    /// The store's slices: `(start, end)` sample ranges.
    pub slices: Vec<(usize, usize)>,
}

impl<'a> Setup<'a> {
    pub fn of(spec: &'a ShardSpec, corpus: &CorpusText, pair: &Pair, models: &str) -> Result<Self> {
        let n_layers = pair.info().n_layers;
        let skip_first = crate::forward::skip_first(spec, pair);
        let kind = spec.shard.analysis();
        let family =
            Family::of(kind).ok_or_else(|| ExecError::Io(format!("{kind} is not a dictionary")))?;
        let diff = family == Family::SaeDiff;
        let opts = family.options(&spec.options);
        let layer = block_of(opts, n_layers).map_err(|e| ExecError::Io(e.to_string()))?;
        let slices = slices(kind, opts, corpus.samples.len(), spec.corpus.shard_samples)
            .into_iter()
            .filter_map(|k| match k {
                ShardKey::Samples { start, end, .. } => Some((start, end)),
                _ => None,
            })
            .collect();
        let identity = serde_json::json!({
            "version": STORE_VERSION,
            "base": spec.base,
            "target": spec.target,
            "models": models,
            // The corpus's content, not how many samples this audit read (which depends on the
            // other analyses it runs): a chunk is keyed by its slice.
            "corpus": corpus.record.sha256,
            "slice": spec.corpus.shard_samples,
            "layer": layer,
            "skip_first": skip_first,
            "diff": diff,
            "dtype": "f32",
        });
        let store_id = sha256_hex(identity.to_string().as_bytes())[..24].to_string();
        Ok(Setup {
            kind,
            family,
            diff,
            opts,
            layer,
            skip_first,
            store_id,
            slices,
        })
    }

    fn chunk_key(&self, (start, end): (usize, usize)) -> String {
        format!(
            "activations/{}/{start:08}-{end:08}.safetensors",
            self.store_id
        )
    }

    fn manifest_key(&self) -> String {
        format!("activations/{}/manifest.json", self.store_id)
    }

    /// Slices held back for the metrics: the last ones, at least one and at most all but one.
    fn held(&self) -> usize {
        let n = self.slices.len();
        ((n * self.opts.holdout_percent + 50) / 100).clamp(1, n.saturating_sub(1).max(1))
    }
}

/// Runs the block's forward passes over `tokens` (samples from `first`) and returns the chunk.
fn collect_chunk(
    pair: &Pair,
    setup: &Setup<'_>,
    tokens: &[Vec<i64>],
    first: usize,
    batch_size: usize,
    progress: Progress<'_>,
) -> Result<Chunk> {
    let point = HookPoint::new(setup.layer, HookKind::ResidPost);
    let (mut parts, mut sample, mut position, mut token) = (Vec::new(), vec![], vec![], vec![]);
    let step = batch_size.max(1);
    for (b, chunk) in tokens.chunks(step).enumerate() {
        check(progress, "batch")?;
        let batch = Batch::new(chunk, pair.device())?;
        let t = Tokens::of(&batch, first + b * step)?.skipping(setup.skip_first)?;
        let (xb, xf) = paired_at(pair, &batch, &t, point)?;
        let cpu = |x: Tensor| x.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu);
        let (xb, xf) = (cpu(xb)?, cpu(xf)?);
        parts.push(if setup.diff {
            xf.f_sub(&xb)?.f_unsqueeze(1)?
        } else {
            Tensor::f_stack(&[xb, xf], 1)?
        });
        for (&s, &p) in t.sample.iter().zip(&t.position) {
            sample.push(s as i64);
            position.push(p as i64);
            token.push(tokens[s - first][p]);
        }
    }
    Chunk::new(Tensor::f_cat(&parts, 0)?, sample, position, token)
}

/// What [`ensure_chunk`] found: whether the chunk was already there, its rows, and its sums
/// of activations and of their squares (read while the chunk is in hand, for the
/// normalisation).
struct Ensured {
    reused: bool,
    rows: u64,
    sums: (Tensor, Tensor),
}

/// The chunk of one slice, collected and stored unless it is already there. `tokens` are the
/// slice's samples.
fn ensure_chunk(
    pair: &Pair,
    setup: &Setup<'_>,
    tokens: &[Vec<i64>],
    slice: (usize, usize),
    batch_size: usize,
    store: &dyn ShardStore,
    progress: Progress<'_>,
) -> Result<Ensured> {
    let key = setup.chunk_key(slice);
    if let Some(bytes) = store.get(&key)? {
        // A chunk is written whole (put is atomic); one that does not read is redone.
        match Chunk::from_bytes(&bytes) {
            Ok(c) => {
                return Ok(Ensured {
                    reused: true,
                    rows: c.len() as u64,
                    sums: c.sums()?,
                })
            }
            Err(e) => tracing::warn!(%key, error = %e, "unreadable chunk; collecting it again"),
        }
    }
    let (start, end) = slice;
    if tokens.len() != end - start {
        return Err(ExecError::Io(format!(
            "slice {start}..{end}: {} samples were tokenized for it",
            tokens.len()
        )));
    }
    let chunk = collect_chunk(pair, setup, tokens, start, batch_size, progress)?;
    let ensured = Ensured {
        reused: false,
        rows: chunk.len() as u64,
        sums: chunk.sums()?,
    };
    store.put(&key, chunk.to_bytes()?)?;
    Ok(ensured)
}

/// What a dictionary shard (collect or train) reads: the models, the shard, the store's
/// identity, the corpus and its tokens, and the activation store.
#[derive(Clone, Copy)]
pub struct DictShard<'a> {
    pub pair: &'a Pair,
    pub spec: &'a ShardSpec,
    pub identity: &'a str,
    pub corpus: &'a CorpusText,
    pub tokens: &'a [Vec<i64>],
    pub store: &'a dyn ShardStore,
}

impl std::fmt::Debug for DictShard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DictShard")
            .field("shard", &self.spec.shard)
            .field("identity", &self.identity)
            .field("samples", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// A collect shard: the chunk of its slice.
pub fn collect(shard: DictShard<'_>, progress: Progress<'_>) -> Result<CollectShard> {
    let DictShard {
        pair,
        spec,
        identity,
        corpus,
        tokens,
        store,
    } = shard;
    let started = Instant::now();
    let setup = Setup::of(spec, corpus, pair, identity)?;
    let ShardKey::Samples { start, end, .. } = spec.shard else {
        return Err(ExecError::Io(format!(
            "shard {}: not a collect shard",
            spec.shard
        )));
    };
    let Ensured {
        reused, rows: n, ..
    } = ensure_chunk(
        pair,
        &setup,
        tokens,
        (start, end),
        spec.corpus.batch_size,
        store,
        progress,
    )?;
    Ok(CollectShard {
        dictionary: setup.kind,
        layer: setup.layer,
        start,
        end,
        store: setup.store_id.clone(),
        chunk: setup.chunk_key((start, end)),
        tokens: n,
        reused,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// The training shard: every chunk gathered, the store's manifest written, the dictionary
/// trained (resuming from a checkpoint) and evaluated on the held-back slices.
pub fn train(
    shard: DictShard<'_>,
    ground_truth: Option<GroundTruth>,
    progress: Progress<'_>,
) -> Result<DictionaryReport> {
    let DictShard {
        pair,
        spec,
        identity,
        corpus,
        tokens,
        store,
    } = shard;
    let started = Instant::now();
    let d = pair.info().d_model;
    let setup = Setup::of(spec, corpus, pair, identity)?;
    check_training(&setup, spec, corpus.samples.len(), pair)?;
    let opts = setup.opts;
    let Gathered {
        counts,
        sums,
        reused,
    } = gather(
        pair,
        &setup,
        tokens,
        spec.corpus.batch_size,
        store,
        progress,
    )?;
    let n_train = setup.slices.len() - setup.held();
    let load = |i: usize| -> Result<Chunk> {
        let key = setup.chunk_key(setup.slices[i]);
        let bytes = store
            .get(&key)?
            .ok_or_else(|| ExecError::Storage(format!("chunk {key} vanished")))?;
        Chunk::from_bytes(&bytes)
    };
    let models = if setup.diff { 1 } else { 2 };
    let train_rows: u64 = counts[..n_train].iter().sum();
    let (norm, (mean_all, sq_all)) =
        normalization(&setup, &sums, n_train, train_rows, [models, d])?;
    let moments = (&mean_all, &sq_all);
    write_manifest(
        spec,
        &setup,
        &corpus.record,
        &counts,
        moments,
        d as usize,
        store,
    )?;
    let batch = opts.batch.min(train_rows as usize);
    let training = Training::new(&setup, models, batch, d, store, pair.device());
    let (mut trainer, mut curve) = training.start(norm)?;
    let resumed_at = trainer.step;
    let windows = Windows::new(counts[..n_train].to_vec(), batch, opts.seed)?;
    training.run(&mut trainer, &mut curve, windows, &load, progress)?;
    let dictionary = training.finish(&trainer.dict)?;
    let held: Vec<usize> = (n_train..setup.slices.len()).collect();
    let trained = attribution::Trained {
        pair,
        dict: &trainer.dict,
        layer: setup.layer,
        held: &held,
        load: &load,
        diff: setup.diff,
        truth: ground_truth.as_ref(),
    };
    let text = kl_share::Text {
        samples: tokens,
        skip_first: setup.skip_first,
    };
    let report = attribution::evaluate(trained, opts, text, progress)?;
    Ok(DictionaryReport {
        layer: setup.layer,
        hook: HookPoint::new(setup.layer, HookKind::ResidPost).to_string(),
        d_model: d as usize,
        dict_size: training.dict_size,
        k: training.options.k as usize,
        steps: opts.steps,
        batch,
        lr: training.options.lr,
        train_tokens: train_rows,
        eval_tokens: counts[n_train..].iter().sum(),
        training: curve,
        resumed_at,
        store: ActivationStore {
            manifest: setup.manifest_key(),
            id: setup.store_id.clone(),
            chunks: setup.slices.len(),
            tokens: counts.iter().sum(),
            chunks_reused: reused,
        },
        dictionary: Some(dictionary),
        ground_truth,
        elapsed_s: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// What training needs before any chunk is gathered: two slices at least (one held back),
/// and the sizes planning checked, again with the width the model has (a config planning
/// could not read would have skipped them).
fn check_training(
    setup: &Setup<'_>,
    spec: &ShardSpec,
    n_samples: usize,
    pair: &Pair,
) -> Result<()> {
    if setup.slices.len() < 2 {
        return Err(ExecError::Io(format!(
            "{}: {} slice(s) of the corpus; at least 2 are needed",
            setup.kind,
            setup.slices.len()
        )));
    }
    let info = pair.info();
    let facts = neurodiff_analyses::PlanFacts {
        n_layers: info.n_layers,
        n_samples: Some(n_samples),
        d_model: Some(info.d_model as usize),
        block_bytes: Vec::new(),
    };
    neurodiff_analyses::dictionary::check_sizes(setup.family, setup.opts, &spec_of(spec), &facts)
        .map_err(|e| ExecError::Io(e.to_string()))
}

/// Every chunk of the store, made or found, from the last slice back (collect shards run
/// from the first): the rows of each, their sums (in slice order) and how many were reused.
struct Gathered {
    counts: Vec<u64>,
    sums: Vec<(Tensor, Tensor)>,
    reused: usize,
}

fn gather(
    pair: &Pair,
    setup: &Setup<'_>,
    tokens: &[Vec<i64>],
    batch_size: usize,
    store: &dyn ShardStore,
    progress: Progress<'_>,
) -> Result<Gathered> {
    let mut counts = vec![0u64; setup.slices.len()];
    let mut sums = Vec::with_capacity(setup.slices.len());
    let mut reused = 0;
    for (i, &(start, end)) in setup.slices.iter().enumerate().rev() {
        let toks = tokens.get(start..end).ok_or_else(|| {
            ExecError::Io(format!(
                "slice {start}..{end}: the corpus has {} samples",
                tokens.len()
            ))
        })?;
        let e = ensure_chunk(pair, setup, toks, (start, end), batch_size, store, progress)?;
        reused += usize::from(e.reused);
        counts[i] = e.rows;
        sums.push(e.sums);
    }
    // Gathered from the last slice back; summed from the first.
    sums.reverse();
    Ok(Gathered {
        counts,
        sums,
        reused,
    })
}

/// The normalisation from the training chunks' sums, and the sums over every chunk (for the
/// store's manifest); refused when nothing varies (an SAE on the differences of two models
/// that agree at this block: there is nothing to learn, and scaling to RMS 1 would divide by
/// zero).
fn normalization(
    setup: &Setup<'_>,
    sums: &[(Tensor, Tensor)],
    n_train: usize,
    train_rows: u64,
    shape: [i64; 2],
) -> Result<(Normalization, (Tensor, Tensor))> {
    let mut sum = Tensor::f_zeros(shape, (Kind::Double, Device::Cpu))?;
    let mut sum_sq = sum.f_zeros_like()?;
    let mut mean_all = sum.f_zeros_like()?;
    let mut sq_all = sum.f_zeros_like()?;
    for (i, (s, q)) in sums.iter().enumerate() {
        if i < n_train {
            sum = sum.f_add(s)?;
            sum_sq = sum_sq.f_add(q)?;
        }
        mean_all = mean_all.f_add(s)?;
        sq_all = sq_all.f_add(q)?;
    }
    let norm = Normalization::from_sums(&sum, &sum_sq, train_rows, 1.0)?;
    let spread = sum_sq
        .f_div_scalar(train_rows.max(1) as f64)?
        .f_sub(&sum.f_div_scalar(train_rows.max(1) as f64)?.f_square()?)?
        .f_sum_dim_intlist(-1, false, Kind::Double)?;
    let smallest = Vec::<f64>::try_from(&spread)
        .map_err(CoreError::from)?
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    if smallest <= 1e-20 {
        return Err(ExecError::Io(format!(
            "{}: the activations at block {} do not vary{}; there is nothing to learn",
            setup.kind,
            setup.layer,
            if setup.diff {
                " (the two models agree there)"
            } else {
                ""
            }
        )));
    }
    Ok((norm, (mean_all, sq_all)))
}

fn write_manifest(
    spec: &ShardSpec,
    setup: &Setup<'_>,
    corpus: &neurodiff_protocol::CorpusRecord,
    counts: &[u64],
    (sum, sum_sq): (&Tensor, &Tensor),
    d: usize,
    store: &dyn ShardStore,
) -> Result<()> {
    let tokens: u64 = counts.iter().sum();
    let all = Normalization::from_sums(sum, sum_sq, tokens, 1.0)?;
    let rows = |t: &Tensor| -> Result<Vec<Vec<f64>>> {
        let flat = Vec::<f64>::try_from(&t.f_to_kind(Kind::Double)?.f_flatten(0, -1)?)
            .map_err(CoreError::from)?;
        Ok(flat.chunks(d.max(1)).map(<[f64]>::to_vec).collect())
    };
    let manifest = StoreManifest {
        id: setup.store_id.clone(),
        version: STORE_VERSION,
        base: spec.base.clone(),
        target: spec.target.clone(),
        layer: setup.layer,
        hook: HookPoint::new(setup.layer, HookKind::ResidPost).to_string(),
        models: if setup.diff {
            vec!["finetuned - base".into()]
        } else {
            vec!["base".into(), "finetuned".into()]
        },
        d_model: d,
        dtype: "f32".into(),
        corpus: neurodiff_protocol::CorpusRecord {
            samples_used: setup.slices.last().map_or(0, |s| s.1),
            ..corpus.clone()
        },
        slices: setup
            .slices
            .iter()
            .zip(counts)
            .map(|(&(start, end), &tokens)| StoreSlice {
                start,
                end,
                tokens,
                key: setup.chunk_key((start, end)),
            })
            .collect(),
        tokens,
        mean: rows(&all.mean)?,
        scale: Vec::<f64>::try_from(&all.scale.f_to_kind(Kind::Double)?)
            .map_err(CoreError::from)?,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ExecError::Io(e.to_string()))?;
    store.put(&setup.manifest_key(), json)?;
    Ok(())
}

/// The audit spec fields a size check reads, from a shard's spec.
fn spec_of(spec: &ShardSpec) -> neurodiff_protocol::AuditSpec {
    let mut audit = neurodiff_protocol::AuditSpec::new(
        spec.base.clone(),
        spec.target.clone(),
        vec![spec.shard.analysis()],
    );
    audit.corpus = spec.corpus.clone();
    audit.options.crosscoder = spec.options.crosscoder.clone();
    audit.options.sae_diff = spec.options.sae_diff.clone();
    audit
}

/// A seeded shuffle of `0..n`.
pub(crate) fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}
