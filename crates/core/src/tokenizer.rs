//! The model's own tokenizer.json, through the `tokenizers` crate.
use std::path::Path;
use std::str::FromStr;

use crate::checkpoint::TOKENIZER_FILE;
use crate::error::{CoreError, Result};

pub use tokenizers::Tokenizer;

/// Loads `dir/tokenizer.json`, or the tokenizer a GGUF file describes.
pub fn load(dir: &Path) -> Result<Tokenizer> {
    if let Some(file) = crate::gguf::model_file(dir)? {
        return load_gguf(&file, None);
    }
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

/// The largest tokenizer.json read (Llama 3's is about 9 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Loads `dir/tokenizer.json`, shown to `guard` first and bounded in size.
pub fn load_guarded(dir: &Path, guard: Option<&crate::guard::Guard>) -> Result<Tokenizer> {
    if let Some(file) = crate::gguf::model_file(dir)? {
        return load_gguf(&file, guard);
    }
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Err(CoreError::MissingFile {
            path,
            what: "tokenizer (tokenizer.json), which the activation analyses need",
        });
    }
    let (bytes, _) = crate::guard::read_checked(&path, "tokenizer", MAX_TOKENIZER_BYTES, guard)?;
    Tokenizer::from_bytes(&bytes).map_err(|e| CoreError::Tokenizer {
        path,
        message: e.to_string(),
    })
}

/// The tokenizer a GGUF file's metadata describes (`tokenizer.ggml.*`), built as transformers
/// builds it; only the header is read.
pub fn load_gguf(path: &Path, guard: Option<&crate::guard::Guard>) -> Result<Tokenizer> {
    let (file, _) = crate::guard::open_checked(path, "GGUF file", guard)?;
    // SAFETY: read-only map of a file the guard has vetted; see checkpoint::map_file.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| CoreError::io(path, e))?;
    let header = crate::gguf::header(path, &map)?;
    let json = crate::gguf::tokenizer_json(path, &header.metadata)?;
    Tokenizer::from_str(&json).map_err(|e| CoreError::Tokenizer {
        path: path.to_path_buf(),
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

/// How many tokens the tokenizer prepends to every text (1 for a BOS, 0 for none): the
/// positions whose state is the same whatever the text, which the corpus statistics leave out
/// by default.
pub fn prefix_len(tokenizer: &Tokenizer) -> usize {
    let ids = |special: bool| {
        tokenizer
            .encode("a", special)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    };
    let (with, without) = (ids(true), ids(false));
    if with.len() > without.len() && with.ends_with(&without) {
        with.len() - without.len()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    #[test]
    fn the_prefix_is_the_bos_a_tokenizer_adds() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for (name, bos) in [("llama", 1), ("mistral", 1), ("gpt2", 0), ("qwen2", 0)] {
            let tok = super::load(&fixtures.join(name)).unwrap();
            assert_eq!(super::prefix_len(&tok), bos, "{name}");
        }
    }
}
