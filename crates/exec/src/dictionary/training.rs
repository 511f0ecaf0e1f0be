//! A dictionary's training run, resumable: its checkpoint and the curve so far are kept in the
//! shard store under the run's id (the store and the options), so a retried training shard
//! resumes where the last one saved, and the trained dictionary is stored there by content.
use std::time::{Duration, Instant};

use neurodiff_core::dictionary::{Dictionary, Normalization, Shape, TrainOptions, Trainer};
use neurodiff_core::CoreError;
use neurodiff_protocol::{DictionaryOptions, StoredFile, TrainPoint};
use tch::{Device, Kind};

use super::chunks::{Chunk, Windows};
use super::Setup;
use crate::progress::Progress;
use crate::store::{sha256_hex, ShardStore};
use crate::{ExecError, Result};

/// How often training writes its checkpoint.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(120);
/// Training curve points kept in the report.
const CURVE_POINTS: usize = 200;

/// One training run of a dictionary: its options, its size, and where it keeps its state.
pub(super) struct Training<'a> {
    opts: &'a DictionaryOptions,
    /// The trainer's options.
    pub options: TrainOptions,
    pub dict_size: usize,
    shape: Shape,
    /// The store's id, the options and the models, hashed: what a resumed run must match.
    run_id: String,
    store: &'a dyn ShardStore,
    device: Device,
}

impl<'a> Training<'a> {
    /// The run of `setup`'s dictionary over `models` models of width `d`, on batches of
    /// `batch` rows.
    pub fn new(
        setup: &Setup<'a>,
        models: i64,
        batch: usize,
        d: i64,
        store: &'a dyn ShardStore,
        device: Device,
    ) -> Training<'a> {
        let opts = setup.opts;
        let dict_size = opts.dict_size(d as usize);
        let options = train_options(opts, dict_size, batch);
        let identity =
            serde_json::json!({"store": setup.store_id, "options": opts, "models": models});
        Training {
            shape: Shape {
                models,
                width: d,
                size: dict_size as i64,
                k: options.k,
            },
            opts,
            options,
            dict_size,
            run_id: sha256_hex(identity.to_string().as_bytes())[..24].to_string(),
            store,
            device,
        }
    }

    fn checkpoint_key(&self) -> String {
        format!("train/{}/checkpoint.safetensors", self.run_id)
    }

    fn curve_key(&self) -> String {
        format!("train/{}/curve.json", self.run_id)
    }

    /// The trainer and its curve so far: restored from the run's checkpoint, else fresh
    /// with the normalisation `norm`.
    pub fn start(&self, norm: Normalization) -> Result<(Trainer, Vec<TrainPoint>)> {
        let restored = restore(
            self.store,
            &self.checkpoint_key(),
            &self.options,
            self.device,
        )?;
        let trainer = match restored {
            Some(t) => t,
            None => fresh(norm, self.shape, self.opts.seed, &self.options, self.device)?,
        };
        let resumed_at = trainer.step;
        if resumed_at == 0 {
            return Ok((trainer, Vec::new()));
        }
        tracing::info!(step = resumed_at, "resuming training from its checkpoint");
        // The curve so far, kept beside the checkpoint, so a resumed report shows all of it.
        let curve = self
            .store
            .get(&self.curve_key())?
            .and_then(|b| serde_json::from_slice::<Vec<TrainPoint>>(&b).ok())
            .map(|c| c.into_iter().filter(|p| p.step < resumed_at).collect())
            .unwrap_or_default();
        Ok((trainer, curve))
    }

    /// Trains to the options' steps on `windows` of the training chunks, saving the
    /// checkpoint and the curve every [`CHECKPOINT_EVERY`] (or every
    /// `checkpoint_every_steps`) and when stopped.
    pub fn run(
        &self,
        trainer: &mut Trainer,
        curve: &mut Vec<TrainPoint>,
        mut windows: Windows,
        load: &dyn Fn(usize) -> Result<Chunk>,
        progress: Progress<'_>,
    ) -> Result<()> {
        let steps = self.opts.steps;
        let every = steps.div_ceil(CURVE_POINTS).max(1);
        let mut last_save = Instant::now();
        while trainer.step < steps {
            let rows = windows.batch(trainer.step, load)?;
            let x = trainer
                .dict
                .norm
                .apply(&rows.f_to_device(self.device)?, trainer.dict.kind())?;
            let s = trainer.step(&x)?;
            if s.step % every == 0 || s.step + 1 == steps {
                curve.push(TrainPoint {
                    step: s.step,
                    loss: s.loss,
                    fve: s.fve,
                    k: s.k,
                    dead_fraction: s.n_dead as f64 / self.dict_size as f64,
                });
            }
            let go_on = progress("step");
            let due = self
                .opts
                .checkpoint_every_steps
                .is_some_and(|n| (s.step + 1) % n == 0);
            if !go_on || due || last_save.elapsed() >= CHECKPOINT_EVERY {
                self.save(trainer, curve)?;
                last_save = Instant::now();
            }
            if !go_on {
                return Err(ExecError::Core(CoreError::Interrupted));
            }
        }
        Ok(())
    }

    fn save(&self, trainer: &Trainer, curve: &[TrainPoint]) -> Result<()> {
        let points = serde_json::to_vec(curve).map_err(|e| ExecError::Io(e.to_string()))?;
        self.store.put(&self.curve_key(), points)?;
        self.store
            .put(&self.checkpoint_key(), trainer_bytes(trainer)?)?;
        Ok(())
    }

    /// Stores the trained dictionary and drops the run's checkpoint and curve.
    pub fn finish(&self, dict: &Dictionary) -> Result<StoredFile> {
        let stored = save_dictionary(dict, &self.run_id, self.store)?;
        self.store.delete(&self.checkpoint_key())?;
        self.store.delete(&self.curve_key())?;
        Ok(stored)
    }
}

/// The trainer's options for a dictionary of `dict_size` latents trained on batches of
/// `batch` rows.
fn train_options(opts: &DictionaryOptions, dict_size: usize, batch: usize) -> TrainOptions {
    TrainOptions {
        k: opts.k.min(dict_size) as i64,
        k_max: opts.k_max.map(|k| k.min(dict_size) as i64),
        k_anneal_steps: opts.k_anneal_steps,
        lr: opts.learning_rate(dict_size),
        warmup_steps: opts.warmup_steps.min(opts.steps / 10),
        threshold_start: 1000.min(opts.steps / 2),
        dead_tokens: opts
            .dead_tokens
            .unwrap_or_else(|| (opts.steps as u64 * batch as u64 / 4).clamp(1, 10_000_000))
            as i64,
        ..TrainOptions::default()
    }
}

/// The training checkpoint an interrupted run left, if it reads (one that does not is
/// logged and the run starts over).
fn restore(
    store: &dyn ShardStore,
    key: &str,
    opts: &TrainOptions,
    device: Device,
) -> Result<Option<Trainer>> {
    Ok(match store.get(key)? {
        Some(bytes) => trainer_from_bytes(&bytes, opts, device)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "unreadable training checkpoint; starting over");
            })
            .ok(),
        None => None,
    })
}

/// The trained dictionary in the shard store, named by the run and by its content (a rerun
/// elsewhere, with another device's numerics, adds a file rather than replacing the one an
/// earlier audit recorded).
fn save_dictionary(dict: &Dictionary, run_id: &str, store: &dyn ShardStore) -> Result<StoredFile> {
    let dir = tempfile::tempdir().map_err(|e| ExecError::Io(e.to_string()))?;
    let path = dir.path().join("dictionary.safetensors");
    dict.save(&path)?;
    let bytes = std::fs::read(&path).map_err(|e| ExecError::Io(e.to_string()))?;
    let key = format!(
        "dictionaries/{run_id}-{}.safetensors",
        &sha256_hex(&bytes)[..16]
    );
    let stored = store.put(&key, bytes)?;
    Ok(StoredFile {
        location: store.locate(&key),
        key,
        bytes: stored.bytes,
        sha256: stored.sha256,
    })
}

fn fresh(
    norm: Normalization,
    shape: Shape,
    seed: u64,
    opts: &TrainOptions,
    device: Device,
) -> Result<Trainer> {
    let norm = Normalization {
        mean: norm.mean.f_to_device(device)?,
        scale: norm.scale.f_to_device(device)?,
    };
    // The anchors initialise decoder rows at norm 0.005 for their long runs at lr 1e-4; an
    // audit's short run starts them at 0.1.
    let dict = Dictionary::init(shape, 0.1, norm, seed, (Kind::Float, device))?;
    Ok(Trainer::new(dict, opts.clone())?)
}

fn trainer_bytes(trainer: &Trainer) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().map_err(|e| ExecError::Io(e.to_string()))?;
    let path = dir.path().join("checkpoint.safetensors");
    trainer.save(&path)?;
    std::fs::read(&path).map_err(|e| ExecError::Io(e.to_string()))
}

fn trainer_from_bytes(bytes: &[u8], opts: &TrainOptions, device: Device) -> Result<Trainer> {
    let dir = tempfile::tempdir().map_err(|e| ExecError::Io(e.to_string()))?;
    let path = dir.path().join("checkpoint.safetensors");
    std::fs::write(&path, bytes).map_err(|e| ExecError::Io(e.to_string()))?;
    Ok(Trainer::load(&path, opts.clone(), device)?)
}
