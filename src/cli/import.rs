//! `ddpm import diffusers`: a Hugging Face diffusers model as a run directory.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::model::UNet;
use crate::run::init::write_initial_run;
use crate::run::net::Net;
use crate::store::params::load_params;

/// Formats `ddpm import` reads.
#[derive(Subcommand)]
pub enum ImportCommand {
    /// A diffusers UNet2DModel with its scheduler (the flat Hub layout or a pipeline folder).
    Diffusers(DiffusersArgs),
}

#[derive(Args)]
#[command(
    after_help = "Every command that takes --checkpoint also reads a diffusers folder directly; an import makes a run directory (config.toml, checkpoints/step-00000000) that can be inspected and kept.\n\nExamples:\n  ddpm import diffusers ddpm-cifar10-32/ --out runs/cifar10-google\n  ddpm sample --checkpoint runs/cifar10-google --n 16 --sampler ddim --steps 50 --out s/"
)]
pub struct DiffusersArgs {
    /// The folder: config.json + diffusion_pytorch_model.safetensors (+ scheduler_config.json),
    /// or a pipeline's model_index.json with unet/ and scheduler/.
    dir: PathBuf,
    /// The run directory to create.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: ImportCommand) -> CliResult {
    match cmd {
        ImportCommand::Diffusers(a) => diffusers(a),
    }
}

fn diffusers(a: DiffusersArgs) -> CliResult {
    let imported =
        crate::pretrained::import(&a.dir).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let device = crate::device::by_name("cpu")?;
    let cfg = &imported.config;
    let model = <UNet as Net<4>>::build(cfg, &cfg.item_shape()?, &device)?;
    let model = load_params(
        model,
        &imported.weights,
        &a.dir.display().to_string(),
        &device,
    )
    .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let ckpt =
        write_initial_run(&a.out, cfg, &model).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    use burn::module::Module;
    println!(
        "imported {} ({} parameters; {} schedule, T = {}, {:?} prediction, {:?} variance) into {}",
        a.dir.display(),
        model.num_params(),
        cfg.schedule,
        cfg.timesteps,
        cfg.parameterization,
        cfg.variance,
        ckpt.display()
    );
    Ok(())
}
