//! Why a request or spec was refused: the field it names and what is wrong with it.

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
