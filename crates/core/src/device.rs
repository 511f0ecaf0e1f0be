//! Device names as users type them (`cpu`, `cuda`, `cuda:N`), checked against what libtorch sees.
use tch::Device;

use crate::error::{CoreError, Result};

pub fn parse_device(name: &str) -> Result<Device> {
    let bad = |message: String| CoreError::Device {
        device: name.to_string(),
        message,
    };
    let device = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => return Err(bad("expected cpu, cuda or cuda:N".into())),
        },
    };
    let count = tch::Cuda::device_count() as usize;
    match device {
        Device::Cuda(i) if i >= count => Err(bad(if count == 0 {
            "libtorch sees no CUDA device (no GPU, or a CPU-only libtorch)".into()
        } else {
            format!("only {count} CUDA device(s) are visible")
        })),
        d => Ok(d),
    }
}
