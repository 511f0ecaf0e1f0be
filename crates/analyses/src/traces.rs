//! Tier II, readable traces (ADL, "Narrow finetuning leaves clearly readable traces"): the mean
//! difference δ_j of the two models' block outputs at the first positions of unrelated text,
//! read through the fine-tuned model's logit lens and its Patchscope. One shard per position;
//! the merge adds how consistent the traces are across positions.
use std::collections::BTreeSet;
use std::fmt::Write as _;

use neurodiff_protocol::{
    Analyses, AnalysisKind, AuditResults, AuditSpec, Grades, ShardKey, TraceGrade, TracePosition,
    TraceShard, TracesReport,
};

use crate::charts::{grid, lines, Series};
use crate::findings::Finding;
use crate::grade::{precision_at_20, Truth};
use crate::merge_err;
use crate::Wiring;
use crate::{escape, Analysis, AnalysisError, Figure, Merge, PlanFacts};

#[derive(Debug)]
pub struct Traces;

/// |a ∩ b| / 20 of two top-20 lists.
pub fn overlap20(a: &[usize], b: &[usize]) -> f64 {
    let a: BTreeSet<_> = a.iter().take(20).collect();
    b.iter().take(20).filter(|x| a.contains(x)).count() as f64 / 20.0
}

impl Analysis for Traces {
    fn plan(&self, spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardKey>, AnalysisError> {
        crate::require_corpus(self.kind(), facts)?;
        if let Some(layer) = spec.options.traces.layer {
            if layer >= facts.n_layers {
                return Err(AnalysisError::Spec(neurodiff_protocol::SpecError::Field(
                    "traces.layer".into(),
                    format!("the model has {} blocks", facts.n_layers),
                )));
            }
        }
        Ok((0..spec.options.traces.positions)
            .map(|position| ShardKey::Position {
                analysis: AnalysisKind::Traces,
                position,
            })
            .collect())
    }

    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError> {
        let Some(t) = &results.analyses.traces else {
            return Ok(Vec::new());
        };
        let mut figures = Vec::new();
        let mean_cross: Vec<(f64, f64)> = t
            .position_overlap
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let others: Vec<f64> = row
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, v)| *v)
                    .collect();
                let mean = others.iter().sum::<f64>() / others.len().max(1) as f64;
                (i as f64, mean)
            })
            .collect();
        let mut series = vec![
            Series {
                label: "top-20 overlap, even vs odd samples".into(),
                points: t
                    .positions
                    .iter()
                    .map(|p| (p.position as f64, p.half_overlap))
                    .collect(),
            },
            Series {
                label: "mean top-20 overlap with the other positions".into(),
                points: mean_cross,
            },
        ];
        if let Some(g) = &results.grades {
            series.push(Series {
                label: "precision at 20 (logit lens)".into(),
                points: g
                    .traces
                    .traces
                    .iter()
                    .map(|x| (x.position as f64, x.logit_lens_p20))
                    .collect(),
            });
        }
        figures.push(Figure {
            name: "traces_consistency.svg".into(),
            svg: lines(
                "traces_consistency.svg",
                &format!(
                    "Readable traces at block {}: consistency of the top-20 tokens by position",
                    t.layer
                ),
                ("position j", "share of 20"),
                &series,
                false,
            )?,
        });
        let labels: Vec<String> = t.positions.iter().map(|p| p.position.to_string()).collect();
        figures.push(Figure {
            name: "traces_overlap.svg".into(),
            svg: grid(
                "traces_overlap.svg",
                "Top-20 logit-lens overlap of δ_i and δ_j",
                ("position", "position"),
                (&labels, &labels),
                &t.position_overlap,
                (0.0, 1.0),
            )?,
        });
        figures.push(Figure {
            name: "patchscope_scales.svg".into(),
            svg: lines(
                "patchscope_scales.svg",
                "Patchscope: tokens in the top 20 of all three prompts, not in the unpatched top 20",
                ("log10 scale", "novel agreed tokens"),
                &t.positions
                    .iter()
                    .map(|p| Series {
                        label: format!("δ_{}", p.position),
                        points: p
                            .patchscope
                            .scales
                            .iter()
                            .map(|s| (s.scale.log10(), s.novel as f64))
                            .collect(),
                    })
                    .collect::<Vec<_>>(),
                false,
            )?,
        });
        Ok(figures)
    }

    fn grade(&self, analyses: &Analyses, truth: Truth<'_>, g: &mut Grades) {
        let Some(t) = &analyses.traces else { return };
        for p in &t.positions {
            let (lens, hits) = precision_at_20(truth.gt, &p.logit_lens.top_tokens);
            let (scope, _) = precision_at_20(truth.gt, &p.patchscope.top_tokens);
            g.traces.traces.push(TraceGrade {
                position: p.position,
                logit_lens_p20: lens,
                patchscope_p20: scope,
                hits,
            });
        }
        let n = g.traces.traces.len().max(1) as f64;
        g.traces.mean_logit_lens_p20 = Some(
            g.traces
                .traces
                .iter()
                .map(|x| x.logit_lens_p20)
                .sum::<f64>()
                / n,
        );
        g.traces.mean_patchscope_p20 = Some(
            g.traces
                .traces
                .iter()
                .map(|x| x.patchscope_p20)
                .sum::<f64>()
                / n,
        );
    }

    fn grade_rows(&self, g: &Grades) -> Vec<[String; 2]> {
        let mut rows: Vec<[String; 2]> = g
            .traces
            .traces
            .iter()
            .map(|x| {
                [
                    format!("traces δ_{}: P@20 logit lens / Patchscope", x.position),
                    format!(
                        "{:.2} / {:.2}  [{}]",
                        x.logit_lens_p20,
                        x.patchscope_p20,
                        x.hits.join(",")
                    ),
                ]
            })
            .collect();
        if let (Some(l), Some(p)) = (g.traces.mean_logit_lens_p20, g.traces.mean_patchscope_p20) {
            rows.push(["traces: mean P@20".to_string(), format!("{l:.2} / {p:.2}")]);
        }
        rows
    }

    /// Each position's top 20 logit-lens tokens of δ.
    fn graded_tokens(&self, results: &AuditResults) -> Vec<(usize, Vec<String>)> {
        let positions = results.analyses.traces.iter().flat_map(|t| &t.positions);
        let top20 = |p: &TracePosition| -> Vec<String> {
            let tokens = p.logit_lens.top_tokens.iter().take(20);
            tokens.map(|t| t.token.clone()).collect()
        };
        positions.map(|p| (p.position, top20(p))).collect()
    }

    fn finding(&self, results: &AuditResults) -> Option<Finding> {
        let t = results.analyses.traces.as_ref()?;
        Some(finding(t, results.grades.as_ref()))
    }

    fn html(&self, results: &AuditResults) -> String {
        results
            .analyses
            .traces
            .as_ref()
            .map_or_else(String::new, |t| html(t, results))
    }
}

impl Merge for Traces {
    type Wire = neurodiff_protocol::sections::Traces;

    fn merge_shards(
        &self,
        spec: &AuditSpec,
        mut shards: Vec<TraceShard>,
    ) -> Result<TracesReport, AnalysisError> {
        shards.sort_by_key(|s| s.trace.position);
        let got: Vec<usize> = shards.iter().map(|s| s.trace.position).collect();
        if got != (0..spec.options.traces.positions).collect::<Vec<_>>() {
            return Err(merge_err::<Traces>(format!(
                "expected one shard per position 0..{}, got positions {got:?}",
                spec.options.traces.positions
            )));
        }
        let first = &shards[0];
        let (layer, nbar_ft, skip_first) = (first.layer, first.nbar_ft, first.skip_first);
        // Each shard measures n̄_ft on the same samples: they agree bit for bit.
        if shards
            .iter()
            .any(|s| s.layer != layer || s.nbar_ft != nbar_ft)
        {
            return Err(merge_err::<Traces>(
                "shards read different blocks or samples".into(),
            ));
        }
        let ground_truth = shards.iter().find_map(|s| s.ground_truth.clone());
        let positions: Vec<TracePosition> = shards.into_iter().map(|s| s.trace).collect();
        let ids: Vec<Vec<usize>> = positions
            .iter()
            .map(|p| p.logit_lens.top_tokens.iter().map(|t| t.id).collect())
            .collect();
        let position_overlap = ids
            .iter()
            .map(|a| ids.iter().map(|b| overlap20(a, b)).collect())
            .collect();
        Ok(TracesReport {
            layer,
            nbar_ft,
            skip_first,
            positions,
            position_overlap,
            ground_truth,
        })
    }
}

fn tokens(list: &[neurodiff_protocol::TokenProb], n: usize, hit: &dyn Fn(usize) -> bool) -> String {
    list.iter()
        .take(n)
        .map(|t| {
            let s = escape(&format!("{:?}", t.token));
            if hit(t.id) {
                format!("<b>{s}</b>")
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn html(t: &TracesReport, results: &AuditResults) -> String {
    let mut out = String::new();
    let gt = t.ground_truth.as_ref();
    let hit = |id: usize| {
        gt.is_some_and(|g| {
            crate::grade::is_domain_token(g, id, &token_text(t, id).unwrap_or_default())
        })
    };
    let _ = write!(
        out,
        "<h2>Readable traces (ADL, Patchscope)</h2><p>Block {}; δ_j = mean over samples of \
         h_ft − h_base at position j; the fine-tuned model's mean norm n̄_ft = {:.3}. Logit lens: \
         δ_j through the fine-tuned model's final norm and unembedding. Patchscope: s · δ_j/‖δ_j‖ \
         at the last token of three identity prompts.{}</p>",
        t.layer,
        t.nbar_ft,
        if gt.is_some() {
            " Domain words of the organism's ground truth in bold."
        } else {
            ""
        }
    );
    let grade = |p: usize| {
        results
            .grades
            .as_ref()
            .and_then(|g| g.traces.traces.iter().find(|x| x.position == p))
    };
    out.push_str(
        "<table><tr><th>j</th><th>‖δ_j‖</th><th style=\"text-align:left\">logit lens, top 20</th>\
         <th style=\"text-align:left\">−δ_j, top 10</th><th>scale</th>\
         <th style=\"text-align:left\">Patchscope</th><th>halves</th><th>P@20 lens / Patchscope</th></tr>",
    );
    if t.positions.iter().all(|p| p.delta_norm == 0.0) {
        let _ = write!(
            out,
            "<p><b>Every δ_j is zero: the two models compute the same states at block {}</b> \
             (the fine-tune changed nothing before it); the token lists below carry no trace. \
             Read a later block with <code>--trace-layer</code>.</p>",
            t.layer
        );
    }
    for p in &t.positions {
        let g = grade(p.position).map_or("–".into(), |g| {
            format!("{:.2} / {:.2}", g.logit_lens_p20, g.patchscope_p20)
        });
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.3}</td><td style=\"text-align:left\">{}</td>\
             <td style=\"text-align:left\">{}</td><td>{:.2}</td><td style=\"text-align:left\">{}</td>\
             <td>{:.2}</td><td>{g}</td></tr>",
            p.position,
            p.delta_norm,
            tokens(&p.logit_lens.top_tokens, 20, &hit),
            tokens(&p.negative.top_tokens, 10, &hit),
            p.patchscope.scale,
            tokens(&p.patchscope.top_tokens, 20, &hit),
            p.half_overlap,
        );
    }
    out.push_str("</table>");
    if let Some(p) = t.positions.iter().find(|p| !p.steered.is_empty()) {
        let _ = write!(
            out,
            "<h3>The fine-tuned model steered with δ_{}</h3><table><tr><th>α</th><th>mode</th>\
             <th style=\"text-align:left\">prompt → continuation</th></tr>",
            p.position
        );
        for g in &p.steered {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td style=\"text-align:left\"><i>{}</i>{}</td></tr>",
                g.alpha,
                g.mode,
                escape(&g.prompt),
                escape(&g.text)
            );
        }
        out.push_str("</table>");
    }
    out
}

fn token_text(t: &TracesReport, id: usize) -> Option<String> {
    t.positions
        .iter()
        .flat_map(|p| {
            p.logit_lens
                .top_tokens
                .iter()
                .chain(&p.patchscope.top_tokens)
                .chain(&p.negative.top_tokens)
        })
        .find(|x| x.id == id)
        .map(|x| x.token.clone())
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

fn finding(t: &TracesReport, g: Option<&Grades>) -> Finding {
    let p20: Vec<(usize, f64)> = g
        .map(|g| {
            g.traces
                .traces
                .iter()
                .map(|x| (x.position, x.logit_lens_p20))
                .collect()
        })
        .unwrap_or_default();
    let Some(p) = informative_position(t, &p20) else {
        return Finding::new(
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
    let mut f = Finding::new(
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
            g.traces.mean_logit_lens_p20?,
            g.traces.mean_patchscope_p20.unwrap_or(0.0)
        ))
    });
    f
}

/// The readable traces' flags (their generations take the shared generation flags).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Flags {
    /// Readable traces: samples averaged into δ_j (the whole corpus when it has fewer).
    #[arg(long, default_value_t = neurodiff_protocol::TraceOptions::default().samples)]
    pub trace_samples: usize,
    /// Readable traces: the block read (default: the middle one, int(0.5 · (n − 1))).
    #[arg(long)]
    pub trace_layer: Option<usize>,
}

impl Flags {
    pub fn options(
        &self,
        generation: neurodiff_protocol::GenerationOptions,
    ) -> neurodiff_protocol::TraceOptions {
        neurodiff_protocol::TraceOptions {
            samples: self.trace_samples,
            layer: self.trace_layer,
            generation,
            ..neurodiff_protocol::TraceOptions::default()
        }
    }
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
