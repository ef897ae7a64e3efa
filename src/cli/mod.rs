//! Command-line interface: argument parsing and one function per subcommand.
mod import;

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
        Some(Command::ImportWeights(a)) => import::import_weights(a),
        Some(Command::Classify(a)) => import::classify(a),
    }
}
