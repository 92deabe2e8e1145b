//! `ddpm eval`: likelihood in bits/dim.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::data::Split;
use crate::model::UNet;
use crate::train::trainer::{diffusion_from, load_for_inference};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// The variational bound (every L_t, L_0, L_T) in bits/dim, averaged over images.
    Nll(NllArgs),
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm eval nll --checkpoint runs/mnist --data idx:../shared/data/mnist --split test --limit 100\n  ddpm eval nll --checkpoint runs/default --data bundled --limit 16 --json"
)]
pub struct NllArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset: bundled or idx:DIR.
    #[arg(long, default_value = "bundled")]
    data: String,
    /// train or test.
    #[arg(long, default_value = "train")]
    split: String,
    /// Evaluate only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Images per network batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Print {bpd, bpd_stderr, prior_bpd, decoder_bpd, vb_bpd_by_t, mse, n} as JSON.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(cmd: EvalCommand) -> CliResult {
    match cmd {
        EvalCommand::Nll(a) => nll(a),
    }
}

fn nll(a: NllArgs) -> CliResult {
    let split: Split = a
        .split
        .parse()
        .map_err(|e: String| CliError::Usage(format!("--split: {e}")))?;
    let device = crate::device::by_name(&a.device).map_err(|e| CliError::Usage(e.to_string()))?;
    let loaded = load_for_inference::<UNet, 4>(&a.checkpoint, a.no_ema, &device)
        .map_err(|e| CliError::Usage(format!("--checkpoint: {e:#}")))?;
    let u = loaded.config.unet_config()?;
    let data = crate::data::open(&a.data, split, 0, Some((u.in_channels, u.image_size)))
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let want = vec![u.in_channels, u.image_size, u.image_size];
    if data.item_shape() != want {
        return Err(CliError::Usage(format!(
            "--data {}: items are {:?}, the model takes {:?}",
            a.data,
            data.item_shape(),
            want
        )));
    }
    let diffusion = diffusion_from(&loaded.config)?;
    let n = a.limit.unwrap_or(data.len()).min(data.len());
    let total = (n.div_ceil(a.batch_size.max(1)) * diffusion.num_timesteps()) as u64;
    let bar = (!a.quiet).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} evaluations | ETA {eta}")
                .expect("template"),
        );
        b
    });
    let r = crate::eval::nll::evaluate(
        &diffusion,
        &loaded.model,
        data.as_ref(),
        crate::eval::nll::NllOptions {
            limit: a.limit,
            batch: a.batch_size,
            seed: a.seed,
        },
        &device,
        || {
            if let Some(b) = &bar {
                b.inc(1);
            }
        },
    );
    if let Some(b) = bar {
        b.finish();
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(anyhow::Error::from)?
        );
    } else {
        println!(
            "{:.4} ± {:.4} bits/dim over {} images (prior {:.2e}, decoder L_0 {:.4}, Σ L_t {:.4}; ε MSE {:.4})",
            r.bpd,
            r.bpd_stderr,
            r.n,
            r.prior_bpd,
            r.decoder_bpd,
            r.bpd - r.prior_bpd - r.decoder_bpd,
            r.mse
        );
    }
    Ok(())
}
