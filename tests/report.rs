//! Reports on real images: the CSV and JSON agree with the model's own scores and with
//! the heatmap and mask files; the PDF parses and has the expected pages and text; the
//! HTML embeds one decodable figure per flagged image; a cancelled report leaves the
//! previous one untouched.
mod common;
use common::*;
use flowspect::backbone::{self, BackboneMode};
use flowspect::data::{self, Sample};
use flowspect::detector::Detector;
use flowspect::inspection::{Thresholds, Verdict};
use flowspect::metrics;
use flowspect::progress::{CancelToken, NoProgress, Progress};
use flowspect::report::{self, Report, ReportOptions};
use std::path::{Path, PathBuf};

fn copy(from: &Path, to: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(to).unwrap();
    first_images(from, n)
        .into_iter()
        .map(|p| {
            let d = to.join(p.file_name().unwrap());
            std::fs::copy(&p, &d).unwrap();
            d
        })
        .collect()
}

/// A tiny model and an MVTec-layout test folder of real images plus one corrupt file.
fn setup(name: &str) -> (Detector, tempfile::TempDir, Vec<Sample>) {
    let mt = magnetic_tile();
    let dir = tempdir(name);
    let train = first_images(&mt.join("train/good"), 16);
    let net = backbone::load(&root().join(backbone::DEFAULT_BACKBONE), &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let mut cfg = tiny_config();
    cfg.tap.image_size = 128;
    let det = Detector::train(net, &root(), cfg, &train, &NoProgress, &CancelToken::new()).unwrap();
    let test = dir.path().join("data");
    copy(&mt.join("test/good"), &test.join("test/good"), 6);
    for kind in ["blowhole", "crack"] {
        for p in copy(&mt.join("test").join(kind), &test.join("test").join(kind), 4) {
            let m = format!("{}_mask.png", p.file_stem().unwrap().to_string_lossy());
            std::fs::create_dir_all(test.join("ground_truth").join(kind)).unwrap();
            std::fs::copy(mt.join("ground_truth").join(kind).join(&m), test.join("ground_truth").join(kind).join(&m)).unwrap();
        }
    }
    std::fs::write(test.join("test/good/zz_corrupt.jpg"), b"not a jpeg").unwrap();
    let samples = data::test_samples(&test).unwrap();
    (det, dir, samples)
}

fn png_size_and_ones(p: &Path) -> (u32, u32, Vec<bool>) {
    let img = image::open(p).unwrap().to_luma8();
    (img.width(), img.height(), img.pixels().map(|x| x.0[0] > 127).collect())
}

#[test]
fn report_files_agree_with_the_models_scores() {
    let (det, dir, samples) = setup("report");
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let (scored, skipped) = det.score_paths(&paths, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(skipped.len(), 1);
    // Thresholds that give all three verdicts: the 40th and 70th percentiles.
    let mut s: Vec<f32> = scored.iter().map(|s| s.score).collect();
    s.sort_by(f32::total_cmp);
    let t = Thresholds { accept_below: s[s.len() * 2 / 5], reject_from: Some(s[s.len() * 7 / 10]) };
    let opts = ReportOptions {
        thresholds: t,
        pixel_threshold: det.meta.pixel_threshold,
        model_path: "tiny.fsm".into(),
        input: "the test folder".into(),
    };
    let out = dir.path().join("out");
    let rep = report::generate(&det, &samples, &opts, &out, &NoProgress, &CancelToken::new()).unwrap();
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')), "staging folder left behind");

    // CSV: one row per image, the model's own scores, verdicts at the thresholds, files that match.
    let mut rdr = csv::Reader::from_path(out.join(report::CSV_FILE)).unwrap();
    assert_eq!(rdr.headers().unwrap().iter().collect::<Vec<_>>(), report::CSV_HEADER.to_vec());
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), samples.len());
    let mut verdicts = std::collections::HashSet::new();
    for r in &rows {
        let path = PathBuf::from(&r[0]);
        if path.ends_with("zz_corrupt.jpg") {
            assert_eq!(&r[4], "error");
            assert!(r[13].contains("zz_corrupt.jpg"), "{}", &r[13]);
            continue;
        }
        let own = scored.iter().find(|s| s.path == path).unwrap();
        let score: f32 = r[3].parse().unwrap();
        assert!((score - own.score).abs() <= 1e-5 * own.score.abs().max(1.0), "{score} vs {}", own.score);
        let v = t.verdict(own.score);
        assert_eq!(&r[4], v.to_string());
        verdicts.insert(v);
        let (w, h, mask) = png_size_and_ones(&out.join(&r[12]));
        assert_eq!((w, h), (own.width, own.height));
        assert_eq!((r[9].parse::<u32>().unwrap(), r[10].parse::<u32>().unwrap()), (w, h));
        // The region count and largest area come from this very mask.
        let comps = metrics::components(&mask, w as usize, h as usize);
        assert_eq!(r[5].parse::<usize>().unwrap(), comps.len());
        let largest = comps.iter().map(|c| c.len()).max().unwrap_or(0);
        assert_eq!(r[6].parse::<usize>().unwrap(), largest);
        let boxes = if r[8].is_empty() { 0 } else { r[8].split(';').count() };
        assert_eq!(boxes, comps.len());
        let heat = image::open(out.join(&r[11])).unwrap();
        assert_eq!((heat.width(), heat.height()), (w, h));
    }
    assert_eq!(verdicts.len(), 3, "the thresholds give accept, review and reject");

    // JSON: the same rows plus the summary.
    let j: Report = serde_json::from_slice(&std::fs::read(out.join(report::JSON_FILE)).unwrap()).unwrap();
    assert_eq!(j, rep);
    assert_eq!(j.thresholds, t);
    assert_eq!(j.model.method, "nf-bmr");
    assert_eq!((j.dataset.images, j.dataset.unreadable, j.dataset.good, j.dataset.defect), (15, 1, 7, 8));
    assert_eq!(j.counts.accept + j.counts.review + j.counts.reject, 14);
    let (ls, ll): (Vec<f32>, Vec<bool>) = j.images.iter().filter_map(|i| Some((i.score?, i.defect?))).unzip();
    assert_eq!(j.metrics.as_ref().unwrap().image_auroc, metrics::auroc(&ls, &ll).unwrap());
    let flagged = j.images.iter().filter(|i| matches!(i.verdict, Some(Verdict::Reject | Verdict::Review))).count();
    assert_eq!(flagged, j.counts.review + j.counts.reject);

    // PDF: a summary page and the flagged images six to a page; the text is there.
    let doc = lopdf::Document::load(out.join(report::PDF_FILE)).unwrap();
    let pages = doc.get_pages();
    assert_eq!(pages.len(), 1 + flagged.div_ceil(6));
    let first = doc.extract_text(&[1]).unwrap();
    assert!(first.contains("flowspect inspection report"), "{first}");
    assert!(first.contains(&format!("reject {}", j.counts.reject)), "{first}");
    assert!(first.contains("Image AUROC"), "{first}");
    let second = doc.extract_text(&[2]).unwrap();
    let top = j
        .images
        .iter()
        .filter(|i| i.verdict.is_some_and(|v| v != Verdict::Accept))
        .max_by(|a, b| a.score.unwrap().total_cmp(&b.score.unwrap()))
        .unwrap();
    let top_name = top.path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(second.contains(&top_name), "highest score first: {top_name} not on page 2: {second}");

    // HTML: one embedded, decodable figure per flagged image.
    let html = std::fs::read_to_string(out.join(report::HTML_FILE)).unwrap();
    let figs: Vec<&str> = html.split("data:image/jpeg;base64,").skip(1).collect();
    assert_eq!(figs.len(), flagged);
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.decode(figs[0].split('"').next().unwrap()).unwrap();
    assert!(image::load_from_memory(&b).unwrap().width() > 0);
    assert!(html.contains("zz_corrupt.jpg"), "the unreadable file is listed");
    assert!(!html.contains("src=\"http"), "self-contained");
}

#[test]
fn a_cancelled_report_leaves_the_previous_one_untouched() {
    let (det, dir, samples) = setup("report-cancel");
    let opts = ReportOptions {
        thresholds: Thresholds::single(det.meta.threshold),
        pixel_threshold: det.meta.pixel_threshold,
        model_path: "tiny.fsm".into(),
        input: "x".into(),
    };
    let out = dir.path().join("out");
    report::generate(&det, &samples[..6], &opts, &out, &NoProgress, &CancelToken::new()).unwrap();
    let before_csv = std::fs::read(out.join(report::CSV_FILE)).unwrap();
    let before_pdf = std::fs::read(out.join(report::PDF_FILE)).unwrap();
    let before_images: Vec<_> = std::fs::read_dir(out.join("images")).unwrap().map(|e| e.unwrap().file_name()).collect();

    // Cancel once the first chunk is scored.
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let sink = move |p: Progress| {
        if matches!(p, Progress::Step { .. }) {
            c2.cancel();
        }
    };
    let r = report::generate(&det, &samples, &opts, &out, &sink, &cancel);
    assert!(matches!(r, Err(flowspect::Error::Cancelled)), "{:?}", r.err());
    assert_eq!(std::fs::read(out.join(report::CSV_FILE)).unwrap(), before_csv);
    assert_eq!(std::fs::read(out.join(report::PDF_FILE)).unwrap(), before_pdf);
    let after_images: Vec<_> = std::fs::read_dir(out.join("images")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(after_images, before_images);
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "staging folder left behind: {names:?}");

    // An empty input is refused with a message.
    let e = report::generate(&det, &[], &opts, &out, &NoProgress, &CancelToken::new()).unwrap_err();
    assert!(e.to_string().contains("no images"), "{e}");
}
