//! flowspect: unsupervised visual defect inspection.
//!
//! The engine (data, backbone, detectors, training, metrics) knows nothing of the UI;
//! the command line (`src/cli`) and the GUI are thin layers over it.
pub mod backbone;
pub mod data;
pub mod detector;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod fsutil;
pub mod inspection;
pub mod line;
pub mod metrics;
pub mod models;
pub mod postprocess;
pub mod progress;
pub mod report;
pub mod resources;
pub mod render;
pub mod rng;

pub use error::{Error, Result};
