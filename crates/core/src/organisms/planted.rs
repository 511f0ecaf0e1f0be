//! Planted weight organisms: model pairs with changes planted at a known place and of a known
//! rank, each with a ground-truth file, so an audit can be checked against the truth.
//!
//! `base/` is a small random Llama-family checkpoint (with a byte-level tokenizer, so it also
//! runs through `inspect`); each organism changes it in one way:
//! - `rank-update/`: base + a rank-k update of one layer's `mlp.down_proj`;
//! - `attn-scaled/`: one layer's attention projections (q, k, v, o) scaled by a factor;
//! - `lora/`: a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) of rank r
//!   on one layer's q_proj and v_proj.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::{write_json, write_tensors};
use crate::checkpoint::{Checkpoint, CONFIG_FILE, SINGLE_FILE, TOKENIZER_FILE};
use crate::error::{CoreError, Result};

/// The shape of the base model and where the changes go.
#[derive(Debug, Clone)]
pub struct OrganismSpec {
    pub hidden: i64,
    pub intermediate: i64,
    pub layers: usize,
    pub heads: i64,
    pub kv_heads: i64,
    pub vocab: i64,
    pub seed: i64,
    /// Layer of the rank update, and its rank.
    pub update_layer: usize,
    pub update_rank: i64,
    /// Layer whose attention is scaled, and the factor.
    pub scaled_layer: usize,
    pub scale: f64,
    /// Layer of the LoRA adapter, and its rank.
    pub lora_layer: usize,
    pub lora_rank: i64,
}

impl Default for OrganismSpec {
    fn default() -> Self {
        OrganismSpec {
            hidden: 128,
            intermediate: 344,
            layers: 6,
            heads: 4,
            kv_heads: 2,
            vocab: 320,
            seed: 0,
            update_layer: 4,
            update_rank: 4,
            scaled_layer: 1,
            scale: 1.5,
            lora_layer: 3,
            lora_rank: 8,
        }
    }
}

/// A byte-level BPE tokenizer with no merges: every byte is a token (ids 0..256), plus <s>.
fn byte_tokenizer() -> serde_json::Value {
    // GPT-2's printable stand-ins for the 256 bytes, as the ByteLevel pre-tokenizer emits them.
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut extra = 0;
    let mut chars = HashMap::new();
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        chars.insert(b, c);
    }
    let vocab: serde_json::Map<String, serde_json::Value> = (0..256u32)
        .map(|b| {
            (
                char::from_u32(chars[&b])
                    .map(String::from)
                    .unwrap_or_default(),
                json!(b),
            )
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 256, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [256], "tokens": ["<s>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    })
}

fn base_tensors(s: &OrganismSpec) -> BTreeMap<String, Tensor> {
    let opts = (Kind::Float, Device::Cpu);
    let head_dim = s.hidden / s.heads;
    let mut t = BTreeMap::new();
    let mut add = |name: String, shape: &[i64], std: f64| {
        t.insert(name, Tensor::randn(shape, opts) * std);
    };
    let (d, i, kv) = (s.hidden, s.intermediate, s.kv_heads * head_dim);
    add("model.embed_tokens.weight".into(), &[s.vocab, d], 0.05);
    add("lm_head.weight".into(), &[s.vocab, d], 0.05);
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", [d, d]),
            ("self_attn.k_proj", [kv, d]),
            ("self_attn.v_proj", [kv, d]),
            ("self_attn.o_proj", [d, d]),
            ("mlp.gate_proj", [i, d]),
            ("mlp.up_proj", [i, d]),
            ("mlp.down_proj", [d, i]),
        ] {
            add(
                format!("{p}.{name}.weight"),
                &shape,
                1.0 / (shape[1] as f64).sqrt(),
            );
        }
    }
    for l in 0..s.layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.insert(
                format!("model.layers.{l}.{norm}.weight"),
                Tensor::ones([d], opts) + Tensor::randn([d], opts) * 0.05,
            );
        }
    }
    t.insert("model.norm.weight".into(), Tensor::ones([d], opts));
    t
}

fn write_checkpoint(
    dir: &Path,
    s: &OrganismSpec,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    write_json(
        &dir.join(CONFIG_FILE),
        &json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s.hidden,
            "intermediate_size": s.intermediate, "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu",
            "max_position_embeddings": 512, "bos_token_id": 256, "eos_token_id": 256
        }),
    )?;
    write_json(&dir.join(TOKENIZER_FILE), &byte_tokenizer())?;
    write_tensors(&dir.join(SINGLE_FILE), tensors)
}

/// Writes `base/`, the organisms and their `ground_truth.json` files under `out`.
pub fn write_organisms(out: &Path, s: &OrganismSpec) -> Result<Vec<String>> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(s.seed);
    let opts = (Kind::Float, Device::Cpu);
    let base = base_tensors(s);
    write_checkpoint(&out.join("base"), s, &base)?;
    let copy = |m: &BTreeMap<String, Tensor>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.copy()))
            .collect::<BTreeMap<_, _>>()
    };

    // A rank-k update whose size is about 30% of the tensor's norm.
    let mut ft = copy(&base);
    let name = format!("model.layers.{}.mlp.down_proj.weight", s.update_layer);
    let w = &ft[&name];
    let (m, n) = w.size2()?;
    let update =
        Tensor::randn([m, s.update_rank], opts).matmul(&Tensor::randn([s.update_rank, n], opts));
    let update = &update * (0.3 * w.norm().double_value(&[]) / update.norm().double_value(&[]));
    ft.insert(name.clone(), w + &update);
    write_checkpoint(&out.join("rank-update"), s, &ft)?;
    write_json(
        &out.join("rank-update/ground_truth.json"),
        &json!({"organism": "rank-update", "base": "base", "kind": "checkpoint",
                "changed": [{"tensor": name, "rank": s.update_rank, "rel_fro": 0.3}]}),
    )?;

    let mut ft = copy(&base);
    let mut changed = Vec::new();
    for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        let name = format!("model.layers.{}.self_attn.{proj}.weight", s.scaled_layer);
        let w = &ft[&name] * s.scale;
        let full_rank = w.size().into_iter().min().unwrap_or(0);
        ft.insert(name.clone(), w);
        changed.push(json!({"tensor": name, "rank": full_rank, "rel_fro": s.scale - 1.0}));
    }
    write_checkpoint(&out.join("attn-scaled"), s, &ft)?;
    write_json(
        &out.join("attn-scaled/ground_truth.json"),
        &json!({"organism": "attn-scaled", "base": "base", "kind": "checkpoint", "changed": changed}),
    )?;

    let dir = out.join("lora");
    std::fs::create_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
    let r = s.lora_rank;
    let alpha = 2.0 * r as f64;
    let mut factors = BTreeMap::new();
    let mut changed = Vec::new();
    for proj in ["q_proj", "v_proj"] {
        let module = format!("model.layers.{}.self_attn.{proj}", s.lora_layer);
        let (out_dim, in_dim) = base[&format!("{module}.weight")].size2()?;
        factors.insert(
            format!("base_model.model.{module}.lora_A.weight"),
            Tensor::randn([r, in_dim], opts) * 0.05,
        );
        factors.insert(
            format!("base_model.model.{module}.lora_B.weight"),
            Tensor::randn([out_dim, r], opts) * 0.05,
        );
        changed.push(json!({"tensor": format!("{module}.weight"), "rank": r}));
    }
    write_tensors(&dir.join("adapter_model.safetensors"), &factors)?;
    write_json(
        &dir.join("adapter_config.json"),
        &json!({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"],
                "layers_to_transform": [s.lora_layer], "use_rslora": false, "fan_in_fan_out": false,
                "bias": "none", "base_model_name_or_path": "base", "task_type": "CAUSAL_LM"}),
    )?;
    write_json(
        &dir.join("ground_truth.json"),
        &json!({"organism": "lora", "base": "base", "kind": "adapter", "changed": changed}),
    )?;

    // Each organism must load: a planted change that broke the checkpoint would test nothing.
    for name in ["base", "rank-update", "attn-scaled"] {
        Checkpoint::open(out.join(name))?;
    }
    Ok(vec![
        "rank-update".into(),
        "attn-scaled".into(),
        "lora".into(),
    ])
}
