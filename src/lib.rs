//! flowspect: unsupervised visual defect inspection.
//!
//! The engine (data, backbone, detectors, training, metrics) knows nothing of the UI;
//! the command line (`src/cli`) and the GUI are thin layers over it.
pub mod backbone;
pub mod data;
pub mod device;
pub mod error;
pub mod fsutil;
pub mod progress;

pub use error::{Error, Result};
