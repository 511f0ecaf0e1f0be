//! The trained organisms on a tiny schedule: the same seed writes the same bytes, a fine-tune
//! of chosen blocks leaves every other weight bit-identical, and the training forward equals
//! the audit's model on the written checkpoint.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;

use neurodiff_core::organisms::trained::{write_trained, Arch, Quiet, TinyLlama, TrainedSpec};
use neurodiff_core::{Checkpoint, Hooks, Model};
use tch::{Device, Kind, Tensor};

fn tiny(seed: u64) -> TrainedSpec {
    TrainedSpec {
        seed,
        vocab: 320,
        hidden: 32,
        intermediate: 64,
        layers: 5,
        heads: 4,
        kv_heads: 2,
        seq_len: 24,
        batch: 4,
        pretrain_steps: 6,
        finetune_steps: 3,
        trained_blocks: vec![2, 3],
        lora_rank: 2,
        domains: vec!["cooking".into()],
        corpus_samples: 400,
        threads: 1,
    }
}

fn tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn trained_organisms_are_deterministic_and_blocks_outside_training_are_untouched() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let made = write_trained(a.path(), &tiny(3), &mut Quiet).unwrap();
    assert_eq!(made, ["cooking-full", "cooking-blocks", "cooking-lora"]);
    write_trained(b.path(), &tiny(3), &mut Quiet).unwrap();
    for file in [
        "base/model.safetensors",
        "base/tokenizer.json",
        "cooking-full/model.safetensors",
        "cooking-blocks/model.safetensors",
        "cooking-lora/adapter_model.safetensors",
        "cooking-lora/adapter_config.json",
        "data/cooking.jsonl",
    ] {
        let (x, y) = (
            std::fs::read(a.path().join(file)).unwrap(),
            std::fs::read(b.path().join(file)).unwrap(),
        );
        assert!(x == y, "{file} differs between two runs with the same seed");
    }
    let other = tempfile::tempdir().unwrap();
    write_trained(other.path(), &tiny(4), &mut Quiet).unwrap();
    assert_ne!(
        std::fs::read(a.path().join("base/model.safetensors")).unwrap(),
        std::fs::read(other.path().join("base/model.safetensors")).unwrap()
    );

    let base = tensors(&a.path().join("base/model.safetensors"));
    let blocks = tensors(&a.path().join("cooking-blocks/model.safetensors"));
    let full = tensors(&a.path().join("cooking-full/model.safetensors"));
    for ((name, x), ((_, y), (_, z))) in base.iter().zip(blocks.iter().zip(&full)) {
        let trained = name.starts_with("model.layers.2.") || name.starts_with("model.layers.3.");
        assert_eq!(x.equal(y), !trained, "{name} in cooking-blocks");
        assert!(!x.equal(z), "{name} unchanged by the full fine-tune");
    }

    let truth: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.path().join("cooking-blocks/ground_truth.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(truth["kind"], "blocks");
    assert_eq!(truth["domain"], "cooking");
    assert_eq!(truth["trained_blocks"], serde_json::json!([2, 3]));
    assert!(truth["domain_words"].as_array().unwrap().len() >= 20);
    let lora: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.path().join("cooking-lora/ground_truth.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(lora["format"], "adapter");
    assert_eq!(lora["trained_blocks"], serde_json::json!([0, 1, 2, 3, 4]));
}

#[test]
fn the_training_forward_equals_the_audit_model_on_the_written_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_trained(tmp.path(), &tiny(5), &mut Quiet).unwrap();
    let dir = tmp.path().join("cooking-full");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let n = |k: &str| config[k].as_i64().unwrap();
    let arch = Arch {
        vocab: n("vocab_size"),
        hidden: n("hidden_size"),
        intermediate: n("intermediate_size"),
        layers: n("num_hidden_layers") as usize,
        heads: n("num_attention_heads"),
        kv_heads: n("num_key_value_heads"),
        bos: n("bos_token_id"),
        eos: n("eos_token_id"),
    };
    let params = tensors(&dir.join("model.safetensors"))
        .into_iter()
        .collect();
    let ids = Tensor::randint(arch.vocab, [3, 17], (Kind::Int64, Device::Cpu));
    let _guard = tch::no_grad_guard();
    let ours = TinyLlama {
        arch: &arch,
        params: &params,
        lora: None,
    }
    .logits(&ids)
    .unwrap();
    let model = Model::load(&Checkpoint::open(&dir).unwrap(), Device::Cpu).unwrap();
    let theirs = model.forward(&ids, &mut Hooks::new()).unwrap().logits;
    let err = (&ours - &theirs).abs().max().double_value(&[]);
    let scale = theirs.abs().max().double_value(&[]);
    assert!(
        err <= 1e-5 * scale.max(1.0),
        "max |diff| {err} (scale {scale})"
    );
}
