//! Grading an audit against an organism's ground truth, offline: precision at 20 of domain
//! words among the trace tokens, and whether CMAP and stitching put the change in the trained
//! blocks. The embedded audit and the service grade in `assemble`; `neurodiff grade` re-grades
//! a report on disk.
use neurodiff_protocol::{Analyses, Grades, GroundTruth, TokenProb};

/// Whether a token names the ground truth's domain: its id is a domain word's token, or its
/// text (trimmed, lower-cased) is a domain word, or a piece of one of at least 4 characters
/// and half the word's length (BPE splits rarer forms: ' stronomers' of 'astronomers'; a
/// common piece such as 'tion' of 'navigation' does not count).
pub fn is_domain_token(gt: &GroundTruth, id: usize, text: &str) -> bool {
    if gt.domain_token_ids.contains(&id) {
        return true;
    }
    let t = text.trim().to_lowercase();
    if t.is_empty() {
        return false;
    }
    gt.domain_words.iter().any(|w| {
        let w = w.trim().to_lowercase();
        let n = t.chars().count();
        w == t || (n >= 4 && 2 * n >= w.chars().count() && w.contains(&t))
    })
}

/// Share of domain tokens among the first 20 of `list`; a shorter list (Patchscope keeps only
/// the tokens all three prompts agree on) counts its missing places as misses.
pub fn precision_at_20(gt: &GroundTruth, list: &[TokenProb]) -> (f64, Vec<String>) {
    let top: Vec<&TokenProb> = list.iter().take(20).collect();
    let hits: Vec<String> = top
        .iter()
        .filter(|t| is_domain_token(gt, t.id, &t.token))
        .map(|t| t.token.clone())
        .collect();
    (hits.len() as f64 / 20.0, hits)
}

/// KL below which a stitched model counts as the fine-tune itself (rounding of f32 forwards).
pub const ZERO_KL: f64 = 1e-9;

/// What an analysis is graded against: the organism's ground truth and the model's depth.
#[derive(Debug, Clone, Copy)]
pub struct Truth<'a> {
    pub gt: &'a GroundTruth,
    pub n_layers: Option<usize>,
}

impl Truth<'_> {
    /// The trained blocks, when only they changed: only a fine-tune of chosen blocks leaves
    /// everything else (embeddings, final norm, the other blocks) bit-identical, which is what
    /// the block-placement checks rely on.
    pub fn trained(&self) -> Option<&[usize]> {
        self.gt
            .trained_blocks
            .as_deref()
            .filter(|_| self.gt.kind == "blocks")
    }
}

/// The grades of `analyses` against `gt`: each analysis grades its own section
/// ([`crate::Analysis::grade`]).
pub fn grade(analyses: &Analyses, gt: &GroundTruth, n_layers: Option<usize>) -> Grades {
    let mut g = Grades {
        organism: gt.organism.clone(),
        domain: gt.domain.clone(),
        trained_blocks: gt.trained_blocks.clone(),
        ..Grades::default()
    };
    let truth = Truth { gt, n_layers };
    for a in crate::REGISTRY.iter() {
        a.grade(analyses, truth, &mut g);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt() -> GroundTruth {
        GroundTruth {
            organism: "astronomy-blocks".into(),
            kind: "blocks".into(),
            domain: Some("astronomy".into()),
            domain_words: vec!["telescope".into(), "astronomers".into()],
            domain_token_ids: vec![7],
            trained_blocks: Some(vec![3, 4]),
        }
    }

    #[test]
    fn domain_tokens_by_id_word_or_piece() {
        let g = gt();
        assert!(is_domain_token(&g, 7, "x"));
        assert!(is_domain_token(&g, 1, " Telescope"));
        assert!(is_domain_token(&g, 1, "stronomers"));
        assert!(!is_domain_token(&g, 1, "ast"));
        assert!(!is_domain_token(&g, 1, " the"));
        let list: Vec<TokenProb> = [(7, "a"), (2, " the"), (3, " telescope"), (4, "and")]
            .into_iter()
            .map(|(id, t)| TokenProb {
                id,
                token: t.into(),
                prob: 0.1,
            })
            .collect();
        assert_eq!(precision_at_20(&g, &list).0, 2.0 / 20.0);
        assert!(
            !is_domain_token(&g, 1, "tele"),
            "too small a piece of telescope"
        );
        assert_eq!(precision_at_20(&g, &[]).0, 0.0);
    }
}
