//! The verdict a newcomer reads first: per analysis that ran, what changed, where and how sure,
//! and, with an organism's ground truth, how that grades (each analysis writes its own,
//! [`crate::Analysis::finding`]). The CLI prints the lines as its one-line summary; report.html
//! opens with them.
use neurodiff_protocol::{AnalysisKind, AuditResults};

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

impl Finding {
    /// What `analysis` found, not yet checked or graded.
    pub fn new(analysis: AnalysisKind, what: String) -> Finding {
        Finding {
            analysis,
            what,
            sure: None,
            graded: None,
        }
    }
}

/// Every finding of `r`, in the registry's order.
pub fn findings(r: &AuditResults) -> Vec<Finding> {
    crate::REGISTRY
        .iter()
        .filter_map(|a| a.finding(r))
        .collect()
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
