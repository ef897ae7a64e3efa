//! The command line, end to end on a few real images.
mod common;
use common::*;
use std::process::Command;

fn flowspect() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowspect"))
}

#[test]
fn help_lists_the_commands() {
    let out = flowspect().arg("--help").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for cmd in ["gui", "train", "eval", "predict", "import-weights"] {
        assert!(s.contains(cmd), "{s}");
    }
}

#[test]
fn no_arguments_without_a_display_fails_with_a_message() {
    // No arguments opens the app; with no display to open it on, a clear error, no panic.
    let data_home = tempdir("nodisplay");
    let out = flowspect()
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_DATA_HOME", data_home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stderr);
    assert!(s.contains("cannot open the window") && s.contains("--help"), "{s}");
    assert!(!s.contains("panicked"), "{s}");
}

#[test]
fn train_eval_predict_on_real_images() {
    let mt = magnetic_tile();
    let dir = tempdir("cli");
    let model = dir.path().join("m.fsm");
    let out = flowspect()
        .args(["train", "--data"])
        .arg(&mt)
        .args(["--limit", "6", "--image-size", "64", "--epochs", "1", "--hidden", "32", "--flow-hidden", "32", "--device", "cpu", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("trained nf-bmr on"));

    // The other method from the same command; BMR options are refused for it.
    let mf = dir.path().join("mf.fsm");
    let train_memflow = |extra: &[&str]| {
        let out = flowspect()
            .args(["train", "--method", "memflow"])
            .args(extra)
            .arg("--data")
            .arg(&mt)
            .args(["--limit", "6", "--image-size", "64", "--epochs", "1", "--flow-hidden", "32", "--coreset-ratio", "0.5", "--device", "cpu", "--out"])
            .arg(&mf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let o = train_memflow(&[]);
    assert!(o.contains("trained memflow on") && o.contains("memory bank 40 of 80 patches"), "{o}");
    // A bank that includes a finer stage (3, stride 8) sits on that stage's grid: 4x the patches.
    let o = train_memflow(&["--stage", "3,4"]);
    assert!(o.contains("memory bank 160 of 320 patches"), "{o}");
    let out = flowspect().args(["train", "--method", "memflow", "--hidden", "8", "--data"]).arg(&mt).arg("--out").arg(&mf).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not memflow options: --hidden (an option of nf-bmr)"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = flowspect().args(["train", "--method", "memflow", "--global-stages", "6", "--data"]).arg(&mt).arg("--out").arg(&mf).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not memflow options: --global-stages (an option of nf-bmr)"));
    let out = flowspect().args(["train", "--method", "memflow", "--region-window", "5", "--data"]).arg(&mt).arg("--out").arg(&mf).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--region-window (an option of nf-bmr)"));
    // A score the model has no parts for is refused by name (memflow has no global Gaussian).
    let out = flowspect().args(["eval", "--score", "map-global", "--limit", "4", "--model"]).arg(&mf).arg("--data").arg(&mt).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pooled-feature Gaussian"), "{}", String::from_utf8_lossy(&out.stderr));

    let json = dir.path().join("m.json");
    let out = flowspect()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&mt)
        .args(["--limit", "12", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for k in ["image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "n_good", "n_defect"] {
        assert!(v.get(k).is_some(), "JSON lacks {k}");
    }
    let (g, d) = (v["n_good"].as_u64().unwrap(), v["n_defect"].as_u64().unwrap());
    assert_eq!(g + d, 12);
    let a = v["image_auroc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&a));

    let pred = dir.path().join("pred");
    let input = mt.join("test/crack");
    let out = flowspect().args(["predict", "--model"]).arg(&model).arg("--input").arg(&input).arg("--out").arg(&pred).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut rdr = csv::Reader::from_path(pred.join("scores.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), flowspect::data::list_images(&input).unwrap().len());
    for r in &rows {
        assert!(r[2] == *"accept" || r[2] == *"reject");
        assert!(std::path::Path::new(&r[3]).is_file(), "heatmap {} missing", &r[3]);
    }

    // The report command writes all four files and the per-image PNGs.
    let rep = dir.path().join("report");
    let out = flowspect()
        .args(["report", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&rep)
        .args(["--threshold", "0", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n = flowspect::data::list_images(&input).unwrap().len();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{n} images: 0 accept, 0 review, {n} reject")));
    for f in ["report.csv", "report.json", "report.html", "report.pdf"] {
        assert!(rep.join(f).is_file(), "{f} missing");
    }
    assert_eq!(std::fs::read_dir(rep.join("images")).unwrap().count(), 2 * n);
    // A review threshold below the accept threshold is refused.
    let out = flowspect()
        .args(["report", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&rep)
        .args(["--threshold", "2", "--review-threshold", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("below the accept threshold"));
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = flowspect().args(["train", "--data", "/nonexistent/folder", "--out", "/tmp/x.fsm", "--device", "cpu"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/folder"));
    let out = flowspect().args(["eval", "--model", "/nonexistent/m.fsm", "--data", "."]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/m.fsm"));
}

/// `benchmark` trains and evaluates each method on each set (as child processes) and
/// writes one table whose numbers are those of the per-run evaluations.
#[test]
fn benchmark_writes_one_table_of_every_run() {
    let mt = magnetic_tile();
    let dir = tempdir("benchmark");
    let out_dir = dir.path().join("bench");
    let out = flowspect()
        .args(["benchmark", "--data"])
        .arg(&mt)
        .arg("--data")
        .arg(elpv_poly())
        .args(["--method", "patchcore", "--method", "memflow", "--limit", "8", "--test-limit", "14", "--image-size", "64", "--epochs", "1", "--device", "cpu", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.join("benchmark.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    let md = std::fs::read_to_string(out_dir.join("benchmark.md")).unwrap();
    assert!(md.contains("| set | method | image AUROC | pixel AUROC | AUPRO"), "{md}");
    assert!(md.contains("Pixel AUROC by defect kind"), "{md}");
    for r in rows {
        let (set, method) = (r["set"].as_str().unwrap(), r["method"].as_str().unwrap());
        // The row is the run's own evaluation, read back from its JSON.
        let e: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.join(format!("{set}-{method}.json"))).unwrap()).unwrap();
        for k in ["image_auroc", "pixel_auroc", "aupro", "f1_max", "false_alarm_rate", "escape_rate", "ms_per_image"] {
            assert_eq!(r[k], e[k], "{set} {method} {k}");
        }
        assert_eq!(r["n_good"].as_u64().unwrap() + r["n_defect"].as_u64().unwrap(), 14);
        let (fa, c) = (r["false_alarm_rate"].as_f64().unwrap(), &e["confusion"]);
        let fp = c["fp"].as_f64().unwrap();
        assert!((fa - fp / (fp + c["tn"].as_f64().unwrap())).abs() < 1e-12);
        assert!(r["train_seconds"].as_f64().unwrap() > 0.0);
        if cfg!(target_os = "linux") {
            assert!(r["peak_mb"].as_f64().unwrap() > 10.0);
        }
        assert!(md.contains(&format!("| {set} | {method} | ")), "{md}");
    }
    // A folder that does not exist is refused before anything runs.
    let out = flowspect().args(["benchmark", "--data", "/no/such/set", "--out"]).arg(&out_dir).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/set"));
}

/// `flowspect teach`: a tiny NF-BMR model (region bank, global Gaussian and, asked for,
/// a few BMR steps) absorbs two real good tiles; the written model records them, has a larger
/// region bank, scores them lower than before, is recalibrated on its three held-out
/// images (the threshold follows the default rule), loads back, and refuses to teach the
/// same bytes twice. With two held-out images gone, a teach keeps the threshold and says why.
#[test]
fn teach_adds_good_images_to_a_model() {
    let mt = magnetic_tile();
    let dir = tempdir("teach");
    let train = dir.path().join("train");
    std::fs::create_dir_all(&train).unwrap();
    for p in first_images(&mt.join("train/good"), 30) {
        std::fs::copy(&p, train.join(p.file_name().unwrap())).unwrap();
    }
    let model = dir.path().join("m.fsm");
    let out = flowspect()
        .args(["train", "--data"])
        .arg(&train)
        .args(["--image-size", "64", "--epochs", "1", "--hidden", "32", "--flow-hidden", "32", "--region-window", "3", "--device", "cpu", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let goods: Vec<std::path::PathBuf> = first_images(&mt.join("test/good"), 3);
    let dev = candle_core::Device::Cpu;
    let before = flowspect::detector::Detector::load(&model, &dev).unwrap();
    let held = before.meta.training.held_out.clone();
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(held.iter().all(|h| h.path.starts_with(&train.display().to_string()) && h.sha256.len() == 64));
    let cancel = flowspect::progress::CancelToken::new();
    let (s0, _) = before.score_paths(&goods[..2], &flowspect::progress::NoProgress, &cancel).unwrap();
    let rows0 = before.model.tensors().unwrap().into_iter().find(|(k, _)| k == "region.bank").unwrap().1.dim(0).unwrap();
    let taught = dir.path().join("t.fsm");
    let out = flowspect()
        .args(["teach", "--model"])
        .arg(&model)
        .arg("--good")
        .args(&goods[..2])
        .arg("--out")
        .arg(&taught)
        .args(["--device", "cpu", "--fine-tune-steps", "3"])
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(so.contains("taught 2 images") && so.contains("region bank") && so.contains("global Gaussian updated"), "{so}");
    assert!(so.contains("BMR fine-tuned 3 steps") && so.contains("recalibrated on 3 held-out images"), "{so}");
    let after = flowspect::detector::Detector::load(&taught, &dev).unwrap();
    assert_eq!(after.meta.taught.len(), 2);
    let (rule_threshold, rule) = flowspect::models::scoring::default_threshold(&after.meta.calibration);
    assert_eq!(after.meta.threshold, rule_threshold, "the threshold follows the recalibration");
    assert_eq!(rule.held_out, 3);
    assert_ne!(after.meta.calibration.val_scores, before.meta.calibration.val_scores);
    let rows1 = after.model.tensors().unwrap().into_iter().find(|(k, _)| k == "region.bank").unwrap().1.dim(0).unwrap();
    assert!(rows1 > rows0, "region bank {rows0} -> {rows1}");
    let (s1, _) = after.score_paths(&goods[..2], &flowspect::progress::NoProgress, &cancel).unwrap();
    for (a, b) in s0.iter().zip(&s1) {
        assert!(b.score < a.score, "{}: {} -> {}", a.path.display(), a.score, b.score);
    }
    // Each taught image counts as 20 training images in the global Gaussian (the
    // default): its distance falls further than when it counts as one.
    assert!(so.contains("each counting as 20"), "{so}");
    assert!(after.meta.taught.iter().all(|t| t.global_weight == 20));
    let one = dir.path().join("t1.fsm");
    let out = flowspect()
        .args(["teach", "--model"])
        .arg(&model)
        .arg("--good")
        .args(&goods[..2])
        .arg("--out")
        .arg(&one)
        .args(["--device", "cpu", "--global-weight", "1", "--keep-calibration"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("each counting as 1"));
    let (s_one, _) = flowspect::detector::Detector::load(&one, &dev).unwrap().score_paths(&goods[..2], &flowspect::progress::NoProgress, &cancel).unwrap();
    for ((a, b), c) in s0.iter().zip(&s1).zip(&s_one) {
        assert!(b.global < c.global && c.global < a.global, "{}: global distance {} untaught, {} weight 1, {} weight 20", a.path.display(), a.global, c.global, b.global);
    }
    // The same images again: nothing to teach, an error, the file untouched.
    let again = dir.path().join("t2.fsm");
    let out = flowspect().args(["teach", "--model"]).arg(&taught).arg("--good").args(&goods[..2]).arg("--out").arg(&again).args(["--device", "cpu"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing taught"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!again.exists());
    // Two of the three held-out images moved away: the third image is taught, the
    // threshold kept.
    for h in &held[..2] {
        std::fs::remove_file(&h.path).unwrap();
    }
    let out = flowspect().args(["teach", "--model"]).arg(&taught).arg("--good").arg(&goods[2]).arg("--out").arg(&again).args(["--device", "cpu"]).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(so.contains("kept: only 1 of the 3 held-out images"), "{so}");
    let third = flowspect::detector::Detector::read_meta(&again).unwrap();
    assert_eq!((third.taught.len(), third.threshold), (3, after.meta.threshold));
}
