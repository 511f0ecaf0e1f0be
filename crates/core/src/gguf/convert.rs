//! From llama.cpp's layout to the Hugging Face one: the config.json a GGUF's metadata implies,
//! each tensor's transformers name and shape, and the inverse of the q/k row permutation
//! llama.cpp's converter applies to Llama checkpoints (`LlamaModel.permute` in
//! `convert_hf_to_gguf.py`; transformers undoes it in `LlamaTensorProcessor`).
use std::collections::BTreeMap;

use serde_json::{json, Value};

/// The GGUF architectures NeuroDiff reads (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufArch {
    Llama,
    Qwen2,
    Qwen3,
}

impl GgufArch {
    pub const SUPPORTED: &'static str = "llama, qwen2, qwen3";

    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "llama" => GgufArch::Llama,
            "qwen2" => GgufArch::Qwen2,
            "qwen3" => GgufArch::Qwen3,
            other => {
                return Err(format!(
                    "general.architecture `{other}` is not read from GGUF; supported: {}",
                    Self::SUPPORTED
                ))
            }
        })
    }

    fn key(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Qwen2 => "qwen2",
            GgufArch::Qwen3 => "qwen3",
        }
    }
}

/// The metadata number `key`, or an error naming it.
fn num(metadata: &BTreeMap<String, Value>, key: &str) -> Result<f64, String> {
    metadata
        .get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("metadata `{key}` is missing or not a number"))
}

/// The config.json transformers would build for this file (`GGUF_CONFIG_MAPPING`).
pub fn config(
    arch: GgufArch,
    metadata: &BTreeMap<String, Value>,
    vocab_size: u64,
    tied: bool,
) -> Result<Value, String> {
    let a = arch.key();
    let get = |k: &str| num(metadata, &format!("{a}.{k}"));
    let int = |k: &str| -> Result<u64, String> {
        let v = get(k)?;
        if v >= 1.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) {
            Ok(v as u64)
        } else {
            Err(format!(
                "metadata `{a}.{k}` = {v} is not a positive integer"
            ))
        }
    };
    let heads = int("attention.head_count")?;
    let hidden = int("embedding_length")?;
    let mut config = json!({
        "model_type": a,
        "architectures": [match arch {
            GgufArch::Llama => "LlamaForCausalLM",
            GgufArch::Qwen2 => "Qwen2ForCausalLM",
            GgufArch::Qwen3 => "Qwen3ForCausalLM",
        }],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": int("feed_forward_length")?,
        "num_hidden_layers": int("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": metadata.get(&format!("{a}.attention.head_count_kv")).map_or(Ok(heads), |_| int("attention.head_count_kv"))?,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon")?,
        "rope_theta": get("rope.freq_base").unwrap_or(10000.0),
        "max_position_embeddings": int("context_length")?,
        "tie_word_embeddings": tied,
    });
    if metadata.contains_key(&format!("{a}.attention.key_length")) {
        config["head_dim"] = json!(int("attention.key_length")?);
    }
    match metadata
        .get(&format!("{a}.rope.scaling.type"))
        .and_then(Value::as_str)
    {
        None | Some("none") => {}
        Some("linear") => {
            config["rope_scaling"] =
                json!({"rope_type": "linear", "factor": get("rope.scaling.factor")?});
        }
        Some(other) => {
            return Err(format!(
                "metadata `{a}.rope.scaling.type` = `{other}` is not read; supported: none, linear"
            ))
        }
    }
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(id) = metadata.get(key).and_then(Value::as_u64) {
            config[field] = json!(id);
        }
    }
    Ok(config)
}

/// transformers' name for llama.cpp's tensor `name`, or why there is none.
pub fn hf_name(arch: GgufArch, name: &str) -> Result<String, String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => {
            return Err(format!(
                "tensor `{name}`: llama3 RoPE frequency factors are not read from GGUF yet; use the safetensors checkpoint"
            ))
        }
        _ => None,
    };
    if let Some(n) = fixed {
        return Ok(n.to_string());
    }
    let unknown = || {
        format!(
            "tensor `{name}` has no counterpart in a {} model",
            arch.key()
        )
    };
    let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, part) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let (module, suffix) = part.rsplit_once('.').ok_or_else(unknown)?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" if arch == GgufArch::Qwen3 => "self_attn.q_norm",
        "attn_k_norm" if arch == GgufArch::Qwen3 => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return Err(unknown()),
    };
    if !matches!(suffix, "weight" | "bias") {
        return Err(unknown());
    }
    Ok(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// How many heads' rows of tensor `name` llama.cpp permuted (Llama's q and k), if any.
pub fn permuted_heads(arch: GgufArch, name: &str, config: &Value) -> Option<u64> {
    if arch != GgufArch::Llama {
        return None;
    }
    let field = if name.contains(".attn_q.") {
        "num_attention_heads"
    } else if name.contains(".attn_k.") {
        "num_key_value_heads"
    } else {
        return None;
    };
    config[field].as_u64()
}

/// Undoes llama.cpp's permutation of the rows of a q or k projection: within each head, row
/// `2d + t` of the file is row `t · (rows/2) + d` of the checkpoint. `data` holds `rows` rows
/// of `row_bytes` each.
pub fn unpermute_rows(data: &[u8], heads: u64, row_bytes: usize) -> Result<Vec<u8>, String> {
    let rows = data.len() / row_bytes.max(1);
    let heads = heads as usize;
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(format!(
            "{rows} rows do not split into {heads} heads of row pairs"
        ));
    }
    let half = rows / heads / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for d in 0..half {
                let to = h * 2 * half + t * half + d;
                let from = h * 2 * half + 2 * d + t;
                out[to * row_bytes..(to + 1) * row_bytes]
                    .copy_from_slice(&data[from * row_bytes..(from + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}
