//! `ddpm export diffusers`: a run as a Hugging Face diffusers pipeline folder.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::run::checkpoints::resolve;
use crate::run::load::run_config;
use crate::store::tensors::read_safetensors;

/// Formats `ddpm export` writes.
#[derive(Subcommand)]
pub enum ExportCommand {
    /// A diffusers pipeline folder (model_index.json, unet/, scheduler/) that
    /// DDPMPipeline.from_pretrained loads.
    Diffusers(DiffusersArgs),
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm export diffusers --checkpoint runs/mnist --out mnist-diffusers/\n  python -c \"from diffusers import DDPMPipeline; DDPMPipeline.from_pretrained('mnist-diffusers')(batch_size=4)\""
)]
pub struct DiffusersArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Export the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// The folder to create.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: ExportCommand) -> CliResult {
    match cmd {
        ExportCommand::Diffusers(a) => diffusers(a),
    }
}

fn diffusers(a: DiffusersArgs) -> CliResult {
    let usage = |e: anyhow::Error| CliError::Usage(format!("{e:#}"));
    let ckpt =
        resolve(&a.checkpoint).map_err(|e| CliError::Usage(format!("--checkpoint: {e:#}")))?;
    let cfg = run_config(&ckpt).map_err(usage)?;
    if cfg.preset == "mlp" {
        return Err(CliError::Usage(
            "--checkpoint: a 2-D (mlp) run; diffusers' UNet2DModel is an image network".into(),
        ));
    }
    let file = ckpt.join(if a.no_ema {
        "model.safetensors"
    } else {
        "ema.safetensors"
    });
    let weights = read_safetensors(&file).map_err(usage)?;
    let files = crate::pretrained::export::pipeline_files(&cfg, &weights)
        .map_err(|e| CliError::Usage(format!("cannot export {}: {e:#}", ckpt.display())))?;
    crate::pretrained::export::write_pipeline(&a.out, &files)
        .map_err(|e| CliError::Usage(format!("--out {}: {e:#}", a.out.display())))?;
    println!(
        "exported {} ({} weights) to {} (DDPMPipeline.from_pretrained loads it)",
        ckpt.display(),
        if a.no_ema { "raw" } else { "EMA" },
        a.out.display()
    );
    Ok(())
}
