//! Reading and writing the organisms' files: tokenized text, model directories as
//! transformers lays them out, and the domain words' tokens for the ground truth.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tch::Tensor;
use tokenizers::Tokenizer;

use super::{bpe, Arch};
use crate::checkpoint::{CONFIG_FILE, SINGLE_FILE, TOKENIZER_FILE};
use crate::error::{CoreError, Result};
use crate::organisms::{write_json, write_tensors};

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoreError + '_ {
    move |e| CoreError::io(path, e)
}

pub(super) fn encode_all(tok: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    let encodings = tok
        .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
        .map_err(|e| CoreError::Input(format!("tokenizing organism text: {e}")))?;
    Ok(encodings
        .into_iter()
        .map(|e| e.get_ids().to_vec())
        .collect())
}

pub(super) fn write_jsonl(path: &Path, texts: &[String]) -> Result<()> {
    let mut out = String::new();
    for t in texts {
        out.push_str(&json!({ "text": t }).to_string());
        out.push('\n');
    }
    std::fs::write(path, out).map_err(io(path))
}

pub(super) fn write_model_dir(
    dir: &Path,
    arch: &Arch,
    tok: &str,
    params: &BTreeMap<String, Tensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_json(&dir.join(CONFIG_FILE), &arch.config())?;
    write_json(&dir.join("tokenizer_config.json"), &bpe::config())?;
    let tok_path = dir.join(TOKENIZER_FILE);
    std::fs::write(&tok_path, tok).map_err(io(&tok_path))?;
    write_tensors(&dir.join(SINGLE_FILE), params)
}

pub(super) fn copy_params(params: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    params
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.f_detach_copy()?)))
        .collect()
}

/// Each domain word that the tokenizer spells as one token after a space (how it appears
/// mid-sentence), with that token and its id.
pub(super) fn domain_tokens(tok: &Tokenizer, words: &[&str]) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for w in words {
        let e = tok
            .encode(format!(" {w}"), false)
            .map_err(|e| CoreError::Input(format!("tokenizing `{w}`: {e}")))?;
        if let [id] = e.get_ids() {
            out.push(json!({"word": w, "token": e.get_tokens()[0], "id": id}));
        }
    }
    Ok(out)
}
