//! The weight audit's libtorch half: one shard's tensors compared by the exact metrics and
//! spectra of `neurodiff_core::weights`, and its own bound on the opened models (a full
//! spectrum of a tensor too large for the worker).
use neurodiff_protocol::{sections, AuditSpec, Limits, Section, ShardOutput, ShardSpec, Spectrum};
use tch::Device;

use crate::progress::Progress;
use crate::shard::TensorRuns;
use crate::sources::{OpenTarget, Sources};
use crate::{ExecError, Result};

/// The weight audit, tensor by tensor.
#[derive(Debug)]
pub struct Weights;

impl TensorRuns for Weights {
    fn run(
        &self,
        sources: &Sources,
        shard: &ShardSpec,
        device: Device,
        on_tensor: Progress<'_>,
    ) -> Result<ShardOutput> {
        let result = neurodiff_core::weights::analyze_shard(
            &sources.base,
            sources.core_target(),
            shard.shard,
            sections::Weights::options(&shard.options),
            device,
            on_tensor,
        )?;
        tracing::info!(tensors = result.tensors.len(), "tensors compared");
        Ok(sections::Weights::output(result))
    }

    fn check_limits(&self, sources: &Sources, spec: &AuditSpec, limits: &Limits) -> Result<()> {
        if sections::Weights::options(&spec.options).spectrum != Spectrum::Full {
            return Ok(());
        }
        let OpenTarget::Checkpoint(ft) = &sources.target else {
            return Ok(());
        };
        let big = sources.base.names().find(|n| {
            sources.base.meta(n).is_some_and(|m| {
                m.shape.len() == 2
                    && ft.contains(n)
                    && m.numel() as u64 > limits.max_spectrum_elements
            })
        });
        match big {
            Some(name) => Err(ExecError::Io(format!(
                "tensor `{name}` has more than {} elements, the limit for a full spectrum \
                 (--max-spectrum-elements); audit with spectrum `none`",
                limits.max_spectrum_elements
            ))),
            None => Ok(()),
        }
    }
}
