//! Flags that several analyses share on the command line: the generation settings the readable
//! traces and steering both sample with.
use neurodiff_protocol::GenerationOptions;

/// Generation's flags.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct GenerationFlags {
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
}

impl GenerationFlags {
    pub fn options(&self) -> GenerationOptions {
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
}
