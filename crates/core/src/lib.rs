//! NeuroDiff's core: checkpoints, model forward passes with hooks, and diffing analyses on libtorch.
pub mod chat;
pub mod checkpoint;
pub mod corpus;
pub mod device;
pub mod dictionary;
pub mod error;
pub mod files;
pub mod gguf;
pub mod guard;
pub mod hooks;
pub mod inspect;
pub mod models;
pub mod nn;
pub mod organisms;
pub mod reference;
pub mod safetensors_out;
pub mod task_vector;
pub mod tokenizer;
pub mod weights;

pub use checkpoint::Checkpoint;
pub use error::{CoreError, Result};
pub use hooks::{Edit, HookKind, HookPoint, Hooks};
pub use models::{AdapterSwitch, BlockWeights, ForwardOutput, Load, Model, ModelInfo, Pass};
