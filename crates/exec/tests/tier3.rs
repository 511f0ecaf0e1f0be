//! Tier III on the trained organisms (cached under ~/.cache/neurodiff by seed and version), on
//! a corpus that interleaves generic text with the fine-tune's held-out domain text:
//! - a crosscoder between the base and each narrow full fine-tune has a fine-tune-leaning tail
//!   of latents (lowest decoder-norm ratio Δ) that carry the domain's words in their decoder
//!   lens or top examples, while a base-vs-base control has every latent shared (Δ near 0.5,
//!   ν near 1) and no tail;
//! - the SAE on differences runs on the same pair;
//! - a training shard stopped mid-way resumes from its checkpoint in the store and ends with
//!   the same dictionary, byte for byte, as a run straight through; its activation store is
//!   reused, not collected again.
//!
//! Measured (seed 0, block 4, 512 latents, k 16, 1500 steps): min Δ 0.20-0.23 against
//! 0.46-0.47 in the controls; tail domain share 0.62 (cooking), 0.81 (astronomy), 0.88
//! (sailing). No latent reaches the anchors' fine-tune-only class (Δ < 0.1): these fine-tunes
//! amplify features the base already computes on the domain's tokens (decoder norms up to
//! about 3.5 : 1) rather than create features the base lacks.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::audit;
use neurodiff_core::organisms::trained::{cached, Quiet};
use neurodiff_core::reference::HubOptions;
use neurodiff_exec::run_shard;
use neurodiff_exec::store::{DirStore, ShardStore};
use neurodiff_exec::{corpus, plan_audit, Sources};
use neurodiff_protocol::{
    AnalysisKind, AuditSpec, DictionaryReport, Limits, ShardKey, ShardOutput, Target,
};

fn organisms() -> PathBuf {
    cached(0, &mut Quiet).unwrap()
}

/// Generic text and the fine-tune's held-out domain text, interleaved (the anchors train
/// crosscoders on a mix of web text and the fine-tuning distribution).
fn mixed_corpus(dir: &Path, domain: &str, out: &Path) -> String {
    let generic = neurodiff_core::corpus::parse(
        neurodiff_core::corpus::BUILTIN_FILE,
        neurodiff_core::corpus::BUILTIN,
        u64::MAX,
    )
    .unwrap();
    let heldout =
        std::fs::read_to_string(dir.join(format!("data/{domain}-heldout.jsonl"))).unwrap();
    let mut lines = Vec::new();
    for (g, d) in generic.iter().zip(heldout.lines()) {
        lines.push(serde_json::json!({ "text": g }).to_string());
        lines.push(d.to_string());
    }
    let path = out.join(format!("{domain}-mixed.jsonl"));
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.display().to_string()
}

fn spec(base: &Path, target: &Path, kind: AnalysisKind, corpus: &str) -> AuditSpec {
    let mut spec = AuditSpec::new(
        base.display().to_string(),
        Target::Checkpoint {
            reference: target.display().to_string(),
        },
        vec![kind],
    );
    spec.corpus.source = Some(corpus.to_string());
    spec.corpus.max_samples = 512;
    spec.corpus.seq_len = 32;
    spec.corpus.batch_size = 64;
    for o in [&mut spec.options.crosscoder, &mut spec.options.sae_diff] {
        o.layer = Some(4);
        o.expansion = 4;
        o.k = 16;
        o.batch = 512;
        o.steps = 1500;
        o.lr = Some(3e-3);
        o.samples = 512;
    }
    spec.validate().unwrap();
    spec
}

fn describe(name: &str, r: &DictionaryReport) {
    eprintln!(
        "{name}: FVE {:?}/{:?}, L0 {:.1}, dead {:.2}, classes {:?}, min Δ {:?}, tail domain share \
         {:?}, output KL {:?}, Δ histogram {:?}",
        r.fve_base,
        r.fve_ft,
        r.l0,
        r.dead_fraction,
        r.classes,
        r.min_delta,
        r.tail_domain_share,
        r.output_kl,
        r.delta_histogram
    );
    for l in r.latents.iter().filter(|l| r.tail.contains(&l.id)).take(6) {
        let lens: Vec<&str> = l
            .top_tokens
            .iter()
            .take(6)
            .map(|t| t.token.as_str())
            .collect();
        let ex: Vec<&str> = l
            .examples
            .iter()
            .take(4)
            .map(|e| e.token.as_str())
            .collect();
        eprintln!(
            "  latent {} Δ {:.3} ν_ε {:?} ν_r {:?} KL share {:?} domain {:?}: lens {lens:?}, \
             examples {ex:?}",
            l.id,
            l.delta_norm.unwrap_or(f64::NAN),
            l.nu_eps,
            l.nu_r,
            l.kl_share,
            l.domain_hit
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name() != "ground_truth.json" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn crosscoders_of_narrow_fine_tunes_lean_toward_their_domains_and_controls_do_not() {
    let dir = organisms();
    let base = dir.join("base");
    let tmp = tempfile::tempdir().unwrap();
    for domain in ["cooking", "astronomy", "sailing"] {
        let corpus = mixed_corpus(&dir, domain, tmp.path());
        let target = dir.join(format!("{domain}-full"));
        let r = audit(&spec(&base, &target, AnalysisKind::Crosscoder, &corpus)).unwrap();
        let cc = r.analyses.crosscoder.as_ref().unwrap();
        describe(&format!("{domain}-full"), cc);
        assert_eq!((cc.layer, cc.dict_size, cc.k), (4, 512, 16));
        assert!(
            cc.fve_base.unwrap() > 0.8 && cc.fve_ft.unwrap() > 0.8,
            "FVE"
        );
        assert_eq!(cc.tail.len(), 16);
        assert!(
            cc.min_delta.unwrap() < 0.3,
            "{domain}: no fine-tune-leaning latent"
        );
        let share = cc.tail_domain_share.unwrap();
        assert!(share >= 0.4, "{domain}: tail domain share {share}");
        assert_eq!(cc.store.chunks, 4);
        assert!(cc.dictionary.is_some());
        assert!(cc.training.len() > 100);

        // Chance: the same share for as many other corpus tokens (same audit)...
        let shuffled = cc.tail_control_share.unwrap();
        // ...and for the domain's words in a base-vs-base control (the base copied beside the
        // organism's ground truth, so the control is graded on the same words).
        let same = tmp.path().join(format!("base-with-{domain}-truth"));
        copy_dir(&base, &same);
        std::fs::copy(
            target.join("ground_truth.json"),
            same.join("ground_truth.json"),
        )
        .unwrap();
        let control = audit(&spec(&base, &same, AnalysisKind::Crosscoder, &corpus)).unwrap();
        let c = control.analyses.crosscoder.as_ref().unwrap();
        describe(&format!("control on {domain}"), c);
        let base_vs_base = c.tail_domain_share.unwrap();
        eprintln!(
            "{domain}: tail domain share {share:.2}, shuffled words {shuffled:.2}, \
             base-vs-base {base_vs_base:.2}"
        );
        assert!(
            share > shuffled && share > base_vs_base,
            "{domain}: tail share {share} vs shuffled {shuffled}, base-vs-base {base_vs_base}"
        );
        assert_eq!(
            c.classes.ft_only + c.classes.base_only,
            0,
            "{:?}",
            c.classes
        );
        assert!(c.classes.other <= 2, "{:?}", c.classes);
        assert!(
            c.min_delta.unwrap() > 0.4,
            "control min Δ {:?}",
            c.min_delta
        );
        // The same model on both sides: each latent explains either side equally.
        let near_one = c
            .latents
            .iter()
            .filter(|l| l.nu_eps.is_some_and(|v| (v - 1.0).abs() < 0.25))
            .count();
        assert!(
            near_one * 10 >= c.latents.len() * 8,
            "control ν: {near_one} of {}",
            c.latents.len()
        );
    }
}

#[test]
fn an_sae_on_differences_reads_the_fine_tune() {
    let dir = organisms();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = mixed_corpus(&dir, "cooking", tmp.path());
    let s = spec(
        &dir.join("base"),
        &dir.join("cooking-full"),
        AnalysisKind::SaeDiff,
        &corpus,
    );
    let r = audit(&s).unwrap();
    let sae = r.analyses.sae_diff.as_ref().unwrap();
    describe("sae-diff cooking-full", sae);
    assert!(sae.fve_base.is_none());
    assert!(
        sae.fve_ft.unwrap() > 0.5,
        "FVE of the difference {:?}",
        sae.fve_ft
    );
    assert!(sae.latents.iter().all(|l| l.class.as_str() == "diff"));
    let hits = sae
        .latents
        .iter()
        .filter(|l| l.domain_hit == Some(true))
        .count();
    eprintln!(
        "sae-diff: {hits} of {} reported latents carry a domain word",
        sae.latents.len()
    );
    // Measured: 16 or more of 32 where this was written; 15 of 32 on an AVX-512 machine, whose
    // libtorch kernels round the organisms' training differently (the same seed, other bytes).
    assert!(
        hits * 5 >= sae.latents.len() * 2,
        "{hits} of {}",
        sae.latents.len()
    );
}

#[test]
fn a_stopped_training_resumes_to_the_same_dictionary() {
    let dir = organisms();
    let tmp = tempfile::tempdir().unwrap();
    let corpus_path = mixed_corpus(&dir, "sailing", tmp.path());
    let mut spec = spec(
        &dir.join("base"),
        &dir.join("sailing-full"),
        AnalysisKind::Crosscoder,
        &corpus_path,
    );
    spec.options.crosscoder.steps = 300;
    let limits = Limits::default();
    let sources = Sources::open(&spec.base, &spec.target, &HubOptions::from_env()).unwrap();
    let corpus = corpus::load_local(&spec.corpus_read(), &limits).unwrap();
    let (b, t) = sources.contents().unwrap();
    let shards = plan_audit(&sources, &spec, [&b, &t], Some(&corpus), &limits).unwrap();
    let train = shards
        .iter()
        .find(|s| matches!(s.shard, ShardKey::Block { .. }))
        .unwrap();
    let run = |store: &DirStore, stop_after: Option<usize>| {
        let mut steps = 0;
        run_shard(
            &sources,
            train,
            Some(&corpus),
            neurodiff_exec::ShardEnv {
                store,
                device: tch::Device::Cpu,
                models: &neurodiff_exec::ModelCache::off(),
                ready: None,
            },
            &mut |what| {
                if what == "step" {
                    steps += 1;
                }
                stop_after.is_none_or(|n| steps < n)
            },
        )
    };
    let dictionary = |out: &ShardOutput, store: &DirStore| {
        let ShardOutput::Crosscoder(r) = out else {
            panic!("{out:?}")
        };
        let f = r.dictionary.as_ref().unwrap();
        (
            r.resumed_at,
            r.store.chunks_reused,
            store.get(&f.key).unwrap().unwrap(),
        )
    };
    // Straight through, in a store of its own (the training shard collects every chunk).
    let one = DirStore::new(tmp.path().join("straight"));
    let straight = run(&one, None).unwrap();
    let (resumed_at, reused, straight_bytes) = dictionary(&straight, &one);
    assert_eq!((resumed_at, reused), (0, 0));
    // Stopped at step 137, then run again: it resumes there.
    let two = DirStore::new(tmp.path().join("stopped"));
    let err = run(&two, Some(137)).unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");
    let again = run(&two, None).unwrap();
    let (resumed_at, reused, resumed_bytes) = dictionary(&again, &two);
    assert_eq!(resumed_at, 137, "resumed from its checkpoint");
    assert_eq!(
        reused, 4,
        "the store's chunks were reused, not collected again"
    );
    assert!(
        straight_bytes == resumed_bytes,
        "the resumed dictionary differs"
    );
    // And the report of the resumed run is the straight run's: its curve kept across the stop.
    let (ShardOutput::Crosscoder(a), ShardOutput::Crosscoder(b)) = (&straight, &again) else {
        unreachable!()
    };
    // The points before the stop come back through JSON (serde_json parses floats to within
    // an ulp), the rest are computed again: equal to 1e-12.
    assert_eq!(a.training.len(), b.training.len());
    for (p, q) in a.training.iter().zip(&b.training) {
        assert_eq!((p.step, p.k), (q.step, q.k));
        for (x, y) in [
            (p.loss, q.loss),
            (p.fve, q.fve),
            (p.dead_fraction, q.dead_fraction),
        ] {
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                "step {}: {x} vs {y}",
                p.step
            );
        }
    }
    assert_eq!(a.latents, b.latents);
    // The checkpoint is gone once the dictionary is written.
    let ShardOutput::Crosscoder(r) = &again else {
        unreachable!()
    };
    assert!(two.exists(&r.store.manifest).unwrap());
}
