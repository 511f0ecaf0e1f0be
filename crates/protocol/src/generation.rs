//! Generating text from a model in the analyses that show continuations (traces, steering): the
//! options, and what one continuation records.
use serde::{Deserialize, Serialize};

use crate::error::{within, within_f, SpecError};

fn check_prompts(field: &str, prompts: &[String]) -> Result<(), SpecError> {
    within(&format!("{field} (count)"), prompts.len(), 1, 16)?;
    if prompts
        .iter()
        .any(|p| p.trim().is_empty() || p.len() > 2000 || p.contains('\0'))
    {
        return Err(SpecError::Field(
            field.into(),
            "every prompt must be non-empty text of at most 2000 bytes".into(),
        ));
    }
    Ok(())
}

/// Tokens one shard may generate per mode and strength (prompts × max_new_tokens).
pub const MAX_GENERATED_TOKENS: usize = 1024;

/// How text is generated, with and without steering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationOptions {
    /// Prompts continued (the tokenizer adds BOS).
    #[serde(default = "default_prompts")]
    pub prompts: Vec<String>,
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature of the sampled continuation (the other one is greedy).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p`.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Seeds the sampler: the same seed gives the same samples.
    #[serde(default)]
    pub seed: u64,
}

fn default_prompts() -> Vec<String> {
    ["The", "In the morning, we", "Here is what I think about"]
        .map(String::from)
        .to_vec()
}

fn default_new_tokens() -> usize {
    24
}

fn default_temperature() -> f64 {
    0.8
}

fn default_top_p() -> f64 {
    0.9
}

impl Default for GenerationOptions {
    fn default() -> Self {
        GenerationOptions {
            prompts: default_prompts(),
            max_new_tokens: default_new_tokens(),
            temperature: default_temperature(),
            top_p: default_top_p(),
            seed: 0,
        }
    }
}

impl GenerationOptions {
    pub(crate) fn validate(&self, field: &str) -> Result<(), SpecError> {
        check_prompts(&format!("{field}.prompts"), &self.prompts)?;
        within(
            &format!("{field}.max_new_tokens"),
            self.max_new_tokens,
            0,
            256,
        )?;
        // Generation re-runs the sequence at every step: bound the steps of one shard.
        let steps = self.prompts.len() * self.max_new_tokens;
        if steps > MAX_GENERATED_TOKENS {
            return Err(SpecError::Field(
                format!("{field}.max_new_tokens"),
                format!(
                    "{} prompts × {} tokens = {steps}; at most {MAX_GENERATED_TOKENS} per shard",
                    self.prompts.len(),
                    self.max_new_tokens
                ),
            ));
        }
        within_f(
            &format!("{field}.temperature"),
            self.temperature,
            1e-3,
            10.0,
        )?;
        within_f(&format!("{field}.top_p"), self.top_p, 1e-3, 1.0)
    }
}

/// A continuation of a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// `base` or `finetuned`: the model that generated.
    pub model: String,
    pub layer: usize,
    /// Steering strength (0: unsteered).
    pub alpha: f64,
    /// `greedy` or `sampled`.
    pub mode: String,
    pub prompt: String,
    pub text: String,
}
