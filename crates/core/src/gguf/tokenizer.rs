//! The tokenizer a GGUF describes (`tokenizer.ggml.*`), built as transformers builds it from the
//! same metadata (`integrations/gguf/gguf_tokenizer_mapping.py`): a byte-level BPE over the
//! file's vocabulary and merges, the control tokens as special added tokens and the
//! user-defined ones as plain added tokens, the split regex `tokenizer.ggml.pre` names, and a
//! BOS only where `tokenizer.ggml.add_bos_token` says so.
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

/// llama.cpp's token types (`llama_token_type`): control and user-defined.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre`; None keeps GPT-2's byte-level split.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's printable spelling of each byte (`bytes_to_unicode`).
fn byte_spelling() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        out[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    out
}

fn strings<'a>(metadata: &'a BTreeMap<String, Value>, key: &str) -> Result<Vec<&'a str>, String> {
    metadata
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("metadata `{key}` is missing or not an array"))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| format!("metadata `{key}` holds a non-string"))
        })
        .collect()
}

/// tokenizer.json (as JSON) for the GGUF's vocabulary; refuses what is not byte-level BPE.
pub fn tokenizer_json(metadata: &BTreeMap<String, Value>) -> Result<Value, String> {
    let model = metadata
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or("metadata `tokenizer.ggml.model` is missing")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model `{model}`: only byte-level BPE (`gpt2`: Llama 3, Qwen, SmolLM, OLMo) is built from a GGUF; for a sentencepiece vocabulary use the model's own tokenizer.json in a checkpoint directory"
        ));
    }
    let tokens = strings(metadata, "tokenizer.ggml.tokens")?;
    let merges = strings(metadata, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .ok_or("metadata `tokenizer.ggml.token_type` is not an array")?
            .iter()
            .map(|t| t.as_i64().unwrap_or(0))
            .collect(),
        None => Vec::new(),
    };
    let spelling = byte_spelling();
    let alphabet: BTreeSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) {
            (*token).to_string()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    let added = |kind: i64, special: bool| {
        tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(move |(_, (t, ty))| **ty == kind && (!special || in_alphabet(t)))
            .filter(|(_, (t, _))| special || vocab.contains_key(**t))
            .map(move |(id, (t, _))| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": special})
            })
            .collect::<Vec<_>>()
    };
    let mut added_tokens = added(CONTROL, true);
    added_tokens.extend(added(USER_DEFINED, false));
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre = metadata.get("tokenizer.ggml.pre").and_then(Value::as_str);
    let pre_tokenizer = match pre.and_then(split_regex) {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        None => byte_level(true),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(metadata, &tokens)?,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    }))
}

/// BOS (and EOS) around each sequence where the file asks for them.
fn post_processor(metadata: &BTreeMap<String, Value>, tokens: &[&str]) -> Result<Value, String> {
    let flag = |key: &str| metadata.get(key).and_then(Value::as_bool).unwrap_or(false);
    let special = |key: &str| -> Result<Option<(usize, String)>, String> {
        let Some(id) = metadata.get(key) else {
            return Ok(None);
        };
        let id = id
            .as_u64()
            .map(|i| i as usize)
            .filter(|&i| i < tokens.len())
            .ok_or_else(|| {
                format!(
                    "metadata `{key}` = {id} is not a token id below {}",
                    tokens.len()
                )
            })?;
        Ok(Some((id, tokens[id].to_string())))
    };
    let mut single = Vec::new();
    let mut specials = Map::new();
    let mut wrap = |key: &str, wanted: bool, out: &mut Vec<Value>| -> Result<(), String> {
        if let (true, Some((id, content))) = (wanted, special(key)?) {
            out.push(json!({"SpecialToken": {"id": content, "type_id": 0}}));
            specials.insert(
                content.clone(),
                json!({"id": content, "ids": [id], "tokens": [content]}),
            );
        }
        Ok(())
    };
    wrap(
        "tokenizer.ggml.bos_token_id",
        flag("tokenizer.ggml.add_bos_token"),
        &mut single,
    )?;
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    wrap(
        "tokenizer.ggml.eos_token_id",
        flag("tokenizer.ggml.add_eos_token"),
        &mut single,
    )?;
    let mut pair = single.clone();
    pair.extend(single.iter().map(|p| {
        let mut p = p.clone();
        if let Some(seq) = p.get_mut("Sequence") {
            *seq = json!({"id": "B", "type_id": 1});
        }
        p
    }));
    Ok(
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}),
    )
}
