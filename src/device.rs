//! `--device auto|cpu|cuda[:N]`.
use crate::error::{Error, Result};
use candle_core::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DeviceChoice {
    /// CUDA when flowspect was built with the `cuda` feature and a GPU answers; else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    n.parse()
                        .map(Self::Cuda)
                        .map_err(|_| Error::Config(format!("bad CUDA ordinal in device '{s}'")))
                } else {
                    Err(Error::Config(format!(
                        "unknown device '{s}' (use auto, cpu, cuda or cuda:N)"
                    )))
                }
            }
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device. `Cuda` fails with a clear message when flowspect was built
    /// without the `cuda` feature or no GPU answers; `Auto` falls back to CPU then.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n),
            Self::Auto => Ok(open_cuda(0).unwrap_or(Device::Cpu)),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| Error::Device(format!("cannot open CUDA device {n}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_n: usize) -> Result<Device> {
    Err(Error::Device(
        "this flowspect was built without CUDA support (rebuild with --features cuda)".into(),
    ))
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        _ => format!("{device:?}"),
    }
}
