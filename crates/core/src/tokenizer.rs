//! The model's own tokenizer.json, through the `tokenizers` crate.
use std::path::Path;

use crate::checkpoint::TOKENIZER_FILE;
use crate::error::{CoreError, Result};

pub use tokenizers::Tokenizer;

/// Loads `dir/tokenizer.json`.
pub fn load(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Err(CoreError::MissingFile {
            path,
            what: "tokenizer (tokenizer.json)",
        });
    }
    Tokenizer::from_file(&path).map_err(|e| CoreError::Tokenizer {
        path,
        message: e.to_string(),
    })
}

/// Token ids for `text` with the tokenizer's special tokens added, as `tokenizer(text)` does.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| CoreError::Input(format!("cannot tokenize the prompt: {e}")))?;
    Ok(encoding.get_ids().to_vec())
}
