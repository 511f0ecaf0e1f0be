//! What to run and how deeply, shared by `audit` (embedded) and `submit` (service): the flags
//! become the API's `AuditRequest`, checked by the same `into_spec` on both paths.
use anyhow::Context;
use neurodiff_protocol::{parse_layers, AnalysisKind, AuditRequest, CorpusOptions};

#[derive(Debug, clap::Args)]
pub struct ScopeArgs {
    /// Analyses to run (comma-separated): weights, activations, logit-lens, traces, cmap,
    /// stitching, steering, crosscoder, sae-diff.
    #[arg(long, value_delimiter = ',', default_value = AnalysisKind::DEFAULT.as_str())]
    pub analyses: Vec<String>,
    /// Blocks of the weight audit and of CMAP: `all`, or indices and ranges like `0,3,10-12`.
    #[arg(long, default_value = "all")]
    pub layers: String,
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
    /// Leading positions left out of the dictionaries, steering's mean difference and the
    /// activations' top examples and distributions (default: the BOS, when the tokenizer adds one).
    #[arg(long)]
    pub skip_first: Option<usize>,
    /// Which tokens of a chat corpus the activations, the logit lens, CMAP and stitching read:
    /// all, assistant (the assistant's message contents), user, or template (the chat
    /// template's own text: role headers and special tokens).
    #[arg(long, default_value = "all", value_parser = |s: &str| s.parse::<neurodiff_protocol::TokenFilter>())]
    pub token_filter: neurodiff_protocol::TokenFilter,
    /// The dtype the corpus analyses hold the weights in: auto (the checkpoint's on a GPU, fp32
    /// on the CPU), fp32, bf16 or fp16; activations and statistics stay in fp32.
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<neurodiff_protocol::Dtype>())]
    pub dtype: neurodiff_protocol::Dtype,
    /// The most bytes of both models' block weights one shard of the activations or the logit
    /// lens holds: a larger pair runs as chains of layer-range shards, each handing the
    /// residual streams on to the next (over the service, on any worker). Default: no limit.
    #[arg(long)]
    pub range_bytes: Option<u64>,
    /// Each analysis's own flags.
    #[command(flatten)]
    pub analysis: neurodiff_analyses::AnalysisFlags,
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
            corpus: Some(CorpusOptions {
                source: self.corpus.as_deref().map(&reference),
                seq_len: self.seq_len,
                max_samples: self.max_samples,
                batch_size: self.batch_size,
                shard_samples: self.shard_samples,
                skip_first: self.skip_first,
                token_filter: self.token_filter,
            }),
            dtype: (!self.dtype.is_auto()).then_some(self.dtype),
            range_bytes: self.range_bytes,
            options: self.analysis.options()?,
            rest: Default::default(),
        })
    }
}
