//! The fixed vocabularies of the activation analyses, one enum each from the forward pass to
//! results.json, the database and the dashboard: hook points (TransformerLens names), CMAP's
//! patched components and directions, and stitching's directions. Their serde names are the
//! strings results.json has always carried.

/// Declares a fieldless enum with its wire names: `ALL`, `as_str`, `Display`, `FromStr`
/// (naming the accepted values on error) and serde under the same names.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $wire:tt,)+ }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize,
            ::utoipa::ToSchema,
        )]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::vocab::UnknownName;

            fn from_str(s: &str) -> Result<Self, $crate::vocab::UnknownName> {
                $name::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        let known: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        $crate::vocab::UnknownName(format!("unknown {} `{s}`; known: {}", $what, known.join(", ")))
                    })
            }
        }

        // What a text column of the database maps through.
        impl TryFrom<String> for $name {
            type Error = $crate::vocab::UnknownName;

            fn try_from(s: String) -> Result<Self, $crate::vocab::UnknownName> {
                s.parse()
            }
        }

        $crate::vocab::sqlx_text!($name);
    };
}

/// A named enum as a PostgreSQL text column (its wire name), read and written by sqlx directly,
/// so rows holding one (or an `Option` of one) map with `FromRow` and bind without `as_str`.
#[cfg(feature = "sqlx")]
macro_rules! sqlx_text {
    ($name:ident) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $name {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $name {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}

#[cfg(not(feature = "sqlx"))]
macro_rules! sqlx_text {
    ($name:ident) => {};
}
pub(crate) use named_enum;
pub(crate) use sqlx_text;

/// A name outside a fixed vocabulary; the message lists the names known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownName(pub String);

named_enum! {
    /// A hook point of a block, in forward order.
    HookKind, "hook" {
        ResidPre = "hook_resid_pre",
        /// What attention adds to the residual stream (after Gemma's and OLMo 2's post-norm).
        AttnOut = "hook_attn_out",
        ResidMid = "hook_resid_mid",
        /// What the MLP adds to the residual stream (after the post-norm where there is one).
        MlpOut = "hook_mlp_out",
        ResidPost = "hook_resid_post",
    }
}

named_enum! {
    /// What a row of the team database's block results reads: a hook of a block, or the
    /// model's output (the logit lens at the logits).
    BlockSite, "hook" {
        ResidPre = "hook_resid_pre",
        AttnOut = "hook_attn_out",
        ResidMid = "hook_resid_mid",
        MlpOut = "hook_mlp_out",
        ResidPost = "hook_resid_post",
        Output = "output",
    }
}

named_enum! {
    /// The numeric columns of the team database's block results (`GET /v1/results/blocks`).
    BlockMetric, "metric" {
        MeanRelDiff = "mean_rel_diff",
        MeanDiffNorm = "mean_diff_norm",
        /// Activations only.
        MeanCosine = "mean_cosine",
        /// The logit lens only.
        KlMean = "kl_mean",
    }
}

named_enum! {
    /// The numeric columns of the team database's tensor results (`GET /v1/results`).
    TensorMetric, "metric" {
        RelFro = "rel_fro",
        Fro = "fro",
        Cosine = "cosine",
        MaxAbs = "max_abs",
        Spectral = "spectral",
        Nuclear = "nuclear",
        StableRank = "stable_rank",
        EffectiveRank = "effective_rank",
        Rank90 = "rank_90",
        Rank99 = "rank_99",
        NumericalRank = "numerical_rank",
        BaseFro = "base_fro",
    }
}

named_enum! {
    /// A dictionary latent's class: by its decoder-norm ratio Δ for a crosscoder, `diff` for
    /// every latent of an SAE on differences.
    LatentClass, "latent class" {
        /// Δ < 0.1: its decoder lives in the fine-tune only.
        FtOnly = "ft_only",
        /// Δ > 0.9.
        BaseOnly = "base_only",
        /// 0.4 ≤ Δ ≤ 0.6.
        Shared = "shared",
        Other = "other",
        Diff = "diff",
    }
}

impl LatentClass {
    /// A crosscoder latent's class by its decoder-norm ratio Δ.
    pub fn of_delta(delta: f64) -> LatentClass {
        if delta < 0.1 {
            LatentClass::FtOnly
        } else if delta > 0.9 {
            LatentClass::BaseOnly
        } else if (0.4..=0.6).contains(&delta) {
            LatentClass::Shared
        } else {
            LatentClass::Other
        }
    }
}

impl From<HookKind> for BlockSite {
    fn from(h: HookKind) -> BlockSite {
        match h {
            HookKind::ResidPre => BlockSite::ResidPre,
            HookKind::AttnOut => BlockSite::AttnOut,
            HookKind::ResidMid => BlockSite::ResidMid,
            HookKind::MlpOut => BlockSite::MlpOut,
            HookKind::ResidPost => BlockSite::ResidPost,
        }
    }
}

named_enum! {
    /// A site CMAP patches in a block.
    Component, "component" {
        AttnOut = "attn_out",
        MlpOut = "mlp_out",
        ResidPost = "resid_post",
    }
}

impl Component {
    /// The hook point the component's activation is read and written at.
    pub fn hook(self) -> HookKind {
        match self {
            Component::AttnOut => HookKind::AttnOut,
            Component::MlpOut => HookKind::MlpOut,
            Component::ResidPost => HookKind::ResidPost,
        }
    }
}

named_enum! {
    /// Which model CMAP runs and which lends it the patched activation.
    PatchDirection, "direction" {
        /// The base run with the fine-tune's activation.
        FtIntoBase = "ft_into_base",
        /// The fine-tune run with the base's activation.
        BaseIntoFt = "base_into_ft",
    }
}

named_enum! {
    /// Which model runs blocks [0, k) of a stitched model, and which the rest.
    StitchDirection, "direction" {
        BaseThenFt = "base_then_ft",
        FtThenBase = "ft_then_base",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_on_the_wire_and_in_text() {
        for h in HookKind::ALL {
            let json = serde_json::to_string(&h).unwrap();
            assert_eq!(json, format!("\"{}\"", h.as_str()));
            assert_eq!(serde_json::from_str::<HookKind>(&json).unwrap(), h);
            assert_eq!(h.as_str().parse::<HookKind>().unwrap(), h);
        }
        let err = "hook_nope".parse::<HookKind>().unwrap_err().0;
        assert!(
            err.contains("hook_nope") && err.contains("hook_resid_post"),
            "{err}"
        );
        assert_eq!(Component::MlpOut.hook(), HookKind::MlpOut);
        assert!(serde_json::from_str::<PatchDirection>("\"sideways\"").is_err());
    }

    #[test]
    fn tensor_metrics_are_the_numeric_columns_of_a_tensor_row() {
        // The database's column names come from this enum: each must be a numeric field of the
        // results schema's tensor row.
        let row = crate::TensorMetrics::from_norms("w", vec![1, 1], 0.0, 1.0, 1.0, "none");
        let row = serde_json::to_value(row).unwrap();
        for m in TensorMetric::ALL {
            let v = &row[m.as_str()];
            assert!(v.is_number() || v.is_null(), "{m}: {v}");
        }
    }
}

named_enum! {
    /// The dtype the corpus analyses hold the models' weights in (`--dtype`, the request's
    /// `dtype`). The residual stream and every statistic stay in fp32 (sums in f64) whatever
    /// it is. `auto`: the checkpoint's own dtype on a GPU, fp32 on the CPU.
    #[derive(Default)]
    Dtype, "dtype" {
        #[default]
        Auto = "auto",
        Fp32 = "fp32",
        Bf16 = "bf16",
        Fp16 = "fp16",
    }
}

impl Dtype {
    pub fn is_auto(&self) -> bool {
        *self == Dtype::Auto
    }
}
