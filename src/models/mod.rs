//! The networks trained on good images and the detectors built from them.
pub mod bmr;
pub mod features;
pub mod flow;
pub mod global;
pub mod memflow;
pub mod memory;
pub mod nfbmr;
pub mod region;
pub mod training;
