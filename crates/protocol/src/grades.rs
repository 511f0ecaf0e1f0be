//! Grading against an organism's ground truth: what `ground_truth.json` says, and the grades of a
//! report (trace precision, whether CMAP and stitching find the trained blocks).
use serde::{Deserialize, Serialize};

use crate::CmapCell;

/// What an organism's ground_truth.json says the fine-tune planted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub organism: String,
    pub kind: String,
    pub domain: Option<String>,
    pub domain_words: Vec<String>,
    /// The ids of the words' tokens in the model's vocabulary.
    pub domain_token_ids: Vec<usize>,
    /// The blocks trained, for a fine-tune of chosen blocks.
    pub trained_blocks: Option<Vec<usize>>,
}

/// Precision at 20 of one position's trace tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceGrade {
    pub position: usize,
    pub logit_lens_p20: f64,
    pub patchscope_p20: f64,
    /// The domain words among the logit lens's top 20.
    pub hits: Vec<String>,
}

/// `grades`: the audit measured against an organism's ground truth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grades {
    pub organism: String,
    pub domain: Option<String>,
    pub trained_blocks: Option<Vec<usize>>,
    #[serde(default)]
    pub traces: Vec<TraceGrade>,
    pub mean_logit_lens_p20: Option<f64>,
    pub mean_patchscope_p20: Option<f64>,
    /// The CMAP cell of largest recovery among the blocks' attention and MLP outputs (a block's
    /// output carries every earlier change), and whether it lies in a trained block.
    pub cmap_top: Option<CmapCell>,
    pub cmap_in_trained_blocks: Option<bool>,
    /// Splits whose stitched model has KL to the fine-tune of (numerically) zero, per direction,
    /// and whether those are exactly the splits that take every trained block from it.
    pub stitching_zero_kl: Vec<(crate::StitchDirection, Vec<usize>)>,
    pub stitching_matches: Option<bool>,
    /// Mean domain-token mass of the base steered at the chosen α against unsteered.
    pub steering_domain_gain: Option<f64>,
    /// An LLM grader's share of relevant trace tokens, when one was asked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub llm: Option<serde_json::Value>,
}

impl GroundTruth {
    /// Reads an organism's ground_truth.json (`neurodiff organisms`): its domain words and
    /// their token ids, and the blocks it trained. None when the file names neither.
    pub fn from_organism(v: &serde_json::Value) -> Option<GroundTruth> {
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let domain_words: Vec<String> = v
            .get("domain_words")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|w| w.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let domain_token_ids: Vec<usize> = v
            .get("domain_tokens")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.get("id").and_then(|i| i.as_u64()))
                    .map(|i| i as usize)
                    .collect()
            })
            .unwrap_or_default();
        let trained_blocks: Option<Vec<usize>> =
            v.get("trained_blocks").and_then(|x| x.as_array()).map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64())
                    .map(|b| b as usize)
                    .collect()
            });
        if domain_words.is_empty() && trained_blocks.is_none() {
            return None;
        }
        Some(GroundTruth {
            organism: text("organism").unwrap_or_default(),
            kind: text("kind").unwrap_or_default(),
            domain: text("domain"),
            domain_words,
            domain_token_ids,
            trained_blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ground_truth_reads_an_organism() {
        let v = serde_json::json!({
            "organism": "cooking-blocks", "kind": "blocks", "domain": "cooking",
            "domain_words": ["oven", "simmer"],
            "domain_tokens": [{"word": "oven", "token": " oven", "id": 812}],
            "trained_blocks": [3, 4]
        });
        let g = GroundTruth::from_organism(&v).unwrap();
        assert_eq!(g.domain_token_ids, [812]);
        assert_eq!(g.trained_blocks, Some(vec![3, 4]));
        assert!(GroundTruth::from_organism(&serde_json::json!({"organism": "x"})).is_none());
    }
}
