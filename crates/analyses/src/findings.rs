//! The verdict a newcomer reads first: per analysis that ran, what changed, where and how sure,
//! and, with an organism's ground truth, how that grades. The CLI prints the lines as its
//! one-line summary; report.html opens with them.
use neurodiff_protocol::{AnalysisKind, AuditResults, TracePosition, TracesReport};

/// One analysis's finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub analysis: AnalysisKind,
    /// What changed and where, in one line.
    pub what: String,
    /// How sure: the check the analysis carries on itself (halves, controls, coherence).
    pub sure: Option<String>,
    /// Against the ground truth, when the fine-tune is an organism.
    pub graded: Option<String>,
}

fn finding(analysis: AnalysisKind, what: String) -> Finding {
    Finding {
        analysis,
        what,
        sure: None,
        graded: None,
    }
}

/// Every finding of `r`, in the registry's order.
pub fn findings(r: &AuditResults) -> Vec<Finding> {
    let mut out = Vec::new();
    let a = &r.analyses;
    let g = r.grades.as_ref();
    if let Some(w) = &a.weights {
        out.push(finding(
            AnalysisKind::Weights,
            format!(
                "{} tensors compared; most changed {}",
                w.tensors.len(),
                w.tensors.first().map_or("-".to_string(), |t| format!(
                    "{} (rel_fro {})",
                    t.name,
                    t.rel_fro
                        .map_or("undefined: the base is zero".into(), |r| format!("{r:.3e}"))
                ))
            ),
        ));
    }
    if let Some(act) = &a.activations {
        let top = act
            .layers
            .iter()
            .filter(|l| l.hook == neurodiff_protocol::HookKind::ResidPost)
            .max_by(|x, y| x.mean_rel_diff.total_cmp(&y.mean_rel_diff));
        let first = act
            .layers
            .iter()
            .find(|l| l.mean_diff_norm > 0.0)
            .map(|l| format!("the first state that differs: block {} {}", l.layer, l.hook));
        let mut f = finding(
            AnalysisKind::Activations,
            format!(
                "{} tokens; largest relative difference {}",
                act.n_tokens,
                top.map_or("-".into(), |l| format!(
                    "{:.3e} at block {}",
                    l.mean_rel_diff, l.layer
                ))
            ),
        );
        f.sure = first.or_else(|| Some("no state differs: the two models agree".into()));
        out.push(f);
    }
    if let Some(l) = &a.logit_lens {
        out.push(finding(
            AnalysisKind::LogitLens,
            format!("output KL {:.3e} nats per token", l.output.kl_mean),
        ));
    }
    if let Some(t) = &a.traces {
        out.push(traces(t, g));
    }
    if let Some(c) = &a.cmap {
        let components = c
            .cells
            .iter()
            .filter(|x| x.component != neurodiff_protocol::Component::ResidPost);
        if let Some(top) = components.max_by(|a, b| a.recovery.total_cmp(&b.recovery)) {
            let mut f = finding(
                AnalysisKind::Cmap,
                format!(
                    "largest attention/MLP recovery {:.3} at block {} {} ({})",
                    top.recovery, top.layer, top.component, top.direction
                ),
            );
            f.graded = g.and_then(|g| g.cmap_in_trained_blocks).map(|inside| {
                format!(
                    "{} the trained blocks",
                    if inside { "inside" } else { "outside" }
                )
            });
            out.push(f);
        }
    }
    if let Some(s) = &a.stitching {
        let mut f = finding(
            AnalysisKind::Stitching,
            format!(
                "{} splits; loss base {:.3} / fine-tune {:.3}",
                s.points.len(),
                s.loss_base,
                s.loss_ft
            ),
        );
        f.graded = g.and_then(|g| g.stitching_matches).map(|m| {
            format!(
                "the splits of zero KL to the fine-tune {} the trained blocks",
                if m { "match" } else { "do not match" }
            )
        });
        out.push(f);
    }
    if let Some(s) = &a.steering {
        let mut f = finding(
            AnalysisKind::Steering,
            format!(
                "chosen α {}",
                s.chosen
                    .iter()
                    .map(|c| format!("{} at block {}: {}", c.target, c.layer, c.alpha))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        f.graded = g.and_then(|g| g.steering_domain_gain).map(|gain| {
            format!("the steered base's domain-token mass {gain:+.3} against unsteered")
        });
        out.push(f);
    }
    for (kind, d) in [
        (AnalysisKind::Crosscoder, &a.crosscoder),
        (AnalysisKind::SaeDiff, &a.sae_diff),
    ] {
        let Some(d) = d else { continue };
        let mut f = finding(
            kind,
            format!(
                "{} latents at block {}, FVE {}, L0 {:.1}, {} fine-tune-only ({} real by latent \
                 scaling){}",
                d.dict_size,
                d.layer,
                [d.fve_base, d.fve_ft]
                    .iter()
                    .flatten()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join("/"),
                d.l0,
                d.classes.ft_only,
                d.ft_only_low_nu,
                d.min_delta
                    .map_or(String::new(), |m| format!(", smallest Δ {m:.2}"))
            ),
        );
        f.graded = d.tail_domain_share.map(|s| {
            format!(
                "{:.0}% of the {} lowest-Δ latents name the domain{}",
                100.0 * s,
                d.tail.len(),
                d.tail_control_share.map_or(String::new(), |c| format!(
                    " (shuffled words: {:.0}%)",
                    100.0 * c
                ))
            )
        });
        out.push(f);
    }
    out
}

/// The position a summary reads: past the BOS, the best graded one with a ground truth, else the
/// one whose even and odd halves agree most (the larger ‖δ_j‖ on ties).
pub fn informative_position<'a>(
    t: &'a TracesReport,
    p20: &[(usize, f64)],
) -> Option<&'a TracePosition> {
    let past_bos = t.positions.iter().filter(|p| p.position >= t.skip_first);
    let score = |p: &TracePosition| {
        let graded = p20
            .iter()
            .find(|(q, _)| *q == p.position)
            .map_or(0.0, |(_, v)| *v);
        (graded, p.half_overlap, p.delta_norm)
    };
    past_bos
        .max_by(|a, b| {
            let (x, y) = (score(a), score(b));
            x.0.total_cmp(&y.0)
                .then(x.1.total_cmp(&y.1))
                .then(x.2.total_cmp(&y.2))
                .then(b.position.cmp(&a.position))
        })
        .or(t.positions.first())
}

fn traces(t: &TracesReport, g: Option<&neurodiff_protocol::Grades>) -> Finding {
    let p20: Vec<(usize, f64)> = g
        .map(|g| {
            g.traces
                .iter()
                .map(|x| (x.position, x.logit_lens_p20))
                .collect()
        })
        .unwrap_or_default();
    let Some(p) = informative_position(t, &p20) else {
        return finding(
            AnalysisKind::Traces,
            format!("block {}: no position", t.layer),
        );
    };
    let words = p
        .logit_lens
        .top_tokens
        .iter()
        .take(5)
        .map(|x| format!("{:?}", x.token))
        .collect::<Vec<_>>()
        .join(" ");
    let mut f = finding(
        AnalysisKind::Traces,
        format!("at block {}: δ_{} reads {words}", t.layer, p.position),
    );
    f.sure = Some(format!(
        "its top 20 agree {:.0}% between the even and odd samples; Patchscope at s = {} reads {}",
        100.0 * p.half_overlap,
        p.patchscope.scale,
        p.patchscope
            .top_tokens
            .iter()
            .take(5)
            .map(|x| format!("{:?}", x.token))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    f.graded = g.and_then(|g| {
        Some(format!(
            "precision at 20 of the domain words: logit lens {:.2}, Patchscope {:.2} (mean over \
             positions)",
            g.mean_logit_lens_p20?,
            g.mean_patchscope_p20.unwrap_or(0.0)
        ))
    });
    f
}

/// The CLI's one line: every finding's `what`, and its grade, joined.
pub fn summary_line(r: &AuditResults) -> String {
    findings(r)
        .iter()
        .map(|f| match &f.graded {
            Some(g) => format!("{}: {} (graded: {g})", f.analysis, f.what),
            None => format!("{}: {}", f.analysis, f.what),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use neurodiff_protocol::{Patchscope, TokenList, TracePosition, TracesReport};

    use super::informative_position;

    fn position(position: usize, half_overlap: f64, delta_norm: f64) -> TracePosition {
        TracePosition {
            position,
            n_samples: 10,
            delta_norm,
            logit_lens: TokenList { top_tokens: vec![] },
            negative: TokenList { top_tokens: vec![] },
            patchscope: Patchscope {
                scale: 1.0,
                top_tokens: vec![],
                scales: vec![],
            },
            half_top_ids: [vec![], vec![]],
            half_overlap,
            steered: vec![],
        }
    }

    fn report(skip_first: usize) -> TracesReport {
        TracesReport {
            layer: 2,
            nbar_ft: 1.0,
            skip_first,
            // The BOS's δ is the same in every sample: its halves agree fully.
            positions: vec![
                position(0, 1.0, 9.0),
                position(1, 0.8, 1.0),
                position(2, 0.8, 2.0),
                position(3, 0.4, 5.0),
            ],
            position_overlap: vec![],
            ground_truth: None,
        }
    }

    #[test]
    fn the_summary_reads_past_the_bos_where_the_halves_agree_or_the_grade_is_best() {
        let t = report(1);
        // Past the BOS: the halves agree most at 1 and 2; the larger δ breaks the tie.
        assert_eq!(informative_position(&t, &[]).unwrap().position, 2);
        // With a ground truth the best graded position wins.
        let p20 = [(1, 0.9), (2, 0.5), (3, 0.95)];
        assert_eq!(informative_position(&t, &p20).unwrap().position, 3);
        // Without a BOS, position 0 is a position like any other.
        assert_eq!(informative_position(&report(0), &[]).unwrap().position, 0);
    }
}
