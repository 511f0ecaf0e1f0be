//! Tier I: what fine-tuning changed in the weights, one layer shard at a time.
//!
//! A shard reads only its own tensors (memory-mapped), so its peak memory is about two copies
//! of one layer. Planning and fan-in live in `neurodiff_protocol`; this is the executor's math.
pub mod dense;
pub mod lora;
pub mod spectrum;

use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;

use neurodiff_protocol::{ShardKey, ShardResult, WeightOptions};
use tch::Device;

use crate::checkpoint::{Checkpoint, CONFIG_FILE};
use crate::error::{CoreError, Result};
use dense::Compared;
use lora::Adapter;

/// What the base is compared with.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Checkpoint(&'a Checkpoint),
    Adapter(&'a Adapter),
}

/// The tensors a shard will analyse, in order (for progress reporting and planning).
pub fn shard_tensors(base: &Checkpoint, target: Target<'_>, shard: ShardKey) -> Vec<String> {
    match target {
        Target::Checkpoint(ft) => base
            .names()
            .filter(|n| ShardKey::of_tensor(n) == shard && ft.contains(n))
            .map(str::to_string)
            .collect(),
        Target::Adapter(adapter) => adapter
            .pairs
            .keys()
            .filter(|n| ShardKey::of_tensor(n) == shard)
            .cloned()
            .collect(),
    }
}

/// Runs one shard, its linear algebra on `device`. `on_tensor` is called after each tensor;
/// returning `false` stops the shard with [`CoreError::Interrupted`] (between tensors).
pub fn analyze_shard(
    base: &Checkpoint,
    target: Target<'_>,
    shard: ShardKey,
    opts: &WeightOptions,
    device: Device,
    on_tensor: &mut (dyn FnMut(&str) -> bool + Send),
) -> Result<ShardResult> {
    let _guard = tch::no_grad_guard();
    let start = Instant::now();
    let mut result = ShardResult {
        shard,
        tensors: Vec::new(),
        only_in_base: Vec::new(),
        only_in_finetuned: Vec::new(),
        shape_mismatches: Vec::new(),
        added_rows: Vec::new(),
        elapsed_s: 0.0,
    };
    let in_shard = |n: &&str| ShardKey::of_tensor(n) == shard;
    match target {
        Target::Checkpoint(ft) => {
            let (shared, only_base): (Vec<&str>, Vec<&str>) =
                base.names().filter(in_shard).partition(|n| ft.contains(n));
            result.only_in_base = only_base.into_iter().map(str::to_string).collect();
            // On the CPU the tensors of a shard run concurrently: the Gram GEMMs use libtorch's
            // threads but the eigensolver is sequential, so two at once keep both cores busy.
            // On a GPU they run in turn (and libtorch's lazy loading of its CUDA linear-algebra
            // library is not safe to race).
            let progress = Mutex::new(on_tensor);
            let one = |name: &&str| {
                let c = dense::compare(base, ft, name, opts, device)?;
                let go_on = match progress.lock() {
                    Ok(mut tick) => tick(name),
                    Err(_) => true,
                };
                if go_on {
                    Ok(c)
                } else {
                    Err(CoreError::Interrupted)
                }
            };
            let compared = if device.is_cuda() {
                shared.iter().map(one).collect::<Result<Vec<_>>>()?
            } else {
                shared.par_iter().map(one).collect::<Result<Vec<_>>>()?
            };
            for c in compared {
                match c {
                    Compared::Metrics(m, added) => {
                        result.tensors.push(*m);
                        result.added_rows.extend(added);
                    }
                    Compared::ShapeMismatch(s) => result.shape_mismatches.push(s),
                }
            }
            result.only_in_finetuned = ft
                .names()
                .filter(in_shard)
                .filter(|n| !base.contains(n))
                .map(str::to_string)
                .collect();
        }
        Target::Adapter(adapter) => {
            for pair in adapter
                .pairs
                .values()
                .filter(|p| ShardKey::of_tensor(&p.base_name) == shard)
            {
                result
                    .tensors
                    .push(adapter.metrics(base, pair, opts, device)?);
                if !on_tensor(&pair.base_name) {
                    return Err(CoreError::Interrupted);
                }
            }
        }
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    Ok(result)
}

/// The number of transformer blocks, from config.json.
pub fn n_layers(ckpt: &Checkpoint) -> Result<usize> {
    let config = ckpt.config_json()?;
    ["num_hidden_layers", "n_layer"]
        .iter()
        .find_map(|k| config.get(*k).and_then(|v| v.as_u64()))
        .map(|n| n as usize)
        .ok_or_else(|| CoreError::Config {
            path: ckpt.dir().join(CONFIG_FILE),
            message: "neither `num_hidden_layers` nor `n_layer` is set".into(),
        })
}

/// Refuses to compare checkpoints of different architectures or sizes, naming the field.
pub fn check_compatible(base: &Checkpoint, ft: &Checkpoint) -> Result<()> {
    let (b, f) = (base.config_json()?, ft.config_json()?);
    for field in [
        "model_type",
        "hidden_size",
        "n_embd",
        "num_hidden_layers",
        "n_layer",
        "num_attention_heads",
        "n_head",
        "intermediate_size",
    ] {
        let (x, y) = (b.get(field), f.get(field));
        if x != y {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
            return Err(CoreError::Config {
                path: ft.dir().join(CONFIG_FILE),
                message: format!(
                    "field `{field}` is {} here but {} in the base {}: these checkpoints are not the same architecture",
                    show(y),
                    show(x),
                    base.dir().join(CONFIG_FILE).display()
                ),
            });
        }
    }
    Ok(())
}
