//! Every analysis's options, declared once: the one list below makes the struct the spec and
//! every shard spec carry ([`Options`], each analysis's options present, defaulted) and the
//! part of the request that names them ([`RequestOptions`], each one optional, left out of
//! the JSON when absent), so a new analysis's options are one line here.
use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::spec::{WeightOptions, MAX_TOP_K};
use crate::{ActivationOptions, CmapOptions, CorpusOptions, DictionaryOptions, LensOptions};
use crate::{SteeringOptions, TraceOptions};

/// Declares [`Options`] and [`RequestOptions`] from one list of `field: Type` (each line's doc
/// comment is the request field's documentation).
macro_rules! options {
    ($($(#[doc = $doc:literal])* $field:ident: $ty:ty,)*) => {
        /// Every analysis's options, each under the name of its analysis (as the request, the
        /// spec, every shard spec and results.json name it).
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct Options {
            $(#[serde(default)] pub $field: $ty,)*
        }

        /// The analyses' options as a request gives them: each may be left out (its defaults).
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
        pub struct RequestOptions {
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[schema(value_type = Option<Object>)]
                pub $field: Option<$ty>,
            )*
        }

        impl RequestOptions {
            /// Each analysis's options, its defaults where the request left them out.
            pub fn into_options(self) -> Options {
                Options { $($field: self.$field.unwrap_or_default(),)* }
            }

            /// The request's field names these options take.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field),)*];
        }
    };
}

options! {
    /// `{"spectrum": "full" | "none", "top_k": 16}`
    weights: WeightOptions,
    /// `{"positions": 32, "top_examples": 16, "context": 8}`
    activations: ActivationOptions,
    /// `{"top_tokens": 20, "top_samples": 16}`
    logit_lens: LensOptions,
    /// `{"samples": 10000, "positions": 5, "layer": null, "top_k": 100, "scales": 30,
    /// "min_scale": 0.5, "max_scale": 200, "steer_alpha": 1, "generation": {...}}`
    traces: TraceOptions,
    /// `{"samples": 64}`
    cmap: CmapOptions,
    /// `{"layers": null, "vector": {"kind": "mean"}, "alphas": [0, 0.125, 0.25, 0.5, 1, 2, 4],
    /// "samples": 32, "ppl_factor": 2, "generation": {"prompts": [...], "max_new_tokens": 24,
    /// "temperature": 0.8, "top_p": 0.9, "seed": 0}}`
    steering: SteeringOptions,
    /// `{"layer": null, "expansion": 32, "k": 100, "batch": 2048, "steps": 2000, "lr": null,
    /// "warmup_steps": 1000, "samples": 1024, "holdout_percent": 10, ...}`
    /// (docs/crosscoder.md).
    crosscoder: DictionaryOptions,
    /// The same options, for the SAE on activation differences.
    sae_diff: DictionaryOptions,
}

impl Options {
    /// Each analysis's own checks of its options (and the corpus's, in the order a request
    /// has always been checked in: the first error found is the one reported).
    pub(crate) fn validate(&mut self, corpus: &CorpusOptions) -> Result<(), SpecError> {
        if self.weights.top_k == 0 || self.weights.top_k > MAX_TOP_K {
            return Err(SpecError::Field(
                "weights.top_k".into(),
                format!("must be between 1 and {MAX_TOP_K}"),
            ));
        }
        corpus.validate()?;
        self.activations.validate()?;
        self.logit_lens.validate()?;
        self.traces.validate()?;
        self.cmap.validate()?;
        self.steering.validate()?;
        self.crosscoder.validate("crosscoder")?;
        self.sae_diff.validate("sae_diff")
    }
}
