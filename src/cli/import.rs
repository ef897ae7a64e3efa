use anyhow::{Context, Result};
use clap::Args;
use flowspect::backbone::{self, BackboneMode, Padding, import};
use flowspect::device::DeviceChoice;
use std::path::PathBuf;

#[derive(Args)]
pub struct ImportArgs {
    /// Weight file: PyTorch .pth (legacy or zip) or safetensors.
    pub file: PathBuf,
    /// Output canonical safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Override the padding convention (same = TensorFlow, symmetric = torchvision).
    #[arg(long, value_parser = ["same", "symmetric"])]
    pub padding: Option<String>,
}

pub fn import_weights(a: ImportArgs) -> Result<()> {
    let padding = a.padding.as_deref().map(|p| if p == "same" { Padding::Same } else { Padding::Symmetric });
    let imp = import::import(&a.file, padding)?;
    import::write_canonical(&a.out, &imp)?;
    println!(
        "imported {} ({:?} naming, {} tensors, {:?} padding) -> {}",
        imp.config.variant,
        imp.naming,
        imp.tensors.len(),
        imp.config.padding,
        a.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// Photo to classify.
    pub image: PathBuf,
    /// Backbone file (default: the shipped EfficientNet-Lite0).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    #[arg(long, default_value = "224")]
    pub size: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Use the plain reference path instead of the fast one.
    #[arg(long)]
    pub reference: bool,
}

pub fn classify(a: ClassifyArgs) -> Result<()> {
    let device = a.device.open()?;
    let path = a.backbone.unwrap_or_else(backbone::default_backbone_path);
    let mode = if a.reference { BackboneMode::Reference } else { BackboneMode::Fast };
    let net = backbone::load(&path, &device, mode).with_context(|| format!("loading {}", path.display()))?;
    let probs = flowspect::backbone::classify(&net, &a.image, a.size)?;
    for (class, p) in probs.iter().take(5) {
        println!("{class:4}  {p:.4}");
    }
    Ok(())
}
