//! The real app driven headless with egui_kittest: a small real folder from
//! `../shared/data/magnetic_tile`, a tiny model trained through the UI, the threshold
//! moved, the confusion matrix and the review view checked.
use super::app::{App, Startup};
use super::state::{Settings, Tab};
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn magnetic_tile() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/magnetic_tile");
    assert!(p.join("train/good").is_dir(), "real test data missing: {} (see ../shared/README.md)", p.display());
    p
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowspect-gui-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_first(from: &Path, to: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(to).unwrap();
    let mut out = Vec::new();
    for p in flowspect::data::list_images(from).unwrap().into_iter().take(n) {
        let dst = to.join(p.file_name().unwrap());
        std::fs::copy(&p, &dst).unwrap();
        out.push(dst);
    }
    out
}

/// A small MVTec-layout copy of real magnetic-tile images: 24 good for training,
/// 8 good and 8 defect (blowhole, crack, with masks) for testing.
fn small_real_set(name: &str) -> PathBuf {
    let mt = magnetic_tile();
    let d = tempdir(name);
    copy_first(&mt.join("train/good"), &d.join("train/good"), 24);
    copy_first(&mt.join("test/good"), &d.join("test/good"), 8);
    for kind in ["blowhole", "crack"] {
        for p in copy_first(&mt.join("test").join(kind), &d.join("test").join(kind), 4) {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let m = format!("{stem}_mask.png");
            let gt = d.join("ground_truth").join(kind);
            std::fs::create_dir_all(&gt).unwrap();
            std::fs::copy(mt.join("ground_truth").join(kind).join(&m), gt.join(&m)).unwrap();
        }
    }
    d
}

fn tiny_settings(data: &Path) -> Settings {
    let mut s = Settings {
        train_dir: data.display().to_string(),
        test_dir: data.display().to_string(),
        ..Settings::default()
    };
    s.train.image_size = 128;
    s.train.epochs = 2;
    s.train.flow_hidden = 64;
    s.train.bmr_hidden = 32;
    s.train.device = flowspect::device::DeviceChoice::Cpu;
    s
}

fn harness(settings: Settings) -> Harness<'static, App> {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .build_eframe(move |cc| App::with_settings(cc.egui_ctx.clone(), settings, Startup::default()))
}

/// Steps the app (the worker runs meanwhile) until `done` holds; panics after `secs`.
fn wait_until(h: &mut Harness<'static, App>, secs: u64, what: &str, done: impl Fn(&App) -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        h.step();
        if done(h.state()) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}; errors: {:?}; log: {:?}",
            h.state().errors,
            h.state().log
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of a node: labels keep it in `value`, other widgets in `label`.
fn text_of(n: &egui_kittest::kittest::AccessKitNode<'_>) -> Option<String> {
    if n.role() == Role::Label { n.value() } else { n.label() }
}

/// The text of the one label starting with `prefix`.
fn label_with(h: &Harness<'static, App>, prefix: &str) -> String {
    text_of(&h.get_by(|n| text_of(n).is_some_and(|l| l.starts_with(prefix))).accesskit_node()).unwrap_or_default()
}

#[test]
fn train_score_tune_threshold_review_and_save() {
    let data = small_real_set("flow");
    let mut h = harness(tiny_settings(&data));
    h.run_steps(3);
    assert_eq!(h.state().train_files.len(), 24);
    assert_eq!(h.state().entries.len(), 16);

    // Train through the Train tab.
    h.get_by_label("Train").click();
    h.run_steps(2);
    h.get_by_label("Start training").click();
    h.run_steps(2);
    assert!(h.state().busy(), "training did not start: {:?}", h.state().errors);
    wait_until(&mut h, 600, "training", |a| !a.busy());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert!(h.state().model.is_some());
    assert!(
        h.state().losses.iter().any(|(_, v)| v.len() == 2),
        "the loss curve has one point per epoch: {:?}",
        h.state().losses
    );

    // Score the test images from the Data tab.
    h.get_by_label("Data").click();
    h.run_steps(2);
    h.get_by_label("Score test images").click();
    h.run_steps(2);
    wait_until(&mut h, 300, "scoring", |a| !a.busy());
    assert!(h.state().entries.iter().all(|e| e.result.is_some()), "every image scored");
    // Thumbnails arrive from the loader threads.
    wait_until(&mut h, 60, "thumbnails", |a| a.thumbs.len() >= 8);

    // Threshold tab: the confusion matrix follows the threshold.
    h.get_by_label("Threshold").click();
    h.run_steps(3);
    h.get_by_label("Best F1").click();
    h.run_steps(3);
    let at_best = label_with(&h, "False alarms:");
    let tp_best = label_with(&h, "TP ");
    let scores: Vec<f32> = h.state().entries.iter().filter_map(|e| e.result.as_ref().map(|r| r.score)).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Type a threshold above every score into the slider's value field: nothing is flagged.
    h.get_by(|n| n.role() == Role::SpinButton).set_value_accesskit((max + 1.0) as f64);
    h.run_steps(3);
    assert!(h.state().settings.thresholds.accept_below > max, "the value field moved the threshold");
    assert_eq!(label_with(&h, "TP "), "TP 0");
    assert_eq!(label_with(&h, "False alarms:"), "False alarms: 0   Escapes: 8");
    assert_ne!(at_best, "False alarms: 0   Escapes: 8", "best F1 flags some defects ({tp_best})");
    assert!(label_with(&h, "Accept:").ends_with("16"));

    // A review band: the upper threshold sends the band between the two to review.
    h.get_by_label("Best F1").click();
    h.run_steps(2);
    h.get_by_label("Review band (two thresholds)").click();
    h.run_steps(3);
    let t = h.state().settings.active_thresholds();
    let u = t.reject_from.expect("two thresholds");
    assert!(u >= t.accept_below);
    let in_band = scores.iter().filter(|&&s| s >= t.accept_below && s < u).count();
    assert_eq!(label_with(&h, "Review:"), format!("Review: {in_band}"));

    // Export a report from the Data tab at these thresholds: its verdicts are the app's.
    let out = data.join("report");
    h.state_mut().settings.report_dir = out.display().to_string();
    h.get_by_label("Data").click();
    h.run_steps(2);
    h.get_by_label("Export report...").click();
    h.run_steps(2);
    assert!(h.state().busy(), "the report did not start: {:?}", h.state().errors);
    wait_until(&mut h, 300, "the report", |a| !a.busy());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let mut rdr = csv::Reader::from_path(out.join(flowspect::report::CSV_FILE)).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 16);
    let app_counts = super::state::counts(&h.state().entries, &t);
    let n = |v: &str| rows.iter().filter(|r| &r[4] == v).count();
    assert_eq!((n("accept"), n("review"), n("reject")), (app_counts.accept, app_counts.review, app_counts.reject));
    for f in [flowspect::report::JSON_FILE, flowspect::report::HTML_FILE, flowspect::report::PDF_FILE] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(h.state().log.iter().any(|l| l.starts_with("report written to")), "{:?}", h.state().log);
    h.get_by_label("Threshold").click();
    h.run_steps(2);

    // Review tab: an image with its overlay; arrow keys step through the images.
    h.get_by_label("Review").click();
    h.run_steps(2);
    wait_until(&mut h, 60, "review image", |a| a.view.is_some());
    let first = h.state().selected;
    h.key_press(egui::Key::ArrowRight);
    h.run_steps(2);
    assert_ne!(h.state().selected, first, "ArrowRight selects the next image");
    wait_until(&mut h, 60, "next review image", |a| a.view.as_ref().is_some_and(|v| Some(v.index) == a.selected));
    h.run_steps(2);
    assert!(h.state().view.as_ref().is_some_and(|v| v.regions.is_some()), "regions computed for the scored image");
    h.key_press(egui::Key::ArrowLeft);
    h.run_steps(2);
    assert_eq!(h.state().selected, first);

    // Save the model with the tuned thresholds; they are in the file.
    let model = data.join("tuned.fsm");
    h.state_mut().settings.model_path = model.display().to_string();
    h.get_by_label("Train").click();
    h.run_steps(2);
    h.get_by_label("Save").click();
    h.run_steps(2);
    wait_until(&mut h, 60, "saving", |a| !a.busy());
    let meta = flowspect::detector::Detector::read_meta(&model).unwrap();
    assert_eq!(meta.threshold, t.accept_below);
    assert_eq!(meta.review_threshold, Some(u));
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn cancel_stops_training_quickly_and_keeps_the_app_usable() {
    let data = small_real_set("cancel");
    let mut s = tiny_settings(&data);
    s.train.epochs = 200;
    s.train.image_size = 256;
    s.tab = Tab::Train;
    let mut h = harness(s);
    h.run_steps(2);
    h.get_by_label("Start training").click();
    h.run_steps(2);
    wait_until(&mut h, 300, "the flow stage", |a| a.job.as_ref().is_some_and(|j| j.stage == "flow" && j.done > 0));
    h.get_by_label("Cancel training").click();
    let took = wait_until(&mut h, 30, "cancel", |a| !a.busy());
    assert!(took < Duration::from_secs(10), "cancel took {took:?}");
    let a = h.state();
    assert!(a.model.is_none());
    assert!(a.errors.is_empty(), "a cancel is not an error: {:?}", a.errors);
    assert!(a.log.iter().any(|l| l.starts_with("training cancelled")), "{:?}", a.log);
    assert_eq!(a.entries.len(), 16, "the test folder is still open");
    // Still usable: training can start again.
    h.get_by_label("Start training").click();
    h.run_steps(2);
    assert!(h.state().busy());
    h.get_by_label("Cancel training").click();
    wait_until(&mut h, 30, "second cancel", |a| !a.busy());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn bad_inputs_show_a_message_naming_the_file() {
    let data = small_real_set("bad");
    let mut s = tiny_settings(&data);
    s.tab = Tab::Train;
    // A JPEG is not a model.
    let jpeg = flowspect::data::list_images(&data.join("test/good")).unwrap()[0].clone();
    s.model_path = jpeg.display().to_string();
    s.test_dir = String::new();
    let mut h = harness(s);
    h.run_steps(2);
    wait_until(&mut h, 30, "opening", |a| !a.busy());
    let errs = h.state().errors.join("\n");
    assert!(errs.contains(&jpeg.display().to_string()), "{errs}");
    assert!(h.state().model.is_none());
    // The banner shows it.
    let name = jpeg.file_name().unwrap().to_string_lossy().into_owned();
    h.get_by(|n| text_of(n).is_some_and(|l| l.contains(&name) && l.contains("not a flowspect model")));
    h.get_by_label("Dismiss").click();
    h.run_steps(2);
    assert!(h.state().errors.is_empty());

    // An empty folder as the test set.
    let empty = data.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    h.state_mut().settings.test_dir = empty.display().to_string();
    h.get_by_label("Data").click();
    h.run_steps(2);
    h.get_by_label("Open").click();
    h.run_steps(2);
    let errs = h.state().errors.join("\n");
    assert!(errs.contains(&empty.display().to_string()) && errs.contains("no test images"), "{errs}");

    // A corrupt image in the test folder: the thumbnail says why, the others load.
    let bad = data.join("test/good/zz_corrupt.jpg");
    std::fs::write(&bad, b"not a jpeg").unwrap();
    h.state_mut().settings.test_dir = data.display().to_string();
    h.get_by_label("Open").click();
    h.run_steps(2);
    assert_eq!(h.state().entries.len(), 17);
    wait_until(&mut h, 60, "thumbnails", |a| a.entries.iter().any(|e| e.error.is_some()) && a.thumbs.len() >= 8);
    let e = h.state().entries.iter().find(|e| e.error.is_some()).unwrap();
    assert_eq!(e.sample.path, bad);
    assert!(e.error.as_ref().unwrap().contains("zz_corrupt.jpg"), "{:?}", e.error);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn memflow_is_chosen_trained_and_scored_in_the_app() {
    let data = small_real_set("memflow");
    let mut s = tiny_settings(&data);
    s.tab = Tab::Train;
    let mut h = harness(s);
    h.run_steps(2);
    h.get_by_label("Method").click();
    h.run_steps(2);
    h.get_by_label("memflow (memory bank + multi-scale flows)").click();
    h.run_steps(2);
    let t = &h.state().settings.train;
    assert_eq!(t.method, flowspect::detector::Method::MemFlow);
    assert_eq!(t.image_size, 256, "switching the method brings its defaults");
    // Keep it small for CI.
    h.state_mut().settings.train.image_size = 128;
    h.state_mut().settings.train.epochs = 2;
    h.state_mut().settings.train.flow_hidden = 32;
    h.get_by_label("Start training").click();
    h.run_steps(2);
    wait_until(&mut h, 300, "training", |a| !a.busy());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let m = h.state().model.as_ref().expect("a model");
    assert_eq!(m.meta.method, flowspect::detector::Method::MemFlow);
    assert!(m.meta.training.bank.as_ref().is_some_and(|b| b.rows > 0));
    assert!(h.state().losses.iter().any(|(s, _)| s.starts_with("flow (stage 6)")), "{:?}", h.state().losses);
    h.get_by_label("Data").click();
    h.run_steps(2);
    h.get_by_label("Score test images").click();
    h.run_steps(2);
    wait_until(&mut h, 300, "scoring", |a| !a.busy());
    assert!(h.state().entries.iter().all(|e| e.result.as_ref().is_some_and(|r| r.score.is_finite())));
    let _ = std::fs::remove_dir_all(&data);
}

#[derive(Default)]
struct MemoryStorage(std::collections::HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.into(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }
    fn flush(&mut self) {}
}

#[test]
fn folders_thresholds_and_view_settings_persist() {
    let data = small_real_set("persist");
    let mut s = tiny_settings(&data);
    s.thresholds = flowspect::inspection::Thresholds { accept_below: 3.25, reject_from: Some(4.5) };
    s.two_thresholds = true;
    s.opacity = 0.7;
    s.tab = Tab::Threshold;
    let mut h = harness(s.clone());
    h.run_steps(2);
    let mut storage = MemoryStorage::default();
    eframe::App::save(h.state_mut(), &mut storage);
    let restored: Settings = eframe::get_value(&storage, "flowspect.settings").unwrap();
    assert_eq!(restored, s);
    // A new app from the stored settings reopens the folders.
    let h2 = harness(restored);
    assert_eq!(h2.state().entries.len(), 16);
    assert_eq!(h2.state().train_files.len(), 24);
    assert_eq!(h2.state().settings.active_thresholds().reject_from, Some(4.5));
    let _ = std::fs::remove_dir_all(&data);
}

/// A small PatchCore model (no network to train: seconds) saved to `dir`.
fn tiny_patchcore(dir: &Path) -> PathBuf {
    use flowspect::backbone::{self, BackboneMode};
    let bb = backbone::default_backbone_path();
    let net = backbone::load(&bb, &candle_core::Device::Cpu, BackboneMode::Fast).unwrap();
    let files: Vec<PathBuf> = flowspect::data::list_images(&magnetic_tile().join("train/good")).unwrap().into_iter().take(8).collect();
    let mut cfg = flowspect::models::patchcore::PatchCoreConfig::default();
    cfg.tap.image_size = 64;
    let det = flowspect::detector::Detector::train(
        net,
        &bb,
        cfg,
        &files,
        &flowspect::progress::NoProgress,
        &flowspect::progress::CancelToken::new(),
    )
    .unwrap();
    let path = dir.join("line.fsm");
    det.save(&path).unwrap();
    path
}

#[test]
fn inspect_tab_follows_arriving_parts_and_stops() {
    let dir = tempdir("inspect");
    let model = tiny_patchcore(&dir);
    let line = dir.join("line");
    std::fs::create_dir_all(&line).unwrap();
    let mut s = tiny_settings(&dir);
    s.train_dir = String::new();
    s.test_dir = String::new();
    s.inspect.model = model.display().to_string();
    s.inspect.input = line.display().to_string();
    s.inspect.alarm = true;
    let mut h = harness(s);
    h.run_steps(2);
    h.get_by_label("Inspect").click();
    h.run_steps(2);
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(h.state().inspect.running(), "{:?}", h.state().errors);
    wait_until(&mut h, 60, "the line to start", |a| a.inspect.started.is_some());

    // Parts arrive: two good tiles, then a broken one, then a file that is not an image.
    let mt = magnetic_tile().join("test");
    let good: Vec<PathBuf> = flowspect::data::list_images(&mt.join("good")).unwrap().into_iter().take(2).collect();
    let broken = flowspect::data::list_images(&mt.join("break")).unwrap()[0].clone();
    for (i, p) in good.iter().enumerate() {
        std::fs::copy(p, line.join(format!("part_{i}.jpg"))).unwrap();
    }
    wait_until(&mut h, 60, "two parts", |a| a.inspect.stats.tally.total() == 2);
    h.run_steps(2);
    let first = h.state().inspect.latest.as_ref().unwrap().0.clone();
    assert!(first.verdict.is_some() && first.error.is_none(), "{first:?}");
    assert!(h.state().inspect.latest.as_ref().unwrap().1.is_some(), "the latest part has its heatmap picture");
    // The banner shows the latest verdict, the counts label the two parts.
    let banner = first.verdict_text().to_uppercase();
    h.get_by(|n| text_of(n).is_some_and(|l| l == banner));
    assert_eq!(label_with(&h, "Parts:"), "Parts: 2");

    std::fs::copy(&broken, line.join("part_2.jpg")).unwrap();
    std::fs::write(line.join("part_3.png"), b"not a png at all").unwrap();
    wait_until(&mut h, 60, "four parts", |a| a.inspect.stats.tally.total() == 4);
    h.run_steps(3);
    let t = h.state().inspect.stats.tally;
    assert_eq!(t.error, 1);
    assert_eq!(t.inspected(), 3);
    assert_eq!(
        label_with(&h, "Counts:"),
        format!("Counts: {} accept, {} review, {} reject, 1 errors", t.accept, t.review, t.reject)
    );
    // The error row is the latest: the banner says so and names the file.
    h.get_by(|n| text_of(n).is_some_and(|l| l == "ERROR"));
    let latest = &h.state().inspect.latest.as_ref().unwrap().0;
    assert!(latest.error.as_deref().is_some_and(|e| e.contains("part_3.png")), "{latest:?}");
    assert!(h.query_all_by_label("part_3.png").count() >= 1, "the banner names the file");
    assert_eq!(h.state().inspect.alarm, t.reject > 0, "the alarm follows rejects");
    // The log table comes from the database.
    wait_until(&mut h, 30, "the log table", |a| a.inspect.table.len() == 4);
    assert_eq!(h.state().inspect.last_hour.tally, t);
    assert!(label_with(&h, "Throughput:").ends_with("images/s"));

    // Stop stops: a part dropped afterwards is not inspected.
    h.get_by_label("Stop").click();
    wait_until(&mut h, 30, "the line to stop", |a| !a.inspect.running());
    std::fs::copy(&good[0], line.join("part_4.jpg")).unwrap();
    for _ in 0..20 {
        h.step();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(h.state().inspect.stats.tally.total(), 4);
    let log = flowspect::line::log::InspectionLog::open(&line.join(flowspect::line::DEFAULT_DB)).unwrap();
    assert_eq!(log.query(&Default::default()).unwrap().len(), 4);
    h.get_by_label("Start");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The operator's loop on an unlabeled folder of real tiles: label three images with
/// keys and buttons (sidecar written), the Threshold tab counts them and draws a ROC;
/// teach a rejected good image and its score falls below the threshold, Undo brings
/// the old score back; a project saved, the app dropped without a clean exit, and
/// reopened brings back folders, thresholds and labels.
#[test]
fn label_teach_undo_and_project_round_trip() {
    let dir = tempdir("teach");
    let model = tiny_patchcore(&dir);
    let mt = magnetic_tile();
    let unl = dir.join("unlabeled");
    copy_first(&mt.join("test/good"), &unl, 4);
    copy_first(&mt.join("test/blowhole"), &unl, 2);
    let mut s = tiny_settings(&unl);
    s.train_dir = String::new();
    s.model_path = model.display().to_string();
    let mut h = harness(s);
    wait_until(&mut h, 120, "the model", |a| a.model.is_some() && !a.busy());
    assert_eq!(h.state().entries.len(), 6);
    assert!(h.state().entries.iter().all(|e| e.label().is_none()));
    h.get_by_label("Score test images").click();
    wait_until(&mut h, 300, "scoring", |a| !a.busy() && a.entries.iter().all(|e| e.result.is_some()));

    // Label: G by key, D by button, G by key.
    let names_bh: Vec<String> = flowspect::data::list_images(&mt.join("test/blowhole")).unwrap().iter().take(2).map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let defect = h.state().entries.iter().position(|e| names_bh.contains(&e.name())).unwrap();
    let goods: Vec<usize> = (0..6).filter(|i| !names_bh.contains(&h.state().entries[*i].name())).collect();
    h.state_mut().settings.tab = Tab::Review;
    h.state_mut().select(goods[0]);
    h.run_steps(3);
    h.key_press(egui::Key::G);
    h.run_steps(2);
    h.state_mut().select(defect);
    h.run_steps(3);
    h.get_by_label("Defect (D)").click();
    h.run_steps(2);
    h.state_mut().select(goods[1]);
    h.run_steps(3);
    h.key_press(egui::Key::G);
    h.run_steps(2);
    let marked: Vec<(usize, Option<bool>)> = h.state().entries.iter().enumerate().filter(|(_, e)| e.person.is_some()).map(|(i, e)| (i, e.person)).collect();
    assert_eq!(marked, {
        let mut v = vec![(goods[0], Some(false)), (goods[1], Some(false)), (defect, Some(true))];
        v.sort();
        v
    });
    let side = flowspect::data::Labels::open(&unl).unwrap();
    assert_eq!(side.by_path.len(), 3, "sidecar: {:?}", side.by_path);

    // A report exported now carries the person's labels (column 2), the rest unlabeled.
    let out = dir.join("report");
    h.state_mut().settings.report_dir = out.display().to_string();
    h.state_mut().export_report();
    wait_until(&mut h, 300, "the report", |a| !a.busy());
    let mut rdr = csv::Reader::from_path(out.join(flowspect::report::CSV_FILE)).unwrap();
    let mut labels: Vec<String> = rdr.records().map(|r| r.unwrap()[2].to_string()).collect();
    labels.sort();
    assert_eq!(labels, ["", "", "", "defect", "good", "good"], "report labels");

    // The Threshold tab works on the three labeled images.
    h.state_mut().settings.tab = Tab::Threshold;
    h.run_steps(3);
    assert!(label_with(&h, "3 of 6 scored images labeled").contains("3 by a person"));
    assert!(label_with(&h, "ROC (AUROC").starts_with("ROC"));

    // Teach a false reject: the threshold just below a good image's score rejects it.
    let fr = goods[2];
    let before = h.state().entries[fr].result.as_ref().unwrap().score;
    h.state_mut().settings.thresholds.accept_below = before * 0.999;
    h.state_mut().settings.two_thresholds = false;
    h.state_mut().settings.tab = Tab::Review;
    h.state_mut().select(fr);
    h.run_steps(3);
    h.get_by_label("Add to good samples").click();
    h.run_steps(2);
    wait_until(&mut h, 300, "teach and rescoring", |a| !a.busy() && a.last_teach.is_some() && a.entries.iter().all(|e| e.result.is_some()));
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let after = h.state().entries[fr].result.as_ref().unwrap().score;
    assert!(after < before * 0.999, "taught image still rejected: {before} -> {after}");
    // The image under review comes back with the new scores (not a spinner forever).
    wait_until(&mut h, 60, "the reviewed image", |a| a.view.is_some() && a.selected == Some(fr));
    assert_eq!(h.state().model.as_ref().unwrap().meta.taught.len(), 1);
    let said = h.state().last_teach.clone().unwrap();
    let name = h.state().entries[fr].name();
    assert!(said.starts_with(&format!("{name} {before:.4} -> {after:.4}; false alarms")) && said.contains(", rejects "), "{said}");
    // The model file was replaced by the taught model (its held-out image recalibrated it).
    let on_disk = flowspect::detector::Detector::read_meta(&model).unwrap();
    assert_eq!(on_disk.taught.len(), 1);
    assert_eq!(on_disk.taught[0].path, h.state().entries[fr].sample.path.display().to_string());
    assert!(h.state().log.iter().any(|l| l.contains("recalibrated on 1 held-out images") && l.contains("updated")), "{:?}", h.state().log);

    // Undo: the old model, the old score.
    h.get_by_label("Undo teach (1)").click();
    h.run_steps(2);
    wait_until(&mut h, 300, "undo and rescoring", |a| !a.busy() && a.undo_depth == 0 && a.entries.iter().all(|e| e.result.is_some()));
    let undone = h.state().entries[fr].result.as_ref().unwrap().score;
    assert!((undone - before).abs() <= 1e-4 * before.abs().max(1.0), "undo: {before} -> {after} -> {undone}");
    assert!(h.state().model.as_ref().unwrap().meta.taught.is_empty());
    assert!(flowspect::detector::Detector::read_meta(&model).unwrap().taught.is_empty(), "undo writes the old model back");
    let scores: Vec<f32> = h.state().entries.iter().map(|e| e.result.as_ref().unwrap().score).collect();

    // Project: save, change the threshold (autosaved), drop the app without a clean exit.
    let proj = dir.join("work.fsproj");
    h.state_mut().save_project(proj.clone());
    h.state_mut().settings.thresholds.accept_below = 0.123;
    h.state_mut().settings.opacity = 0.8;
    h.run_steps(2);
    // The scores are written off the UI thread; the crash comes after that.
    wait_until(&mut h, 60, "the scores written", |a| a.scores_writing.is_none());
    drop(h);
    let side = flowspect::data::Labels::open(&unl).unwrap();
    assert_eq!(side.by_path.len(), 3);
    // One image rewritten while the app is closed: its kept score is stale.
    let changed = h_entry_path(&unl, 5);
    let bytes = std::fs::read(&changed).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&changed, &bytes).unwrap();

    let mut h = harness(Settings { train_dir: String::new(), test_dir: String::new(), ..Settings::default() });
    h.run_steps(2);
    assert!(h.state().entries.is_empty());
    h.state_mut().open_project(proj.clone());
    wait_until(&mut h, 120, "the project's model and kept scores", |a| a.model.is_some() && !a.busy() && a.scores_reading.is_none());
    let a = h.state();
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    assert_eq!(a.settings.test_dir, unl.display().to_string());
    assert_eq!(a.settings.thresholds.accept_below, 0.123, "the autosaved threshold, kept over the model's");
    assert_eq!(a.settings.opacity, 0.8);
    assert_eq!(a.entries.len(), 6);
    assert_eq!(a.entries.iter().filter(|e| e.person == Some(false)).count(), 2);
    assert_eq!(a.entries.iter().filter(|e| e.person == Some(true)).count(), 1);
    assert_eq!(a.settings.recent_projects.first(), Some(&proj.display().to_string()));
    // Scores restored for the five unchanged images, the rewritten one named as changed.
    for (e, s) in a.entries.iter().zip(&scores) {
        if e.sample.path == changed {
            assert!(e.result.is_none());
        } else {
            assert_eq!(e.result.as_ref().map(|r| r.score), Some(*s), "{}", e.sample.path.display());
            assert!(!e.result.as_ref().unwrap().map.is_empty());
        }
    }
    let name = changed.file_name().unwrap().to_string_lossy().into_owned();
    assert!(a.log.iter().any(|l| l.contains("scores of 5 images restored; 1 images changed") && l.contains(&name)), "{:?}", a.log);
}

/// The `i`-th image of a folder in the app's order (by name).
fn h_entry_path(dir: &Path, i: usize) -> PathBuf {
    flowspect::data::list_images(dir).unwrap().into_iter().nth(i).unwrap()
}

/// A malformed label sidecar is reported by name and moved aside (not overwritten by the
/// next label), and labelling goes on in a new sidecar.
#[test]
fn a_malformed_label_sidecar_is_kept_aside() {
    let dir = tempdir("badlabels");
    let unl = dir.join("unlabeled");
    copy_first(&magnetic_tile().join("test/good"), &unl, 2);
    let side = flowspect::data::Labels::sidecar_path(&unl);
    std::fs::write(&side, "path,label,time\na.png,maybe,1\n").unwrap();
    let mut s = tiny_settings(&unl);
    s.train_dir = String::new();
    s.tab = Tab::Review;
    let mut h = harness(s);
    h.run_steps(2);
    let errs = h.state().errors.join("\n");
    assert!(errs.contains("flowspect-labels.csv") && errs.contains("line 2") && errs.contains("moved to"), "{errs}");
    let aside: Vec<PathBuf> = std::fs::read_dir(&unl)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("flowspect-labels.csv.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), "path,label,time\na.png,maybe,1\n");
    h.state_mut().select(1);
    h.run_steps(3);
    h.key_press(egui::Key::D);
    h.run_steps(2);
    let back = flowspect::data::Labels::open(&unl).unwrap();
    assert_eq!(back.by_path.len(), 1);
    assert_eq!(back.get(&h.state().entries[1].sample.path), Some(true));
    let _ = std::fs::remove_dir_all(&dir);
}
