//! Tier II, model stitching: blocks [0, k) of one model (with its embeddings) followed by
//! blocks [k, n) of the other (with its final norm and unembedding), for every split k and
//! both orders; KL to each parent and the language-model loss. Shards are slices of the
//! corpus; their sums merge exactly.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use neurodiff_protocol::{
    Analyses, AuditResults, AuditSpec, Grades, StitchDirection, StitchPoint, StitchShard,
    StitchingReport,
};

use crate::charts::{lines, Series};
use crate::findings::Finding;
use crate::grade::{Truth, ZERO_KL};
use crate::merge_err;
use crate::Wiring;
use crate::{check_cover, Analysis, AnalysisError, Figure, Merge};

#[derive(Debug)]
pub struct Stitching;

impl Analysis for Stitching {
    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError> {
        let Some(s) = &results.analyses.stitching else {
            return Ok(Vec::new());
        };
        let series = |dir: StitchDirection, label: &str, f: fn(&StitchPoint) -> f64| Series {
            label: format!("{dir}: {label}"),
            points: s
                .points
                .iter()
                .filter(|p| p.direction == dir)
                .map(|p| (p.k as f64, f(p)))
                .collect(),
        };
        let kl: Vec<Series> = StitchDirection::ALL
            .into_iter()
            .flat_map(|d| {
                [
                    series(d, "KL to base", |p| p.kl_to_base),
                    series(d, "KL to fine-tune", |p| p.kl_to_ft),
                ]
            })
            .collect();
        let loss: Vec<Series> = StitchDirection::ALL
            .into_iter()
            .map(|d| series(d, "loss", |p| p.loss))
            .collect();
        Ok(vec![
            Figure {
                name: "stitching_kl.svg".into(),
                svg: lines(
                    "stitching_kl.svg",
                    "Stitching landscape: KL of the stitched model to each parent, by split k",
                    ("split k (blocks [0, k) from the first model)", "KL (nats)"),
                    &kl,
                    true,
                )?,
            },
            Figure {
                name: "stitching_loss.svg".into(),
                svg: lines(
                    "stitching_loss.svg",
                    &format!(
                        "Stitching: language-model loss by split (base {:.3}, fine-tune {:.3})",
                        s.loss_base, s.loss_ft
                    ),
                    ("split k", "loss (nats)"),
                    &loss,
                    false,
                )?,
            },
        ])
    }

    fn grade(&self, analyses: &Analyses, truth: Truth<'_>, g: &mut Grades) {
        let Some(s) = &analyses.stitching else { return };
        let n = truth
            .n_layers
            .unwrap_or_else(|| s.points.iter().map(|p| p.k).max().unwrap_or(0));
        let trained = truth.trained();
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
            g.stitching.stitching_zero_kl.push((dir, zero));
        }
        g.stitching.stitching_matches = trained.map(|_| matches);
    }

    fn grade_rows(&self, g: &Grades) -> Vec<[String; 2]> {
        let s = &g.stitching;
        if s.stitching_zero_kl.is_empty() {
            return Vec::new();
        }
        vec![[
            "stitching: splits with zero KL to the fine-tune".to_string(),
            format!(
                "{}; as the trained blocks predict: {}",
                s.stitching_zero_kl
                    .iter()
                    .map(|(d, ks)| format!("{d} k = {ks:?}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                s.stitching_matches.map_or("n/a".into(), |b| b.to_string())
            ),
        ]]
    }

    fn finding(&self, results: &AuditResults) -> Option<Finding> {
        let s = results.analyses.stitching.as_ref()?;
        let mut f = Finding::new(
            self.kind(),
            format!(
                "{} splits; loss base {:.3} / fine-tune {:.3}",
                s.points.len(),
                s.loss_base,
                s.loss_ft
            ),
        );
        f.graded = results
            .grades
            .as_ref()
            .and_then(|g| g.stitching.stitching_matches)
            .map(|m| {
                format!(
                    "the splits of zero KL to the fine-tune {} the trained blocks",
                    if m { "match" } else { "do not match" }
                )
            });
        Some(f)
    }

    fn html(&self, results: &AuditResults) -> String {
        let Some(s) = &results.analyses.stitching else {
            return String::new();
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<h2>Model stitching</h2><p>{} samples ({} tokens). <code>base_then_ft</code> at k: \
             blocks [0, k) of the base with its embeddings, then blocks [k, n) of the fine-tune \
             with its final norm and unembedding; <code>ft_then_base</code> the other way round. \
             Where the KL to the fine-tune is zero, every block that changed came from it.</p>",
            s.n_samples, s.n_tokens
        );
        if let Some(g) = &results.grades {
            if let Some(m) = g.stitching.stitching_matches {
                let _ = write!(
                    out,
                    "<p>Zero KL to the fine-tune at {}: {} the trained blocks {:?}.</p>",
                    g.stitching
                        .stitching_zero_kl
                        .iter()
                        .map(|(d, ks)| format!("{d} k = {ks:?}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                    if m {
                        "exactly the splits that take"
                    } else {
                        "<b>not</b> the splits that take"
                    },
                    g.trained_blocks.clone().unwrap_or_default()
                );
            }
        }
        out
    }
}

impl Merge for Stitching {
    type Wire = neurodiff_protocol::sections::Stitching;

    fn merge_shards(
        &self,
        _spec: &AuditSpec,
        shards: Vec<StitchShard>,
    ) -> Result<StitchingReport, AnalysisError> {
        let mut ranges: Vec<(usize, usize)> = shards.iter().map(|s| (s.start, s.end)).collect();
        let n_samples = check_cover(self.kind(), &mut ranges)?;
        let (mut n_tokens, mut n_targets, mut nll_b, mut nll_f) = (0u64, 0u64, 0.0, 0.0);
        let mut sums: BTreeMap<(StitchDirection, usize), [f64; 3]> = BTreeMap::new();
        let mut keys: Option<Vec<(StitchDirection, usize)>> = None;
        let mut shards = shards;
        shards.sort_by_key(|s| s.start);
        for s in &shards {
            n_tokens += s.n_tokens;
            n_targets += s.n_targets;
            nll_b += s.nll_base;
            nll_f += s.nll_ft;
            let these: Vec<(StitchDirection, usize)> =
                s.points.iter().map(|p| (p.direction, p.k)).collect();
            match &keys {
                Some(k) if *k != these => {
                    return Err(merge_err::<Stitching>(
                        "shards disagree on the splits".into(),
                    ))
                }
                _ => keys = Some(these),
            }
            for p in &s.points {
                let e = sums.entry((p.direction, p.k)).or_default();
                e[0] += p.kl_to_base;
                e[1] += p.kl_to_ft;
                e[2] += p.nll;
            }
        }
        let (n, t) = (n_tokens.max(1) as f64, n_targets.max(1) as f64);
        let mut points: Vec<StitchPoint> = sums
            .into_iter()
            .map(|((direction, k), [b, f, l])| StitchPoint {
                k,
                direction,
                kl_to_base: b / n,
                kl_to_ft: f / n,
                loss: l / t,
            })
            .collect();
        // Directions in declaration order, then splits (the map's order already).
        points.sort_by_key(|p| (p.direction, p.k));
        Ok(StitchingReport {
            n_samples,
            n_tokens,
            loss_base: nll_b / t,
            loss_ft: nll_f / t,
            points,
        })
    }
}
