//! Tier II part 2 on the trained organisms (cached under ~/.cache/neurodiff by seed and
//! version): readable traces name the fine-tune's domain, and for a fine-tune of chosen blocks
//! stitching and CMAP put the change in those blocks, as each organism's ground truth says.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::audit;
use neurodiff_core::organisms::trained::{cached, Quiet, DOMAINS};
use neurodiff_protocol::{AnalysisKind, AuditResults, AuditSpec, Target};

fn organisms() -> PathBuf {
    cached(0, &mut Quiet).unwrap()
}

fn spec(dir: &Path, organism: &str, analyses: Vec<AnalysisKind>) -> AuditSpec {
    let mut spec = AuditSpec::new(
        dir.join("base").display().to_string(),
        Target::Checkpoint {
            reference: dir.join(organism).display().to_string(),
        },
        analyses,
    );
    spec.corpus.max_samples = 256;
    spec.corpus.seq_len = 32;
    spec.corpus.batch_size = 32;
    spec.options.cmap.samples = 32;
    spec.options.steering.samples = 32;
    spec.options.steering.generation.max_new_tokens = 8;
    spec.options.traces.generation.max_new_tokens = 8;
    spec.options.traces.scales = 12;
    spec.validate().unwrap();
    spec
}

fn run(dir: &Path, organism: &str, analyses: Vec<AnalysisKind>) -> AuditResults {
    audit(&spec(dir, organism, analyses)).unwrap()
}

#[test]
fn traces_of_a_narrow_fine_tune_read_as_its_domain() {
    let dir = organisms();
    let mut all = Vec::new();
    for d in DOMAINS {
        for kind in ["full", "blocks"] {
            let organism = format!("{}-{kind}", d.name);
            let mut spec = spec(&dir, &organism, vec![AnalysisKind::Traces]);
            if kind == "blocks" {
                // The default block (2) is before the trained ones (3, 4): read the last.
                spec.options.traces.layer = Some(4);
            }
            let r = audit(&spec).unwrap();
            let g = r.grades.as_ref().expect("graded from ground_truth.json");
            assert_eq!(g.organism, organism);
            let t = r.analyses.traces.as_ref().unwrap();
            assert_eq!(t.positions.len(), 5);
            assert_eq!(t.layer, if kind == "blocks" { 4 } else { 2 });
            let lens = g.traces.mean_logit_lens_p20.unwrap();
            let scope = g.traces.mean_patchscope_p20.unwrap();
            eprintln!(
                "{organism}: P@20 logit lens {lens:.2}, Patchscope {scope:.2}; by position {:?}",
                g.traces
                    .traces
                    .iter()
                    .map(|x| (x.logit_lens_p20, x.patchscope_p20))
                    .collect::<Vec<_>>()
            );
            let with_words = g
                .traces
                .traces
                .iter()
                .filter(|x| x.logit_lens_p20 > 0.0)
                .count();
            assert!(
                with_words >= 3,
                "{organism}: {with_words} positions name the domain"
            );
            // Measured (seed 0, N = 10,000): logit lens full 0.72-0.88, blocks (read at block
            // 4) 0.11-0.21; Patchscope (δ at n̄_ft, the toolkit's selection) full 0.70-0.87,
            // blocks 0.10-0.22.
            let floor = if kind == "full" { 0.6 } else { 0.05 };
            assert!(lens >= floor, "{organism}: {lens}");
            assert!(scope >= floor, "{organism}: Patchscope {scope}");
            all.push(lens);
        }
    }
    // Before the trained blocks the two models agree exactly: no trace at all.
    let r = run(&dir, "sailing-blocks", vec![AnalysisKind::Traces]);
    let t = r.analyses.traces.as_ref().unwrap();
    assert_eq!(t.layer, 2);
    assert!(t.positions.iter().all(|p| p.delta_norm == 0.0));
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    eprintln!("mean logit-lens precision at 20 over the six organisms: {mean:.2}");
    assert!(mean >= 0.4, "{mean}");
}

#[test]
fn stitching_and_cmap_find_the_trained_blocks() {
    let dir = organisms();
    let d = &DOMAINS[0];
    let organism = format!("{}-blocks", d.name);
    let r = run(
        &dir,
        &organism,
        vec![AnalysisKind::Cmap, AnalysisKind::Stitching],
    );
    let g = r.grades.as_ref().unwrap();
    assert_eq!(g.trained_blocks.as_deref(), Some(&[3, 4][..]));
    let s = r.analyses.stitching.as_ref().unwrap();
    for p in &s.points {
        // Every trained block (3 and 4) comes from the fine-tune exactly when the KL is zero.
        let from_ft = match p.direction.as_str() {
            "base_then_ft" => p.k <= 3,
            _ => p.k >= 5,
        };
        assert_eq!(p.kl_to_ft == 0.0, from_ft, "{p:?}");
        let from_base = match p.direction.as_str() {
            "base_then_ft" => p.k >= 5,
            _ => p.k <= 3,
        };
        assert_eq!(p.kl_to_base == 0.0, from_base, "{p:?}");
    }
    assert_eq!(
        g.stitching.stitching_matches,
        Some(true),
        "{:?}",
        g.stitching.stitching_zero_kl
    );
    let c = r.analyses.cmap.as_ref().unwrap();
    assert_eq!(c.cells.len(), 6 * 3 * 2);
    for cell in &c.cells {
        // Before the trained blocks both models compute the same states: nothing to patch.
        if cell.layer < 3 {
            assert_eq!(cell.recovery, 0.0, "{cell:?}");
        }
    }
    let top = g.cmap.cmap_top.as_ref().unwrap();
    for cell in c
        .cells
        .iter()
        .filter(|c| c.component.as_str() != "resid_post" && c.layer >= 3)
    {
        eprintln!("{cell:?}");
    }
    eprintln!("cmap top {top:?}");
    assert_eq!(g.cmap.cmap_in_trained_blocks, Some(true), "{top:?}");
}

#[test]
fn steering_the_base_along_the_difference_raises_the_domain() {
    let dir = organisms();
    let organism = format!("{}-full", DOMAINS[1].name);
    let r = run(&dir, &organism, vec![AnalysisKind::Steering]);
    let s = r.analyses.steering.as_ref().unwrap();
    let base: Vec<_> = s.curves.iter().filter(|p| p.target == "base").collect();
    let at0 = base.iter().find(|p| p.alpha == 0.0).unwrap();
    let most = base
        .iter()
        .max_by(|a, b| a.alpha.total_cmp(&b.alpha))
        .unwrap();
    eprintln!("{:#?}", s.curves);
    assert!(most.domain_mass.unwrap() > at0.domain_mass.unwrap());
    let closest = base
        .iter()
        .min_by(|a, b| a.kl_to_ft.total_cmp(&b.kl_to_ft))
        .unwrap();
    assert!(closest.alpha > 0.0, "{closest:?}");
    let chosen = s.chosen.iter().find(|c| c.target == "base").unwrap();
    assert!(chosen.perplexity <= s.ppl_factor * at0.perplexity);
    // Greedy and sampled, with and without steering, for every prompt.
    let g: Vec<_> = s.generations.iter().filter(|g| g.model == "base").collect();
    assert_eq!(g.len(), 2 * 3 * if chosen.alpha == 0.0 { 1 } else { 2 });
    assert!(g.iter().all(|g| !g.text.is_empty()));
}

#[test]
fn a_pair_of_different_widths_is_refused_before_any_shard_saying_so() {
    let dir = organisms();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/llama");
    let mut spec = spec(&dir, "cooking-full", vec![AnalysisKind::Stitching]);
    spec.target = Target::Checkpoint {
        reference: fixture.display().to_string(),
    };
    let e = audit(&spec).unwrap_err();
    assert!(
        e.contains("`hidden_size` is 64 here but 128 in the base")
            && e.contains("not the same architecture"),
        "{e}"
    );
}
