//! The reference policy: which model sources a deployment, and each team in it, may read.
//!
//! Every model reference a request names is hostile input. This module classifies a reference
//! (local path, `s3://` URL, hub id) and checks it against the policy lexically, without touching
//! any file or bucket, so the API can answer 400 without revealing whether anything exists. The
//! worker checks the same policy again when it opens files (canonical paths, symlinks resolved).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest reference accepted, in bytes.
pub const MAX_REFERENCE_LEN: usize = 1024;

/// A reference, classified and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// An absolute local directory, with no `.`, `..` or empty components.
    Local { path: String },
    /// An S3 bucket and a key prefix (percent-decoded, no `.`, `..` or empty segments, no
    /// trailing slash).
    S3 { bucket: String, prefix: String },
    /// A Hugging Face hub repository at a branch, tag or commit.
    Hub {
        org: String,
        name: String,
        revision: String,
    },
}

impl ModelRef {
    /// The path segments that policy prefixes are compared against.
    fn segments(&self) -> Vec<&str> {
        match self {
            ModelRef::Local { path } => path.split('/').filter(|s| !s.is_empty()).collect(),
            ModelRef::S3 { bucket, prefix } => std::iter::once(bucket.as_str())
                .chain(prefix.split('/').filter(|s| !s.is_empty()))
                .collect(),
            ModelRef::Hub { .. } => Vec::new(),
        }
    }

    /// Whether `self` lies at or under `root` (same kind, component-wise prefix).
    pub fn is_under(&self, root: &ModelRef) -> bool {
        let same_kind = matches!(
            (self, root),
            (ModelRef::Local { .. }, ModelRef::Local { .. })
                | (ModelRef::S3 { .. }, ModelRef::S3 { .. })
        );
        same_kind && self.segments().starts_with(&root.segments())
    }

    /// A hub id pinned to `revision` (a commit hash found at planning).
    pub fn hub_id(&self) -> Option<String> {
        match self {
            ModelRef::Hub {
                org,
                name,
                revision,
            } => Some(format!("{org}/{name}@{revision}")),
            _ => None,
        }
    }
}

/// Why a reference is refused. The message names the rule, never what exists where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(message.into()))
}

/// A path or key segment that cannot be used to climb out of a prefix or confuse a file system.
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('\\')
        && !s.chars().any(|c| c.is_control())
}

/// The longest team name.
pub const MAX_TEAM_NAME: usize = 64;

/// Whether `name` may name a team: 1 to 64 ASCII letters, digits, `-`, `_` or `.`, starting
/// with a letter or a digit. Team names become path segments (`{team}` roots) and object keys
/// (`teams/{team}/`), so nothing else is accepted where a team is created.
pub fn check_team_name(name: &str) -> Result<(), PolicyError> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if first_ok && chars_ok && name.len() <= MAX_TEAM_NAME {
        Ok(())
    } else {
        err(format!(
            "team name `{}`: 1 to {MAX_TEAM_NAME} ASCII letters, digits, `-`, `_` or `.`, \
             starting with a letter or a digit",
            name.escape_debug()
        ))
    }
}

fn percent_decode(s: &str) -> Result<String, PolicyError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits (from_str_radix alone would take a sign, `%+5`).
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                None => return err("a `%` that does not start a percent-encoded byte"),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PolicyError("percent-decodes to invalid UTF-8".into()))
}

fn hub_name_ok(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 96
        && !part.starts_with(['.', '-'])
        && !part.contains("..")
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A branch, tag or commit hash (`refs/pr/1` too): git ref-name rules, narrowed.
pub fn revision_ok(rev: &str) -> bool {
    !rev.is_empty()
        && rev.len() <= 256
        && !rev.ends_with(".lock")
        && rev.split('/').all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && !p.contains("..")
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// Whether `rev` is a full commit hash (the only revision that names fixed content).
pub fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// Classifies and normalises `reference`: `s3://bucket/prefix`, an absolute path, or a hub id
/// `org/name[@revision]`. Relative paths are refused: what they name depends on the process.
pub fn classify(reference: &str) -> Result<ModelRef, PolicyError> {
    if reference.len() > MAX_REFERENCE_LEN {
        return err(format!("longer than {MAX_REFERENCE_LEN} bytes"));
    }
    if reference.chars().any(|c| c.is_control()) || reference.trim() != reference {
        return err("contains control characters or surrounding spaces");
    }
    if let Some(rest) = reference.strip_prefix("s3://") {
        let (bucket, raw_prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
            && !bucket.starts_with(['.', '-']);
        if !bucket_ok {
            return err(format!("`{bucket}` is not an S3 bucket name"));
        }
        let decoded = percent_decode(raw_prefix)?;
        let trimmed = decoded.strip_suffix('/').unwrap_or(&decoded);
        if !trimmed.is_empty() && !trimmed.split('/').all(safe_segment) {
            return err(
                "the S3 prefix has an empty, `.` or `..` segment (percent-encoded ones count)",
            );
        }
        return Ok(ModelRef::S3 {
            bucket: bucket.to_string(),
            prefix: trimmed.to_string(),
        });
    }
    if reference.starts_with('/') {
        let parts: Vec<&str> = reference.split('/').filter(|s| !s.is_empty()).collect();
        if !parts.iter().all(|p| safe_segment(p)) {
            return err("the path has a `.` or `..` component");
        }
        return Ok(ModelRef::Local {
            path: format!("/{}", parts.join("/")),
        });
    }
    let (repo, revision) = match reference.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (reference, "main"),
    };
    match repo.split_once('/') {
        Some((org, name)) if hub_name_ok(org) && hub_name_ok(name) => {
            if !revision_ok(revision) {
                return err(format!("`{revision}` is not a branch, tag or commit hash"));
            }
            Ok(ModelRef::Hub {
                org: org.to_string(),
                name: name.to_string(),
                revision: revision.to_string(),
            })
        }
        _ => err("not an absolute path, an s3://bucket/prefix URL or a hub id org/name[@revision]"),
    }
}

/// Hub access: off, or on for some organisations (`*` for any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubPolicy {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub orgs: Vec<String>,
    /// Pull-request revisions (`refs/pr/N`) hold content anyone on the hub can propose, not the
    /// organisation's: refused unless this is set.
    #[serde(default)]
    pub allow_pull_requests: bool,
}

/// A team's narrowing of the deployment's policy: where it is set, a reference must also be
/// allowed here. `{team}` in a root stands for the team's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamPolicy {
    #[serde(default)]
    pub local_roots: Option<Vec<String>>,
    #[serde(default)]
    pub s3: Option<Vec<String>>,
    #[serde(default)]
    pub hub_orgs: Option<Vec<String>>,
}

/// What a deployment allows teams to name as models. Empty allows nothing. `{team}` in a root
/// stands for the submitting team's name (which must then be a plain path segment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferencePolicy {
    /// Absolute directories under which local checkpoints may be read.
    #[serde(default)]
    pub local_roots: Vec<String>,
    /// `s3://bucket[/prefix]` under which checkpoints may be read.
    #[serde(default)]
    pub s3: Vec<String>,
    #[serde(default)]
    pub hub: HubPolicy,
    #[serde(default)]
    pub teams: BTreeMap<String, TeamPolicy>,
    /// Never readable as a model, whatever the lists say: where audits write their artifacts,
    /// a worker's cache. Set by the processes, not by the file.
    #[serde(skip)]
    pub denied: Vec<String>,
}

/// Which field of a request a reference came from, for the error.
pub fn violation(field: &str, reference: &str, why: &str) -> PolicyError {
    PolicyError(format!(
        "field `{field}`: `{reference}` is refused by this deployment's reference policy: {why}"
    ))
}

impl ReferencePolicy {
    /// Parses the JSON policy file and checks every root in it.
    pub fn from_json(text: &str) -> Result<ReferencePolicy, PolicyError> {
        let p: ReferencePolicy = serde_json::from_str(text)
            .map_err(|e| PolicyError(format!("reference policy: {e}")))?;
        p.check_roots()?;
        Ok(p)
    }

    /// Every configured root must itself be a valid reference of its kind.
    pub fn check_roots(&self) -> Result<(), PolicyError> {
        let team_roots = self
            .teams
            .values()
            .flat_map(|t| t.local_roots.iter().flatten().chain(t.s3.iter().flatten()));
        for root in self
            .local_roots
            .iter()
            .chain(&self.s3)
            .chain(&self.denied)
            .chain(team_roots)
        {
            // `{team}` must be a whole segment: inside one (`/teams/{team}-private`), team
            // `x-private` would be given team `x`'s private directory.
            let whole = root
                .split('/')
                .all(|seg| !seg.contains("{team}") || seg == "{team}");
            if !whole {
                return err(format!(
                    "reference policy: root `{root}`: `{{team}}` must be a whole path segment"
                ));
            }
            let example = root.replace("{team}", "team");
            match classify(&example) {
                Ok(ModelRef::Hub { .. }) | Err(_) => {
                    return err(format!(
                        "reference policy: root `{root}` is not an absolute path or an s3:// URL"
                    ))
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Adds a location that is never readable (the artifact store, a cache directory). Object
    /// store URLs (`file:///dir`, `s3://bucket/prefix`, `memory://`) and absolute paths are
    /// accepted; anything else is an error, so a process never starts with a reserved location
    /// it cannot protect.
    pub fn deny(&mut self, location: &str) -> Result<(), PolicyError> {
        if location == "memory://" {
            return Ok(());
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        match classify(path) {
            Ok(ModelRef::Local { .. } | ModelRef::S3 { .. }) => {
                self.denied.push(path.to_string());
                Ok(())
            }
            _ => err(format!(
                "`{location}` cannot be reserved: give an absolute path, file:///dir or s3://bucket/prefix"
            )),
        }
    }

    /// Checks `reference` (from request field `field`) for `team`; the normalised reference.
    pub fn check(&self, team: &str, field: &str, reference: &str) -> Result<ModelRef, PolicyError> {
        let parsed = classify(reference)
            .map_err(|e| PolicyError(format!("field `{field}`: `{reference}`: {}", e.0)))?;
        let refuse = |why: &str| Err(violation(field, reference, why));
        let roots = |list: &[String]| -> Vec<ModelRef> {
            list.iter()
                .filter_map(|r| with_team(r, team))
                .filter_map(|r| classify(&r).ok())
                .collect()
        };
        // A reserved location (the artifact store, a cache) is refused as any location outside
        // the team's roots: the message must not tell a team where the service keeps its own.
        let reserved = roots(&self.denied).iter().any(|d| parsed.is_under(d));
        let narrowed = self.teams.get(team);
        match &parsed {
            ModelRef::Local { .. } | ModelRef::S3 { .. } => {
                let (deployment, team_list) = self.root_lists(team, &parsed);
                let kind = match parsed {
                    ModelRef::Local { .. } => "local paths",
                    _ => "s3:// prefixes",
                };
                let allowed = !reserved
                    && roots(deployment).iter().any(|r| parsed.is_under(r))
                    && team_list.is_none_or(|l| roots(l).iter().any(|r| parsed.is_under(r)));
                if !allowed {
                    let mut visible: Vec<String> = match team_list {
                        Some(l) => l.iter().filter_map(|r| with_team(r, team)).collect(),
                        None => deployment
                            .iter()
                            .filter_map(|r| with_team(r, team))
                            .collect(),
                    };
                    visible.sort();
                    return refuse(&if visible.is_empty() {
                        format!("{kind} are not allowed")
                    } else {
                        format!("{kind} must lie under {}", visible.join(", "))
                    });
                }
            }
            ModelRef::Hub { org, revision, .. } => {
                if revision.starts_with("refs/pr/") && !self.hub.allow_pull_requests {
                    return refuse(
                        "pull-request revisions hold content anyone can propose; \
                         the deployment must set hub.allow_pull_requests",
                    );
                }
                let org_in = |l: &[String]| l.iter().any(|o| o == "*" || o == org);
                let allowed = self.hub.enabled
                    && org_in(&self.hub.orgs)
                    && narrowed
                        .and_then(|t| t.hub_orgs.as_ref())
                        .is_none_or(|l| org_in(l));
                if !allowed {
                    return refuse(&format!("hub organisation `{org}` is not allowed"));
                }
            }
        }
        Ok(parsed)
    }
}

impl ReferencePolicy {
    /// The allowed roots (the deployment's and the team's own, `{team}` replaced) that
    /// `parsed` lies under lexically: a worker checks the canonical path against each.
    pub fn roots_under(&self, team: &str, parsed: &ModelRef) -> Vec<String> {
        let (deployment, team_list) = self.root_lists(team, parsed);
        deployment
            .iter()
            .chain(team_list.into_iter().flatten())
            .filter_map(|r| with_team(r, team))
            .filter(|r| classify(r).is_ok_and(|root| parsed.is_under(&root)))
            .collect()
    }

    /// The deployment's roots of `parsed`'s kind, and the team's narrowing of them if it has one.
    fn root_lists(&self, team: &str, parsed: &ModelRef) -> (&[String], Option<&[String]>) {
        let narrowed = self.teams.get(team);
        match parsed {
            ModelRef::Local { .. } => (
                &self.local_roots,
                narrowed.and_then(|t| t.local_roots.as_deref()),
            ),
            _ => (&self.s3, narrowed.and_then(|t| t.s3.as_deref())),
        }
    }
}

/// `root` with `{team}` replaced, if the team's name is a plain path segment.
fn with_team(root: &str, team: &str) -> Option<String> {
    if !root.contains("{team}") {
        return Some(root.to_string());
    }
    check_team_name(team)
        .is_ok()
        .then(|| root.replace("{team}", team))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReferencePolicy {
        let mut p = ReferencePolicy::from_json(
            r#"{"local_roots": ["/models", "/teams/{team}"],
                "s3": ["s3://models/shared", "s3://models/teams/{team}"],
                "hub": {"enabled": true, "orgs": ["meta-llama", "Qwen"]},
                "teams": {"red": {"local_roots": ["/models/red"], "hub_orgs": ["Qwen"]}}}"#,
        )
        .unwrap();
        p.deny("s3://models/shared/artifacts").unwrap();
        p
    }

    #[test]
    fn team_names_are_plain_segments() {
        for ok in ["a", "team-a", "red_team.2", "A1"] {
            assert!(check_team_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_TEAM_NAME + 1);
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "é",
            "a\n",
            long.as_str(),
        ] {
            assert!(check_team_name(bad).is_err(), "{bad:?}");
        }
        // A root with `{team}` matches nothing for a name that is not one.
        assert_eq!(with_team("/t/{team}", "../x"), None);
    }

    #[test]
    fn classifies_and_normalises() {
        assert_eq!(
            classify("/a//b/").unwrap(),
            ModelRef::Local {
                path: "/a/b".into()
            }
        );
        assert_eq!(
            classify("s3://bkt/x/y/").unwrap(),
            ModelRef::S3 {
                bucket: "bkt".into(),
                prefix: "x/y".into()
            }
        );
        assert!(classify("/a/../etc").is_err());
        assert!(classify("/a/./b").is_err());
        assert!(classify("s3://bkt/x/%2E%2E/y").is_err());
        assert!(classify("s3://bkt/x/%2e%2E").is_err());
        assert!(classify("s3://bkt/x//y").is_err());
        assert!(classify("s3://bkt/%zz").is_err());
        assert!(classify("relative/dir/x").is_err());
        assert!(classify("org/name@../../x").is_err());
        assert!(classify("org/name@main\n").is_err());
        assert!(classify("org/name@v1.0").is_ok());
        assert!(classify("org/name@refs/pr/1").is_ok());
        assert!(classify("org/name@x.lock").is_err());
        assert!(classify("../x").is_err());
    }

    #[test]
    fn enforces_roots_teams_and_denials() {
        let p = policy();
        assert!(p.check("blue", "base", "/models/llama").is_ok());
        assert!(p.check("blue", "base", "/modelsx/llama").is_err());
        assert!(p.check("blue", "base", "/").is_err());
        assert!(p.check("blue", "base", "/etc").is_err());
        assert!(p.check("blue", "base", "/teams/blue/ckpt").is_ok());
        assert!(p.check("blue", "base", "/teams/red/ckpt").is_err());
        // red is narrowed to /models/red: the deployment's other roots are closed to it.
        assert!(p.check("red", "base", "/models/red/x").is_ok());
        assert!(p.check("red", "base", "/models/blue").is_err());
        assert!(p.check("red", "base", "/teams/red/x").is_err());
        assert!(p.check("blue", "base", "s3://models/shared/llama").is_ok());
        let reserved = p
            .check("blue", "base", "s3://models/shared/artifacts/x")
            .unwrap_err()
            .0;
        let outside = p.check("blue", "base", "s3://elsewhere/x").unwrap_err().0;
        // Refused as any location outside the roots: nothing says the store lies there.
        assert!(!reserved.contains("reserved"), "{reserved}");
        assert_eq!(
            reserved.replace("models/shared/artifacts", "elsewhere"),
            outside
        );
        assert!(p.check("blue", "base", "s3://models/teams/blue/m").is_ok());
        assert!(p.check("blue", "base", "s3://models/teams/red/m").is_err());
        assert!(p.check("blue", "base", "meta-llama/Llama-3@main").is_ok());
        assert!(p
            .check("blue", "base", "meta-llama/Llama-3@refs/pr/7")
            .is_err());
        assert!(p.check("red", "base", "meta-llama/Llama-3").is_err());
        assert!(p.check("blue", "base", "evil/model").is_err());
        // A team name that is not a plain segment matches no {team} root.
        assert!(p.check("..", "base", "/teams/x").is_err());
        let e = p.check("blue", "finetuned", "/etc").unwrap_err().0;
        assert!(
            e.contains("field `finetuned`") && e.contains("/models"),
            "{e}"
        );
        assert!(ReferencePolicy::default()
            .check("t", "base", "/models/x")
            .is_err());
        assert!(ReferencePolicy::from_json(r#"{"local_roots": ["rel"]}"#).is_err());
        assert!(
            ReferencePolicy::from_json(r#"{"local_roots": ["/teams/{team}-private"]}"#).is_err()
        );
        assert!(ReferencePolicy::default()
            .deny("file://./artifacts")
            .is_err());
        assert!(classify("s3://bkt/x/%+5").is_err());
    }
}
