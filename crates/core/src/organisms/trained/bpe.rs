//! The organisms' tokenizer: byte-level BPE (GPT-2's scheme) trained by the `tokenizers`
//! crate, with `<s>` prepended to every text as Llama's tokenizers do.
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::error::{CoreError, Result};

pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";

fn err(message: impl std::fmt::Display) -> CoreError {
    CoreError::Input(format!("training the organisms' tokenizer: {message}"))
}

/// Trains a byte-level BPE of `vocab_size` ids on `texts` (ids 0 and 1 are `<s>` and `</s>`).
/// The trainer breaks ties between equally frequent pairs by id, so the result depends on the
/// texts alone.
pub fn train(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![
            AddedToken::from(BOS, true),
            AddedToken::from(EOS, true),
        ])
        .build();
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS}:0 $A:0"))
        .map_err(err)?
        .try_pair(format!("{BOS}:0 $A:0 {BOS}:1 $B:1"))
        .map_err(err)?
        .special_tokens(vec![(BOS, 0)])
        .build()
        .map_err(err)?;
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, TemplateProcessing, ByteLevel>::new()
            .with_model(BPE::default())
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(post))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(err)?;
    tokenizer.train(&mut trainer, texts.iter()).map_err(err)?;
    Ok(Tokenizer::from(tokenizer))
}

/// transformers' tokenizer_config.json for the trained tokenizer, so `AutoTokenizer` loads it.
pub fn config() -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "model_max_length": 512,
        "add_bos_token": false, "clean_up_tokenization_spaces": false
    })
}
