//! Tier III on the trained organisms (cached under ~/.cache/neurodiff by seed and version): a
//! crosscoder between the base and a narrow full fine-tune finds fine-tune-only latents, the
//! real (low-ν) ones read as the fine-tune's domain, and a base-vs-base control finds none;
//! the SAE on differences runs on the same pair. Small dictionaries, so this stays fast.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::audit;
use neurodiff_core::organisms::trained::{cached, Quiet};
use neurodiff_protocol::{AnalysisKind, AuditSpec, DictionaryReport, Target};

fn organisms() -> PathBuf {
    cached(0, &mut Quiet).unwrap()
}

fn spec(base: &Path, target: &Path, analyses: Vec<AnalysisKind>) -> AuditSpec {
    let mut spec = AuditSpec::new(
        base.display().to_string(),
        Target::Checkpoint {
            reference: target.display().to_string(),
        },
        analyses,
    );
    spec.corpus.max_samples = 512;
    spec.corpus.seq_len = 32;
    spec.corpus.batch_size = 64;
    for o in [&mut spec.crosscoder, &mut spec.sae_diff] {
        o.expansion = 4;
        o.k = 16;
        o.batch = 512;
        o.steps = 800;
        o.lr = Some(3e-3);
        o.samples = 512;
    }
    spec.validate().unwrap();
    spec
}

fn describe(name: &str, r: &DictionaryReport) {
    eprintln!(
        "{name}: FVE base {:?} ft {:?}, L0 {:.1}, dead {:.2}, classes {:?}, ft_only low ν {}, \
         domain share {:?}",
        r.fve_base, r.fve_ft, r.l0, r.dead_fraction, r.classes, r.ft_only_low_nu, r.domain_share
    );
    for l in r.latents.iter().filter(|l| l.class == "ft_only").take(12) {
        let tokens: Vec<&str> = l.top_tokens.iter().take(6).map(|t| t.token.as_str()).collect();
        let ex: Vec<&str> = l.examples.iter().take(4).map(|e| e.token.as_str()).collect();
        eprintln!(
            "  latent {} Δ {:?} ν_ε {:?} ν_r {:?} freq {:.4} hit {:?} lens {tokens:?} examples {ex:?}",
            l.id, l.delta_norm, l.nu_eps, l.nu_r, l.frequency, l.domain_hit
        );
    }
}

#[test]
fn a_crosscoder_of_a_narrow_fine_tune_finds_its_domain_and_none_in_a_control() {
    let dir = organisms();
    let base = dir.join("base");
    let r = audit(&spec(&base, &dir.join("cooking-full"), vec![AnalysisKind::Crosscoder]))
        .unwrap();
    let cc = r.analyses.crosscoder.as_ref().unwrap();
    describe("cooking-full", cc);
    assert_eq!(cc.layer, 2);
    assert_eq!(cc.dict_size, 4 * 128);
    assert!(cc.fve_base.unwrap() > 0.5 && cc.fve_ft.unwrap() > 0.5, "FVE");
    assert!(cc.classes.ft_only > 0, "{:?}", cc.classes);
    let listed = cc.latents.iter().filter(|l| l.class == "ft_only").count();
    assert!(listed > 0 && listed <= cc.classes.ft_only);
    assert!(cc.training.len() > 10);
    let control = audit(&spec(&base, &base, vec![AnalysisKind::Crosscoder])).unwrap();
    let c = control.analyses.crosscoder.as_ref().unwrap();
    describe("control (base vs base)", c);
    assert_eq!(c.classes.ft_only, 0, "{:?}", c.classes);
}
