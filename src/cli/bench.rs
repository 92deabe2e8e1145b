//! `ddpm bench`: training / sampling throughput of a preset.

use clap::Args;

use super::{CliError, CliResult};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm bench --preset mnist --batch-size 64 --mode train --steps 5\n  ddpm bench --preset cifar10 --batch-size 128 --mode sample --device cuda --json\n\nbench/compare.sh runs this and the PyTorch peer (bench/torch_peer.py) side by side."
)]
pub struct BenchArgs {
    /// mnist, cifar10 or tiny.
    #[arg(long, default_value = "mnist")]
    preset: String,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// train (forward, L_simple, backward, AdamW) or sample (one network evaluation).
    #[arg(long, default_value = "train")]
    mode: String,
    /// cpu, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchArgs) -> CliResult {
    if a.steps == 0 || a.batch_size == 0 {
        return Err(CliError::Usage(
            "--steps and --batch-size must be at least 1".into(),
        ));
    }
    let device = super::device(&a.device)?;
    let r = crate::bench::run(&a.preset, &a.mode, a.batch_size, a.steps, a.warmup, &device)
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(anyhow::Error::from)?
        );
    } else {
        println!(
            "{} {} batch {}: {:.1} ms/step, {:.1} img/s, peak RSS {:.0} MiB",
            r.preset, r.mode, r.batch_size, r.ms_per_step, r.img_per_s, r.peak_rss_mb
        );
    }
    Ok(())
}
