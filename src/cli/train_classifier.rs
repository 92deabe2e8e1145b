//! `ddpm train-classifier`: the noise-aware classifier that classifier guidance follows.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::{CliError, CliResult};
use crate::config::RunConfig;
use crate::data::Split;
use crate::model::UNetConfig;
use crate::train::guide_classifier::{ClassifierConfig, held_out, train_classifier};

#[derive(Args)]
#[command(
    after_help = "The classifier must share the diffusion model's noise schedule: --like RUN takes the schedule, the data and the image shape from a run.\n\nExamples:\n  ddpm train-classifier --like runs/mnist --steps 2000 --out runs/mnist-noisy-clf\n  ddpm train-classifier --data idx:../shared/data/mnist --schedule cosine --out clf/\n  ddpm sample --checkpoint runs/mnist --guide-classifier runs/mnist-noisy-clf --classifier-scale 2 --class all --n 100 --out guided/"
)]
pub struct TrainClassifierArgs {
    /// A diffusion run whose schedule, data and image shape the classifier takes.
    #[arg(long)]
    like: Option<PathBuf>,
    /// Labelled images: bundled, idx:DIR, cifar10:DIR or folder:DIR (one sub-directory per class).
    #[arg(long)]
    data: Option<String>,
    /// The encoder's shape: the down half of this U-Net preset (mnist, cifar10, tiny).
    #[arg(long)]
    preset: Option<String>,
    /// Channels of the first level (overrides the preset's).
    #[arg(long, value_parser = super::at_least_one)]
    base_channels: Option<usize>,
    /// Residual blocks per level (overrides the preset's).
    #[arg(long, value_parser = super::at_least_one)]
    num_res_blocks: Option<usize>,
    /// Noise schedule (as `ddpm train --schedule`).
    #[arg(long)]
    schedule: Option<String>,
    /// Diffusion steps T.
    #[arg(long, value_parser = super::at_least_one)]
    timesteps: Option<usize>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000, value_parser = super::count_up_to::<100_000_000>)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128, value_parser = super::at_least_one)]
    batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Linear learning-rate warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup_steps: u64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.05, value_parser = super::non_negative)]
    weight_decay: f64,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0, value_parser = super::non_negative)]
    grad_clip: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, wgpu, or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The classifier's directory (classifier.toml, classifier.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Log every N steps.
    #[arg(long, default_value_t = 50, value_parser = super::at_least_one)]
    log_every: usize,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// The diffusion run `--like` names: its configuration.
fn like_run(path: &std::path::Path) -> Result<RunConfig, CliError> {
    let ckpt = crate::run::checkpoints::resolve(path)
        .map_err(|e| CliError::Usage(format!("--like: {e:#}")))?;
    Ok(crate::run::load::run_config(&ckpt).context("--like")?)
}

pub fn run(a: TrainClassifierArgs) -> CliResult {
    let like = a.like.as_deref().map(like_run).transpose()?;
    let base = like.clone().unwrap_or_default();
    if base.vdm_time().ok().flatten().is_some() {
        return Err(CliError::Usage(format!(
            "--like: the run trains in VDM time (--time {}); a noise-aware classifier follows a \
             DDPM chain of --timesteps steps, whose steps and network times differ: train the \
             classifier with --schedule and --timesteps instead, or use classifier-free guidance",
            base.time
                .map_or("continuous".to_string(), |t| t.to_string())
        )));
    }
    if base.edm.is_some() {
        return Err(CliError::Usage(
            "--like: an EDM run (--objective edm) samples on its own σ grid with the network \
             time ¼·ln σ; a noise-aware classifier follows a DDPM chain: train it with --schedule \
             and --timesteps instead, or use classifier-free guidance"
                .into(),
        ));
    }
    if base.preset == "mlp" {
        return Err(CliError::Usage(
            "--like: a 2-D (mlp) run; classifier guidance is for image models".into(),
        ));
    }
    let data = a.data.clone().unwrap_or_else(|| base.data.clone());
    let mut net = match (&a.preset, &like) {
        (Some(p), _) => {
            UNetConfig::preset(p).map_err(|e| CliError::Usage(format!("--preset: {e}")))?
        }
        (None, Some(run)) => run.unet_config()?,
        (None, None) => UNetConfig::mnist(),
    };
    let ds = crate::data::open(
        &data,
        Split::Train,
        a.seed,
        Some((net.in_channels, net.image_size)),
    )
    .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let classes = ds.classes();
    if classes.is_empty() {
        return Err(CliError::Usage(format!(
            "--data {data}: no labels (IDX needs its labels file beside the images; a folder needs \
             one sub-directory per class)"
        )));
    }
    let shape = ds.item_shape();
    if shape.len() != 3 || shape[1] != shape[2] {
        return Err(CliError::Usage(format!(
            "--data {data}: items of shape {shape:?}; the classifier takes square images"
        )));
    }
    net.in_channels = shape[0];
    net.image_size = shape[1];
    net.num_classes = None;
    net.learn_sigma = false;
    net.dropout = 0.0;
    net.fourier_features.clear();
    if let Some(c) = a.base_channels {
        net.base_channels = c;
    }
    if let Some(n) = a.num_res_blocks {
        net.num_res_blocks = n;
    }
    if let Some(run) = &like
        && let Some(names) = &run.classes
        && *names != classes
    {
        return Err(CliError::Usage(format!(
            "--data {data}: its classes {classes:?} are not those of the --like run {names:?}"
        )));
    }
    let cfg = ClassifierConfig {
        data: data.clone(),
        steps: a.steps as u64,
        batch_size: a.batch_size,
        lr: a.lr,
        warmup_steps: a.warmup_steps,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        seed: a.seed,
        schedule: a.schedule.clone().unwrap_or(base.schedule.clone()),
        timesteps: a.timesteps.unwrap_or(base.timesteps),
        // The run's β range belongs to its schedule: not carried over to another one.
        beta_start: base.beta_start.filter(|_| a.schedule.is_none()),
        beta_end: base.beta_end.filter(|_| a.schedule.is_none()),
        zero_terminal_snr: base.zero_terminal_snr,
        gamma_min: base.gamma_min.filter(|_| a.schedule.is_none()),
        gamma_max: base.gamma_max.filter(|_| a.schedule.is_none()),
        classes,
        net,
        accuracy: Vec::new(),
    };
    cfg.validate()
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    cfg.noise_schedule()
        .map_err(|e| CliError::Usage(format!("--schedule: {e:#}")))?;
    let device = super::device(&a.device)?;
    let held = held_out(&data, a.seed, (shape[0], shape[1]));
    let quiet = a.quiet;
    let start = std::time::Instant::now();
    let mut log = |step: u64, loss: f64, acc: f64| {
        if !quiet {
            eprintln!(
                "step {step:>6}/{}  loss {loss:.4}  noisy-batch accuracy {acc:.3}  ({:.0} s)",
                cfg.steps,
                start.elapsed().as_secs_f64()
            );
        }
    };
    let done = train_classifier(
        &cfg,
        Arc::from(ds),
        held.as_deref(),
        &a.out,
        &device,
        a.log_every as u64,
        &mut log,
    )?;
    println!(
        "trained in {:.0} s; wrote {}",
        start.elapsed().as_secs_f64(),
        a.out.display()
    );
    if !done.accuracy.is_empty() {
        println!(
            "held-out accuracy by noise level ({} images):",
            done.accuracy[0].n
        );
        println!("| t | accuracy |");
        println!("|---|---|");
        for r in &done.accuracy {
            println!("| {} | {:.3} |", r.t, r.accuracy);
        }
    }
    Ok(())
}
