//! `ddpm ema`: post-hoc EMA (Karras et al. 2024) — averages of any width from a run's snapshots.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};

#[derive(Subcommand)]
pub enum EmaCommand {
    /// The average of width σ_rel at a checkpoint's step, from the run's post-hoc EMA snapshots
    /// (a run trained with --posthoc-ema), as a new run directory to sample or evaluate.
    Reconstruct(ReconstructArgs),
}

#[derive(Args)]
#[command(
    after_help = "With one width, --out is the new run; with several, --out holds one run per width (sigma-0.050/, …).\n\nExamples:\n  ddpm train --data idx:../shared/data/mnist --steps 2000 --posthoc-ema 0.05,0.10 --out runs/m\n  ddpm ema reconstruct --checkpoint runs/m --sigma-rel 0.07 --out runs/m-ema07\n  ddpm ema reconstruct --checkpoint runs/m --sigma-rel 0.03,0.05,0.1,0.15 --out runs/m-sweep"
)]
pub struct ReconstructArgs {
    /// A run directory (its newest checkpoint) or one of its checkpoints.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The width(s) σ_rel of the average, in (0, 0.2887]: comma-separated for several.
    #[arg(long, value_delimiter = ',', required = true)]
    sigma_rel: Vec<f64>,
    /// The new run directory (must not exist).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: EmaCommand) -> CliResult {
    let EmaCommand::Reconstruct(a) = cmd;
    if a.out.exists() {
        return Err(CliError::Usage(format!(
            "--out {}: exists; a reconstruction never overwrites",
            a.out.display()
        )));
    }
    let several = a.sigma_rel.len() > 1;
    for &s in &a.sigma_rel {
        let out = if several {
            a.out.join(format!("sigma-{s:.3}"))
        } else {
            a.out.clone()
        };
        let r = crate::run::posthoc::reconstruct(&a.checkpoint, s, &out).map_err(|e| {
            CliError::Usage(format!("--checkpoint {}: {e:#}", a.checkpoint.display()))
        })?;
        println!(
            "σ_rel {:.3} at step {}: {} snapshots combined (profile error {:.2e}); run: {}",
            r.sigma_rel,
            r.step,
            r.snapshots,
            r.profile_error,
            r.out.display()
        );
    }
    Ok(())
}
