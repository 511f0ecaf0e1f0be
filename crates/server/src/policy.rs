//! The settings every service process shares about what teams may read and how much work an
//! audit may cause: the reference policy (a JSON file, or flags for the common cases) and the
//! limits. The API checks both at submission; workers check them again on what they open.
use std::path::PathBuf;

use anyhow::Context;
use neurodiff_protocol::{Limits, ReferencePolicy};

#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// The reference policy as a JSON file: `local_roots`, `s3`, `hub` {enabled, orgs} and
    /// per-team narrowing under `teams` (docs/security.md). Without it and without the
    /// `--allow-*` flags, no model source is allowed.
    #[arg(long, env = "NEURODIFF_POLICY")]
    pub policy: Option<PathBuf>,
    /// Allows local checkpoints under these absolute directories (`{team}` stands for the
    /// submitting team's name).
    #[arg(
        long = "allow-local",
        env = "NEURODIFF_ALLOW_LOCAL",
        value_delimiter = ','
    )]
    pub allow_local: Vec<String>,
    /// Allows `s3://bucket[/prefix]` locations (`{team}` as above).
    #[arg(long = "allow-s3", env = "NEURODIFF_ALLOW_S3", value_delimiter = ',')]
    pub allow_s3: Vec<String>,
    /// Allows hub repositories of these organisations (`*`: any).
    #[arg(
        long = "allow-hub-org",
        env = "NEURODIFF_ALLOW_HUB_ORGS",
        value_delimiter = ','
    )]
    pub allow_hub_orgs: Vec<String>,
}

impl PolicyArgs {
    /// The policy, with `reserved` (the artifact store, caches) never readable.
    pub fn load(&self, reserved: &[&str]) -> anyhow::Result<ReferencePolicy> {
        let mut policy = match &self.policy {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--policy {}", path.display()))?;
                ReferencePolicy::from_json(&text)
                    .with_context(|| format!("--policy {}", path.display()))?
            }
            None => ReferencePolicy::default(),
        };
        policy.local_roots.extend(self.allow_local.iter().cloned());
        policy.s3.extend(self.allow_s3.iter().cloned());
        if !self.allow_hub_orgs.is_empty() {
            policy.hub.enabled = true;
            policy.hub.orgs.extend(self.allow_hub_orgs.iter().cloned());
        }
        for r in reserved {
            policy.deny(r)?;
        }
        policy.check_roots()?;
        Ok(policy)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Transformer blocks a model may have; a config claiming more fails at planning.
    #[arg(long, env = "NEURODIFF_MAX_BLOCKS", default_value_t = Limits::default().max_blocks)]
    pub max_blocks: usize,
    /// Tensors a checkpoint may hold.
    #[arg(long, env = "NEURODIFF_MAX_TENSORS", default_value_t = Limits::default().max_tensors)]
    pub max_tensors: usize,
    /// Elements of a 2-D tensor whose full spectrum is computed.
    #[arg(long, env = "NEURODIFF_MAX_SPECTRUM_ELEMENTS", default_value_t = Limits::default().max_spectrum_elements)]
    pub max_spectrum_elements: u64,
    /// Bytes of weight files per model (also bounds an s3:// copy into the cache).
    #[arg(long, env = "NEURODIFF_MAX_MODEL_BYTES", default_value_t = Limits::default().max_model_bytes)]
    pub max_model_bytes: u64,
    /// Seconds planning may take.
    #[arg(long, env = "NEURODIFF_PLANNING_TIMEOUT_S", default_value_t = Limits::default().planning_timeout_s)]
    pub planning_timeout_s: u64,
    /// Seconds one shard may take.
    #[arg(long, env = "NEURODIFF_TASK_DEADLINE_S", default_value_t = Limits::default().task_deadline_s)]
    pub task_deadline_s: u64,
    /// Bytes of a corpus file (as stored, and once decompressed).
    #[arg(long, env = "NEURODIFF_MAX_CORPUS_BYTES", default_value_t = Limits::default().max_corpus_bytes)]
    pub max_corpus_bytes: u64,
    /// Tokens an audit may run each model on (max_samples × seq_len).
    #[arg(long, env = "NEURODIFF_MAX_CORPUS_TOKENS", default_value_t = Limits::default().max_corpus_tokens)]
    pub max_corpus_tokens: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_blocks: self.max_blocks,
            max_tensors: self.max_tensors,
            max_spectrum_elements: self.max_spectrum_elements,
            max_model_bytes: self.max_model_bytes,
            planning_timeout_s: self.planning_timeout_s,
            task_deadline_s: self.task_deadline_s,
            max_corpus_bytes: self.max_corpus_bytes,
            max_corpus_tokens: self.max_corpus_tokens,
        }
    }
}

/// Per-team bounds on submissions, for the API and for the scans the scheduler starts.
#[derive(Debug, Clone, clap::Args)]
pub struct QuotaArgs {
    /// Audits a team may have queued or running at once; more answer 429 (a scan waits).
    #[arg(long, env = "NEURODIFF_QUOTA_ACTIVE", default_value_t = 50)]
    pub quota_active: i64,
    /// Audits a team may submit per minute; more answer 429 with Retry-After.
    #[arg(long, env = "NEURODIFF_QUOTA_PER_MINUTE", default_value_t = 60)]
    pub quota_per_minute: i64,
    /// Scans a team may have; creating another answers 429.
    #[arg(long, env = "NEURODIFF_QUOTA_SCANS", default_value_t = 32)]
    pub quota_scans: i64,
}

impl QuotaArgs {
    pub fn quota(&self) -> neurodiff_store::Quota {
        neurodiff_store::Quota {
            max_active: self.quota_active,
            per_minute: self.quota_per_minute,
            max_scans: self.quota_scans,
        }
    }
}
