//! Tier II, steering with difference vectors: h ← h + α · n̄_ft · δ/‖δ‖ at every position of a
//! block's output, over a grid of α, in the base (toward the fine-tune) and in the fine-tune
//! (amplifying); curves of KL to the fine-tune, perplexity (the coherence proxy) and domain
//! mass, the largest α whose perplexity stays within a factor of the unsteered one, and
//! generations with and without it. One shard per block.
use std::fmt::Write as _;

use neurodiff_protocol::{
    Analyses, AnalysisKind, AuditResults, AuditSpec, Grades, ShardKey, SpecError, SteeringBlock,
    SteeringChoice, SteeringPoint, SteeringReport, SteeringShard, SteeringVector,
};

use crate::charts::{lines, Series};
use crate::findings::Finding;
use crate::grade::Truth;
use crate::merge_err;
use crate::Wiring;
use crate::{escape, Analysis, AnalysisError, Figure, Merge, PlanFacts};

#[derive(Debug)]
pub struct Steering;

/// The blocks steered: the option's, or the middle block.
pub fn steered_blocks(spec: &AuditSpec, n_layers: usize) -> Result<Vec<usize>, AnalysisError> {
    match &spec.options.steering.layers {
        Some(l) => crate::blocks("steering.layers", Some(l), n_layers),
        None => Ok(vec![crate::middle_block(n_layers)]),
    }
}

/// The largest α whose perplexity is within `factor` of α = 0's (0 when none is).
pub fn choose(curve: &[&SteeringPoint], factor: f64) -> Option<SteeringChoice> {
    let reference = curve.iter().find(|p| p.alpha == 0.0)?.perplexity;
    let best = curve
        .iter()
        .filter(|p| p.alpha >= 0.0 && p.perplexity.is_finite())
        .filter(|p| p.perplexity <= factor * reference)
        .max_by(|a, b| a.alpha.total_cmp(&b.alpha))?;
    Some(SteeringChoice {
        target: best.target.clone(),
        layer: best.layer,
        alpha: best.alpha,
        perplexity: best.perplexity,
    })
}

impl Analysis for Steering {
    fn plan(&self, spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardKey>, AnalysisError> {
        crate::require_corpus(self.kind(), facts)?;
        Ok(steered_blocks(spec, facts.n_layers)?
            .into_iter()
            .map(|layer| ShardKey::Block {
                analysis: AnalysisKind::Steering,
                layer,
            })
            .collect())
    }

    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError> {
        let Some(s) = &results.analyses.steering else {
            return Ok(Vec::new());
        };
        let series = |f: fn(&SteeringPoint) -> Option<f64>| -> Vec<Series> {
            let mut out = Vec::new();
            for b in &s.blocks {
                for target in ["base", "finetuned"] {
                    let points: Vec<(f64, f64)> = s
                        .curves
                        .iter()
                        .filter(|p| p.layer == b.layer && p.target == target)
                        .filter_map(|p| f(p).map(|v| (p.alpha, v)))
                        .collect();
                    if !points.is_empty() {
                        out.push(Series {
                            label: format!("{target} steered at block {}", b.layer),
                            points,
                        });
                    }
                }
            }
            out
        };
        let mut figures = vec![
            Figure {
                name: "steering_kl.svg".into(),
                svg: lines(
                    "steering_kl.svg",
                    "Steering: KL(p_ft ‖ p_steered) against α",
                    ("α (× n̄_ft along δ/‖δ‖)", "KL (nats)"),
                    &series(|p| Some(p.kl_to_ft)),
                    true,
                )?,
            },
            Figure {
                name: "steering_perplexity.svg".into(),
                svg: lines(
                    "steering_perplexity.svg",
                    &format!(
                        "Steering: perplexity on the corpus against α (chosen α: within {}× of α = 0)",
                        s.ppl_factor
                    ),
                    ("α", "perplexity"),
                    &series(|p| Some(p.perplexity)),
                    true,
                )?,
            },
        ];
        let mass = series(|p| p.domain_mass);
        if !mass.is_empty() {
            figures.push(Figure {
                name: "steering_domain_mass.svg".into(),
                svg: lines(
                    "steering_domain_mass.svg",
                    "Steering: probability mass of the ground truth's domain tokens against α",
                    ("α", "mean domain mass"),
                    &mass,
                    false,
                )?,
            });
        }
        Ok(figures)
    }

    fn grade(&self, analyses: &Analyses, _truth: Truth<'_>, g: &mut Grades) {
        let Some(s) = &analyses.steering else { return };
        g.steering.steering_domain_gain =
            s.chosen.iter().find(|c| c.target == "base").and_then(|c| {
                let at = |alpha: f64| {
                    s.curves
                        .iter()
                        .find(|p| p.target == "base" && p.layer == c.layer && p.alpha == alpha)
                        .and_then(|p| p.domain_mass)
                };
                Some(at(c.alpha)? - at(0.0)?)
            });
    }

    fn grade_rows(&self, g: &Grades) -> Vec<[String; 2]> {
        g.steering
            .steering_domain_gain
            .map(|d| {
                [
                    "steering: domain mass gained by the base at the chosen α".to_string(),
                    format!("{d:+.4}"),
                ]
            })
            .into_iter()
            .collect()
    }

    fn finding(&self, results: &AuditResults) -> Option<Finding> {
        let s = results.analyses.steering.as_ref()?;
        let chosen = s
            .chosen
            .iter()
            .map(|c| format!("{} at block {}: {}", c.target, c.layer, c.alpha))
            .collect::<Vec<_>>()
            .join(", ");
        let mut f = Finding::new(self.kind(), format!("chosen α {chosen}"));
        f.graded = results
            .grades
            .as_ref()
            .and_then(|g| g.steering.steering_domain_gain)
            .map(|gain| {
                format!("the steered base's domain-token mass {gain:+.3} against unsteered")
            });
        Some(f)
    }

    fn html(&self, results: &AuditResults) -> String {
        let Some(s) = &results.analyses.steering else {
            return String::new();
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<h2>Steering</h2><p>The vector: {}, as a unit direction times the fine-tuned \
             model's mean norm n̄_ft at the block (positions ≥ 5), added with strength α at every \
             position of the block's output; curves on {} samples of the corpus. The chosen α is \
             the largest whose perplexity stays within {}× the unsteered one.</p><table><tr>\
             <th>block</th><th>‖δ‖</th><th>n̄_ft</th><th>chosen α (base)</th>\
             <th>chosen α (fine-tune)</th></tr>",
            match s.vector {
                SteeringVector::Mean => "the block's mean difference over every token".to_string(),
                SteeringVector::Position { position } =>
                    format!("δ_{position}, the mean difference at position {position}"),
            },
            s.n_samples,
            s.ppl_factor
        );
        for b in &s.blocks {
            let chosen = |t: &str| {
                s.chosen
                    .iter()
                    .find(|c| c.layer == b.layer && c.target == t)
                    .map_or("–".into(), |c| {
                        format!("{} (ppl {:.2})", c.alpha, c.perplexity)
                    })
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
                b.layer,
                b.delta_norm,
                b.nbar_ft,
                chosen("base"),
                chosen("finetuned")
            );
        }
        out.push_str("</table>");
        out.push_str(
            "<h3>Generations</h3><table><tr><th>model</th><th>block</th><th>α</th><th>mode</th>\
             <th style=\"text-align:left\">prompt → continuation</th></tr>",
        );
        for g in &s.generations {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">\
                 <i>{}</i>{}</td></tr>",
                g.model,
                g.layer,
                g.alpha,
                g.mode,
                escape(&g.prompt),
                escape(&g.text)
            );
        }
        out.push_str("</table>");
        out
    }
}

impl Merge for Steering {
    type Wire = neurodiff_protocol::sections::Steering;

    fn merge_shards(
        &self,
        spec: &AuditSpec,
        mut shards: Vec<SteeringShard>,
    ) -> Result<SteeringReport, AnalysisError> {
        shards.sort_by_key(|s| s.layer);
        if shards.windows(2).any(|w| w[0].layer == w[1].layer) {
            return Err(merge_err::<Steering>("two shards of one block".into()));
        }
        let n_samples = shards
            .first()
            .ok_or_else(|| merge_err::<Steering>("no shard ran".into()))?
            .n_samples;
        if shards.iter().any(|s| s.n_samples != n_samples) {
            return Err(merge_err::<Steering>(
                "shards ran on different samples".into(),
            ));
        }
        if let Some(layers) = &spec.options.steering.layers {
            let got: Vec<usize> = shards.iter().map(|s| s.layer).collect();
            if &got != layers {
                return Err(merge_err::<Steering>(format!(
                    "expected the blocks {layers:?}, got shards of {got:?}"
                )));
            }
        }
        let mut report = SteeringReport {
            vector: spec.options.steering.vector,
            ppl_factor: spec.options.steering.ppl_factor,
            n_samples,
            blocks: Vec::new(),
            curves: Vec::new(),
            chosen: Vec::new(),
            generations: Vec::new(),
        };
        for s in shards {
            report.blocks.push(SteeringBlock {
                layer: s.layer,
                delta_norm: s.delta_norm,
                nbar_ft: s.nbar_ft,
            });
            report.curves.extend(s.curves);
            report.chosen.extend(s.chosen);
            report.generations.extend(s.generations);
        }
        Ok(report)
    }
}

/// Steering's flags (its generations take the shared generation flags).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Flags {
    /// Steering: blocks steered (default: the middle one), like `--layers`.
    #[arg(long)]
    pub steer_layers: Option<String>,
    /// Steering: the difference vector, `mean` (every token) or `position-J` (δ_J).
    #[arg(long, default_value = "mean", value_parser = parse_vector)]
    pub steer_vector: SteeringVector,
    /// Steering: strengths α (comma-separated), in units of the fine-tuned model's mean norm.
    #[arg(long, value_delimiter = ',')]
    pub steer_alphas: Option<Vec<f64>>,
    /// Steering: samples of the corpus the curves are measured on.
    #[arg(long, default_value_t = neurodiff_protocol::SteeringOptions::default().samples)]
    pub steer_samples: usize,
    /// Steering: the chosen α is the largest whose perplexity stays within this factor.
    #[arg(long, default_value_t = neurodiff_protocol::SteeringOptions::default().ppl_factor)]
    pub ppl_factor: f64,
}

impl Flags {
    pub fn options(
        &self,
        generation: neurodiff_protocol::GenerationOptions,
    ) -> Result<neurodiff_protocol::SteeringOptions, SpecError> {
        let default = neurodiff_protocol::SteeringOptions::default();
        let layers = match &self.steer_layers {
            Some(l) => neurodiff_protocol::parse_layers(l)
                .map_err(|e| SpecError::Field("--steer-layers".into(), e.to_string()))?,
            None => None,
        };
        Ok(neurodiff_protocol::SteeringOptions {
            layers,
            vector: self.steer_vector,
            alphas: self.steer_alphas.clone().unwrap_or(default.alphas),
            samples: self.steer_samples,
            ppl_factor: self.ppl_factor,
            generation,
        })
    }
}

fn parse_vector(s: &str) -> Result<SteeringVector, String> {
    match s.trim() {
        "mean" => Ok(SteeringVector::Mean),
        v => match v.strip_prefix("position-").map(str::parse::<usize>) {
            Some(Ok(position)) => Ok(SteeringVector::Position { position }),
            _ => Err(format!("`{v}`: expected `mean` or `position-J`")),
        },
    }
}
