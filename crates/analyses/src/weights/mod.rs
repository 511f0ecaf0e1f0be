//! Tier I, the weight audit: one shard per block (and one for the tensors outside the
//! blocks); the fan-in ranks tensors and aggregates layers and modules; plots show where the
//! change is and what rank it has.
pub mod plots;

use std::fmt::Write as _;

use neurodiff_protocol::{
    weight_shards, AuditResults, AuditSpec, ShardKey, ShardResult, TensorMetrics, WeightsReport,
};

use crate::findings::Finding;
use crate::Wiring;
use crate::{escape, Analysis, AnalysisError, Figure, Merge, PlanFacts};

#[derive(Debug)]
pub struct Weights;

impl Analysis for Weights {
    fn plan(&self, spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardKey>, AnalysisError> {
        Ok(weight_shards(spec.layers.as_deref(), facts.n_layers)?)
    }

    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError> {
        let Some(w) = &results.analyses.weights else {
            return Ok(Vec::new());
        };
        Ok(vec![
            Figure {
                name: "heatmap.svg".into(),
                svg: plots::heatmap(w)?,
            },
            Figure {
                name: "layers.svg".into(),
                svg: plots::layer_bars(w)?,
            },
            Figure {
                name: "spectra.svg".into(),
                svg: plots::spectra(w, 6)?,
            },
        ])
    }

    fn finding(&self, results: &AuditResults) -> Option<Finding> {
        let w = results.analyses.weights.as_ref()?;
        let most = w.tensors.first().map_or("-".to_string(), |t| {
            format!(
                "{} (rel_fro {})",
                t.name,
                t.rel_fro
                    .map_or("undefined: the base is zero".into(), |r| format!("{r:.3e}"))
            )
        });
        Some(Finding::new(
            self.kind(),
            format!("{} tensors compared; most changed {most}", w.tensors.len()),
        ))
    }

    fn html(&self, results: &AuditResults) -> String {
        results
            .analyses
            .weights
            .as_ref()
            .map_or_else(String::new, html)
    }
}

impl Merge for Weights {
    type Wire = neurodiff_protocol::sections::Weights;

    fn merge_shards(
        &self,
        _spec: &AuditSpec,
        shards: Vec<ShardResult>,
    ) -> Result<WeightsReport, AnalysisError> {
        Ok(WeightsReport::from_shards(shards))
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

fn sci(v: f64) -> String {
    format!("{v:.3e}")
}

fn tensor_row(t: &TensorMetrics) -> String {
    format!(
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{:.6}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(&t.name),
        t.layer.map_or("–".into(), |l| l.to_string()),
        escape(&t.module),
        t.shape,
        t.rel_fro.map_or("– (base is 0)".into(), sci),
        sci(t.fro),
        t.cosine,
        t.spectral.map_or("–".into(), sci),
        opt(t.stable_rank),
        opt(t.effective_rank),
        t.rank_90.map_or("–".into(), |r| r.to_string()),
        t.rank_99.map_or("–".into(), |r| r.to_string()),
        t.numerical_rank.map_or("–".into(), |r| r.to_string()),
    )
}

fn html(w: &WeightsReport) -> String {
    let mut out = String::new();
    let _ = write!(out, "<h2>Weights: most changed tensors</h2><p>{} tensors compared; ranked by relative Frobenius change.</p>", w.tensors.len());
    out.push_str("<table><tr><th>tensor</th><th>layer</th><th>module</th><th>shape</th><th>rel_fro</th><th>fro</th><th>cosine</th><th>spectral</th><th>stable rank</th><th>effective rank</th><th>rank 90%</th><th>rank 99%</th><th>numerical rank</th></tr>");
    for t in w.tensors.iter().take(100) {
        out.push_str(&tensor_row(t));
    }
    out.push_str("</table>");
    let list = |title: &str, items: Vec<String>, out: &mut String| {
        if !items.is_empty() {
            let _ = write!(out, "<h3>{title}</h3><ul>");
            for i in items {
                let _ = write!(out, "<li><code>{}</code></li>", escape(&i));
            }
            out.push_str("</ul>");
        }
    };
    list("Only in the base", w.only_in_base.clone(), &mut out);
    list(
        "Only in the fine-tuned checkpoint",
        w.only_in_finetuned.clone(),
        &mut out,
    );
    list(
        "Shape mismatches",
        w.shape_mismatches
            .iter()
            .map(|s| format!("{}: {:?} vs {:?}", s.name, s.base, s.finetuned))
            .collect(),
        &mut out,
    );
    list(
        "Added rows (grown vocabulary)",
        w.added_rows
            .iter()
            .map(|a| {
                format!(
                    "{}: {} -> {} rows, ||added||_F = {:.4e}",
                    a.name, a.base_rows, a.finetuned_rows, a.added_fro
                )
            })
            .collect(),
        &mut out,
    );
    out
}

/// The weight audit's flags (`neurodiff audit`, `submit`, `scan create`).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Flags {
    /// Spectral metrics: `full` or `none` (norms only).
    #[arg(long, default_value = "full", value_parser = parse_spectrum)]
    pub spectrum: neurodiff_protocol::Spectrum,
    /// Leading singular values to report per tensor.
    #[arg(long, default_value_t = neurodiff_protocol::WeightOptions::default().top_k)]
    pub top_k: usize,
}

impl Flags {
    pub fn options(&self) -> neurodiff_protocol::WeightOptions {
        neurodiff_protocol::WeightOptions {
            spectrum: self.spectrum,
            top_k: self.top_k,
        }
    }
}

fn parse_spectrum(s: &str) -> Result<neurodiff_protocol::Spectrum, String> {
    match s {
        "full" => Ok(neurodiff_protocol::Spectrum::Full),
        "none" => Ok(neurodiff_protocol::Spectrum::None),
        other => Err(format!(
            "`{other}`: expected `full` (every singular value) or `none` (norms only)"
        )),
    }
}
