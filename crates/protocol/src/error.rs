//! Why a request or spec was refused: the field it names and what is wrong with it; and the
//! range checks every options struct uses.

/// A request, spec or shard key that does not hold, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("field `layers`: {0}")]
    Layers(String),
    #[error("field `analyses`: {0}")]
    Analyses(String),
    #[error("field `{0}`: {1}")]
    Field(String, String),
    #[error("`{0}` is not a shard key")]
    ShardKey(String),
}

/// `v` is finite and within `lo..=hi`, or the field is refused naming both.
pub(crate) fn within_f(field: &str, v: f64, lo: f64, hi: f64) -> Result<(), SpecError> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SpecError::Field(
            field.into(),
            format!("{v} is outside {lo}..={hi}"),
        ))
    }
}

/// `v` is within `lo..=hi`, or the field is refused naming both.
pub(crate) fn within(field: &str, v: usize, lo: usize, hi: usize) -> Result<(), SpecError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SpecError::Field(
            field.into(),
            format!("{v} is outside {lo}..={hi}"),
        ))
    }
}
