//! A new run directory holding a model that was not trained here (an import).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;

use super::checkpoints::save;
use crate::config::RunConfig;
use crate::config::diffusion::diffusion_from;
use crate::files::write_atomic;
use crate::optim::adamw::AdamW;
use crate::optim::ema::{Ema, EmaConfig};
use crate::run::state::TrainState;
use crate::store::params::named_params;

/// Writes a new run directory `run` holding `model` as its step-0 checkpoint (weights and EMA
/// alike, zero optimizer moments) and `cfg` as its configuration: an imported model every
/// command can use. Refuses a directory that exists.
pub fn write_initial_run<M: Module>(run: &Path, cfg: &RunConfig, model: &M) -> Result<PathBuf> {
    if run.exists() {
        bail!(
            "--out {}: exists; choose a new directory (an import never overwrites)",
            run.display()
        );
    }
    let mut cfg = cfg.clone();
    cfg.out = run.display().to_string();
    // Everything that can fail on the configuration fails before the directory exists.
    let n_t = diffusion_from(&cfg)?.num_timesteps();
    let toml = cfg.to_toml()?;
    std::fs::create_dir_all(run)
        .with_context(|| format!("cannot create the run directory {}", run.display()))?;
    write_atomic(&run.join("config.toml"), toml.as_bytes())?;
    let params = named_params(model);
    let mut ema = Ema::new(EmaConfig {
        decay: cfg.ema_decay,
        warmup_power: None,
    });
    ema.params = params
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    let mut opt = AdamW::new(cfg.adamw());
    for (k, v) in &params {
        opt.m.insert(k.clone(), v.value.zeros_like());
        opt.v.insert(k.clone(), v.value.zeros_like());
    }
    save(
        run,
        model,
        &ema,
        &opt,
        &TrainState::start(&cfg, n_t),
        Vec::new(),
        1,
    )
}
