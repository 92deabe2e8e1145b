//! The sampler a user names (`--sampler`, `--steps`, `--eta`, `--spacing`, `--respace`) on a
//! model's chain, with its own scheduler settings where the user leaves them open.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::ddim::spaced_steps_on;
use super::edm::{EdmOptions, EdmSampler};
use super::{Ancestral, Ddim, DpmSolverPp2M, Sampler, Spacing, StepOutput};
use crate::diffusion::{GaussianDiffusion, Parameterization, X0Clip};
use crate::rng::NoiseSource;
use crate::schedule::space_timesteps;

/// The sampling settings a model comes with (diffusers' scheduler settings for an imported
/// model), used where `ddpm sample` flags are absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerDefaults {
    /// Step spacing of a shortened chain, for every sampler: linspace, leading or trailing.
    pub spacing: String,
    /// Added to every spaced step (diffusers' `steps_offset`).
    pub steps_offset: usize,
    /// x̂0 post-processing: clip, none or dynamic:P.
    pub clip: String,
    /// DDIM steps as diffusers' DDIMScheduler takes them: along the network's own ε (not the ε
    /// implied by the clipped x̂0, as improved-diffusion), from t to t − T/N (not to the next
    /// listed step; the same for leading spacing).
    pub diffusers_ddim: bool,
}

/// A sampler as the user names it.
#[derive(Debug, Clone)]
pub struct SamplerSpec {
    /// ddpm (ancestral, Algorithm 2), ddim or dpmpp2m.
    pub name: String,
    /// Network evaluations per image.
    pub steps: usize,
    /// DDIM's η.
    pub eta: f64,
    /// Step spacing of a shortened chain (the model's own, else leading, when `None`).
    pub spacing: Option<String>,
    /// The ancestral sampler's respacing (`space_timesteps` sections or `ddimN`).
    pub respace: Option<String>,
    /// EDM's σ schedule and churn (for heun and euler).
    pub edm: EdmOptions,
}

/// Why a sampler cannot be built: a message naming the flag.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerError(pub String);

impl std::fmt::Display for SamplerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SamplerError {}

impl From<crate::schedule::ScheduleError> for SamplerError {
    fn from(e: crate::schedule::ScheduleError) -> Self {
        Self(e.to_string())
    }
}

/// One of the samplers.
pub enum AnySampler {
    /// Algorithm 2, on the full or a respaced chain.
    Ancestral(Box<Ancestral>),
    /// DDIM.
    Ddim(Box<Ddim>),
    /// DPM-Solver++(2M).
    Dpm(Box<DpmSolverPp2M>),
    /// EDM's Heun or Euler sampler.
    Edm(Box<EdmSampler>),
}

impl AnySampler {
    /// The network evaluations one image takes (the same for batches of any rank).
    pub fn steps_len(&self) -> usize {
        Sampler::<1>::timesteps(self).len()
    }

    /// The sampler `spec` names on the chain `d`, clipping x̂0 with `clip`; a model's own
    /// scheduler settings (`defaults`) fill in what `spec` leaves open.
    ///
    /// ```
    /// use ddpm::diffusion::{Parameterization, VarianceType, X0Clip};
    /// use ddpm::sample::{AnySampler, Sampler, SamplerSpec};
    /// use ddpm::{BetaSchedule, GaussianDiffusion, NoiseSchedule};
    ///
    /// let s = NoiseSchedule::new(&BetaSchedule::named("cosine", 1000, None, None)?, 1000, false)?;
    /// let q = GaussianDiffusion::new(s, Parameterization::Eps, VarianceType::FixedSmall);
    /// let spec = |name: &str, steps| SamplerSpec {
    ///     name: name.into(), steps, eta: 0.0, spacing: Some("trailing".into()), respace: None,
    ///     edm: Default::default(),
    /// };
    /// let dpm = AnySampler::build(&spec("dpmpp2m", 20), &q, X0Clip::Clip, None)?;
    /// assert_eq!(dpm.steps_len(), 20);
    /// // Trailing spacing starts at the last step of the chain, T.
    /// assert_eq!(Sampler::<4>::timesteps(&dpm)[0], 999);
    /// assert!(AnySampler::build(&spec("lms", 20), &q, X0Clip::Clip, None).is_err());
    /// assert!(AnySampler::build(&spec("ddim", 2000), &q, X0Clip::Clip, None).is_err());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn build(
        spec: &SamplerSpec,
        d: &GaussianDiffusion,
        clip: X0Clip,
        defaults: Option<&SamplerDefaults>,
    ) -> Result<Self, SamplerError> {
        let t = d.num_timesteps();
        if spec.steps == 0 || spec.steps > t {
            return Err(SamplerError(format!(
                "--steps must be in 1..={t}, got {}",
                spec.steps
            )));
        }
        let named = spec
            .spacing
            .as_deref()
            .or(defaults.map(|d| d.spacing.as_str()));
        let spacing: Spacing = named
            .unwrap_or("leading")
            .parse()
            .map_err(|e: String| SamplerError(format!("--spacing: {e}")))?;
        // diffusers adds steps_offset to the steps of leading spacing only (kept below T).
        let offset = match spacing {
            Spacing::Leading => defaults.map_or(0, |d| d.steps_offset),
            _ => 0,
        };
        if offset >= t {
            return Err(SamplerError(format!(
                "--checkpoint: the model's scheduler has steps_offset = {offset}, which is not below \
                 its {t} training steps (every step would fall on the last one); fix \
                 steps_offset in its scheduler configuration, or sample with --spacing trailing"
            )));
        }
        let spaced = || -> Vec<usize> {
            let mut v: Vec<usize> = spaced_steps_on(&d.schedule.snr, spec.steps, spacing)
                .into_iter()
                .map(|s| s.saturating_add(offset).min(t - 1))
                .collect();
            v.dedup();
            v
        };
        // x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t has no value where ᾱ_t = 0 (a zero-terminal-SNR chain's
        // last step): an ε-prediction model cannot be sampled from there.
        let defined = |steps: Vec<usize>| -> Result<Vec<usize>, SamplerError> {
            let zero = steps.iter().find(|&&s| d.schedule.alphas_cumprod[s] <= 0.0);
            match (d.parameterization, zero) {
                (Parameterization::Eps, Some(s)) => Err(SamplerError(format!(
                    "--sampler {}: this model predicts ε on a zero-terminal-SNR chain (ᾱ = 0 at step \
                     {}), where x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ is undefined; sample with --spacing leading and \
                     --steps below T (which never visit that step), or train with --parameterization v as Lin et \
                     al. (2024) prescribe for zero terminal SNR",
                    spec.name,
                    s + 1
                ))),
                _ => Ok(steps),
            }
        };
        Ok(match spec.name.as_str() {
            "ddpm" => {
                let kept = match (&spec.respace, named) {
                    (Some(r), _) => space_timesteps(t, r)?,
                    (None, Some(_)) => spaced(),
                    (None, None) => space_timesteps(t, &spec.steps.to_string())?,
                };
                Self::Ancestral(Box::new(Ancestral::new(d, &defined(kept)?, clip)))
            }
            "ddim" => Self::Ddim(Box::new(
                Ddim::new(d, defined(spaced())?, spec.eta, clip)
                    .diffusers_steps(defaults.is_some_and(|d| d.diffusers_ddim)),
            )),
            "dpmpp2m" => Self::Dpm(Box::new(DpmSolverPp2M::new(d, defined(spaced())?, clip))),
            name @ ("heun" | "euler") => {
                let e = &spec.edm;
                if !(e.rho > 0.0 && e.rho.is_finite()) {
                    return Err(SamplerError(format!(
                        "--rho must be positive, got {}",
                        e.rho
                    )));
                }
                if !(e.sigma_min > 0.0 && e.sigma_min < e.sigma_max) {
                    return Err(SamplerError(format!(
                        "--sigma-min {} must be positive and below --sigma-max {}",
                        e.sigma_min, e.sigma_max
                    )));
                }
                if !(e.churn >= 0.0
                    && e.churn.is_finite()
                    && e.s_noise >= 0.0
                    && e.s_noise.is_finite())
                {
                    return Err(SamplerError(format!(
                        "--churn {} and --s-noise {} must be finite numbers ≥ 0",
                        e.churn, e.s_noise
                    )));
                }
                // Its levels are finite σ's, so it never visits a step where ᾱ = 0.
                Self::Edm(Box::new(EdmSampler::new(
                    d,
                    spec.steps,
                    name == "heun",
                    *e,
                    clip,
                )))
            }
            o => {
                return Err(SamplerError(format!(
                    "--sampler: unknown sampler `{o}`; expected ddpm, ddim, dpmpp2m, heun or euler"
                )));
            }
        })
    }
}

/// The chosen sampler, for batches of any rank.
impl<const D: usize> Sampler<D> for AnySampler {
    fn timesteps(&self) -> Vec<usize> {
        match self {
            Self::Ancestral(s) => Sampler::<D>::timesteps(s.as_ref()),
            Self::Ddim(s) => Sampler::<D>::timesteps(s.as_ref()),
            Self::Dpm(s) => Sampler::<D>::timesteps(s.as_ref()),
            Self::Edm(s) => Sampler::<D>::timesteps(s.as_ref()),
        }
    }

    fn step(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        match self {
            Self::Ancestral(s) => s.step(i, x_t, model_output, rng),
            Self::Ddim(s) => s.step(i, x_t, model_output, rng),
            Self::Dpm(s) => s.step(i, x_t, model_output, rng),
            Self::Edm(s) => s.step(i, x_t, model_output, rng),
        }
    }

    fn chain_at(&self, i: usize) -> (&GaussianDiffusion, usize) {
        match self {
            Self::Ancestral(s) => Sampler::<D>::chain_at(s.as_ref(), i),
            Self::Ddim(s) => Sampler::<D>::chain_at(s.as_ref(), i),
            Self::Dpm(s) => Sampler::<D>::chain_at(s.as_ref(), i),
            Self::Edm(s) => Sampler::<D>::chain_at(s.as_ref(), i),
        }
    }

    fn step_guided(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        grad: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        match self {
            Self::Ancestral(s) => s.step_guided(i, x_t, model_output, grad, rng),
            Self::Ddim(s) => s.step_guided(i, x_t, model_output, grad, rng),
            Self::Dpm(s) => s.step_guided(i, x_t, model_output, grad, rng),
            Self::Edm(s) => s.step_guided(i, x_t, model_output, grad, rng),
        }
    }
}
