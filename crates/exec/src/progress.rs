//! How a shard reports progress and learns it should stop.
use neurodiff_core::CoreError;

use crate::{ExecError, Result};

/// How a shard reports progress and learns it should stop: called with a unit of work done
/// (a tensor, a batch); returns false to stop.
pub type Progress<'a> = &'a mut (dyn FnMut(&str) -> bool + Send);

/// Stops when the caller says so.
pub fn check(progress: &mut (dyn FnMut(&str) -> bool + Send), what: &str) -> Result<()> {
    if progress(what) {
        Ok(())
    } else {
        Err(ExecError::Core(CoreError::Interrupted))
    }
}
