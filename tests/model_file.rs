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

/// A MemFlowNet model keeps its held-out images' maps in the model file, so a teach
/// recalibrates without reading them again; the calibration equals the one a model
/// file without them (as older files are) gets by scoring the held-out images again,
/// after one teach and after a second one on the saved and reloaded model.
#[test]
fn memflow_teach_recalibrates_from_kept_maps_as_from_the_images() {
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let files = first_images(&magnetic_tile().join("train/good"), 9);
    let mut cfg = tiny_memflow();
    cfg.val_fraction = 0.34;
    let det = Detector::train(net, &root(), cfg, &files, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(det.meta.training.held_out.len(), 3);
    let dir = tempdir("modelfile-memflow-kept");
    let kept = dir.path().join("kept.fsm");
    det.save(&kept).unwrap();
    // Copies `from` to `to` without the kept maps; says whether `from` had them.
    let strip = |from: &std::path::Path, to: &std::path::Path| {
        let bytes = std::fs::read(from).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let had = st.names().iter().any(|n| n.starts_with("heldout."));
        let rest: Vec<(String, safetensors::tensor::TensorView)> = st.tensors().into_iter().filter(|(n, _)| !n.starts_with("heldout.")).collect();
        std::fs::write(to, safetensors::serialize(rest, header.metadata().clone()).unwrap()).unwrap();
        had
    };
    let bytes = std::fs::read(&kept).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // 3 held-out images of 4 x 4 patches at 64 px.
    assert_eq!(st.tensor("heldout.queries").unwrap().shape()[0], 3 * 16);
    assert_eq!(st.tensor("heldout.distances").unwrap().shape(), &[3, 4, 4]);
    let old = dir.path().join("old.fsm");
    assert!(strip(&kept, &old));

    let good = first_images(&magnetic_tile().join("test/good"), 3);
    let how = flowspect::models::TeachConfig::default();
    let teach = |m: &std::path::Path, imgs: &[std::path::PathBuf]| {
        let mut d = Detector::load(m, &candle_core::Device::Cpu).unwrap();
        let r = d.teach(imgs, &how, &NoProgress, &CancelToken::new()).unwrap();
        d.save(m).unwrap();
        (d, r.summary)
    };
    let close = |a: &flowspect::detector::Detector, b: &flowspect::detector::Detector| {
        let (x, y) = (&a.meta.calibration, &b.meta.calibration);
        let near = |p: f32, q: f32| (p - q).abs() <= 1e-5 * p.abs().max(1.0);
        assert!(near(a.meta.threshold, b.meta.threshold), "{} vs {}", a.meta.threshold, b.meta.threshold);
        assert!(near(x.map_mean, y.map_mean) && near(x.map_std, y.map_std) && near(x.flow_mean, y.flow_mean), "{x:?} vs {y:?}");
        assert_eq!(x.position_mean.len(), y.position_mean.len());
        assert!(x.position_mean.iter().zip(&y.position_mean).all(|(p, q)| near(*p, *q)));
    };
    let (a, sa) = teach(&kept, &good[..2]);
    let (b, sb) = teach(&old, &good[..2]);
    assert!(sa.contains("recalibrated on 3 held-out images (kept in the model file)"), "{sa}");
    assert!(sb.contains("recalibrated on 3 held-out images:"), "{sb}");
    // The teach moved the calibration (an added row came nearer to a held-out patch).
    assert!((a.meta.calibration.map_mean - det.meta.calibration.map_mean).abs() > 1e-6, "{:?}", a.meta.calibration);
    close(&a, &b);
    // The older file gets the kept maps at its recalibration and saves them; taken away
    // again, so that the second teach, too, is checked against the images.
    assert!(strip(&old.clone(), &old));
    let (a, sa) = teach(&kept, &good[2..]);
    let (b, _) = teach(&old, &good[2..]);
    assert!(sa.contains("kept in the model file"), "{sa}");
    close(&a, &b);
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

/// The same config and images train the same model, tensor for tensor (candle's CPU
/// generator cannot be seeded: the initial weights come from the config's seed); another
/// seed trains another.
#[test]
fn the_same_seed_trains_the_same_model() {
    let dev = candle_core::Device::Cpu;
    let files = first_images(&magnetic_tile().join("train/good"), 6);
    let tensors = |cfg: flowspect::detector::DetectorConfig| {
        let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &dev, BackboneMode::Fast).unwrap();
        let det = Detector::train(net, &root(), cfg, &files, &NoProgress, &CancelToken::new()).unwrap();
        det.model.tensors().unwrap().into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1::<f32>().unwrap())).collect::<std::collections::BTreeMap<_, _>>().into_iter().collect::<Vec<_>>()
    };
    for cfg in [flowspect::detector::DetectorConfig::from(tiny_config()), tiny_memflow().into()] {
        let (a, b) = (tensors(cfg.clone()), tensors(cfg.clone()));
        assert!(a.iter().any(|(k, _)| k.starts_with("flow")), "{:?}", a.iter().map(|(k, _)| k).collect::<Vec<_>>());
        let differ: Vec<&String> = a.iter().zip(&b).filter(|(x, y)| x.0 != y.0 || x.1.iter().zip(&y.1).any(|(u, v)| u.to_bits() != v.to_bits())).map(|(x, _)| &x.0).collect();
        assert!(a.len() == b.len() && differ.is_empty(), "{}: {differ:?}", cfg.method());
        let mut other = cfg.clone();
        other.set_seed(7);
        let c = tensors(other);
        let flow = |v: &[(String, Vec<f32>)]| v.iter().filter(|(k, _)| k.starts_with("flow")).cloned().collect::<Vec<_>>();
        assert_ne!(flow(&a), flow(&c), "{}", cfg.method());
    }
}
