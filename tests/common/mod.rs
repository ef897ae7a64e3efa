//! Helpers shared by the integration tests.
#![allow(dead_code)]
use flowspect::models::memflow::MemFlowConfig;
use flowspect::models::nfbmr::NfBmrConfig;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real defect images shared with every developer and CI.
pub fn magnetic_tile() -> PathBuf {
    let p = root().join("../shared/data/magnetic_tile");
    assert!(
        p.join("train/good").is_dir(),
        "real test data missing: {} (see ../shared/README.md)",
        p.display()
    );
    p
}

/// The second real set: electroluminescence images of solar cells, image labels only.
pub fn elpv_poly() -> PathBuf {
    let p = root().join("../shared/data/elpv_poly");
    assert!(p.join("train/good").is_dir(), "real test data missing: {} (see ../shared/README.md)", p.display());
    p
}

/// A fresh scratch folder, removed when the returned guard is dropped.
pub fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("flowspect-test-{name}-")).tempdir().unwrap()
}

/// A very small configuration for tests that check plumbing, not accuracy.
pub fn tiny_config() -> NfBmrConfig {
    let mut c = NfBmrConfig::default();
    c.tap.image_size = 64;
    c.flow.hidden = 32;
    c.bmr.hidden = 32;
    c.bmr.bottleneck = 8;
    c.flow_optim.epochs = 2;
    c.bmr_optim.epochs = 2;
    c
}

/// A very small MemFlowNet configuration (plumbing, not accuracy).
pub fn tiny_memflow() -> MemFlowConfig {
    let mut c = MemFlowConfig::default();
    c.tap.image_size = 64;
    c.flow.hidden = 32;
    c.flow_optim.epochs = 2;
    c.coreset_ratio = 0.5;
    c
}

/// The first `n` images of a folder, sorted.
pub fn first_images(dir: &Path, n: usize) -> Vec<PathBuf> {
    flowspect::data::list_images(dir).unwrap().into_iter().take(n).collect()
}
