//! The analyses, declared once (the declaration is in the crate's root, one entry per
//! analysis): [`analyses!`] makes from it the analysis kinds (`AnalysisKind`, with their wire
//! names and shard units), the options the spec and every shard spec carry (`Options`) and the
//! request's part that names them (`RequestOptions`), the sections of results.json
//! (`Analyses`) and what one shard returns (`ShardOutput`). What the spec asks of one
//! analysis's options is [`AnalysisOptions`], which each options type implements in its module.
use crate::error::SpecError;

/// What the spec asks of one analysis's options, besides reading them.
pub trait AnalysisOptions {
    /// The analysis takes no options: its field is refused in a request, whatever its value,
    /// and left out of the spec's JSON.
    fn none() -> bool
    where
        Self: Sized,
    {
        false
    }

    /// Their own checks (defaults filled in where a value depends on another); `field` is
    /// their name in the request.
    fn check(&mut self, field: &str) -> Result<(), SpecError>;

    /// Corpus samples the analysis reads when it asks for its own count (it reads the
    /// corpus's first samples); none when it reads `corpus.max_samples`.
    fn samples(&self) -> Option<usize> {
        None
    }

    /// Its checks against the corpus's sample length (positions it reads must exist).
    fn check_seq_len(&self, _field: &str, _seq_len: usize) -> Result<(), SpecError> {
        Ok(())
    }

    /// Its bounds on what one worker holds, for samples of `seq_len` tokens.
    fn check_limits(&self, _field: &str, _seq_len: usize) -> Result<(), SpecError> {
        Ok(())
    }
}

/// One analysis's place in the wire types, as a type (`neurodiff_protocol::sections::<Kind>`): its
/// `ShardOutput` variant, its section of `Analyses` and its options.
pub trait Section {
    /// Its kind.
    const KIND: crate::AnalysisKind;
    /// What one of its shards returns.
    type Shard;
    /// Its section of results.json.
    type Report;

    /// `output` as one of its shards; none when it is another analysis's.
    fn shard(output: crate::ShardOutput) -> Option<Self::Shard>;

    /// Its section.
    fn section(analyses: &mut crate::Analyses) -> &mut Option<Self::Report>;

    /// Its options.
    type Options: AnalysisOptions;

    /// Its options among every analysis's.
    fn options(options: &crate::Options) -> &Self::Options;

    /// One of its shards as the queue and the fan-in carry it.
    fn output(shard: Self::Shard) -> crate::ShardOutput;
}

/// The grades of an analysis that an organism does not grade: nothing in `grades`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NoGrade {}

/// Declares the analyses: for each, its doc, `Kind = "wire-name"`, its field (the name of its
/// options and of its section of results.json), its shard unit, its shard output type, its
/// report type, its options type (`()` for none: it has no field in `Options`) and its
/// grades' type (`NoGrade` for none).
macro_rules! analyses {
    ($(
        $(#[doc = $doc:literal])*
        $kind:ident = $wire:tt {
            field: $field:ident,
            unit: $unit:ident,
            shard: $shard:ty,
            report: $report:ty,
            options: $opts:ty,
            grade: $grade:ty $(,)?
        }
    )*) => {
        /// The analyses an audit can run, by the name users give them (`--analyses`,
        /// `"analyses"`), in the order reports show them.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, utoipa::ToSchema,
        )]
        pub enum AnalysisKind {
            $($(#[doc = $doc])* #[serde(rename = $wire)] $kind,)*
        }

        impl AnalysisKind {
            pub const ALL: [AnalysisKind; [$(stringify!($kind),)*].len()] = [$(AnalysisKind::$kind,)*];

            /// Its wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(AnalysisKind::$kind => $wire,)*
                }
            }

            /// The name of its options and of its section of results.json.
            pub fn field(self) -> &'static str {
                match self {
                    $(AnalysisKind::$kind => stringify!($field),)*
                }
            }

            /// The shape of its shards: slices of the corpus, blocks, or positions.
            pub fn shard_unit(self) -> $crate::ShardUnit {
                match self {
                    $(AnalysisKind::$kind => $crate::ShardUnit::$unit,)*
                }
            }

            /// Where its per-tensor rows are in its section ([`Rows::TENSORS`]).
            ///
            /// [`Rows::TENSORS`]: crate::rows::Rows::TENSORS
            pub fn tensor_rows(self) -> Option<&'static str> {
                match self {
                    $(AnalysisKind::$kind => <$report as $crate::rows::Rows>::TENSORS,)*
                }
            }

            /// Where its per-block rows are in its section ([`Rows::BLOCKS`]).
            ///
            /// [`Rows::BLOCKS`]: crate::rows::Rows::BLOCKS
            pub fn block_rows(self) -> &'static [&'static str] {
                match self {
                    $(AnalysisKind::$kind => <$report as $crate::rows::Rows>::BLOCKS,)*
                }
            }

            /// Whether it trains a dictionary ([`Rows::DICTIONARY`]).
            ///
            /// [`Rows::DICTIONARY`]: crate::rows::Rows::DICTIONARY
            pub fn is_dictionary(self) -> bool {
                match self {
                    $(AnalysisKind::$kind => <$report as $crate::rows::Rows>::DICTIONARY,)*
                }
            }

            /// Where its readable tokens are in its section ([`Rows::TOKENS`]).
            ///
            /// [`Rows::TOKENS`]: crate::rows::Rows::TOKENS
            pub fn token_rows(self) -> Option<$crate::rows::TokenPointers> {
                match self {
                    $(AnalysisKind::$kind => <$report as $crate::rows::Rows>::TOKENS,)*
                }
            }
        }

        $crate::vocab::sqlx_text!(AnalysisKind);

        /// Every analysis's options, each under the name of its analysis (as the request,
        /// the spec, every shard spec and results.json name it).
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct Options {
            $(
                #[serde(default, skip_serializing_if = "crate::registry::takes_none")]
                pub $field: $opts,
            )*
        }

        /// The analyses' options as a request gives them: each may be left out (its
        /// defaults).
        #[derive(
            Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize,
            utoipa::ToSchema,
        )]
        pub struct RequestOptions {
            $(
                #[serde(
                    default,
                    skip_serializing_if = "Option::is_none",
                    deserialize_with = "crate::registry::request_options"
                )]
                #[schema(value_type = Option<Object>)]
                pub $field: Option<$opts>,
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

        impl Options {
            /// Every analysis's options, with its kind.
            pub fn each(&self) -> Vec<(AnalysisKind, &dyn $crate::registry::AnalysisOptions)> {
                vec![$((AnalysisKind::$kind, &self.$field as &dyn $crate::registry::AnalysisOptions),)*]
            }

            fn each_mut(
                &mut self,
            ) -> Vec<(AnalysisKind, &mut dyn $crate::registry::AnalysisOptions)> {
                vec![$((AnalysisKind::$kind, &mut self.$field as &mut dyn $crate::registry::AnalysisOptions),)*]
            }
        }

        /// The analyses' sections of results.json, each present when it ran.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct Analyses {
            $(
                #[serde(skip_serializing_if = "Option::is_none", default)]
                pub $field: Option<$report>,
            )*
        }

        impl Analyses {
            /// Every section's per-block rows, as the team database stores them.
            pub fn block_rows(&self) -> Vec<$crate::rows::BlockRow> {
                let mut rows = Vec::new();
                $(
                    if let Some(r) = &self.$field {
                        rows.extend($crate::rows::Rows::block_rows(r, AnalysisKind::$kind));
                    }
                )*
                rows
            }

            /// The dictionary analyses' sections that ran: what the report's artifacts, the
            /// embedded audit's exported files and the team database's latent rows are made
            /// from.
            pub fn dictionaries(&self) -> Vec<$crate::DictionarySection<'_>> {
                let mut out = Vec::new();
                $(
                    let report = self.$field.as_ref().and_then($crate::rows::Rows::dictionary);
                    if let Some(report) = report {
                        out.push($crate::DictionarySection {
                            analysis: AnalysisKind::$kind,
                            section: stringify!($field),
                            report,
                        });
                    }
                )*
                out
            }
        }

        /// Each analysis's place in the wire types, as a type ([`registry::Section`]).
        pub mod sections {
            use super::*;

            $(
                $(#[doc = $doc])*
                #[derive(Debug, Clone, Copy)]
                pub struct $kind;

                impl $crate::registry::Section for $kind {
                    const KIND: AnalysisKind = AnalysisKind::$kind;
                    type Shard = $shard;
                    type Report = $report;

                    fn shard(output: ShardOutput) -> Option<$shard> {
                        match output {
                            ShardOutput::$kind(s) => Some(s),
                            _ => None,
                        }
                    }

                    fn section(analyses: &mut Analyses) -> &mut Option<$report> {
                        &mut analyses.$field
                    }

                    type Options = $opts;

                    fn options(options: &Options) -> &$opts {
                        &options.$field
                    }

                    fn output(shard: $shard) -> ShardOutput {
                        ShardOutput::$kind(shard)
                    }
                }
            )*
        }

        /// `grades`: the audit measured against an organism's ground truth, each analysis's
        /// grades at the top level (flattened).
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct Grades {
            pub organism: String,
            pub domain: Option<String>,
            pub trained_blocks: Option<Vec<usize>>,
            $(#[serde(flatten)] pub $field: $grade,)*
            /// An LLM grader's share of relevant trace tokens, when one was asked.
            #[serde(skip_serializing_if = "Option::is_none", default)]
            pub llm: Option<serde_json::Value>,
        }

        /// What one shard returns, by analysis.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "analysis")]
        pub enum ShardOutput {
            $(#[serde(rename = $wire)] $kind($shard),)*
            /// A slice of a dictionary's activation store (its analysis says which
            /// dictionary).
            #[serde(rename = "collect")]
            Collect($crate::CollectShard),
            /// A layer range that handed its state on to the next link of its chain (only
            /// the chain's last link returns the analysis's own shard).
            #[serde(rename = "link")]
            Link($crate::LinkShard),
        }

        impl ShardOutput {
            pub fn elapsed_s(&self) -> f64 {
                match self {
                    $(ShardOutput::$kind(r) => r.elapsed_s,)*
                    ShardOutput::Collect(r) => r.elapsed_s,
                    ShardOutput::Link(r) => r.elapsed_s,
                }
            }

            /// The analysis it is a shard of.
            pub fn kind(&self) -> AnalysisKind {
                match self {
                    $(ShardOutput::$kind(_) => AnalysisKind::$kind,)*
                    ShardOutput::Collect(c) => c.dictionary,
                    ShardOutput::Link(l) => l.link.analysis(),
                }
            }
        }
    };
}
pub(crate) use analyses;

/// Options of an analysis that takes none are left out of the JSON.
pub(crate) fn takes_none<T: AnalysisOptions>(_: &T) -> bool {
    T::none()
}

/// An analysis's options in a request: absent or `null` for its defaults, except for an
/// analysis that takes none, whose options type refuses any value, `null` included.
pub(crate) fn request_options<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + AnalysisOptions,
{
    if T::none() {
        return T::deserialize(d).map(Some);
    }
    <Option<T> as serde::Deserialize>::deserialize(d)
}
