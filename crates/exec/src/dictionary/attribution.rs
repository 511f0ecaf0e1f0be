//! A trained dictionary on the held-back chunks, one chunk in memory at a time: FVE, L0, dead
//! latents, latent scaling (ν), the Δ classes, and for the latents it reports (every
//! fine-tune-only one, then a sample of the others) the logit lens of the decoder row through
//! the fine-tuned model and the top activating examples in context.
use neurodiff_core::dictionary::{class_of, delta_norm, Accumulator, Dictionary, Evaluation};
use neurodiff_core::organisms::trained::rng::Rng;
use neurodiff_core::CoreError;
use neurodiff_protocol::{
    ActivationStore, ClassCounts, DictionaryOptions, DictionaryReport, GroundTruth, LatentClass,
    LatentExample, LatentReport,
};
use tch::{Device, Kind, Tensor};

use super::chunks::Chunk;
use crate::dist::top_tokens;
use crate::forward::{Pair, Side};
use crate::progress::{check, Progress};
use crate::Result;

/// Fine-tune-only latents listed at most (the class count is in `classes` regardless).
pub const MAX_FT_ONLY_LISTED: usize = 4096;

/// Where a running top example came from: the held-back chunk and its row.
type Row = (usize, usize);

/// A trained dictionary and what it is evaluated on: the pair, its block, the held-back chunks
/// (and how one is read back), whether it is an SAE on differences, and the ground truth.
pub struct Trained<'a> {
    pub pair: &'a Pair,
    pub dict: &'a Dictionary,
    pub layer: usize,
    pub held: &'a [usize],
    pub load: &'a dyn Fn(usize) -> Result<Chunk>,
    pub diff: bool,
    pub truth: Option<&'a GroundTruth>,
}

/// What one pass over the held-back chunks gathered: the statistics, the running top examples
/// of every latent (`(E, F)` values and global row numbers, and where each row came from), the
/// chunks' token ids, and the first chunks whole (for the KL shares).
struct Scanned {
    ev: Evaluation,
    top_v: Tensor,
    top_i: Tensor,
    rows_of: Vec<Row>,
    tokens: Vec<Ids>,
    kl_chunks: Vec<Chunk>,
}

/// Evaluates a trained dictionary: the statistics of one pass over the held-back chunks, then
/// each selected latent's report, their KL shares, and the shares of the domain among them.
pub fn evaluate(
    trained: Trained<'_>,
    opts: &DictionaryOptions,
    text: super::kl_share::Text<'_>,
    progress: Progress<'_>,
) -> Result<DictionaryReport> {
    let Scanned {
        ev,
        top_v,
        top_i,
        rows_of,
        tokens,
        kl_chunks,
    } = scan(&trained, opts, progress)?;
    let (delta, nu) = if trained.diff {
        (None, (Vec::new(), Vec::new()))
    } else {
        (Some(delta_norm(trained.dict)?), ev.nu())
    };
    let selected = select(&ev, delta.as_deref(), opts);
    let reader = Reader::new(&trained, opts, (&top_v, &top_i), &rows_of, &tokens)?;
    let stats = LatentStats {
        ev: &ev,
        delta: delta.as_deref(),
        nu: &nu,
    };
    let mut latents = Vec::with_capacity(selected.report_ids.len());
    let mut control_hits = std::collections::BTreeSet::new();
    for &j in &selected.report_ids {
        check(progress, "latent")?;
        let (latent, control_hit) = reader.latent(j, &stats)?;
        if control_hit {
            control_hits.insert(j);
        }
        latents.push(latent);
    }
    // The KL shares of the first reported latents (fine-tune-only, then the tail; an SAE's
    // most frequent), on the first held-back samples.
    let measured: Vec<usize> = latents
        .iter()
        .take(super::kl_share::KL_LATENTS)
        .map(|l| l.id)
        .collect();
    let held_samples = super::kl_share::Held::of(&kl_chunks, text)?;
    drop(kl_chunks);
    let (pair, dict, layer) = (trained.pair, trained.dict, trained.layer);
    let (output_kl, kl) =
        super::kl_share::shares(pair, dict, layer, &held_samples, &measured, progress)?;
    for (l, share) in latents.iter_mut().zip(kl) {
        l.kl_share = share.is_finite().then_some(share);
    }
    let shares = Shares::of(&latents, &selected.tail, &control_hits, &reader);
    Ok(report(
        ev,
        selected,
        latents,
        shares,
        output_kl,
        trained.diff,
    ))
}

/// The statistics each latent's report reads: the evaluation, Δ (crosscoders) and ν.
struct LatentStats<'a> {
    ev: &'a Evaluation,
    delta: Option<&'a [f64]>,
    nu: &'a (Vec<f64>, Vec<f64>),
}

/// The token ids of a held-back chunk: sample, position and token of each row.
type Ids = (Vec<i64>, Vec<i64>, Vec<i64>);

/// What one latent's report reads: its decoder row through the fine-tuned model's lens, its
/// running top examples, and the domain's and control's words it may carry.
struct Reader<'a> {
    pair: &'a Pair,
    dict: &'a Dictionary,
    /// The normalisation's scale of the fine-tuned side.
    scale: f64,
    /// Latents (the columns of the running top examples).
    cols: usize,
    top_v: Vec<f32>,
    top_i: Vec<i64>,
    rows_of: &'a [Row],
    tokens: &'a [Ids],
    domain: Vec<usize>,
    control: Vec<usize>,
    examples: usize,
}

impl<'a> Reader<'a> {
    fn new(
        trained: &Trained<'a>,
        opts: &DictionaryOptions,
        (top_v, top_i): (&Tensor, &Tensor),
        rows_of: &'a [Row],
        tokens: &'a [Ids],
    ) -> Result<Reader<'a>> {
        let dict = trained.dict;
        let flat = |t: &Tensor| t.f_to_device(Device::Cpu)?.f_flatten(0, -1);
        let top_v = Vec::<f32>::try_from(&flat(top_v)?).map_err(CoreError::from)?;
        let top_i = Vec::<i64>::try_from(&flat(top_i)?).map_err(CoreError::from)?;
        let scale = dict
            .norm
            .scale
            .f_to_kind(Kind::Double)?
            .f_select(0, dict.models() - 1)?
            .f_double_value(&[])?;
        let domain: Vec<usize> = trained
            .truth
            .map(|g| g.domain_token_ids.clone())
            .unwrap_or_default();
        Ok(Reader {
            pair: trained.pair,
            dict,
            scale,
            cols: dict.dict_size() as usize,
            top_v,
            top_i,
            rows_of,
            tokens,
            control: control_words(tokens, &domain, opts.seed),
            domain,
            examples: opts.examples,
        })
    }

    /// The top tokens of latent `j`'s decoder row read out by the fine-tuned model. The row
    /// goes back to the model's units first: the lens reads a direction, and the scale
    /// restores its size before the final norm.
    fn lens(&self, j: usize) -> Result<Vec<neurodiff_protocol::TokenProb>> {
        let row = self
            .dict
            .w_dec
            .f_select(0, self.dict.models() - 1)?
            .f_select(0, j as i64)?
            .f_div_scalar(self.scale)?
            .f_to_kind(Kind::Float)?;
        let d = self.dict.width();
        let logits = self
            .pair
            .model(Side::Finetuned)
            .read_out(&row.f_view([1, 1, d])?)?;
        let probs = logits
            .f_view([-1])?
            .f_to_kind(Kind::Double)?
            .f_softmax(-1, Kind::Double)?;
        top_tokens(&probs, 10, &self.pair.tokenizer)
    }

    /// Latent `j`'s top examples that fired: where each row came from, and its activation.
    fn hits(&self, j: usize) -> Vec<(Row, f64)> {
        let cols = self.cols;
        (0..self.top_v.len() / cols.max(1))
            .map(|e| {
                let at = e * cols + j;
                (self.rows_of[self.top_i[at] as usize], self.top_v[at] as f64)
            })
            .filter(|&(_, v)| v > 0.0)
            .take(self.examples)
            .collect()
    }

    /// A latent names a set of words when they are at least two of its decoder lens's ten
    /// tokens, or the token of at least half of its top examples: one frequent word among
    /// eighteen tokens would be chance (the shuffled-word control measures it).
    fn carries(
        &self,
        words: &[usize],
        lens: &[neurodiff_protocol::TokenProb],
        hits: &[(Row, f64)],
    ) -> bool {
        let is_word = |id: i64| usize::try_from(id).is_ok_and(|t| words.contains(&t));
        let in_lens = lens.iter().filter(|t| words.contains(&t.id)).count();
        let examples = hits
            .iter()
            .filter(|&&((c, r), _)| is_word(self.tokens[c].2[r]))
            .count();
        in_lens >= 2 || (!hits.is_empty() && 2 * examples >= hits.len())
    }

    /// Latent `j`'s report, and whether it carries the control's words.
    fn latent(&self, j: usize, stats: &LatentStats<'_>) -> Result<(LatentReport, bool)> {
        let lens = self.lens(j)?;
        let hits = self.hits(j);
        let examples = hits
            .iter()
            .map(|&((c, r), v)| example(self.pair, &self.tokens[c], r, v))
            .collect();
        let domain_hit =
            (!self.domain.is_empty()).then(|| self.carries(&self.domain, &lens, &hits));
        let control_hit = !self.control.is_empty() && self.carries(&self.control, &lens, &hits);
        let (ev, delta) = (stats.ev, stats.delta);
        let finite = |v: Option<&f64>| v.copied().filter(|v| v.is_finite());
        let latent = LatentReport {
            id: j,
            delta_norm: finite(delta.map(|dl| &dl[j])),
            class: delta.map_or(LatentClass::Diff, |dl| class_of(dl[j])),
            nu_eps: finite(stats.nu.0.get(j)),
            nu_r: finite(stats.nu.1.get(j)),
            frequency: ev.fired[j] as f64 / ev.n_tokens.max(1) as f64,
            max_activation: ev.max_activation[j],
            top_tokens: lens,
            examples,
            domain_hit,
            kl_share: None,
        };
        Ok((latent, control_hit))
    }
}

/// How much of the reported latents is the domain's: among the real fine-tune-only ones (low
/// ν), and in the fine-tune-leaning tail against the shuffled-word control.
struct Shares {
    low_nu: usize,
    domain: Option<f64>,
    tail_domain: Option<f64>,
    tail_control: Option<f64>,
}

impl Shares {
    fn of(
        latents: &[LatentReport],
        tail: &[usize],
        control_hits: &std::collections::BTreeSet<usize>,
        reader: &Reader<'_>,
    ) -> Shares {
        let real = |l: &&LatentReport| {
            l.class == LatentClass::FtOnly
                && matches!((l.nu_eps, l.nu_r), (Some(e), Some(r)) if neurodiff_protocol::real_ft_only(e, r))
        };
        let low_nu: Vec<&LatentReport> = latents.iter().filter(real).collect();
        let share = |hits: usize, of: usize| hits as f64 / of as f64;
        let has_domain = !reader.domain.is_empty();
        let domain = (has_domain && !low_nu.is_empty()).then(|| {
            let hits = low_nu.iter().filter(|l| l.domain_hit == Some(true)).count();
            share(hits, low_nu.len())
        });
        let tail_domain = (has_domain && !tail.is_empty()).then(|| {
            let in_tail = |l: &&LatentReport| tail.contains(&l.id) && l.domain_hit == Some(true);
            share(latents.iter().filter(in_tail).count(), tail.len())
        });
        let tail_control = (!reader.control.is_empty() && !tail.is_empty()).then(|| {
            let hits = tail.iter().filter(|j| control_hits.contains(j)).count();
            share(hits, tail.len())
        });
        Shares {
            low_nu: low_nu.len(),
            domain,
            tail_domain,
            tail_control,
        }
    }
}

/// The evaluation's part of the report (the shard fills in the training's and the store's).
fn report(
    ev: Evaluation,
    selected: Selected,
    latents: Vec<LatentReport>,
    shares: Shares,
    output_kl: f64,
    diff: bool,
) -> DictionaryReport {
    DictionaryReport {
        output_kl: Some(output_kl),
        tail: selected.tail,
        min_delta: selected.min_delta,
        tail_domain_share: shares.tail_domain,
        tail_control_share: shares.tail_control,
        layer: 0,
        hook: String::new(),
        d_model: 0,
        dict_size: ev.fired.len(),
        k: 0,
        steps: 0,
        batch: 0,
        lr: 0.0,
        train_tokens: 0,
        eval_tokens: 0,
        fve_base: (!diff).then(|| ev.fve[0]),
        fve_ft: ev.fve.last().copied(),
        l0: ev.l0,
        dead_fraction: ev.dead_fraction,
        classes: selected.classes,
        ft_only_low_nu: shares.low_nu,
        delta_histogram: if diff { Vec::new() } else { selected.histogram },
        training: Vec::new(),
        latents,
        domain_share: shares.domain,
        resumed_at: 0,
        store: ActivationStore {
            id: String::new(),
            manifest: String::new(),
            chunks: 0,
            tokens: 0,
            chunks_reused: 0,
        },
        dictionary: None,
        ground_truth: None,
        elapsed_s: 0.0,
    }
}

/// One pass over the held-back chunks, one in memory at a time.
fn scan(
    trained: &Trained<'_>,
    opts: &DictionaryOptions,
    progress: Progress<'_>,
) -> Result<Scanned> {
    let (dict, held, load) = (trained.dict, trained.held, trained.load);
    let f_size = dict.dict_size();
    // One running example is kept even when none is reported (the tensors need a row).
    let keep = opts.examples.max(1) as i64;
    let mut acc = Accumulator::new(dict)?;
    // Running top examples of every latent: (E, F) values and global row numbers.
    let mut top_v = Tensor::f_zeros([0, f_size], (Kind::Float, dict.device()))?;
    let mut top_i = Tensor::f_zeros([0, f_size], (Kind::Int64, dict.device()))?;
    let mut rows_of: Vec<Row> = Vec::new();
    // Rows per evaluation step: its codes (rows × F) stay within 2^24 values.
    let rows_per = ((1i64 << 24) / f_size.max(1)).clamp(1, 4096);
    // Each held-back chunk is read once: its ids are kept for the examples, and the first
    // chunks (enough for the KL samples) whole.
    let mut tokens: Vec<(Vec<i64>, Vec<i64>, Vec<i64>)> = Vec::with_capacity(held.len());
    let mut kl_chunks = Vec::new();
    let mut kl_samples = std::collections::BTreeSet::new();
    for (c, &i) in held.iter().enumerate() {
        check(progress, "evaluate")?;
        let chunk = load(i)?;
        let n = chunk.len() as i64;
        for step in (0..n).step_by(rows_per as usize) {
            let len = rows_per.min(n - step);
            let x = chunk
                .acts
                .f_narrow(0, step, len)?
                .f_to_device(dict.device())?;
            let x = dict.norm.apply(&x, dict.kind())?;
            let f = acc.add(dict, &x)?.f_to_kind(Kind::Float)?;
            let first = rows_of.len() as i64;
            rows_of.extend((step..step + len).map(|r| (c, r as usize)));
            let idx = Tensor::f_arange_start(first, first + len, (Kind::Int64, dict.device()))?
                .f_unsqueeze(1)?
                .f_expand([len, f_size], false)?;
            let v = Tensor::f_cat(&[&top_v, &f], 0)?;
            let ids = Tensor::f_cat(&[&top_i, &idx], 0)?;
            let (vals, pos) = v.f_topk(keep.min(v.size()[0]), 0, true, true)?;
            top_i = ids.f_gather(0, &pos, false)?;
            top_v = vals;
        }
        tokens.push((
            chunk.sample.clone(),
            chunk.position.clone(),
            chunk.token.clone(),
        ));
        if kl_samples.len() < super::kl_share::KL_SAMPLES {
            kl_samples.extend(chunk.sample.iter().copied());
            kl_chunks.push(chunk);
        }
    }
    Ok(Scanned {
        ev: acc.finish(dict)?,
        top_v,
        top_i,
        rows_of,
        tokens,
        kl_chunks,
    })
}

/// The Δ classes and histogram, and which latents the report lists.
struct Selected {
    classes: ClassCounts,
    histogram: Vec<u64>,
    report_ids: Vec<usize>,
    tail: Vec<usize>,
    min_delta: Option<f64>,
}

/// Every fine-tune-only latent that fired; then (crosscoders) the fine-tune-leaning tail, the
/// fired latents with the lowest Δ, and a seeded sample of the rest (an SAE's: the most
/// frequent latents).
fn select(ev: &Evaluation, delta: Option<&[f64]>, opts: &DictionaryOptions) -> Selected {
    let f_size = ev.fired.len();
    let mut classes = ClassCounts::default();
    let mut histogram = vec![0u64; 20];
    let (mut ft_only, mut others) = (Vec::new(), Vec::new());
    for j in 0..f_size {
        let Some(delta) = delta else {
            others.push(j);
            continue;
        };
        let dl = delta[j];
        if dl.is_finite() {
            histogram[((dl * 20.0) as usize).min(19)] += 1;
        }
        match class_of(dl) {
            LatentClass::FtOnly => {
                classes.ft_only += 1;
                ft_only.push(j);
                continue;
            }
            LatentClass::BaseOnly => classes.base_only += 1,
            LatentClass::Shared => classes.shared += 1,
            LatentClass::Other | LatentClass::Diff => classes.other += 1,
        }
        others.push(j);
    }
    // Every fine-tune-only latent that fired; then (crosscoders) the fine-tune-leaning tail,
    // the fired latents with the lowest Δ, and a seeded sample of the rest (an SAE's: the most
    // frequent latents).
    let fired = |j: &usize| ev.fired[*j] > 0;
    let mut report_ids: Vec<usize> = ft_only.into_iter().filter(fired).collect();
    if let Some(delta) = delta {
        // Bounded (each costs a lens pass and a row): the lowest Δ first.
        report_ids.sort_by(|&a, &b| delta[a].total_cmp(&delta[b]));
        report_ids.truncate(MAX_FT_ONLY_LISTED);
    }
    let mut rest: Vec<usize> = others.into_iter().filter(fired).collect();
    let mut tail = Vec::new();
    let mut min_delta = None;
    if let Some(delta) = delta {
        rest.sort_by(|&a, &b| delta[a].total_cmp(&delta[b]));
        min_delta = report_ids
            .iter()
            .chain(&rest)
            .map(|&j| delta[j])
            .filter(|v| v.is_finite())
            .min_by(f64::total_cmp);
        let n_tail = (opts.sample_latents / 2).min(rest.len());
        tail = rest.drain(..n_tail).collect();
        report_ids.extend(&tail);
        let mut rng = Rng::new(opts.seed ^ 0x5eed);
        for i in (1..rest.len()).rev() {
            rest.swap(i, rng.below(i + 1));
        }
        report_ids.extend(rest.into_iter().take(opts.sample_latents - n_tail));
    } else {
        rest.sort_by_key(|&j| std::cmp::Reverse(ev.fired[j]));
        report_ids.extend(rest.into_iter().take(opts.sample_latents));
    }
    Selected {
        classes,
        histogram,
        report_ids,
        tail,
        min_delta,
    }
}

/// The shuffled-word control of the domain share: for each of the ground truth's domain
/// tokens, the token of the held-back samples that hold no domain token (the text that is not
/// the domain's), and that never occurs in those that do, whose count there is closest to the
/// domain token's own count (ties broken by
/// a seeded hash): words as common as the domain's but not of its text, which a latent
/// "carries" as often as chance and that frequency make it. Empty without a ground truth.
fn control_words(
    tokens: &[(Vec<i64>, Vec<i64>, Vec<i64>)],
    domain: &[usize],
    seed: u64,
) -> Vec<usize> {
    if domain.is_empty() {
        return Vec::new();
    }
    let is_domain = |id: i64| usize::try_from(id).is_ok_and(|t| domain.contains(&t));
    // Samples that hold a domain token are the domain's text: their other words are the
    // domain's too (listed or not), so candidates come from the other samples only.
    let domain_samples: std::collections::BTreeSet<i64> = tokens
        .iter()
        .flat_map(|(s, _, t)| s.iter().zip(t))
        .filter(|(_, &t)| is_domain(t))
        .map(|(&s, _)| s)
        .collect();
    // A word that also occurs in the domain's samples is of its text ("chef" beside "knead",
    // and the function words every text shares): no candidate either, or the control would
    // count the domain's own vocabulary as chance.
    let in_domain_text: std::collections::BTreeSet<i64> = tokens
        .iter()
        .flat_map(|(s, _, t)| s.iter().zip(t))
        .filter(|(s, _)| domain_samples.contains(s))
        .map(|(_, &t)| t)
        .collect();
    let mut counts: std::collections::BTreeMap<usize, u64> = std::collections::BTreeMap::new();
    for (&s, &id) in tokens.iter().flat_map(|(s, _, t)| s.iter().zip(t)) {
        if domain_samples.contains(&s) || in_domain_text.contains(&id) {
            continue;
        }
        if let Ok(id) = usize::try_from(id) {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    // The domain tokens' own counts, over every held-back row.
    let mut domain_counts: std::collections::BTreeMap<usize, u64> =
        std::collections::BTreeMap::new();
    for id in tokens.iter().flat_map(|(_, _, t)| t.iter()) {
        if let Ok(id) = usize::try_from(*id) {
            if domain.contains(&id) {
                *domain_counts.entry(id).or_insert(0) += 1;
            }
        }
    }
    let log = |c: u64| (1.0 + c as f64).ln();
    let tie = |id: usize| {
        let mut rng = Rng::new(seed ^ 0xc0_47_01 ^ (id as u64).wrapping_mul(0x9e37_79b9));
        rng.next_u64()
    };
    let mut chosen: Vec<usize> = Vec::with_capacity(domain.len());
    for d in domain {
        let target = log(domain_counts.get(d).copied().unwrap_or(0));
        let best = counts
            .iter()
            .filter(|(id, _)| !domain.contains(id) && !chosen.contains(id))
            .min_by(|(a, ca), (b, cb)| {
                (log(**ca) - target)
                    .abs()
                    .total_cmp(&(log(**cb) - target).abs())
                    .then(tie(**a).cmp(&tie(**b)))
            });
        if let Some((&id, _)) = best {
            chosen.push(id);
        }
    }
    chosen
}

/// A held-back row as an example: its token, and up to 8 tokens before it and 2 after in its
/// sample.
fn example(
    pair: &Pair,
    (sample, position, token): &(Vec<i64>, Vec<i64>, Vec<i64>),
    r: usize,
    activation: f64,
) -> LatentExample {
    let s = sample[r];
    let same = |i: usize| sample.get(i) == Some(&s);
    let from = (r.saturating_sub(8)..r).find(|&i| same(i)).unwrap_or(r);
    let to = (r + 1..=r + 2).rev().find(|&i| same(i)).unwrap_or(r);
    LatentExample {
        sample: s as usize,
        position: position[r] as usize,
        token: pair.decode(&[token[r]]),
        context: pair.decode(&token[from..=to]),
        activation,
    }
}
