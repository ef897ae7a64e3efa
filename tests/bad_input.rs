//! Bad files are skipped with their names; empty folders and missing masks are
//! reported clearly; nothing else is lost.
mod common;
use common::*;
use flowspect::backbone::{self, BackboneMode};
use flowspect::data;
use flowspect::detector::Detector;
use flowspect::evaluate::evaluate;
use flowspect::progress::{CancelToken, NoProgress};
use image::{ImageBuffer, Luma, Rgba};

fn lite0() -> flowspect::backbone::EfficientNet {
    backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap()
}

#[test]
fn training_skips_bad_files_by_name_and_uses_the_rest() {
    let dir = tempdir("badtrain");
    let good = first_images(&magnetic_tile().join("train/good"), 3);
    for p in &good {
        std::fs::copy(p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let real = data::load_image(&good[0]).unwrap();
    // 16-bit grayscale and RGBA versions of a real image are valid input.
    let g = real.to_luma8();
    let deep: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(g.width(), g.height(), |x, y| Luma([g.get_pixel(x, y).0[0] as u16 * 257]));
    deep.save(dir.path().join("deep16.png")).unwrap();
    let rgba: ImageBuffer<Rgba<u8>, Vec<u8>> =
        ImageBuffer::from_fn(g.width(), g.height(), |x, y| {
            let v = g.get_pixel(x, y).0[0];
            Rgba([v, v, v, 200])
        });
    rgba.save(dir.path().join("alpha.png")).unwrap();
    // Bad ones.
    let mut jpeg = std::fs::read(&good[0]).unwrap();
    let n = jpeg.len();
    for b in jpeg[20..n - 2].iter_mut() {
        *b = 0xAB;
    }
    std::fs::write(dir.path().join("corrupt.jpg"), &jpeg).unwrap();
    std::fs::write(dir.path().join("notes.png"), b"this is a text file, not a PNG").unwrap();
    std::fs::write(dir.path().join("empty.jpg"), b"").unwrap();
    ImageBuffer::<Luma<u8>, Vec<u8>>::from_pixel(1, 1, Luma([9])).save(dir.path().join("dot.png")).unwrap();

    let files = data::training_images(dir.path()).unwrap();
    assert_eq!(files.len(), 9);
    let skipped = std::sync::Mutex::new(Vec::new());
    let sink = |p: flowspect::progress::Progress| {
        if let flowspect::progress::Progress::Skipped { message } = p {
            skipped.lock().unwrap().push(message);
        }
    };
    let det = Detector::train(lite0(), &root(), tiny_config(), &files, &sink, &CancelToken::new()).unwrap();
    let r = &det.meta.training;
    assert_eq!(r.n_train + r.n_val, 5, "3 JPEGs + 16-bit + RGBA");
    let names: Vec<String> = r.skipped.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["corrupt.jpg", "dot.png", "empty.jpg", "notes.png"]);
    let msgs = skipped.lock().unwrap();
    assert_eq!(msgs.len(), 4);
    for name in ["corrupt.jpg", "dot.png", "empty.jpg", "notes.png"] {
        assert!(msgs.iter().any(|m| m.contains(name)), "no message names {name}: {msgs:?}");
    }
    assert!(msgs.iter().any(|m| m.contains("dot.png") && m.contains("1x1")), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("empty.jpg") && m.contains("empty")), "{msgs:?}");
}

#[test]
fn empty_folder_is_a_clear_error() {
    let dir = tempdir("empty");
    std::fs::write(dir.path().join("readme.txt"), b"no images here").unwrap();
    let e = data::training_images(dir.path()).unwrap_err().to_string();
    assert!(e.contains("no training images") && e.contains(&dir.path().display().to_string()), "{e}");
    let e = data::test_samples(dir.path()).unwrap_err().to_string();
    assert!(e.contains("no test images"), "{e}");
}

#[test]
fn defect_without_mask_is_left_out_of_pixel_metrics_only() {
    let mt = magnetic_tile();
    let dir = tempdir("nomask");
    for (kind, n) in [("good", 3), ("crack", 3)] {
        std::fs::create_dir_all(dir.path().join("test").join(kind)).unwrap();
        for p in first_images(&mt.join("test").join(kind), n) {
            std::fs::copy(&p, dir.path().join("test").join(kind).join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("ground_truth/crack")).unwrap();
    // Masks for two of the three crack images.
    for p in first_images(&mt.join("test/crack"), 2) {
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        let m = format!("{stem}_mask.png");
        std::fs::copy(mt.join("ground_truth/crack").join(&m), dir.path().join("ground_truth/crack").join(&m)).unwrap();
    }
    let train = first_images(&mt.join("train/good"), 4);
    let det = Detector::train(lite0(), &root(), tiny_config(), &train, &NoProgress, &CancelToken::new()).unwrap();
    let samples = data::test_samples(dir.path()).unwrap();
    assert_eq!(samples.len(), 6);
    assert_eq!(samples.iter().filter(|s| s.mask.is_some()).count(), 2);
    let (rep, scored) = evaluate(&det, &samples, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(scored.len(), 6, "every image is still scored");
    assert_eq!(rep.n_without_mask, 1);
    assert_eq!((rep.n_good, rep.n_defect), (3, 3));
    assert!(rep.image_auroc.is_some() && rep.pixel_auroc.is_some());
}
