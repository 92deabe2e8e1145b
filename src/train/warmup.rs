//! Compiling and tuning a training run's GPU kernels ahead of it: two steps of the run and its
//! sample grid in a temporary directory, so that the kernel cache (`device::kernel_cache`) holds
//! what the run will need.

use std::time::Instant;

use anyhow::{Context, Result};

use super::trainer::{TrainOptions, train_with};
use crate::config::RunConfig;

/// How long a warm-up took, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Warmup {
    /// The first step, with the setup (the network, the data) and the compiling and tuning.
    pub first_step: f64,
    /// The second step: what is left to compile once the first ran.
    pub second_step: f64,
    /// The sample grid (the run's sampler and `sample_count`) and the final checkpoint.
    pub grid: f64,
    /// The whole warm-up.
    pub total: f64,
}

/// Runs two training steps of `cfg` (its data, network, objective, batch size, precision and
/// device) and draws its sample grid, in a temporary directory that is removed afterwards;
/// `cfg.out`, `steps` and the logging and checkpoint cadence are not used. `quiet`: no
/// progress bar.
pub fn warmup(cfg: &RunConfig, quiet: bool) -> Result<Warmup> {
    let tmp = tempfile::Builder::new()
        .prefix("ddpm-warmup-")
        .tempdir()
        .context("a temporary directory for the warm-up")?;
    let mut cfg = cfg.clone();
    cfg.out = tmp.path().join("run").display().to_string();
    cfg.steps = 2;
    cfg.log_every = 1;
    cfg.sample_every = 0;
    cfg.checkpoint_every = 2;
    cfg.keep_checkpoints = 1;
    let start = Instant::now();
    // `on_log` sees each step's line after its update, before its checkpoint and grid.
    let mut at_step = Vec::new();
    let options = TrainOptions {
        resume: false,
        quiet,
        on_log: Some(Box::new(|_| at_step.push(start.elapsed().as_secs_f64()))),
    };
    train_with(&cfg, crate::run::open_dataset(&cfg)?, options)?;
    let total = start.elapsed().as_secs_f64();
    let (first_step, second_step, grid) = match at_step[..] {
        [a, b, ..] => (a, b - a, total - b),
        _ => (total, 0.0, 0.0),
    };
    Ok(Warmup {
        first_step,
        second_step,
        grid,
        total,
    })
}
