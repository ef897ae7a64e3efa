//! Command-line interface: argument parsing and one function per subcommand.
mod bench;
mod benchmark;
mod import;
mod inspect;
mod progress;
mod report;
mod teach;
mod watch;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "flowspect", version, about = "Unsupervised visual defect inspection (NF-BMR, MemFlowNet, PatchCore)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Open the desktop app (the default with no subcommand).
    Gui(GuiArgs),
    /// Convert EfficientNet weights (.pth legacy/zip, safetensors) to flowspect's canonical file.
    ImportWeights(import::ImportArgs),
    /// Train a detector on good images.
    Train(inspect::TrainArgs),
    /// Score a labelled test set and print its metrics.
    Eval(inspect::EvalArgs),
    /// Score images: CSV of scores and verdicts, and a heatmap per image.
    Predict(inspect::PredictArgs),
    /// Score images and write a defect report: CSV, JSON, HTML, PDF and per-image heatmap and mask PNGs.
    Report(report::ReportArgs),
    /// Time each stage of the pipeline (median ms per image) at several sizes and batches.
    Bench(bench::BenchArgs),
    /// Train and evaluate each method on each labelled set; one table (Markdown and JSON).
    Benchmark(benchmark::BenchmarkArgs),
    /// Add good images to a trained model without retraining (false rejects, new variants).
    Teach(teach::TeachArgs),
    /// Line mode: inspect images as they arrive in a folder, one row per image in an SQLite log.
    Watch(watch::WatchArgs),
    /// Query the inspection log written by `watch` (print, filter, CSV).
    Log(watch::LogArgs),
    /// Print the top ImageNet classes of a photo (checks a backbone file).
    Classify(import::ClassifyArgs),
}

#[derive(clap::Args)]
pub struct GuiArgs {
    /// Training folder to open.
    #[arg(long)]
    pub train: Option<std::path::PathBuf>,
    /// Test folder to open.
    #[arg(long)]
    pub test: Option<std::path::PathBuf>,
    /// Model file to open.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Score the test folder as soon as the model is open.
    #[arg(long)]
    pub score: bool,
    /// Tab to show: data, train, threshold, review or inspect.
    #[arg(long)]
    pub tab: Option<String>,
    /// Select this test image (0-based index in the folder's order) once scored.
    #[arg(long)]
    pub select: Option<usize>,
    /// Training epochs per stage (overrides the remembered setting).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training input size in pixels (overrides the remembered setting).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Train on at most this many images (overrides the remembered setting).
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Start training on the training folder right away.
    #[arg(long)]
    pub start_training: bool,
    /// Folder for the Inspect tab (line mode) to watch.
    #[arg(long)]
    pub inspect: Option<std::path::PathBuf>,
    /// Start inspecting that folder right away (with --model, or the remembered model).
    #[arg(long, requires = "inspect")]
    pub start_inspect: bool,
    /// Project file (.fsproj) to open: its folders, model, thresholds, labels and kept scores.
    #[arg(long)]
    pub project: Option<std::path::PathBuf>,
}

impl GuiArgs {
    fn startup(&self) -> crate::gui::Startup {
        use crate::gui::Tab;
        crate::gui::Startup {
            train_dir: self.train.clone(),
            test_dir: self.test.clone(),
            model: self.model.clone(),
            tab: self.tab.as_deref().map(|t| match t.to_ascii_lowercase().as_str() {
                "train" => Tab::Train,
                "threshold" => Tab::Threshold,
                "review" => Tab::Review,
                "inspect" => Tab::Inspect,
                _ => Tab::Data,
            }),
            score: self.score,
            select: self.select,
            epochs: self.epochs,
            image_size: self.image_size,
            max_images: self.max_images,
            train_now: self.start_training,
            inspect_dir: self.inspect.clone(),
            inspect_now: self.start_inspect,
            project: self.project.clone(),
        }
    }
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => crate::gui::run(crate::gui::Startup::default()),
        Some(Command::Gui(a)) => crate::gui::run(a.startup()),
        Some(Command::Train(a)) => inspect::train(a),
        Some(Command::Eval(a)) => inspect::eval(a),
        Some(Command::Predict(a)) => inspect::predict(a),
        Some(Command::Bench(a)) => bench::bench(a),
        Some(Command::Benchmark(a)) => benchmark::benchmark(a),
        Some(Command::Report(a)) => report::report(a),
        Some(Command::ImportWeights(a)) => import::import_weights(a),
        Some(Command::Classify(a)) => import::classify(a),
        Some(Command::Teach(a)) => teach::teach(a),
        Some(Command::Watch(a)) => watch::watch(a),
        Some(Command::Log(a)) => watch::log(a),
    }
}
