//! Loading a model for inference from a run directory, a checkpoint directory, a diffusers
//! model folder or a fetched Hub repo: its configuration, weights and chain.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use super::checkpoints::resolve;
use super::net::Net;
use super::schedule_file::{SCHEDULE_FILE, learned_gamma};
use crate::config::RunConfig;
use crate::config::diffusion::{diffusion_from, vdm_chain_steps, vdm_diffusion};
use crate::diffusion::GaussianDiffusion;
use crate::diffusion::edm::Preconditioned;
use crate::error::{ErrorKind, Refused};
use crate::run::state::TrainState;
use crate::schedule::NoiseSchedule;
use crate::store::params::load_params;
use crate::store::tensors::read_safetensors;
use crate::vdm::GammaSource;

/// A trained model ready for inference: the run's configuration and the network with its EMA
/// (or raw) weights from a run or checkpoint directory.
pub struct Loaded<M> {
    /// The run's configuration.
    pub config: RunConfig,
    /// The checkpoint directory used.
    pub checkpoint: PathBuf,
    /// The network.
    pub model: M,
    /// The chain samplers walk: the run's DDPM chain, or its VDM schedule discretized.
    pub diffusion: GaussianDiffusion,
    /// A VDM run's time and schedule.
    pub vdm: Option<crate::vdm::VdmProcess>,
}

impl<M> Loaded<M> {
    /// The model as the chain's denoiser: the network, or for an EDM run the network inside
    /// EDM's preconditioning (an x0-prediction).
    pub fn denoiser(&self) -> Preconditioned<'_, M> {
        Preconditioned {
            net: &self.model,
            precond: self.config.edm.map(|e| e.precond()),
        }
    }
}

/// The VDM process of a run (its learned schedule read from `ckpt`: the EMA unless `raw`), or
/// `None` for a DDPM run.
pub fn run_vdm(
    cfg: &RunConfig,
    ckpt: &Path,
    raw: bool,
    device: &Device,
) -> Result<Option<crate::vdm::VdmProcess>> {
    let Some(time) = cfg.vdm_time()? else {
        return Ok(None);
    };
    let gamma: Box<dyn GammaSource> = match cfg.fixed_gamma()? {
        Some(g) => Box::new(g),
        None => Box::new(learned_gamma(ckpt, raw, cfg.gamma_range(), device)?),
    };
    Ok(Some(crate::vdm::VdmProcess { time, gamma }))
}

/// The noise schedule of a run or checkpoint directory without its network: a VDM run's γ
/// discretized over `steps` steps (its sampling chain's length when `None`), a DDPM run's own
/// chain. Also returns γ(0), γ(1) for VDM runs.
pub fn run_schedule(
    path: &Path,
    steps: Option<usize>,
) -> Result<(NoiseSchedule, Option<(f64, f64)>)> {
    let ckpt = resolve(path)?;
    let cfg = run_config(&ckpt)?;
    let device = crate::device::by_name("cpu")?;
    match run_vdm(&cfg, &ckpt, false, &device)? {
        Some(v) => {
            let n = steps.unwrap_or_else(|| vdm_chain_steps(&cfg, v.time));
            Ok((
                crate::vdm::time::chain(v.gamma.as_ref(), n)?,
                Some(v.gamma.ends()),
            ))
        }
        None => Ok((diffusion_from(&cfg)?.schedule, None)),
    }
}

/// The chain a run samples on (see [`Loaded::diffusion`]).
pub fn run_diffusion(
    cfg: &RunConfig,
    vdm: Option<&crate::vdm::VdmProcess>,
) -> Result<GaussianDiffusion> {
    match vdm {
        Some(v) => vdm_diffusion(cfg, v.time, v.gamma.as_ref()),
        None => diffusion_from(cfg),
    }
}

/// The configuration of the run a checkpoint directory (`RUN/checkpoints/step-N`) belongs to:
/// its `config.toml`.
pub fn run_config(ckpt: &Path) -> Result<RunConfig> {
    let run = ckpt
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let cfg_path = super::config_path(&run);
    let text =
        crate::files::read_text_capped(&cfg_path, crate::files::TEXT_MAX).with_context(|| {
            format!(
                "cannot read {} (the run's configuration)",
                cfg_path.display()
            )
        })?;
    // Every key has a default, so an emptied file would read as another run's configuration
    // (and the weights would then be blamed for not fitting it).
    let has_preset = text
        .parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("preset"));
    if !has_preset {
        bail!(
            "{}: not a run configuration (no `preset`: emptied or truncated?); restore it from a \
             copy of the run",
            cfg_path.display()
        );
    }
    RunConfig::from_toml(&text, &cfg_path.display().to_string())
}

/// A `--checkpoint` as a local path: itself, or for a Hub repo id (`owner/name`, optionally
/// `@revision`) that is not a local path, its snapshot in the cache (`ddpm fetch` puts it there).
pub fn local_model(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let s = path.to_string_lossy();
    let (repo, revision) = s.split_once('@').unwrap_or((&s, "main"));
    if crate::hub::is_repo_id(repo) {
        return match crate::hub::cached_snapshot(repo, revision)? {
            Some(p) => Ok(p),
            None => Err(Refused::error(
                ErrorKind::NotFound,
                format!(
                    "{s}: no such path, and the Hub repo {repo} (revision {revision}) is not in \
                     the cache {}; download it once with `ddpm fetch {repo} --revision {revision}`",
                    crate::cache::cache_dir()?.display()
                ),
            )),
        };
    }
    Ok(path.to_path_buf())
}

/// The configuration of a run, a checkpoint directory, a diffusers model folder or a fetched
/// Hub repo.
pub fn config_of(path: &Path) -> Result<RunConfig> {
    let path = &local_model(path)?;
    if crate::pretrained::layout(path).is_some() {
        return crate::pretrained::config_of(path);
    }
    run_config(&resolve(path)?)
}

/// Loads the network of a run or checkpoint directory (`no_ema`: the raw weights), or of a
/// diffusers model folder (its only weights).
pub fn load_for_inference<M: Net<D>, const D: usize>(
    path: &Path,
    no_ema: bool,
    device: &Device,
) -> Result<Loaded<M>> {
    let path = &local_model(path)?;
    if crate::pretrained::layout(path).is_some() {
        let imported = crate::pretrained::import(path)?;
        let config = imported.config;
        let model = M::build(&config, &config.item_shape()?, device)?;
        let model = load_params(
            model,
            &imported.weights,
            &path.display().to_string(),
            device,
        )?;
        return Ok(Loaded {
            diffusion: diffusion_from(&config)?,
            config,
            checkpoint: path.to_path_buf(),
            model,
            vdm: None,
        });
    }
    let ckpt = resolve(path)?;
    let config = run_config(&ckpt)?;
    let item_shape = config.item_shape()?;
    let model = M::build(&config, &item_shape, device)?;
    let file = ckpt.join(if no_ema {
        "model.safetensors"
    } else {
        "ema.safetensors"
    });
    let model = load_params(
        model,
        &read_safetensors(&file)?,
        &file.display().to_string(),
        device,
    )?;
    let vdm = run_vdm(&config, &ckpt, no_ema, device)?;
    let diffusion = run_diffusion(&config, vdm.as_ref()).with_context(|| {
        match config.fixed_gamma_if_vdm() {
            Ok(None) if vdm.is_some() => format!(
                "the learned schedule of {}",
                ckpt.join(SCHEDULE_FILE).display()
            ),
            _ => format!("the chain of {}", ckpt.display()),
        }
    })?;
    // VDM runs sample a chain of their own length from their γ (`--time`), not `timesteps`.
    if vdm.is_none() {
        check_trained_chain(&ckpt, diffusion.num_timesteps())?;
    }
    Ok(Loaded {
        config,
        checkpoint: ckpt,
        model,
        diffusion,
        vdm,
    })
}

/// Refuses a DDPM run whose `config.toml` describes a chain of `now` steps when its checkpoint
/// was trained on another (an edited `timesteps`): the timestep sampler saved in `state.json`
/// covers the training chain's steps. A state that cannot be read is left to `--resume`.
fn check_trained_chain(ckpt: &Path, now: usize) -> Result<()> {
    let path = ckpt.join("state.json");
    let Ok(text) = crate::files::read_text_capped(&path, crate::files::TEXT_MAX) else {
        return Ok(());
    };
    let Ok(state) = serde_json::from_str::<TrainState>(&text) else {
        return Ok(());
    };
    let trained = state.t_sampler.num_timesteps();
    if now != trained {
        bail!(
            "{}: the configuration's chain has {now} steps, but {} was trained on {trained} \
             (an edited `timesteps`?); restore the value the run was trained with",
            ckpt.parent()
                .and_then(Path::parent)
                .map(|r| r.join("config.toml"))
                .unwrap_or_default()
                .display(),
            ckpt.display()
        );
    }
    Ok(())
}
