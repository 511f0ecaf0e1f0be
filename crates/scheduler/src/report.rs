//! Writes an audit's results.json, its plots and a report.html that shows them.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use neurodiff_protocol::{AuditResults, TensorMetrics, WeightsReport};

use crate::{plots, ReportError};

/// The files a report consists of, relative to its directory.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub results: PathBuf,
    pub html: PathBuf,
    pub plots: Vec<PathBuf>,
}

fn write(path: &Path, contents: &str) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes everything into `dir` (which must exist).
pub fn write_report(results: &AuditResults, dir: &Path) -> Result<ReportFiles, ReportError> {
    let results_path = dir.join("results.json");
    write(&results_path, &serde_json::to_string_pretty(results)?)?;
    let plot_dir = dir.join("plots");
    std::fs::create_dir_all(&plot_dir).map_err(|source| ReportError::Io {
        path: plot_dir.clone(),
        source,
    })?;
    let mut plot_files = Vec::new();
    if let Some(w) = &results.analyses.weights {
        for (name, draw) in [
            (
                "heatmap.svg",
                plots::heatmap as fn(&WeightsReport, &Path) -> Result<(), ReportError>,
            ),
            ("layers.svg", plots::layer_bars),
            ("spectra.svg", |w: &WeightsReport, p: &Path| {
                plots::spectra(w, p, 6)
            }),
        ] {
            let path = plot_dir.join(name);
            draw(w, &path)?;
            plot_files.push(path);
        }
    }
    let html_path = dir.join("report.html");
    write(&html_path, &html(results, &plot_files)?)?;
    Ok(ReportFiles {
        results: results_path,
        html: html_path,
        plots: plot_files,
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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

fn html(results: &AuditResults, plots: &[PathBuf]) -> Result<String, ReportError> {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>NeuroDiff audit</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} td:first-child{{text-align:left}}\
         th{{background:#f3f3f3}} code{{font-size:12px}}</style></head><body>\
         <h1>NeuroDiff weight audit</h1><p>base <code>{}</code> ({})<br>{} <code>{}</code> ({})</p>",
        escape(&results.base.reference),
        escape(&results.base.content_hash),
        match results.target { neurodiff_protocol::Target::Adapter { .. } => "adapter", neurodiff_protocol::Target::Checkpoint { .. } => "fine-tuned" },
        escape(&results.finetuned.reference),
        escape(&results.finetuned.content_hash),
    );
    for plot in plots {
        let svg = std::fs::read_to_string(plot).map_err(|source| ReportError::Io {
            path: plot.clone(),
            source,
        })?;
        let _ = write!(out, "<div>{svg}</div>");
    }
    if let Some(w) = &results.analyses.weights {
        let _ = write!(out, "<h2>Most changed tensors</h2><p>{} tensors compared; ranked by relative Frobenius change.</p>", w.tensors.len());
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
    }
    out.push_str("</body></html>\n");
    Ok(out)
}
