//! results.json's frame: the two models pinned by content, the corpus, each analysis's section
//! and the grades. Documented in docs/results-schema.md.
use serde::{Deserialize, Serialize};

use crate::spec::Target;
use crate::Analyses;

/// Bumped whenever a field changes meaning or disappears (adding optional fields does not).
pub const RESULTS_SCHEMA_VERSION: u32 = 1;

/// One side of the comparison, pinned by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// As given by the user (path or hub id).
    pub reference: String,
    /// The local directory it resolved to.
    pub resolved: String,
    /// `sha256:` of the sorted (file name, file sha256) list of its weight files.
    pub content_hash: String,
    pub files: Vec<FileHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// results.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditResults {
    pub schema_version: u32,
    pub tool_version: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub base: ModelRecord,
    pub finetuned: ModelRecord,
    pub target: Target,
    /// The corpus the activation analyses ran on (absent when none ran).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub corpus: Option<crate::CorpusRecord>,
    pub analyses: Analyses,
    /// The audit measured against the organism's ground truth, when the fine-tune has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grades: Option<crate::Grades>,
}
