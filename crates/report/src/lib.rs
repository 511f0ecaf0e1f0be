//! An audit's report, rendered to bytes by the embedded audit and by the service's fan-in
//! alike: results.json, report.html with every analysis's section and plots, the plots as SVG
//! files and the analyses' other artifacts.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use neurodiff_analyses::{AnalysisError, REGISTRY};
use neurodiff_protocol::{AuditResults, Target};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    #[error("results.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One file of a report, named by its path inside the report (`plots/heatmap.svg`).
#[derive(Debug, Clone)]
pub struct ReportFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl ReportFile {
    /// The file's content type, by extension.
    pub fn content_type(&self) -> &'static str {
        content_type(&self.name)
    }
}

/// The content type of a report file, by extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Every file of the report: results.json, report.html, the plots, then other artifacts.
pub fn render(results: &AuditResults) -> Result<Vec<ReportFile>, ReportError> {
    let mut files = vec![ReportFile {
        name: "results.json".into(),
        bytes: serde_json::to_vec_pretty(results)?,
    }];
    let mut body = String::new();
    let mut plots = Vec::new();
    let mut extra = Vec::new();
    for a in REGISTRY {
        // Each analysis's section (its heading, text and tables), then its plots under it.
        body.push_str(&a.html(results));
        for f in a.figures(results)? {
            let _ = write!(body, "<div>{}</div>", f.svg);
            plots.push(ReportFile {
                name: format!("plots/{}", f.name),
                bytes: f.svg.into_bytes(),
            });
        }
        for (name, bytes) in a.files(results)? {
            extra.push(ReportFile { name, bytes });
        }
    }
    files.push(ReportFile {
        name: "report.html".into(),
        bytes: page(results, &body).into_bytes(),
    });
    files.extend(plots);
    files.extend(extra);
    Ok(files)
}

/// Writes `files` under `dir` (which must exist).
pub fn write_dir(files: &[ReportFile], dir: &Path) -> Result<(), ReportError> {
    for f in files {
        let path = dir.join(&f.name);
        let io = |source| ReportError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, &f.bytes).map_err(io)?;
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(results: &AuditResults, body: &str) -> String {
    let mut out = String::new();
    let analyses: Vec<&str> = REGISTRY
        .iter()
        .filter(|a| !a.html(results).is_empty())
        .map(|a| a.kind().as_str())
        .collect();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>NeuroDiff audit</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} td:first-child{{text-align:left}}\
         th{{background:#f3f3f3}} code{{font-size:12px}}</style></head><body>\
         <h1>NeuroDiff audit</h1><p>base <code>{}</code> ({})<br>{} <code>{}</code> ({})<br>analyses: {}</p>",
        escape(&results.base.reference),
        escape(&results.base.content_hash),
        match results.target {
            Target::Adapter { .. } => "adapter",
            Target::Checkpoint { .. } => "fine-tuned",
        },
        escape(&results.finetuned.reference),
        escape(&results.finetuned.content_hash),
        analyses.join(", "),
    );
    if let Some(c) = &results.corpus {
        let _ = write!(
            out,
            "<p>corpus <code>{}</code> ({}): {} of {} samples, up to {} tokens each</p>",
            escape(&c.source),
            escape(&c.sha256),
            c.samples_used,
            c.samples_total,
            c.seq_len
        );
    }
    findings(&mut out, results);
    out.push_str(body);
    out.push_str("</body></html>\n");
    out
}

/// The verdict first: one item per analysis (what changed and where, how sure, and the grade
/// against the organism's ground truth when there is one), before the sections' tables.
fn findings(out: &mut String, results: &AuditResults) {
    let found = neurodiff_analyses::findings::findings(results);
    if found.is_empty() {
        return;
    }
    out.push_str("<section id=\"findings\"><h2>Findings</h2><ul>");
    for f in &found {
        let _ = write!(out, "<li><b>{}</b>: {}", f.analysis, escape(&f.what));
        if let Some(s) = &f.sure {
            let _ = write!(out, "<br>how sure: {}", escape(s));
        }
        if let Some(g) = &f.graded {
            let _ = write!(
                out,
                "<br><i>graded against the ground truth: {}</i>",
                escape(g)
            );
        }
        out.push_str("</li>");
    }
    out.push_str("</ul></section>");
}
