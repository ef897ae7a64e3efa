//! The model file: round trip, versions, corrupt files, wrong kinds of file.
mod common;
use common::*;
use flowspect::backbone::{self, BackboneMode};
use flowspect::detector::{Detector, MODEL_VERSION};
use flowspect::progress::{CancelToken, NoProgress};

fn trained() -> Detector {
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let files = first_images(&magnetic_tile().join("train/good"), 5);
    Detector::train(net, &root(), tiny_config(), &files, &NoProgress, &CancelToken::new()).unwrap()
}

#[test]
fn save_load_round_trip_gives_identical_scores() {
    let det = trained();
    let dir = tempdir("modelfile");
    let path = dir.path().join("m.fsm");
    det.save(&path).unwrap();
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let back = Detector::load(&path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(back.meta.threshold, det.meta.threshold);
    assert_eq!(back.meta.config, det.meta.config);
    let test = first_images(&magnetic_tile().join("test/crack"), 3);
    let (a, _) = det.score_paths(&test, &NoProgress, &CancelToken::new()).unwrap();
    let (b, _) = back.score_paths(&test, &NoProgress, &CancelToken::new()).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.score, y.score);
        assert_eq!(x.map, y.map);
        // The pooled-feature Gaussian (default score map-global) is saved too.
        assert!(x.global.is_finite());
        assert_eq!(x.global, y.global);
    }
    // The model embeds the backbone only up to the last stage it runs (stage 6, pooled
    // for the global score): no stage 7, head or classifier, so smaller than the full file.
    let size = std::fs::metadata(&path).unwrap().len();
    let full = std::fs::metadata(root().join(backbone::DEFAULT_BACKBONE)).unwrap().len();
    assert!(size < full * 2 / 3, "model {size} bytes, full backbone {full}");
    let bytes = std::fs::read(&path).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(|n| n.to_string()).collect();
    assert!(names.iter().any(|n| n.starts_with("global.6.")), "{names:?}");
    // So is the region score's bank (default on): 4 training images of 4 x 4 cells at 64 px.
    assert!(names.iter().any(|n| n == "region.bank"), "{names:?}");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("region.bank").unwrap().shape()[0], 4 * 16);
    assert!(!names.iter().any(|n| n.starts_with("backbone.head.") || n.starts_with("backbone.classifier.")));
}

#[test]
fn memflow_save_load_round_trip_gives_identical_scores() {
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let files = first_images(&magnetic_tile().join("train/good"), 6);
    let det = Detector::train(net, &root(), tiny_memflow(), &files, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(det.meta.method, flowspect::detector::Method::MemFlow);
    let bank = det.meta.training.bank.clone().expect("bank report");
    // 5 training images (one held out) of 4x4 patches at 64 px, half kept.
    assert_eq!((bank.patches, bank.rows), (5 * 16, 40));
    assert_eq!(det.bank_bytes(), Some(40 * bank.dim * 4));
    let dir = tempdir("modelfile-memflow");
    let path = dir.path().join("m.fsm");
    det.save(&path).unwrap();
    let back = Detector::load(&path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(back.meta.method, flowspect::detector::Method::MemFlow);
    assert_eq!(back.meta.config, det.meta.config);
    let test = first_images(&magnetic_tile().join("test/crack"), 3);
    let (a, _) = det.score_paths(&test, &NoProgress, &CancelToken::new()).unwrap();
    let (b, _) = back.score_paths(&test, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!(x.score.is_finite());
        assert_eq!(x.score, y.score);
        assert_eq!(x.map, y.map);
    }
    // The NF-BMR reader does not take it for one of its own, nor the reverse.
    let meta = Detector::read_meta(&path).unwrap();
    assert!(matches!(meta.config, flowspect::detector::DetectorConfig::MemFlow(_)));
}

#[test]
fn other_version_corrupt_and_wrong_files_give_clear_errors() {
    let det = trained();
    let dir = tempdir("modelerr");
    let path = dir.path().join("m.fsm");
    det.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    // Another version: rewrite the version field in the JSON header (same length).
    let needle = format!("\\\"version\\\":{MODEL_VERSION}");
    let needle = needle.as_bytes();
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("version field in the header");
    let mut other = bytes.clone();
    other[at + needle.len() - 1] = b'9';
    let p2 = dir.path().join("future.fsm");
    std::fs::write(&p2, &other).unwrap();
    let e = Detector::load(&p2, &candle_core::Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("future.fsm") && e.contains("version 9"), "{e}");

    // Truncated.
    let p3 = dir.path().join("cut.fsm");
    std::fs::write(&p3, &bytes[..bytes.len() / 2]).unwrap();
    let e = Detector::load(&p3, &candle_core::Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("cut.fsm") && e.contains("corrupt"), "{e}");

    // A backbone weight file is not a model.
    let e = Detector::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("not a flowspect model"), "{e}");

    // Garbage.
    let p4 = dir.path().join("junk.fsm");
    std::fs::write(&p4, b"junk").unwrap();
    let e = Detector::load(&p4, &candle_core::Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("junk.fsm"), "{e}");
}

#[test]
fn patchcore_save_load_round_trip_gives_identical_scores() {
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let files = first_images(&magnetic_tile().join("train/good"), 6);
    let mut cfg = flowspect::models::patchcore::PatchCoreConfig::default();
    cfg.tap.image_size = 64;
    cfg.coreset_ratio = 0.5;
    let det = Detector::train(net, &root(), cfg, &files, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(det.meta.method, flowspect::detector::Method::PatchCore);
    let bank = det.meta.training.bank.clone().expect("bank report");
    // 5 training images (one held out) of 8x8 stride-8 patches at 64 px, half kept;
    // stages 3 and 5: 40 + 112 channels.
    assert_eq!((bank.patches, bank.rows, bank.dim), (5 * 64, 160, 152));
    let dir = tempdir("modelfile-patchcore");
    let path = dir.path().join("m.fsm");
    det.save(&path).unwrap();
    let back = Detector::load(&path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(back.meta.config, det.meta.config);
    assert_eq!(back.meta.threshold, det.meta.threshold);
    let test = first_images(&magnetic_tile().join("test/crack"), 3);
    let (a, _) = det.score_paths(&test, &NoProgress, &CancelToken::new()).unwrap();
    let (b, _) = back.score_paths(&test, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        // The image score is the map's maximum.
        assert!(x.score.is_finite() && x.score > 0.0);
        assert_eq!(x.score, x.map.iter().copied().fold(f32::MIN, f32::max));
        assert_eq!(x.score, y.score);
        assert_eq!(x.map, y.map);
    }
    // No network and no second score: other image scores are refused by name.
    let mut back = back;
    let e = back.set_score(flowspect::models::scoring::ScoreKind::Fused).unwrap_err().to_string();
    assert!(e.contains("patchcore"), "{e}");
    // The threshold rule is stored with its held-out count.
    let rule = back.meta.threshold_rule.expect("threshold rule");
    assert_eq!(rule.held_out, 1);
}
