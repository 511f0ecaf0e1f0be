//! The core crate's error type: every variant names the file, tensor or field at fault.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: missing ({what})")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: not a readable GGUF checkpoint: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("{path}: invalid shard index: {message}")]
    ShardIndex { path: PathBuf, message: String },
    #[error("{checkpoint}: tensor `{tensor}` not found{hint}")]
    MissingTensor {
        checkpoint: PathBuf,
        tensor: String,
        hint: String,
    },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?} ({why})")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<i64>,
        found: Vec<i64>,
        why: String,
    },
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, expected a floating-point weight (F32, F16 or BF16)")]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unsupported model_type `{model_type}`; supported: {supported}")]
    UnsupportedArchitecture {
        path: PathBuf,
        model_type: String,
        supported: String,
    },
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("model reference `{reference}`: {message}")]
    Reference { reference: String, message: String },
    #[error("device `{device}`: {message}")]
    Device { device: String, message: String },
    #[error("hook `{hook}`: {message}")]
    Hook { hook: String, message: String },
    #[error("input: {0}")]
    Input(String),
    #[error("corpus `{corpus}`: {message}")]
    Corpus { corpus: String, message: String },
    /// The caller asked to stop (a cancelled audit, a worker shutting down).
    #[error("interrupted")]
    Interrupted,
    #[error("libtorch: {}", first_line(.0))]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// libtorch errors carry a C++ backtrace after the message; users need the message.
fn first_line(e: &tch::TchError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}
