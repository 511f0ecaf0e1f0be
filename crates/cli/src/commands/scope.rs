//! What to run and how deeply, shared by `audit` (embedded) and `submit` (service): the flags
//! become the API's `AuditRequest`, checked by the same `into_spec` on both paths.
use anyhow::Context;
use neurodiff_protocol::{
    parse_layers, ActivationOptions, AnalysisKind, AuditRequest, CorpusOptions, LensOptions,
    Spectrum, WeightOptions,
};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SpectrumArg {
    /// Every singular value: spectral, nuclear, stable and effective rank, top-k.
    Full,
    /// Norms only (Frobenius, relative, cosine, max): one pass over the bytes.
    None,
}

#[derive(Debug, clap::Args)]
pub struct ScopeArgs {
    /// Analyses to run (comma-separated): weights, activations, logit-lens.
    #[arg(long, value_delimiter = ',', default_value = "weights")]
    pub analyses: Vec<String>,
    /// Blocks of the weight audit: `all`, or indices and ranges like `0,3,10-12`.
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Spectral metrics: `full` or `none` (norms only).
    #[arg(long, value_enum, default_value = "full")]
    pub spectrum: SpectrumArg,
    /// Leading singular values to report per tensor.
    #[arg(long, default_value_t = 16)]
    pub top_k: usize,
    /// Text for the activation analyses: a file (one sample per line, or .jsonl with a `text`
    /// field; .gz is read too) or, over the service, s3://bucket/key. Default: the built-in
    /// generic corpus.
    #[arg(long)]
    pub corpus: Option<String>,
    /// Tokens per sample (longer samples are cut).
    #[arg(long, default_value_t = CorpusOptions::default().seq_len)]
    pub seq_len: usize,
    /// Samples of the corpus used.
    #[arg(long, default_value_t = CorpusOptions::default().max_samples)]
    pub max_samples: usize,
    /// Samples per forward pass (results do not depend on it).
    #[arg(long, default_value_t = CorpusOptions::default().batch_size)]
    pub batch_size: usize,
    /// Samples per shard (the unit a worker runs).
    #[arg(long, default_value_t = CorpusOptions::default().shard_samples)]
    pub shard_samples: usize,
    /// Leading positions of the activation position profile and mean difference vectors.
    #[arg(long, default_value_t = ActivationOptions::default().positions)]
    pub positions: usize,
    /// Tokens listed per block whose logit-lens probability rises (and falls) most.
    #[arg(long, default_value_t = LensOptions::default().top_tokens)]
    pub top_tokens: usize,
}

impl ScopeArgs {
    /// The request these flags make; `reference` maps each model or corpus reference as sent.
    pub fn request(
        &self,
        base: &str,
        finetuned: Option<&str>,
        adapter: Option<&str>,
        reference: impl Fn(&str) -> String,
    ) -> anyhow::Result<AuditRequest> {
        let analyses = self
            .analyses
            .iter()
            .map(|a| a.trim().parse::<AnalysisKind>().context("--analyses"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(AuditRequest {
            base: reference(base),
            finetuned: finetuned.map(&reference),
            adapter: adapter.map(&reference),
            analyses: Some(analyses),
            layers: parse_layers(&self.layers).context("--layers")?,
            weights: Some(WeightOptions {
                spectrum: match self.spectrum {
                    SpectrumArg::Full => Spectrum::Full,
                    SpectrumArg::None => Spectrum::None,
                },
                top_k: self.top_k,
            }),
            corpus: Some(CorpusOptions {
                source: self.corpus.as_deref().map(&reference),
                seq_len: self.seq_len,
                max_samples: self.max_samples,
                batch_size: self.batch_size,
                shard_samples: self.shard_samples,
            }),
            activations: Some(ActivationOptions {
                positions: self.positions,
                ..ActivationOptions::default()
            }),
            logit_lens: Some(LensOptions {
                top_tokens: self.top_tokens,
                ..LensOptions::default()
            }),
        })
    }
}
