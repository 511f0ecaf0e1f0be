//! What to run and how deeply, shared by `audit` (embedded) and `submit` (service): the flags
//! become the API's `AuditRequest`, checked by the same `into_spec` on both paths.
use anyhow::Context;
use neurodiff_protocol::{
    parse_layers, ActivationOptions, AnalysisKind, AuditRequest, CmapOptions, CorpusOptions,
    DictionaryOptions, GenerationOptions, LensOptions, RequestOptions, Spectrum, SteeringOptions,
    SteeringVector, TraceOptions, WeightOptions,
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
    /// Analyses to run (comma-separated): weights, activations, logit-lens, traces, cmap,
    /// stitching, steering, crosscoder, sae-diff.
    #[arg(long, value_delimiter = ',', default_value = "weights")]
    pub analyses: Vec<String>,
    /// Blocks of the weight audit and of CMAP: `all`, or indices and ranges like `0,3,10-12`.
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
    /// Leading positions left out of the dictionaries, steering's mean difference and the
    /// activations' top examples and distributions (default: the BOS, when the tokenizer adds one).
    #[arg(long)]
    pub skip_first: Option<usize>,
    /// Which tokens of a chat corpus the activations, the logit lens, CMAP and stitching read:
    /// all, assistant (the assistant's message contents), user, or template (the chat
    /// template's own text: role headers and special tokens).
    #[arg(long, default_value = "all", value_parser = |s: &str| s.parse::<neurodiff_protocol::TokenFilter>())]
    pub token_filter: neurodiff_protocol::TokenFilter,
    /// Leading positions of the activation position profile and mean difference vectors.
    #[arg(long, default_value_t = ActivationOptions::default().positions)]
    pub positions: usize,
    /// Tokens listed per block whose logit-lens probability rises (and falls) most.
    #[arg(long, default_value_t = LensOptions::default().top_tokens)]
    pub top_tokens: usize,
    /// Readable traces: samples averaged into δ_j (the whole corpus when it has fewer).
    #[arg(long, default_value_t = TraceOptions::default().samples)]
    pub trace_samples: usize,
    /// Readable traces: the block read (default: the middle one, int(0.5 · (n − 1))).
    #[arg(long)]
    pub trace_layer: Option<usize>,
    /// CMAP: samples of the corpus patched per block.
    #[arg(long, default_value_t = CmapOptions::default().samples)]
    pub cmap_samples: usize,
    /// Steering: blocks steered (default: the middle one), like `--layers`.
    #[arg(long)]
    pub steer_layers: Option<String>,
    /// Steering: the difference vector, `mean` (every token) or `position-J` (δ_J).
    #[arg(long, default_value = "mean")]
    pub steer_vector: String,
    /// Steering: strengths α (comma-separated), in units of the fine-tuned model's mean norm.
    #[arg(long, value_delimiter = ',')]
    pub steer_alphas: Option<Vec<f64>>,
    /// Steering: samples of the corpus the curves are measured on.
    #[arg(long, default_value_t = SteeringOptions::default().samples)]
    pub steer_samples: usize,
    /// Steering: the chosen α is the largest whose perplexity stays within this factor.
    #[arg(long, default_value_t = SteeringOptions::default().ppl_factor)]
    pub ppl_factor: f64,
    /// Generation: a prompt to continue (repeat the flag for several; default three generic ones).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Generation: tokens generated per prompt.
    #[arg(long, default_value_t = GenerationOptions::default().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Generation: sampling temperature and nucleus (top-p) of the sampled continuations.
    #[arg(long, default_value_t = GenerationOptions::default().temperature)]
    pub temperature: f64,
    #[arg(long, default_value_t = GenerationOptions::default().top_p)]
    pub top_p: f64,
    /// Generation: the sampler's seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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

impl ScopeArgs {
    fn dictionary(&self) -> DictionaryOptions {
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
            options: RequestOptions {
                weights: Some(WeightOptions {
                    spectrum: match self.spectrum {
                        SpectrumArg::Full => Spectrum::Full,
                        SpectrumArg::None => Spectrum::None,
                    },
                    top_k: self.top_k,
                }),
                activations: Some(ActivationOptions {
                    positions: self.positions,
                    ..ActivationOptions::default()
                }),
                logit_lens: Some(LensOptions {
                    top_tokens: self.top_tokens,
                    ..LensOptions::default()
                }),
                traces: Some(TraceOptions {
                    samples: self.trace_samples,
                    layer: self.trace_layer,
                    generation: self.generation(),
                    ..TraceOptions::default()
                }),
                cmap: Some(CmapOptions {
                    samples: self.cmap_samples,
                }),
                crosscoder: Some(self.dictionary()),
                sae_diff: Some(self.dictionary()),
                steering: Some(SteeringOptions {
                    layers: match &self.steer_layers {
                        Some(l) => parse_layers(l).context("--steer-layers")?,
                        None => None,
                    },
                    vector: self.steer_vector()?,
                    alphas: self
                        .steer_alphas
                        .clone()
                        .unwrap_or_else(|| SteeringOptions::default().alphas),
                    samples: self.steer_samples,
                    ppl_factor: self.ppl_factor,
                    generation: self.generation(),
                }),
                ..RequestOptions::default()
            },
            rest: Default::default(),
        })
    }

    fn generation(&self) -> GenerationOptions {
        let default = GenerationOptions::default();
        GenerationOptions {
            prompts: if self.prompts.is_empty() {
                default.prompts
            } else {
                self.prompts.clone()
            },
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        }
    }

    fn steer_vector(&self) -> anyhow::Result<SteeringVector> {
        match self.steer_vector.trim() {
            "mean" => Ok(SteeringVector::Mean),
            v => match v.strip_prefix("position-").map(str::parse::<usize>) {
                Some(Ok(position)) => Ok(SteeringVector::Position { position }),
                _ => anyhow::bail!("--steer-vector: `{v}`: expected `mean` or `position-J`"),
            },
        }
    }
}
