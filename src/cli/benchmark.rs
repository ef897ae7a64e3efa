//! `flowspect benchmark`: trains and evaluates each method on each labelled set with
//! its defaults and writes one table (Markdown and JSON).
//!
//! Each training and each evaluation runs as a child process of this same program
//! (`flowspect train`, `flowspect eval --json`), so that every run's peak memory is its
//! own and a crash in one run is reported without losing the others.
use anyhow::{Context, Result, bail};
use clap::Args;
use flowspect::detector::{Detector, DetectorConfig, Method};
use flowspect::evaluate::EvalReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Args)]
pub struct BenchmarkArgs {
    /// A labelled data set (MVTec layout, or good/ and defect folders); repeat for several.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// A method to run; repeat for several (default: every method).
    #[arg(long)]
    pub method: Vec<Method>,
    /// Folder for the models, the per-run metrics and the table (benchmark.md, benchmark.json).
    #[arg(long, default_value = "benchmark")]
    pub out: PathBuf,
    /// Maximum epochs of each training phase (methods that train networks).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Input side length in pixels, for every method (default: each method's own).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Train on at most this many images of each set (evenly spaced).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate on at most this many test images of each set (evenly spaced).
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// One method on one set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub set: String,
    pub method: String,
    pub n_train: usize,
    pub n_good: usize,
    pub n_defect: usize,
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
    pub f1_max: Option<f64>,
    /// At the model's own threshold.
    pub threshold: f32,
    pub false_alarm_rate: f64,
    pub escape_rate: f64,
    pub train_seconds: f64,
    pub ms_per_image: f64,
    /// The larger of training's and evaluation's peak resident memory.
    pub peak_mb: Option<f64>,
    pub pixel_auroc_by_kind: BTreeMap<String, f64>,
    pub image_auroc_by_kind: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    pub flowspect_version: String,
    pub command: String,
    pub rows: Vec<Row>,
    /// Runs that failed: (set, method, message).
    pub failed: Vec<(String, String, String)>,
}

fn set_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// Runs this program with `args`, its output going to the terminal (progress bars).
fn run_child(args: &[String]) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let status = Command::new(&exe).args(args).status().with_context(|| format!("cannot start {}", exe.display()))?;
    if !status.success() {
        bail!("`flowspect {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn run_one(a: &BenchmarkArgs, data: &Path, set: String, method: Method, out: &Path) -> Result<Row> {
    let model = out.join(format!("{set}-{method}.fsm"));
    let metrics = out.join(format!("{set}-{method}.json"));
    let s = |p: &Path| p.display().to_string();
    let mut train: Vec<String> = vec!["train".into(), "--method".into(), method.to_string(), "--data".into(), s(data), "--out".into(), s(&model), "--device".into(), a.device.clone()];
    if let (Some(e), true) = (a.epochs, DetectorConfig::default_for(method).trains_network()) {
        train.extend(["--epochs".into(), e.to_string()]);
    }
    for (flag, v) in [("--image-size", a.image_size.map(|v| v.to_string())), ("--limit", a.limit.map(|v| v.to_string())), ("--seed", a.seed.map(|v| v.to_string())), ("--backbone", a.backbone.as_deref().map(s))] {
        if let Some(v) = v {
            train.extend([flag.into(), v]);
        }
    }
    let t0 = Instant::now();
    run_child(&train)?;
    let wall = t0.elapsed().as_secs_f64();
    let meta = Detector::read_meta(&model)?;
    let mut eval: Vec<String> = vec!["eval".into(), "--model".into(), s(&model), "--data".into(), s(data), "--json".into(), s(&metrics), "--device".into(), a.device.clone()];
    if let Some(l) = a.test_limit {
        eval.extend(["--limit".into(), l.to_string()]);
    }
    run_child(&eval)?;
    let bytes = std::fs::read(&metrics).with_context(|| format!("reading {}", metrics.display()))?;
    let rep: EvalReport = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", metrics.display()))?;
    let r = &meta.training;
    let peak = match (r.peak_rss_mb, rep.peak_rss_mb) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    Ok(Row {
        set,
        method: method.to_string(),
        n_train: r.n_train + r.n_val,
        n_good: rep.n_good,
        n_defect: rep.n_defect,
        image_auroc: rep.image_auroc,
        pixel_auroc: rep.pixel_auroc,
        aupro: rep.aupro,
        f1_max: rep.f1_max,
        threshold: rep.model_threshold,
        false_alarm_rate: rep.false_alarm_rate,
        escape_rate: rep.escape_rate,
        // The training itself (features to calibration), not the process start-up.
        train_seconds: if r.total_seconds > 0.0 { r.total_seconds } else { wall },
        ms_per_image: rep.ms_per_image,
        peak_mb: peak,
        pixel_auroc_by_kind: rep.pixel_auroc_by_kind,
        image_auroc_by_kind: rep.auroc_by_kind,
    })
}

fn f3(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
}

/// The table as Markdown: one row per run, then pixel AUROC by defect kind for the sets
/// with masks.
pub fn markdown(t: &Table) -> String {
    let mut s = String::new();
    s.push_str("| set | method | image AUROC | pixel AUROC | AUPRO (FPR ≤ 0.3) | F1-max | false alarms at the model's threshold | escapes at it | train s | ms / image | peak MB |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &t.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} % of {} | {:.1} % of {} | {:.1} | {:.0} | {} |\n",
            r.set,
            r.method,
            f3(r.image_auroc),
            f3(r.pixel_auroc),
            f3(r.aupro),
            f3(r.f1_max),
            100.0 * r.false_alarm_rate,
            r.n_good,
            100.0 * r.escape_rate,
            r.n_defect,
            r.train_seconds,
            r.ms_per_image,
            r.peak_mb.map(|m| format!("{m:.0}")).unwrap_or_else(|| "–".into()),
        ));
    }
    let with_kinds: Vec<&Row> = t.rows.iter().filter(|r| !r.pixel_auroc_by_kind.is_empty()).collect();
    if !with_kinds.is_empty() {
        let kinds: std::collections::BTreeSet<&String> = with_kinds.iter().flat_map(|r| r.pixel_auroc_by_kind.keys()).collect();
        s.push_str("\nPixel AUROC by defect kind:\n\n| set | method |");
        for k in &kinds {
            s.push_str(&format!(" {k} |"));
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---|".repeat(kinds.len()));
        s.push('\n');
        for r in with_kinds {
            s.push_str(&format!("| {} | {} |", r.set, r.method));
            for k in &kinds {
                s.push_str(&format!(" {} |", f3(r.pixel_auroc_by_kind.get(*k).copied())));
            }
            s.push('\n');
        }
    }
    for (set, method, why) in &t.failed {
        s.push_str(&format!("\nFAILED: {method} on {set}: {why}\n"));
    }
    s
}

pub fn benchmark(a: BenchmarkArgs) -> Result<()> {
    let methods: Vec<Method> = if a.method.is_empty() { Method::ALL.to_vec() } else { a.method.clone() };
    for d in &a.data {
        if !d.is_dir() {
            bail!("{}: not a folder", d.display());
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // Each set's name in the table and in file names: its folder's name, numbered where
    // two sets share one.
    let mut names: Vec<String> = Vec::new();
    for d in &a.data {
        let base = set_name(d);
        let mut name = base.clone();
        let mut k = 2;
        while names.contains(&name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        names.push(name);
    }
    let runs: Vec<(&PathBuf, &String, Method)> =
        a.data.iter().zip(&names).flat_map(|(d, n)| methods.iter().map(move |&m| (d, n, m))).collect();
    let mut table = Table {
        flowspect_version: env!("CARGO_PKG_VERSION").into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rows: Vec::new(),
        failed: Vec::new(),
    };
    for (i, (data, set, method)) in runs.iter().enumerate() {
        eprintln!("[{}/{}] {method} on {}", i + 1, runs.len(), data.display());
        match run_one(&a, data, set.to_string(), *method, &a.out) {
            Ok(row) => {
                eprintln!(
                    "[{}/{}] {method} on {}: image AUROC {}, pixel AUROC {}, AUPRO {}",
                    i + 1,
                    runs.len(),
                    row.set,
                    f3(row.image_auroc),
                    f3(row.pixel_auroc),
                    f3(row.aupro)
                );
                table.rows.push(row);
            }
            Err(e) => {
                eprintln!("[{}/{}] {method} on {} failed: {e:#}", i + 1, runs.len(), data.display());
                table.failed.push((set.to_string(), method.to_string(), format!("{e:#}")));
            }
        }
        // Written after every run, so an interrupted benchmark keeps what it measured.
        let md = markdown(&table);
        flowspect::fsutil::atomic_write(&a.out.join("benchmark.md"), md.as_bytes())?;
        flowspect::fsutil::atomic_write(&a.out.join("benchmark.json"), &serde_json::to_vec_pretty(&table)?)?;
    }
    println!("{}", markdown(&table));
    println!("written to {} and {}", a.out.join("benchmark.md").display(), a.out.join("benchmark.json").display());
    if !table.failed.is_empty() {
        bail!("{} of {} runs failed", table.failed.len(), runs.len());
    }
    Ok(())
}
