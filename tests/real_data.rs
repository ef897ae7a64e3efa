//! Accuracy on real images: NF-BMR trained on a subset of the magnetic-tile good
//! images and evaluated on a subset of its test set, small enough for CI's CPU.
//! The full-data numbers are in the README; this test guards against regressions.
mod common;
use common::*;
use flowspect::backbone::{self, BackboneMode};
use flowspect::data;
use flowspect::detector::Detector;
use flowspect::evaluate::evaluate;
use flowspect::models::nfbmr::NfBmrConfig;
use flowspect::progress::{CancelToken, NoProgress};

#[test]
fn nf_bmr_detects_real_magnetic_tile_defects() {
    let mt = magnetic_tile();
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let train = data::spread(&data::training_images(&mt).unwrap(), Some(160));
    let mut cfg = NfBmrConfig::default();
    cfg.flow_optim.epochs = 6;
    cfg.bmr_optim.epochs = 6;
    let mut det = Detector::train(net, &root(), cfg, &train, &NoProgress, &CancelToken::new()).unwrap();
    let samples = data::spread(&data::test_samples(&mt).unwrap(), Some(200));
    let (rep, _) = evaluate(&det, &samples, &NoProgress, &CancelToken::new()).unwrap();
    let (img, pix, pro) = (rep.image_auroc.unwrap(), rep.pixel_auroc.unwrap(), rep.aupro.unwrap());
    eprintln!(
        "subset: {} train, {} good + {} defect test: image AUROC {img:.4}, pixel AUROC {pix:.4}, AUPRO {pro:.4}",
        train.len(),
        rep.n_good,
        rep.n_defect
    );
    assert!(rep.n_good > 40 && rep.n_defect > 100);
    assert!(img >= IMAGE_AUROC_FLOOR, "image AUROC {img:.4} < {IMAGE_AUROC_FLOOR}");
    assert!(pix >= PIXEL_AUROC_FLOOR, "pixel AUROC {pix:.4} < {PIXEL_AUROC_FLOOR}");
    // The default score adds the pooled-feature distance to the map maximum; it has to
    // be better than the map maximum alone.
    let map_only = rep.auroc_map_max.unwrap();
    eprintln!("map maximum alone: {map_only:.4}, global alone: {:.4}", rep.auroc_global.unwrap());
    assert!(img > map_only, "map-global {img:.4} <= map maximum {map_only:.4}");
    // Localisation by kind. The pooled pixel AUROC is mostly "uneven" (large masks over
    // whole bands of a different surface finish, which look normal patch by patch); the
    // small, local defects have to be localised well.
    eprintln!("pixel AUROC by kind: {:?}", rep.pixel_auroc_by_kind);
    for (kind, floor) in [("blowhole", LOCAL_PIXEL_AUROC_FLOOR), ("break", LOCAL_PIXEL_AUROC_FLOOR), ("crack", CRACK_PIXEL_AUROC_FLOOR), ("fray", LOCAL_PIXEL_AUROC_FLOOR)] {
        let p = rep.pixel_auroc_by_kind.get(kind).copied().unwrap_or(0.0);
        assert!(p >= floor, "{kind}: pixel AUROC {p:.4} < {floor}");
    }
    // The region score is what reaches "uneven": the same model with its weight set to 0
    // (the BMR map alone) has to localise it clearly worse, and the pooled pixel AUROC too.
    det.set_region_weight(0.0).unwrap();
    let (bmr_only, _) = evaluate(&det, &samples, &NoProgress, &CancelToken::new()).unwrap();
    let uneven = |r: &flowspect::evaluate::EvalReport| r.pixel_auroc_by_kind.get("uneven").copied().unwrap_or(0.0);
    eprintln!(
        "BMR map alone: pixel AUROC {:.4}, by kind {:?}",
        bmr_only.pixel_auroc.unwrap(),
        bmr_only.pixel_auroc_by_kind
    );
    assert!(uneven(&rep) >= uneven(&bmr_only) + REGION_GAIN, "uneven: {:.4} with the region score, {:.4} without", uneven(&rep), uneven(&bmr_only));
    assert!(pix >= bmr_only.pixel_auroc.unwrap() + REGION_GAIN, "pixel AUROC {pix:.4} with the region score, {:.4} without", bmr_only.pixel_auroc.unwrap());
    // The image score does not use the map's region part.
    assert_eq!(bmr_only.image_auroc, rep.image_auroc);
}

/// MemFlowNet on the same subset (default settings, 160 training images, 200 test
/// images). When written it measured image AUROC 0.8125, pixel AUROC 0.7530, AUPRO
/// 0.6955 here (2026-11-22; NF-BMR above measured 0.764 / 0.700 on the same subset); the
/// floors leave room for run-to-run spread.
#[test]
fn memflow_detects_real_magnetic_tile_defects() {
    let mt = magnetic_tile();
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let train = data::spread(&data::training_images(&mt).unwrap(), Some(160));
    let cfg = flowspect::models::memflow::MemFlowConfig::default();
    let det = Detector::train(net, &root(), cfg, &train, &NoProgress, &CancelToken::new()).unwrap();
    let samples = data::spread(&data::test_samples(&mt).unwrap(), Some(200));
    let (rep, _) = evaluate(&det, &samples, &NoProgress, &CancelToken::new()).unwrap();
    let (img, pix, pro) = (rep.image_auroc.unwrap(), rep.pixel_auroc.unwrap(), rep.aupro.unwrap());
    eprintln!("memflow subset: image AUROC {img:.4}, pixel AUROC {pix:.4}, AUPRO {pro:.4}");
    assert!(img >= MEMFLOW_IMAGE_FLOOR, "image AUROC {img:.4} < {MEMFLOW_IMAGE_FLOOR}");
    assert!(pix >= MEMFLOW_PIXEL_FLOOR, "pixel AUROC {pix:.4} < {MEMFLOW_PIXEL_FLOOR}");
}

/// The PatchCore baseline on the same subset (stages 3 + 5, stride 8, 256 px): floors a
/// few points under what it measured when written (see PATCHCORE_* below).
#[test]
fn patchcore_localises_real_magnetic_tile_defects() {
    let mt = magnetic_tile();
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let train = data::spread(&data::training_images(&mt).unwrap(), Some(160));
    let cfg = flowspect::models::patchcore::PatchCoreConfig::default();
    let det = Detector::train(net, &root(), cfg, &train, &NoProgress, &CancelToken::new()).unwrap();
    let samples = data::spread(&data::test_samples(&mt).unwrap(), Some(200));
    let (rep, _) = evaluate(&det, &samples, &NoProgress, &CancelToken::new()).unwrap();
    let (img, pix, pro) = (rep.image_auroc.unwrap(), rep.pixel_auroc.unwrap(), rep.aupro.unwrap());
    eprintln!("patchcore subset: image AUROC {img:.4}, pixel AUROC {pix:.4}, AUPRO {pro:.4}; by kind {:?}", rep.pixel_auroc_by_kind);
    assert!(pix >= PATCHCORE_PIXEL_FLOOR, "pixel AUROC {pix:.4} < {PATCHCORE_PIXEL_FLOOR}");
    assert!(pro >= PATCHCORE_AUPRO_FLOOR, "AUPRO {pro:.4} < {PATCHCORE_AUPRO_FLOOR}");
    for kind in ["blowhole", "break", "fray"] {
        let p = rep.pixel_auroc_by_kind.get(kind).copied().unwrap_or(0.0);
        assert!(p >= LOCAL_PIXEL_AUROC_FLOOR, "{kind}: pixel AUROC {p:.4} < {LOCAL_PIXEL_AUROC_FLOOR}");
    }
}

/// The default method on a subset of the second dev set (solar cells, image labels
/// only): 160 training cells, 200 test cells, 6 epochs.
#[test]
fn nf_bmr_detects_real_solar_cell_defects() {
    let ds = elpv_poly();
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let train = data::spread(&data::training_images(&ds).unwrap(), Some(160));
    let mut cfg = NfBmrConfig::default();
    cfg.flow_optim.epochs = 6;
    cfg.bmr_optim.epochs = 6;
    let det = Detector::train(net, &root(), cfg, &train, &NoProgress, &CancelToken::new()).unwrap();
    let samples = data::spread(&data::test_samples(&ds).unwrap(), Some(200));
    let (rep, _) = evaluate(&det, &samples, &NoProgress, &CancelToken::new()).unwrap();
    let img = rep.image_auroc.unwrap();
    eprintln!(
        "elpv_poly subset: {} good + {} defect: image AUROC {img:.4}; false alarms {:.3}, escapes {:.3}",
        rep.n_good, rep.n_defect, rep.false_alarm_rate, rep.escape_rate
    );
    assert!(rep.n_good > 40 && rep.n_defect > 100);
    assert!(rep.pixel_auroc.is_none(), "elpv_poly has no masks");
    assert!(img >= ELPV_IMAGE_FLOOR, "image AUROC {img:.4} < {ELPV_IMAGE_FLOOR}");
}

const MEMFLOW_IMAGE_FLOOR: f64 = 0.76;
const MEMFLOW_PIXEL_FLOOR: f64 = 0.70;
// Measured on these subsets when written (2026-12-02, with `flowspect train --limit 160`
// and `eval --limit 200`, which pick the same images): PatchCore pixel AUROC 0.758, AUPRO
// 0.739 (blowhole 0.996, break 0.951, crack 0.866, fray 0.968); NF-BMR with 6 epochs on
// elpv_poly image AUROC 0.842.
const PATCHCORE_PIXEL_FLOOR: f64 = 0.73;
const PATCHCORE_AUPRO_FLOOR: f64 = 0.70;
const ELPV_IMAGE_FLOOR: f64 = 0.80;

// Floors a few points under what this subset measured (image 0.764 and pixel 0.700 on
// 2026-11-22 with the map maximum as image score; image 0.853 and pixel 0.696 on
// 2026-11-23 with map-global; image 0.854 and pixel 0.821 on 2026-11-23 with the region
// score in the map; see README); chance is 0.5.
const IMAGE_AUROC_FLOOR: f64 = 0.80;
const PIXEL_AUROC_FLOOR: f64 = 0.76;
// Measured on this subset 2026-11-23 (region score in the map): blowhole 0.993, break
// 0.970, crack 0.815, fray 0.987, uneven 0.789 (not asserted alone). Thin cracks pay for
// the region score (0.893 on this subset without it): its window smears them.
const LOCAL_PIXEL_AUROC_FLOOR: f64 = 0.85;
const CRACK_PIXEL_AUROC_FLOOR: f64 = 0.75;
// Uneven and pooled pixel AUROC with the region score minus the BMR map alone.
const REGION_GAIN: f64 = 0.05;
