//! One narrow fine-tune of the pretrained base: every weight, chosen blocks only, or a LoRA
//! adapter, trained on one domain's text and written where transformers (or peft) reads it.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tch::Tensor;

use super::files::{copy_params, io, write_model_dir};
use super::rng::Rng;
use super::train::{self, Observer, Schedule, Windows};
use super::{model, Arch, Lora, TinyLlama, TrainedSpec};
use crate::error::Result;
use crate::organisms::{write_json, write_tensors};

/// What every fine-tune shares: the base and how it was made.
#[derive(Debug)]
pub(super) struct Shared<'a> {
    pub spec: &'a TrainedSpec,
    pub arch: &'a Arch,
    pub base: &'a BTreeMap<String, Tensor>,
    pub tok_json: &'a str,
    pub generic_eval: &'a Tensor,
    pub base_generic: f64,
}

/// The fine-tune's losses: the last training steps', and on held-out domain and generic text.
#[derive(Debug)]
pub(super) struct Losses {
    pub final_train: f64,
    pub domain: f64,
    pub generic: f64,
}

/// One fine-tune to run.
#[derive(Debug)]
pub(super) struct FineTune<'a> {
    pub name: &'a str,
    /// `full`, `blocks` or `lora`.
    pub kind: &'a str,
    pub data: &'a Windows,
    pub eval: &'a Tensor,
    pub dir: &'a Path,
}

/// Peak learning rates: a full fine-tune at 3e-4 learns the domain without forgetting all
/// else; fewer trained parameters take larger steps.
pub(super) fn peak_lr(kind: &str) -> f64 {
    match kind {
        "full" => 3e-4,
        "blocks" => 1e-3,
        _ => 2e-3,
    }
}

impl FineTune<'_> {
    /// Trains and writes the organism; returns the blocks it changed and its losses.
    pub fn train(&self, s: &Shared, observer: &mut dyn Observer) -> Result<(Vec<usize>, Losses)> {
        let spec = s.spec;
        let schedule = Schedule {
            steps: spec.finetune_steps,
            batch: spec.batch,
            peak_lr: peak_lr(self.kind),
            warmup: spec.finetune_steps / 10 + 1,
        };
        let mut rng = Rng::fork(spec.seed, &format!("finetune/{}", self.name));
        let all_blocks: Vec<usize> = (0..spec.layers).collect();
        if self.kind == "lora" {
            let init = Rng::fork(spec.seed, &format!("init/{}", self.name));
            let lora = lora_init(s.arch, spec.lora_rank, init)?;
            let params = lora
                .factors
                .values()
                .flat_map(|(a, b)| [a.shallow_clone(), b.shallow_clone()])
                .collect();
            let loss = |b: &Tensor| TinyLlama::new(s.arch, s.base, Some(&lora)).loss(b);
            let final_train = train::run(
                self.name, params, &schedule, self.data, &mut rng, observer, &loss,
            )?;
            let losses = self.evaluate(s, final_train, &loss)?;
            write_adapter(self.dir, spec.lora_rank, &lora)?;
            return Ok((all_blocks, losses));
        }
        let blocks = if self.kind == "full" {
            all_blocks
        } else {
            spec.trained_blocks.clone()
        };
        let prefixes: Vec<String> = blocks
            .iter()
            .map(|b| format!("model.layers.{b}."))
            .collect();
        let ft = copy_params(s.base)?;
        // Only these tensors reach the optimiser: every other one stays the base's, bit for bit.
        let params = ft
            .iter()
            .filter(|(k, _)| self.kind == "full" || prefixes.iter().any(|p| k.starts_with(p)))
            .map(|(_, t)| t.shallow_clone())
            .collect();
        let loss = |b: &Tensor| TinyLlama::new(s.arch, &ft, None).loss(b);
        let final_train = train::run(
            self.name, params, &schedule, self.data, &mut rng, observer, &loss,
        )?;
        let losses = self.evaluate(s, final_train, &loss)?;
        write_model_dir(self.dir, s.arch, s.tok_json, &ft)?;
        Ok((blocks, losses))
    }

    fn evaluate(
        &self,
        s: &Shared,
        final_train: f64,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Losses> {
        Ok(Losses {
            final_train,
            domain: train::evaluate(self.eval, loss)?,
            generic: train::evaluate(s.generic_eval, loss)?,
        })
    }
}

/// LoRA factors on every linear layer of every block: `a` uniform within PEFT's Kaiming
/// bound, `b` zero, so the adapter starts as the identity.
fn lora_init(arch: &Arch, r: i64, mut rng: Rng) -> Result<Lora> {
    let mut factors = BTreeMap::new();
    for l in 0..arch.layers {
        for linear in model::LINEARS {
            let [out, inp] = arch.linear_shape(linear);
            let bound = 1.0 / (inp as f64).sqrt();
            let a = rng.tensor(&[r, inp], |g| (2.0 * g.uniform() - 1.0) * bound)?;
            let b = rng.tensor(&[out, r], |_| 0.0)?;
            factors.insert(format!("model.layers.{l}.{linear}"), (a, b));
        }
    }
    Ok(Lora {
        factors,
        scale: 2.0,
    })
}

/// PEFT's layout: adapter_model.safetensors and adapter_config.json.
fn write_adapter(dir: &Path, r: i64, lora: &Lora) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tensors = BTreeMap::new();
    for (module, (a, b)) in &lora.factors {
        tensors.insert(
            format!("base_model.model.{module}.lora_A.weight"),
            a.detach(),
        );
        tensors.insert(
            format!("base_model.model.{module}.lora_B.weight"),
            b.detach(),
        );
    }
    write_tensors(&dir.join("adapter_model.safetensors"), &tensors)?;
    let targets: Vec<&str> = model::LINEARS
        .iter()
        .filter_map(|l| l.split('.').nth(1))
        .collect();
    write_json(
        &dir.join("adapter_config.json"),
        &json!({"peft_type": "LORA", "r": r, "lora_alpha": lora.scale * r as f64,
                "target_modules": targets, "lora_dropout": 0.0, "use_rslora": false,
                "fan_in_fan_out": false, "bias": "none", "base_model_name_or_path": "../base",
                "task_type": "CAUSAL_LM", "inference_mode": true}),
    )
}
