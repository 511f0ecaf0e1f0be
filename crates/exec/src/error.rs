//! The executor's errors: what the core refused, what a shard could not do, and storage that
//! may come back (retried, not fatal).
use neurodiff_core::CoreError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    Io(String),
    /// Object storage failed in a way that may pass (unreachable, throttled): retried, not fatal.
    #[error("{0}")]
    Storage(String),
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;

impl From<tch::TchError> for ExecError {
    fn from(e: tch::TchError) -> Self {
        ExecError::Core(CoreError::Torch(e))
    }
}

impl ExecError {
    /// Out of memory (host or GPU) or out of disk: the input may be fine and another worker,
    /// or the same one later, may have room, so the task is retried (a bounded number of
    /// times), not failed.
    pub fn is_resource_exhaustion(&self) -> bool {
        // By the kind of error, never by text that may come from the input (a config value
        // reading "out of memory" must not turn bad input into retries).
        match self {
            ExecError::Core(CoreError::Io { source, .. }) => {
                source.raw_os_error() == Some(28)
                    || source.kind() == std::io::ErrorKind::StorageFull
            }
            ExecError::Core(CoreError::Torch(e)) => {
                let m = e.to_string().to_ascii_lowercase();
                [
                    "out of memory",
                    "can't allocate memory",
                    "cannot allocate memory",
                ]
                .iter()
                .any(|s| m.contains(s))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhaustion_is_retried_and_bad_input_is_not() {
        let enospc = ExecError::Core(CoreError::Io {
            path: "/cache/x".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        assert!(enospc.is_resource_exhaustion());
        for message in [
            "CUDA out of memory. Tried to allocate 2.00 GiB",
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory",
        ] {
            let e = ExecError::Core(CoreError::Torch(tch::TchError::Torch(message.into())));
            assert!(e.is_resource_exhaustion(), "{message}");
        }
        // Text from the input never counts, whatever it says.
        let bad = ExecError::Core(CoreError::Config {
            path: "/m/config.json".into(),
            message: "field `model_type` is \"out of memory\" here".into(),
        });
        assert!(!bad.is_resource_exhaustion());
    }
}
