//! Tier II, the differential logit lens: at every block each model's residual read through its
//! own final norm and unembedding, KL(p_ft || p_base) per token, the tokens whose probability
//! rises or falls most, and the same at the output with the samples of largest KL. Shards are
//! slices of the corpus; their sums merge exactly.
use std::fmt::Write as _;

use neurodiff_protocol::{
    AuditResults, AuditSpec, KlSums, LensLayer, LensOptions, LensReport, LensShard, SampleKl,
    ShardKey, TokenShift,
};

use crate::charts::{lines, Series};
use crate::findings::Finding;
use crate::merge_err;
use crate::Wiring;
use crate::{check_cover, escape, Analysis, AnalysisError, Figure, Merge, PlanFacts};

#[derive(Debug)]
pub struct LogitLens;

impl Analysis for LogitLens {
    /// Slices of the corpus, each a chain of layer ranges when the pair is over the spec's
    /// `range_bytes` (it runs block-streamed).
    fn plan(&self, spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardKey>, AnalysisError> {
        crate::streamed_shards(self.kind(), spec, facts)
    }

    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError> {
        let Some(l) = &results.analyses.logit_lens else {
            return Ok(Vec::new());
        };
        let series = |name: &str, f: fn(&LensLayer) -> f64| Series {
            label: name.to_string(),
            points: l
                .layers
                .iter()
                .filter_map(|x| x.layer.map(|i| (i as f64, f(x))))
                .collect(),
        };
        Ok(vec![Figure {
            name: "logit_lens_kl.svg".into(),
            svg: lines(
                "logit_lens_kl.svg",
                &format!(
                    "Differential logit lens: KL(p_ft || p_base) by block (output: mean {:.4e})",
                    l.output.kl_mean
                ),
                ("block", "KL (nats)"),
                &[
                    series("mean", |x| x.kl_mean),
                    series("p50", |x| x.kl_p50),
                    series("p95", |x| x.kl_p95),
                ],
                true,
            )?,
        }])
    }

    fn finding(&self, results: &AuditResults) -> Option<Finding> {
        let l = results.analyses.logit_lens.as_ref()?;
        Some(Finding::new(
            self.kind(),
            format!("output KL {:.3e} nats per token", l.output.kl_mean),
        ))
    }

    fn html(&self, results: &AuditResults) -> String {
        results
            .analyses
            .logit_lens
            .as_ref()
            .map_or_else(String::new, html)
    }
}

impl Merge for LogitLens {
    type Wire = neurodiff_protocol::sections::LogitLens;

    fn merge_shards(
        &self,
        spec: &AuditSpec,
        mut shards: Vec<LensShard>,
    ) -> Result<LensReport, AnalysisError> {
        let mut ranges: Vec<(usize, usize)> = shards.iter().map(|s| (s.start, s.end)).collect();
        let n_samples = check_cover(self.kind(), &mut ranges)?;
        shards.sort_by_key(|s| s.start);
        let mut it = shards.into_iter();
        let first = it
            .next()
            .ok_or_else(|| merge_err::<LogitLens>("no shard ran (an empty corpus?)".into()))?;
        let text = first.token_text.clone();
        let vocab = first.vocab.clone();
        let (mut layers, mut output) = (first.layers, first.output);
        let (mut samples, mut added) = (first.top_samples, first.added_mass);
        for s in it {
            if s.layers.len() != layers.len() || s.vocab != vocab {
                return Err(merge_err::<LogitLens>(
                    "shards disagree on the models".into(),
                ));
            }
            for (a, b) in layers.iter_mut().zip(&s.layers) {
                add(a, b)?;
            }
            add(&mut output, &s.output)?;
            samples.extend(s.top_samples);
            for (a, b) in added.iter_mut().zip(&s.added_mass) {
                *a += b;
            }
        }
        let k = spec.options.logit_lens.top_tokens;
        let token = |id: usize| text.get(id).cloned().unwrap_or_else(|| format!("<{id}>"));
        samples.sort_by(|a, b| {
            b.kl_mean
                .total_cmp(&a.kl_mean)
                .then(a.sample.cmp(&b.sample))
        });
        samples.truncate(spec.options.logit_lens.top_samples);
        let n_out = output.n;
        let mut vocab = vocab;
        for (t, mass) in vocab.added.iter_mut().zip(&added) {
            t.mean_prob_delta = if n_out == 0 { 0.0 } else { mass / n_out as f64 };
        }
        Ok(LensReport {
            n_samples,
            layers: layers.iter().map(|l| layer_of(l, k, &token)).collect(),
            output: layer_of(&output, k, &token),
            top_samples: samples,
            vocab,
        })
    }
}

fn add(a: &mut KlSums, b: &KlSums) -> Result<(), AnalysisError> {
    if a.layer != b.layer || a.prob_delta.len() != b.prob_delta.len() {
        return Err(merge_err::<LogitLens>(
            "shards disagree on the blocks or the vocabulary".into(),
        ));
    }
    a.n += b.n;
    a.kl += b.kl;
    a.hist.merge(&b.hist);
    for (x, y) in a.prob_delta.iter_mut().zip(&b.prob_delta) {
        *x += y;
    }
    Ok(())
}

fn layer_of(s: &KlSums, k: usize, token: &dyn Fn(usize) -> String) -> LensLayer {
    let n = s.n.max(1) as f64;
    let mut ids: Vec<usize> = (0..s.prob_delta.len()).collect();
    ids.sort_by(|&a, &b| s.prob_delta[b].total_cmp(&s.prob_delta[a]).then(a.cmp(&b)));
    let shift = |id: usize| TokenShift {
        id,
        token: token(id),
        mean_prob_delta: s.prob_delta[id] / n,
    };
    let rising = ids
        .iter()
        .take(k)
        .copied()
        .filter(|&i| s.prob_delta[i] > 0.0)
        .map(shift)
        .collect();
    let falling = ids
        .iter()
        .rev()
        .take(k)
        .copied()
        .filter(|&i| s.prob_delta[i] < 0.0)
        .map(shift)
        .collect();
    LensLayer {
        layer: s.layer,
        n_tokens: s.n,
        kl_mean: if s.n == 0 { 0.0 } else { s.kl / n },
        kl_p50: s.hist.quantile(0.5),
        kl_p95: s.hist.quantile(0.95),
        rising,
        falling,
    }
}

fn tokens(list: &[TokenShift]) -> String {
    list.iter()
        .take(10)
        .map(|t| {
            format!(
                "<code>{}</code> ({:+.2e})",
                escape(&format!("{:?}", t.token)),
                t.mean_prob_delta
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn html(l: &LensReport) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<h2>Differential logit lens</h2><p>{} samples; KL(p_ft ‖ p_base) in nats over every \
         non-pad token, each model read through its own final norm and unembedding. Vocabulary: \
         base {}, fine-tuned {}, compared on the {} shared ids.</p><table><tr><th>block</th>\
         <th>mean KL</th><th>p50</th><th>p95</th><th style=\"text-align:left\">rising most</th>\
         <th style=\"text-align:left\">falling most</th></tr>",
        l.n_samples, l.vocab.base_size, l.vocab.finetuned_size, l.vocab.shared
    );
    for x in l.layers.iter().chain([&l.output]) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.4e}</td><td>{:.3e}</td><td>{:.3e}</td><td style=\"text-align:left\">{}</td><td style=\"text-align:left\">{}</td></tr>",
            x.layer.map_or("output".into(), |i| i.to_string()),
            x.kl_mean,
            x.kl_p50,
            x.kl_p95,
            tokens(&x.rising),
            tokens(&x.falling)
        );
    }
    out.push_str("</table>");
    if !l.vocab.added.is_empty() {
        let _ = write!(
            out,
            "<h3>Tokens only the fine-tuned model has</h3><p>{}</p>",
            tokens(&l.vocab.added)
        );
    }
    out.push_str("<h3>Samples whose output moved most</h3><table><tr><th>sample</th><th>tokens</th><th>mean KL</th><th>text</th></tr>");
    for s in &l.top_samples {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.4e}</td><td style=\"text-align:left\">{}</td></tr>",
            s.sample,
            s.n_tokens,
            s.kl_mean,
            escape(&s.text)
        );
    }
    out.push_str("</table>");
    out
}

/// Empty sums for one block (or the output, `layer: None`) over `shared` ids.
pub fn kl_sums(layer: Option<usize>, shared: usize) -> KlSums {
    KlSums {
        layer,
        n: 0,
        kl: 0.0,
        hist: Default::default(),
        prob_delta: vec![0.0; shared],
    }
}

/// Keeps the `k` samples of largest mean KL.
pub fn keep_top(samples: &mut Vec<SampleKl>, k: usize) {
    samples.sort_by(|a, b| {
        b.kl_mean
            .total_cmp(&a.kl_mean)
            .then(a.sample.cmp(&b.sample))
    });
    samples.truncate(k);
}

/// The logit lens's flags.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Flags {
    /// Tokens listed per block whose logit-lens probability rises (and falls) most.
    #[arg(long, default_value_t = LensOptions::default().top_tokens)]
    pub top_tokens: usize,
}

impl Flags {
    pub fn options(&self) -> LensOptions {
        LensOptions {
            top_tokens: self.top_tokens,
            ..LensOptions::default()
        }
    }
}
