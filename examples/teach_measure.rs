//! The teach measurement of the README: score a labelled test set with a trained model,
//! take the good images it rejects at its own threshold, teach every other one of them
//! (in name order), score again, and compare false alarms on the other half (the
//! held-apart half) and escapes on every defect image before and after, each at the
//! model's own threshold of the moment (a teach recalibrates it).
//!
//! `cargo run --release --example teach_measure -- MODEL DATA [--fine-tune-steps N] [--no-global] [--out OUT.fsm]`
use candle_core::Device;
use flowspect::data;
use flowspect::detector::Detector;
use flowspect::models::TeachConfig;
use flowspect::progress::{CancelToken, NoProgress};
use std::collections::HashMap;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(a.len() >= 3, "usage: teach_measure MODEL DATA [--fine-tune-steps N] [--no-global] [--out OUT.fsm]");
    let mut how = TeachConfig::default();
    let mut out = None;
    let mut i = 3;
    while i < a.len() {
        match a[i].as_str() {
            "--fine-tune-steps" => {
                how.fine_tune_steps = a.get(i + 1).ok_or_else(|| anyhow::anyhow!("--fine-tune-steps needs a number"))?.parse()?;
                i += 1;
            }
            "--no-global" => how.global = false,
            "--global-weight" => {
                how.global_weight = a.get(i + 1).ok_or_else(|| anyhow::anyhow!("--global-weight needs a number"))?.parse()?;
                i += 1;
            }
            "--keep-calibration" => how.recalibrate = false,
            "--out" => {
                out = a.get(i + 1).cloned();
                i += 1;
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
        i += 1;
    }
    let mut det = Detector::load(a[1].as_ref(), &Device::Cpu)?;
    let samples = data::test_samples(a[2].as_ref())?;
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let label: HashMap<PathBuf, bool> = samples.iter().filter_map(|s| s.defect.map(|d| (s.path.clone(), d))).collect();
    let cancel = CancelToken::new();
    let score_all = |det: &Detector| -> anyhow::Result<HashMap<PathBuf, f32>> {
        let (s, _) = det.score_paths(&paths, &NoProgress, &cancel)?;
        Ok(s.into_iter().map(|s| (s.path, s.score)).collect())
    };
    let t0 = std::time::Instant::now();
    let before = score_all(&det)?;
    eprintln!("scored {} images in {:.0} s", before.len(), t0.elapsed().as_secs_f64());
    let thr0 = det.meta.threshold;
    let mut false_rejects: Vec<PathBuf> =
        before.iter().filter(|(p, s)| label.get(*p) == Some(&false) && **s >= thr0).map(|(p, _)| p.clone()).collect();
    false_rejects.sort();
    let teach: Vec<PathBuf> = false_rejects.iter().step_by(2).cloned().collect();
    let held: Vec<PathBuf> = false_rejects.iter().skip(1).step_by(2).cloned().collect();
    let n_good = label.values().filter(|d| !**d).count();
    let n_bad = label.values().filter(|d| **d).count();
    let report = |name: &str, sc: &HashMap<PathBuf, f32>, thr: f32| {
        let held_fa = held.iter().filter(|p| sc.get(*p).is_some_and(|s| *s >= thr)).count();
        let good_fa = sc.iter().filter(|(p, s)| label.get(*p) == Some(&false) && !teach.contains(p) && **s >= thr).count();
        let esc = sc.iter().filter(|(p, s)| label.get(*p) == Some(&true) && **s < thr).count();
        println!(
            "{name} (threshold {thr:.5}): false alarms on the held-apart half {held_fa} of {}; on all good images not taught {good_fa} of {}; escapes {esc} of {n_bad} defect images ({:.1} %)",
            held.len(),
            n_good - teach.len(),
            100.0 * esc as f64 / n_bad.max(1) as f64
        );
        esc
    };
    println!(
        "model {} ({}), {how:?}: {} good images rejected, teaching {}, holding apart {}",
        a[1],
        det.meta.method,
        false_rejects.len(),
        teach.len(),
        held.len()
    );
    let esc0 = report("before", &before, thr0);
    let r = det.teach(&teach, &how, &NoProgress, &cancel)?;
    println!("teach: {} images in {:.1} s: {}", r.taught.len(), r.seconds, r.summary);
    let after = score_all(&det)?;
    let esc1 = report("after", &after, det.meta.threshold);
    println!(
        "escapes changed by {} ({:+.1} % of the defect images)",
        esc1 as i64 - esc0 as i64,
        100.0 * (esc1 as f64 - esc0 as f64) / n_bad.max(1) as f64
    );
    for p in &held {
        println!("  held apart {}: {:.4} -> {:.4}", p.display(), before[p], after[p]);
    }
    for p in &teach {
        println!("  taught {}: {:.4} -> {:.4}", p.display(), before[p], after[p]);
    }
    if let Some(out) = out {
        det.save(out.as_ref())?;
    }
    Ok(())
}
