//! Command-line interface: argument parsing and one function per subcommand.
mod bench;
mod import;
mod inspect;
mod progress;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "flowspect", version, about = "Unsupervised visual defect inspection (NF-BMR)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Convert EfficientNet weights (.pth legacy/zip, safetensors) to flowspect's canonical file.
    ImportWeights(import::ImportArgs),
    /// Train a detector on good images.
    Train(inspect::TrainArgs),
    /// Score a labelled test set and print its metrics.
    Eval(inspect::EvalArgs),
    /// Score images: CSV of scores and verdicts, and a heatmap per image.
    Predict(inspect::PredictArgs),
    /// Time each stage of the pipeline (median ms per image) at several sizes and batches.
    Bench(bench::BenchArgs),
    /// Print the top ImageNet classes of a photo (checks a backbone file).
    Classify(import::ClassifyArgs),
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            println!();
            Ok(())
        }
        Some(Command::Train(a)) => inspect::train(a),
        Some(Command::Eval(a)) => inspect::eval(a),
        Some(Command::Predict(a)) => inspect::predict(a),
        Some(Command::Bench(a)) => bench::bench(a),
        Some(Command::ImportWeights(a)) => import::import_weights(a),
        Some(Command::Classify(a)) => import::classify(a),
    }
}
