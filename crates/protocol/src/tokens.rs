//! Tokens as the analyses report them: an id, its text and its probability.
use serde::{Deserialize, Serialize};

/// A token and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenProb {
    pub id: usize,
    pub token: String,
    pub prob: f64,
}

/// `analyses.traces.positions[].logit_lens` (and `.negative`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub top_tokens: Vec<TokenProb>,
}
