//! The diffusion a run's configuration describes: its noise schedule and chain (a DDPM
//! schedule by name, a file of β's, trained β's of an imported model, a VDM γ discretized, or
//! an EDM run's σ grid).

use std::path::Path;

use anyhow::{Result, bail};

use super::RunConfig;
use crate::diffusion::GaussianDiffusion;
use crate::schedule::{BetaSchedule, NoiseSchedule, read_betas_file};
use crate::vdm::GammaSource;

/// Builds the diffusion a configuration describes.
pub fn diffusion_from(cfg: &RunConfig) -> Result<GaussianDiffusion> {
    if let Some(e) = &cfg.edm {
        // The preconditioned denoiser D predicts x0 (`diffusion::edm::Preconditioned`).
        return Ok(GaussianDiffusion::new(
            crate::diffusion::edm::edm_chain(cfg.timesteps, e.sigma_min, e.sigma_max)?,
            crate::diffusion::Parameterization::X0,
            cfg.variance,
        ));
    }
    if let Some(b) = &cfg.trained_betas {
        return Ok(GaussianDiffusion::new(
            NoiseSchedule::new(
                &BetaSchedule::Custom(b.clone()),
                b.len(),
                cfg.zero_terminal_snr,
            )?,
            cfg.parameterization,
            cfg.variance,
        ));
    }
    let s = match (cfg.vdm_time()?, cfg.fixed_gamma_if_vdm()?) {
        (Some(time), Some(g)) => return vdm_diffusion(cfg, time, &g),
        (Some(_), None) => bail!(
            "--schedule learned: the chain depends on the learned schedule's weights; load it \
             with the checkpoint"
        ),
        (None, _) => noise_schedule(
            &cfg.schedule,
            cfg.timesteps,
            cfg.beta_start,
            cfg.beta_end,
            (cfg.gamma_min, cfg.gamma_max),
            cfg.zero_terminal_snr,
        )?,
    };
    Ok(GaussianDiffusion::new(
        s,
        cfg.parameterization,
        cfg.variance,
    ))
}

/// The diffusion a VDM run of `cfg` samples on with schedule `gamma`: its chain of
/// [`vdm_chain_steps`] steps (see [`crate::vdm::time::chain`]).
pub fn vdm_diffusion(
    cfg: &RunConfig,
    time: crate::vdm::Time,
    gamma: &dyn GammaSource,
) -> Result<GaussianDiffusion> {
    Ok(GaussianDiffusion::new(
        crate::vdm::time::chain(gamma, vdm_chain_steps(cfg, time))?,
        cfg.parameterization,
        cfg.variance,
    ))
}

/// The steps of the chain a VDM run samples on: T for discrete time, `timesteps` (1000 by
/// default) for continuous time.
pub fn vdm_chain_steps(cfg: &RunConfig, time: crate::vdm::Time) -> usize {
    match time {
        crate::vdm::Time::Discrete(t) => t,
        crate::vdm::Time::Continuous => cfg.timesteps,
    }
}

/// The noise schedule of a `--schedule` value (a name, or `file:PATH` of β's) with `timesteps`
/// steps (a file sets its own), optional linear β range, optionally rescaled to zero terminal SNR.
pub fn noise_schedule(
    schedule: &str,
    timesteps: usize,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    gamma_range: (Option<f64>, Option<f64>),
    zero_terminal_snr: bool,
) -> Result<NoiseSchedule> {
    let kind = if let Some(p) = schedule.strip_prefix("file:") {
        BetaSchedule::Custom(read_betas_file(Path::new(p))?)
    } else {
        BetaSchedule::named(schedule, timesteps, beta_start, beta_end)?
            .with_gamma_range(gamma_range)
    };
    let t = match &kind {
        BetaSchedule::Custom(b) => b.len(),
        _ => timesteps,
    };
    Ok(NoiseSchedule::new(&kind, t, zero_terminal_snr)?)
}
