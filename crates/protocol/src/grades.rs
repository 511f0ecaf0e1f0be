//! Grading against an organism's ground truth: what `ground_truth.json` says (each analysis's
//! grades are its own type, gathered in `Grades`).
use serde::{Deserialize, Serialize};

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

    /// Each analysis's grades sit at the top level of `grades`, as results.json has always
    /// had them (docs/results-schema.md), and read back.
    #[test]
    fn grades_keep_their_flat_schema() {
        let mut g = crate::Grades {
            organism: "o".into(),
            ..crate::Grades::default()
        };
        g.cmap.cmap_in_trained_blocks = Some(true);
        g.traces.mean_logit_lens_p20 = Some(0.5);
        let v = serde_json::to_value(&g).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "cmap_in_trained_blocks",
                "cmap_top",
                "domain",
                "mean_logit_lens_p20",
                "mean_patchscope_p20",
                "organism",
                "steering_domain_gain",
                "stitching_matches",
                "stitching_zero_kl",
                "traces",
                "trained_blocks",
            ]
        );
        assert_eq!(v["cmap_in_trained_blocks"], true);
        let back: crate::Grades = serde_json::from_value(v).unwrap();
        assert_eq!(back, g);
    }

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
