//! Grading an audit against an organism's ground truth, offline: precision at 20 of domain
//! words among the trace tokens, and whether CMAP and stitching put the change in the trained
//! blocks. The embedded audit and the service grade in `assemble`; `neurodiff grade` re-grades
//! a report on disk.
use neurodiff_protocol::{Analyses, Grades, GroundTruth, StitchDirection, TokenProb, TraceGrade};

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

/// The grades of `analyses` against `gt`.
pub fn grade(analyses: &Analyses, gt: &GroundTruth, n_layers: Option<usize>) -> Grades {
    let mut g = Grades {
        organism: gt.organism.clone(),
        domain: gt.domain.clone(),
        trained_blocks: gt.trained_blocks.clone(),
        traces: Vec::new(),
        mean_logit_lens_p20: None,
        mean_patchscope_p20: None,
        cmap_top: None,
        cmap_in_trained_blocks: None,
        stitching_zero_kl: Vec::new(),
        stitching_matches: None,
        steering_domain_gain: None,
        llm: None,
    };
    if let Some(t) = &analyses.traces {
        for p in &t.positions {
            let (lens, hits) = precision_at_20(gt, &p.logit_lens.top_tokens);
            let (scope, _) = precision_at_20(gt, &p.patchscope.top_tokens);
            g.traces.push(TraceGrade {
                position: p.position,
                logit_lens_p20: lens,
                patchscope_p20: scope,
                hits,
            });
        }
        let n = g.traces.len().max(1) as f64;
        g.mean_logit_lens_p20 = Some(g.traces.iter().map(|x| x.logit_lens_p20).sum::<f64>() / n);
        g.mean_patchscope_p20 = Some(g.traces.iter().map(|x| x.patchscope_p20).sum::<f64>() / n);
    }
    // Only a fine-tune of chosen blocks leaves everything else (embeddings, final norm, the
    // other blocks) bit-identical, which is what the block-placement checks rely on.
    let trained = gt.trained_blocks.as_deref().filter(|_| gt.kind == "blocks");
    if let Some(c) = &analyses.cmap {
        // The blocks' own computations: a block's output (resid_post) carries every change
        // before it, so patching it recovers everything at and after the last changed block.
        let top = c
            .cells
            .iter()
            .filter(|c| c.component != neurodiff_protocol::Component::ResidPost)
            .max_by(|a, b| {
                a.recovery
                    .total_cmp(&b.recovery)
                    .then(b.layer.cmp(&a.layer))
            });
        if let Some(top) = top {
            g.cmap_in_trained_blocks = trained.map(|t| t.contains(&top.layer));
            g.cmap_top = Some(top.clone());
        }
    }
    if let Some(s) = &analyses.stitching {
        let n = n_layers.unwrap_or_else(|| s.points.iter().map(|p| p.k).max().unwrap_or(0));
        let mut matches = true;
        for dir in StitchDirection::ALL {
            let zero: Vec<usize> = s
                .points
                .iter()
                .filter(|p| p.direction == dir && p.kl_to_ft <= ZERO_KL)
                .map(|p| p.k)
                .collect();
            if let Some(t) = trained {
                // Every trained block comes from the fine-tune: for base_then_ft (blocks k..n
                // from the fine-tune) when k <= min(trained); for ft_then_base when k > max.
                let expected: Vec<usize> = (0..=n)
                    .filter(|&k| match dir {
                        StitchDirection::BaseThenFt => t.iter().all(|&b| b >= k),
                        StitchDirection::FtThenBase => t.iter().all(|&b| b < k),
                    })
                    .collect();
                matches &= expected == zero;
            }
            g.stitching_zero_kl.push((dir, zero));
        }
        g.stitching_matches = trained.map(|_| matches);
    }
    if let Some(s) = &analyses.steering {
        let gain = s.chosen.iter().find(|c| c.target == "base").and_then(|c| {
            let at = |alpha: f64| {
                s.curves
                    .iter()
                    .find(|p| p.target == "base" && p.layer == c.layer && p.alpha == alpha)
                    .and_then(|p| p.domain_mass)
            };
            Some(at(c.alpha)? - at(0.0)?)
        });
        g.steering_domain_gain = gain;
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
