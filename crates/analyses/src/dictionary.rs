//! Tier III, dictionaries: the BatchTopK crosscoder over both models' activations at one block
//! and the BatchTopK SAE on their difference. One shard each (training runs on one worker);
//! its output is the analysis's section of results.json. Plots: training curves, the Δ-norm
//! histogram, the ν scatter of fine-tune-only latents; latent cards in the report.
use std::fmt::Write as _;

use neurodiff_protocol::{
    Analyses, AnalysisKind, AuditResults, AuditSpec, CollectShard, DictionaryOptions,
    DictionaryReport, Options, ShardKey, ShardOutput,
};

use crate::charts::{histogram, lines, scatter, Series};
use crate::findings::Finding;
use crate::Wiring;
use crate::{escape, Analysis, AnalysisError, Figure, PlanFacts, Sections};

/// Which dictionary: the crosscoder over both models' activations, or the SAE on their
/// difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Crosscoder,
    SaeDiff,
}

impl Family {
    /// The dictionary an analysis kind is, if it is one.
    pub fn of(kind: AnalysisKind) -> Option<Family> {
        [Family::Crosscoder, Family::SaeDiff]
            .into_iter()
            .find(|f| f.kind() == kind)
    }

    /// Its options, among every analysis's.
    pub fn options(self, options: &Options) -> &DictionaryOptions {
        match self {
            Family::Crosscoder => &options.crosscoder,
            Family::SaeDiff => &options.sae_diff,
        }
    }

    /// Its training shard's output as the queue carries it.
    pub fn output(self, report: DictionaryReport) -> ShardOutput {
        match self {
            Family::Crosscoder => ShardOutput::Crosscoder(report),
            Family::SaeDiff => ShardOutput::SaeDiff(report),
        }
    }

    /// Its analysis kind, as the rest of the system names it.
    pub fn kind(self) -> AnalysisKind {
        match self {
            Family::Crosscoder => AnalysisKind::Crosscoder,
            Family::SaeDiff => AnalysisKind::SaeDiff,
        }
    }

    /// How many models' activations it reads: both (a crosscoder) or their difference.
    fn models(self) -> u64 {
        match self {
            Family::Crosscoder => 2,
            Family::SaeDiff => 1,
        }
    }

    /// Its field in a spec and section in results.json.
    fn field(self) -> &'static str {
        match self {
            Family::SaeDiff => "sae_diff",
            Family::Crosscoder => "crosscoder",
        }
    }
}

/// The crosscoder or the SAE on differences: one analysis each, sharing their code.
#[derive(Debug)]
pub struct Dictionaries {
    pub family: Family,
}

pub static CROSSCODER: Dictionaries = Dictionaries {
    family: Family::Crosscoder,
};
pub static SAE_DIFF: Dictionaries = Dictionaries {
    family: Family::SaeDiff,
};

impl Dictionaries {
    /// Its options in a spec.
    pub fn options<'a>(&self, spec: &'a AuditSpec) -> &'a DictionaryOptions {
        self.family.options(&spec.options)
    }

    fn report<'a>(&self, results: &'a AuditResults) -> Option<&'a DictionaryReport> {
        match self.family {
            Family::SaeDiff => results.analyses.sae_diff.as_ref(),
            Family::Crosscoder => results.analyses.crosscoder.as_ref(),
        }
    }

    fn slug(&self) -> &'static str {
        self.family.field()
    }

    fn title(&self) -> &'static str {
        match self.family {
            Family::SaeDiff => "SAE on activation differences",
            Family::Crosscoder => "Crosscoder",
        }
    }
}

/// What one of a dictionary's shards returns: a slice of its activation store, or the trained
/// dictionary's report.
#[derive(Debug)]
pub enum DictionaryShard {
    Collected(CollectShard),
    Trained(Box<DictionaryReport>),
}

/// The corpus slices of a dictionary's activation store: its first `samples` samples (of the
/// `n` the audit uses) in slices of `per_slice`.
pub fn slices(
    kind: AnalysisKind,
    o: &DictionaryOptions,
    n: usize,
    per_slice: usize,
) -> Vec<ShardKey> {
    neurodiff_protocol::sample_shards(kind, o.samples.min(n), per_slice)
}

/// Parameters of one dictionary (W_enc and W_dec; Adam keeps two more copies): 2^30, 4 GiB
/// in float32, 12 GiB with Adam's moments. The anchors' default (expansion 32) fits every
/// model up to d = 2896 (Llama-3.2-1B's 2048, Gemma-2-2B's 2304); wider models are refused
/// with the expansion that fits (16 at d = 4096, 4 at d = 8192).
pub const MAX_DICTIONARY_PARAMS: u64 = 1 << 30;
/// Codes of one training batch (batch × latents): 2^28 (the default batch of 2048 with
/// 131072 latents).
pub const MAX_BATCH_CODES: u64 = 1 << 28;
/// Bytes of one chunk of the activation store (a worker holds one to a few at a time).
pub const MAX_CHUNK_BYTES: u64 = 1 << 31;
/// Bytes of one activation store.
pub const MAX_STORE_BYTES: u64 = 1 << 36;

/// Bounds what a dictionary of this model would hold, before any shard runs (the API cannot:
/// it does not know the model's width).
pub fn check_sizes(
    family: Family,
    o: &DictionaryOptions,
    spec: &AuditSpec,
    facts: &PlanFacts,
) -> Result<(), AnalysisError> {
    let Some(d) = facts.d_model else {
        return Ok(());
    };
    let (field, models) = (family.field(), family.models());
    let refuse = |message: String| AnalysisError::Merge {
        analysis: family.kind(),
        message,
    };
    let d = d as u64;
    let params = 2 * models * d * (o.expansion as u64 * d);
    if params > MAX_DICTIONARY_PARAMS {
        let fits = MAX_DICTIONARY_PARAMS / (2 * models * d * d);
        return Err(refuse(format!(
            "{field}.expansion: {} latents of width {d} make {params} parameters; at most \
             {MAX_DICTIONARY_PARAMS}: set {field}.expansion to at most {fits}{}",
            o.expansion as u64 * d,
            if fits == 0 {
                " (this model is too wide for a dictionary on one worker)"
            } else {
                ""
            }
        )));
    }
    let activations = o.batch as u64 * o.expansion as u64 * d;
    if activations > MAX_BATCH_CODES {
        return Err(refuse(format!(
            "{field}.batch × latents = {activations} codes per step (each held several times \
             for the backward pass); at most {MAX_BATCH_CODES}: set {field}.batch to at most {}",
            MAX_BATCH_CODES / (o.expansion as u64 * d).max(1)
        )));
    }
    let row = models * d * 4;
    let chunk = spec.corpus.shard_samples as u64 * spec.corpus.seq_len as u64 * row;
    if chunk > MAX_CHUNK_BYTES {
        return Err(refuse(format!(
            "corpus.shard_samples × corpus.seq_len: a chunk of {chunk} bytes of activations; at \
             most {MAX_CHUNK_BYTES}"
        )));
    }
    let n = o.samples.min(facts.n_samples.unwrap_or(0)) as u64;
    let store = n * spec.corpus.seq_len as u64 * row;
    if store > MAX_STORE_BYTES {
        return Err(refuse(format!(
            "{field}.samples: a store of {store} bytes of activations; at most {MAX_STORE_BYTES}"
        )));
    }
    Ok(())
}

/// The block a dictionary encodes: the option's, or the middle block.
pub fn block_of(options: &DictionaryOptions, n_layers: usize) -> Result<usize, AnalysisError> {
    match options.layer {
        Some(l) => crate::blocks("layer", Some(&[l]), n_layers).map(|b| b[0]),
        None => Ok(crate::middle_block(n_layers)),
    }
}

/// A dictionary's kind is its family's; its shards merge through its typed [`Sections`].
impl Wiring for Dictionaries {
    fn kind(&self) -> AnalysisKind {
        self.family.kind()
    }

    fn merge(
        &self,
        spec: &AuditSpec,
        outputs: Vec<ShardOutput>,
        into: &mut Analyses,
    ) -> Result<(), AnalysisError> {
        crate::merge_typed(self, spec, outputs, into)
    }
}

impl Analysis for Dictionaries {
    /// Collect shards, one per corpus slice (any worker fills the activation store), then the
    /// training shard (which collects any slice still missing itself, so it never waits).
    fn plan(&self, spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardKey>, AnalysisError> {
        let n = crate::require_corpus(self.kind(), facts)?;
        let o = self.options(spec);
        let mut keys = slices(self.kind(), o, n, spec.corpus.shard_samples);
        if keys.len() < 2 {
            return Err(AnalysisError::Merge {
                analysis: self.kind(),
                message: format!(
                    "{} samples in slices of {} (corpus.shard_samples) make {} slice(s); at \
                     least 2 are needed, one of them held back",
                    o.samples.min(n),
                    spec.corpus.shard_samples,
                    keys.len()
                ),
            });
        }
        check_sizes(self.family, o, spec, facts)?;
        keys.push(ShardKey::Block {
            analysis: self.kind(),
            layer: block_of(o, facts.n_layers)?,
        });
        Ok(keys)
    }

    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError> {
        let Some(r) = self.report(results) else {
            return Ok(Vec::new());
        };
        let slug = self.slug();
        let curve = |f: fn(&neurodiff_protocol::TrainPoint) -> f64, label: &str| Series {
            label: label.to_string(),
            points: r.training.iter().map(|p| (p.step as f64, f(p))).collect(),
        };
        let name = format!("{slug}_training.svg");
        let mut figures = vec![Figure {
            svg: lines(
                &name,
                &format!("{}: training (block {})", self.title(), r.layer),
                ("step", "value"),
                &[
                    curve(|p| p.loss, "loss"),
                    curve(|p| p.fve, "FVE (batch)"),
                    curve(|p| p.dead_fraction, "dead fraction"),
                ],
                false,
            )?,
            name,
        }];
        if self.family == Family::Crosscoder {
            let name = format!("{slug}_delta_norm.svg");
            figures.push(Figure {
                svg: histogram(
                    &name,
                    "Decoder-norm ratio Δ of every latent (0: fine-tune only, 1: base only)",
                    ("Δ", "latents"),
                    &r.delta_histogram,
                    (0.0, 1.0),
                )?,
                name,
            });
            let nu = |low: bool| -> Vec<(f64, f64)> {
                r.latents
                    .iter()
                    .filter(|l| l.class == neurodiff_protocol::LatentClass::FtOnly)
                    .filter_map(|l| Some((l.nu_eps?, l.nu_r?)))
                    .filter(|&(e, rr)| neurodiff_protocol::real_ft_only(e, rr) == low)
                    .collect()
            };
            let name = format!("{slug}_nu.svg");
            figures.push(Figure {
                svg: scatter(
                    &name,
                    "Latent scaling of fine-tune-only latents (|ν_ε| < 0.2 and |ν_r| < 0.5: real)",
                    ("ν_ε", "ν_r"),
                    &[
                        Series {
                            label: "real (low ν)".into(),
                            points: nu(true),
                        },
                        Series {
                            label: "sparsity artifact (high ν)".into(),
                            points: nu(false),
                        },
                    ],
                    Some((-0.5, 1.5)),
                )?,
                name,
            });
        }
        Ok(figures)
    }

    fn finding(&self, results: &AuditResults) -> Option<Finding> {
        self.report(results).map(|d| finding(self.kind(), d))
    }

    fn html(&self, results: &AuditResults) -> String {
        let Some(r) = self.report(results) else {
            return String::new();
        };
        let mut out = String::new();
        let fve = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
        let _ = write!(
            out,
            "<h2>{}</h2><p>Block {} ({}), width {}: {} latents, k = {}, {} steps of {} tokens \
             (lr {:.2e}) on {} tokens; metrics on {} held-back tokens.{}</p><table><tr>\
             <th>FVE base</th><th>FVE fine-tune</th><th>L0</th><th>dead</th>",
            self.title(),
            r.layer,
            escape(&r.hook),
            r.d_model,
            r.dict_size,
            r.k,
            r.steps,
            r.batch,
            r.lr,
            r.train_tokens,
            r.eval_tokens,
            if r.resumed_at > 0 {
                format!(" Resumed from the checkpoint of step {}.", r.resumed_at)
            } else {
                String::new()
            }
        );
        if self.family == Family::Crosscoder {
            out.push_str(
                "<th>fine-tune only</th><th>of which low ν</th><th>base only</th><th>shared</th>\
                 <th>other</th>",
            );
        }
        let _ = write!(
            out,
            "</tr><tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}%</td>",
            fve(r.fve_base),
            fve(r.fve_ft),
            r.l0,
            100.0 * r.dead_fraction
        );
        if self.family == Family::Crosscoder {
            let c = &r.classes;
            let _ = write!(
                out,
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                c.ft_only, r.ft_only_low_nu, c.base_only, c.shared, c.other
            );
        }
        out.push_str("</tr></table>");
        out.push_str(&shares_html(r));
        out.push_str(&latents_html(r));
        out
    }
}

/// The fine-tune-leaning tail and the domain's shares of the reported latents, as paragraphs.
fn shares_html(r: &DictionaryReport) -> String {
    let mut out = String::new();
    if let Some(min) = r.min_delta {
        let _ = write!(
            out,
            "<p>Smallest Δ of a latent that fired: {min:.3}. The fine-tune-leaning tail (the {} \
             lowest): {}{}.</p>",
            r.tail.len(),
            r.tail
                .iter()
                .map(|j| j.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            r.tail_domain_share.map_or(String::new(), |s| format!(
                "; {:.0}% of them carry a word of the organism's domain{}",
                100.0 * s,
                r.tail_control_share.map_or(String::new(), |c| format!(
                    " (a shuffled-word control of as many other corpus tokens: {:.0}%)",
                    100.0 * c
                ))
            ))
        );
    }
    if let Some(share) = r.domain_share {
        let _ = write!(
            out,
            "<p>Of the low-ν fine-tune-only latents, {:.0}% carry a word of the organism's \
             domain in their decoder lens or top examples.</p>",
            100.0 * share
        );
    }
    out
}

/// The table of reported latents: class, Δ, ν, frequency, KL share, decoder lens and top
/// examples.
fn latents_html(r: &DictionaryReport) -> String {
    let mut out = String::new();
    out.push_str(
        "<h3>Latents</h3><table><tr><th>id</th><th>class</th><th>Δ</th><th>ν_ε</th>\
         <th>ν_r</th><th>freq</th><th>KL share</th><th style=\"text-align:left\">decoder lens (top tokens)</th>\
         <th style=\"text-align:left\">top examples</th></tr>",
    );
    let num = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
    for l in &r.latents {
        let tokens: Vec<String> = l
            .top_tokens
            .iter()
            .take(8)
            .map(|t| escape(&format!("{:?}", t.token)))
            .collect();
        let examples: Vec<String> = l
            .examples
            .iter()
            .take(3)
            .map(|e| {
                format!(
                    "…{} <b>[{}]</b> ({:.2})",
                    escape(&e.context),
                    escape(&e.token),
                    e.activation
                )
            })
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td>\
             <td style=\"text-align:left\">{}</td><td style=\"text-align:left\">{}</td></tr>",
            l.id,
            l.class,
            num(l.delta_norm),
            num(l.nu_eps),
            num(l.nu_r),
            l.frequency,
            l.kl_share
                .map_or("–".into(), |v| format!("{:.1}%", 100.0 * v)),
            tokens.join(" "),
            examples.join("<br>")
        );
    }
    out.push_str("</table>");
    out
}

impl Sections for Dictionaries {
    type Shard = DictionaryShard;
    type Report = DictionaryReport;

    fn shard(&self, output: ShardOutput) -> Option<DictionaryShard> {
        match (self.family, output) {
            (_, ShardOutput::Collect(c)) if c.dictionary == self.kind() => {
                Some(DictionaryShard::Collected(c))
            }
            (Family::Crosscoder, ShardOutput::Crosscoder(r))
            | (Family::SaeDiff, ShardOutput::SaeDiff(r)) => {
                Some(DictionaryShard::Trained(Box::new(r)))
            }
            _ => None,
        }
    }

    fn section<'a>(&self, analyses: &'a mut Analyses) -> &'a mut Option<DictionaryReport> {
        match self.family {
            Family::SaeDiff => &mut analyses.sae_diff,
            Family::Crosscoder => &mut analyses.crosscoder,
        }
    }

    fn merge_shards(
        &self,
        _spec: &AuditSpec,
        shards: Vec<DictionaryShard>,
    ) -> Result<DictionaryReport, AnalysisError> {
        let (mut ranges, mut trained) = (Vec::new(), Vec::new());
        for s in shards {
            match s {
                DictionaryShard::Collected(c) => ranges.push((c.start, c.end)),
                DictionaryShard::Trained(r) => trained.push(r),
            }
        }
        crate::check_cover(self.kind(), &mut ranges)?;
        let n = trained.len();
        match trained.pop() {
            Some(report) if n == 1 => Ok(*report),
            _ => Err(AnalysisError::Merge {
                analysis: self.kind(),
                message: format!("expected one shard, got {n}"),
            }),
        }
    }
}

/// The dictionary's size and quality, its fine-tune-only latents, and how many of the
/// lowest-Δ latents name the domain.
fn finding(kind: AnalysisKind, d: &DictionaryReport) -> Finding {
    let fve = [d.fve_base, d.fve_ft]
        .iter()
        .flatten()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join("/");
    let mut f = Finding::new(
        kind,
        format!(
            "{} latents at block {}, FVE {fve}, L0 {:.1}, {} fine-tune-only ({} real by latent \
             scaling){}",
            d.dict_size,
            d.layer,
            d.l0,
            d.classes.ft_only,
            d.ft_only_low_nu,
            d.min_delta
                .map_or(String::new(), |m| format!(", smallest Δ {m:.2}"))
        ),
    );
    f.graded = d.tail_domain_share.map(|s| {
        format!(
            "{:.0}% of the {} lowest-Δ latents name the domain{}",
            100.0 * s,
            d.tail.len(),
            d.tail_control_share.map_or(String::new(), |c| format!(
                " (shuffled words: {:.0}%)",
                100.0 * c
            ))
        )
    });
    f
}

/// The flags of both dictionaries (the crosscoder and the SAE on differences take the same).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Flags {
    /// Crosscoder and SAE on differences: the block encoded (default: the middle one).
    #[arg(long)]
    pub dict_layer: Option<usize>,
    /// Crosscoder and SAE: dictionary size as a multiple of the model width.
    #[arg(long, default_value_t = DictionaryOptions::default().expansion)]
    pub dict_expansion: usize,
    /// Crosscoder and SAE: latents kept per token on average (BatchTopK).
    #[arg(long, default_value_t = DictionaryOptions::default().k)]
    pub dict_k: usize,
    /// Crosscoder and SAE: training steps and tokens per batch.
    #[arg(long, default_value_t = DictionaryOptions::default().steps)]
    pub dict_steps: usize,
    #[arg(long, default_value_t = DictionaryOptions::default().batch)]
    pub dict_batch: usize,
    /// Crosscoder and SAE: Adam's learning rate (default: 2e-4 / sqrt(size / 2^14)).
    #[arg(long)]
    pub dict_lr: Option<f64>,
    /// Crosscoder and SAE: corpus samples whose activations are collected (10% held back).
    #[arg(long, default_value_t = DictionaryOptions::default().samples)]
    pub dict_samples: usize,
}

impl Flags {
    pub fn options(&self) -> DictionaryOptions {
        DictionaryOptions {
            layer: self.dict_layer,
            expansion: self.dict_expansion,
            k: self.dict_k,
            steps: self.dict_steps,
            batch: self.dict_batch,
            lr: self.dict_lr,
            samples: self.dict_samples,
            ..DictionaryOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use neurodiff_protocol::{AnalysisKind, AuditSpec, DictionaryOptions, Target};

    use super::{check_sizes, PlanFacts};

    fn check(d: usize, o: &DictionaryOptions) -> Result<(), String> {
        let spec = AuditSpec::new(
            "base".into(),
            Target::Checkpoint {
                reference: "ft".into(),
            },
            vec![AnalysisKind::Crosscoder],
        );
        let facts = PlanFacts {
            n_layers: 16,
            n_samples: Some(1024),
            d_model: Some(d),
            block_bytes: Vec::new(),
        };
        check_sizes(super::Family::Crosscoder, o, &spec, &facts).map_err(|e| e.to_string())
    }

    #[test]
    fn the_anchors_defaults_fit_models_researchers_diff_and_wider_ones_are_told_what_fits() {
        let default = DictionaryOptions::default();
        // Llama-3.2-1B, Gemma-2-2B and Qwen3-1.7B with the default expansion 32 and batch 2048.
        for d in [2048, 2304, 2048] {
            check(d, &default).unwrap();
        }
        let e = check(4096, &default).unwrap_err();
        assert!(e.contains("crosscoder.expansion to at most 16"), "{e}");
        let fits = DictionaryOptions {
            expansion: 16,
            ..default.clone()
        };
        check(4096, &fits).unwrap();
        let e = check(8192, &default).unwrap_err();
        assert!(e.contains("at most 4"), "{e}");
    }
}
