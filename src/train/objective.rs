//! What a training step minimizes: Ho et al.'s losses on the discrete chain (L_simple, the
//! hybrid, the bound, with their weightings), VDM's bound in continuous or discrete time on a
//! fixed or learned γ (Kingma et al. 2021), or EDM's preconditioned denoising loss (Karras et al.
//! 2022).

use std::collections::BTreeMap;

use anyhow::Result;
use burn::tensor::{Device, Gradients, Tensor, TensorData};

use super::learned_schedule::LearnedSchedule;
use super::micro_batch::{MicroBatch, Times};
use super::vdm_batch::VdmBatch;
use crate::config::RunConfig;
use crate::config::diffusion::{diffusion_from, vdm_diffusion};
use crate::diffusion::edm::{EdmPrecond, LogNormalSigma};
use crate::diffusion::losses::LossConfig;
use crate::diffusion::{GaussianDiffusion, mean_flat, per_row};
use crate::optim::adamw::AdamWConfig;
use crate::rng::Rng;
use crate::vdm::bound::Decoder;
use crate::vdm::{FixedGamma, GammaSource, LossTimes, Time};

/// The objective of a run.
pub enum Objective {
    /// The DDPM chain: t drawn by the run's timestep sampler, the loss of `loss`.
    Chain {
        /// The forward process q(x_t | x_0).
        diffusion: GaussianDiffusion,
        /// Which loss, weighted how.
        loss: LossConfig,
    },
    /// VDM: t in (0, 1] (or on a grid of T steps), the whole bound.
    Vdm {
        /// Continuous or discrete time.
        time: Time,
        /// The noise schedule γ(t).
        gamma: VdmGamma,
        /// The bound's decoder: 8-bit images, or continuous 2-D points.
        decoder: Decoder,
        /// The chain samples are drawn on: γ discretized, rebuilt from a learned schedule's
        /// average whenever samples are drawn (the linear γ it starts from until then).
        chain: GaussianDiffusion,
    },
    /// EDM: ln σ ~ N(P_mean, P_std²), λ(σ)·‖D(y + σn; σ) − y‖².
    Edm {
        /// The preconditioning that makes the network D.
        precond: EdmPrecond,
        /// The training distribution of σ.
        noise: LogNormalSigma,
        /// The σ grid samples are drawn on.
        chain: GaussianDiffusion,
    },
}

/// A VDM run's γ.
pub enum VdmGamma {
    /// A fixed schedule.
    Fixed(FixedGamma),
    /// A schedule trained alongside the network.
    Learned(Box<LearnedSchedule>),
}

/// The losses of this rank's rows of a micro-batch.
pub struct Losses {
    /// Each example's loss, differentiable.
    pub per_example: Tensor<1>,
    /// VDM: the prior and decoder terms, and what a learned schedule learns from.
    vdm: Option<VdmBatch>,
}

impl Objective {
    /// The objective `cfg` describes, with a learned schedule's state on `device`.
    pub fn new(cfg: &RunConfig, device: &Device) -> Result<Self> {
        if let Some(e) = &cfg.edm {
            return Ok(Self::Edm {
                precond: e.precond(),
                noise: e.noise(),
                chain: diffusion_from(cfg)?,
            });
        }
        let Some(time) = cfg.vdm_time()? else {
            return Ok(Self::Chain {
                diffusion: diffusion_from(cfg)?,
                loss: cfg.loss_config()?,
            });
        };
        let decoder = if cfg.preset == "mlp" {
            Decoder::Gaussian
        } else {
            Decoder::Discretized
        };
        let (gamma, chain) = match cfg.fixed_gamma()? {
            Some(g) => (VdmGamma::Fixed(g), diffusion_from(cfg)?),
            None => {
                let (gamma_min, gamma_max) = cfg.gamma_range();
                let start = FixedGamma::Linear {
                    gamma_min,
                    gamma_max,
                };
                // The schedule's own AdamW: no weight decay (it would pull γ(0) and γ(1) toward 0).
                let adam = AdamWConfig {
                    weight_decay: 0.0,
                    ..cfg.adamw()
                };
                let learned =
                    LearnedSchedule::new(cfg.gamma_range(), adam, cfg.ema_config(), device);
                (
                    VdmGamma::Learned(Box::new(learned)),
                    vdm_diffusion(cfg, time, &start)?,
                )
            }
        };
        Ok(Self::Vdm {
            time,
            gamma,
            decoder,
            chain,
        })
    }

    /// The chain samples are drawn on (and whose steps the log's quartiles count).
    pub fn chain(&self) -> &GaussianDiffusion {
        match self {
            Self::Chain { diffusion, .. } => diffusion,
            Self::Vdm { chain, .. } | Self::Edm { chain, .. } => chain,
        }
    }

    /// The chain samples are drawn on now: a learned schedule's chain rebuilt from its average.
    pub fn sampling_chain(&mut self, cfg: &RunConfig) -> Result<&GaussianDiffusion> {
        if let Self::Vdm {
            time,
            gamma: VdmGamma::Learned(l),
            chain,
            ..
        } = self
        {
            *chain = vdm_diffusion(cfg, *time, &l.averaged())?;
        }
        Ok(self.chain())
    }

    /// EDM's preconditioning, which makes the network the denoiser the chain samples with.
    pub fn precond(&self) -> Option<EdmPrecond> {
        match self {
            Self::Edm { precond, .. } => Some(*precond),
            _ => None,
        }
    }

    /// A learned schedule, if the run learns one.
    pub fn learned(&self) -> Option<&LearnedSchedule> {
        match self {
            Self::Vdm {
                gamma: VdmGamma::Learned(l),
                ..
            } => Some(l),
            _ => None,
        }
    }

    /// As [`Self::learned`], to update or restore it.
    pub fn learned_mut(&mut self) -> Option<&mut LearnedSchedule> {
        match self {
            Self::Vdm {
                gamma: VdmGamma::Learned(l),
                ..
            } => Some(l),
            _ => None,
        }
    }

    /// Whether the timestep sampler draws the times (and learns from the losses).
    pub fn uses_timestep_sampler(&self) -> bool {
        matches!(self, Self::Chain { .. })
    }

    /// Draws the times of a micro-batch of `n` from `rng` (and for the chain its timestep
    /// sampler, `sampler`).
    pub fn draw_times(
        &self,
        n: usize,
        antithetic: bool,
        rng: &mut Rng,
        sampler: &crate::diffusion::timestep_sampler::TimestepSampler,
    ) -> Times {
        match self {
            Self::Chain { .. } => {
                let (steps, weights) = sampler.sample(n, rng);
                Times {
                    steps,
                    weights,
                    continuous: None,
                    sigmas: None,
                }
            }
            Self::Vdm { time, chain, .. } => {
                let n_t = chain.num_timesteps();
                let t = time.draw(n, antithetic, rng);
                Times {
                    steps: t
                        .iter()
                        .map(|t| ((t * n_t as f64).ceil() as usize).clamp(1, n_t) - 1)
                        .collect(),
                    weights: vec![1.0; n],
                    continuous: Some(t),
                    sigmas: None,
                }
            }
            Self::Edm { noise, chain, .. } => {
                let sigmas = noise.draw(n, rng);
                Times {
                    steps: sigmas.iter().map(|&s| nearest_level(chain, s)).collect(),
                    weights: vec![1.0; n],
                    continuous: None,
                    sigmas: Some(sigmas),
                }
            }
        }
    }

    /// Each example's loss on this rank's rows of `batch`; `net(x_t, network time)` evaluates
    /// the network.
    pub fn losses<const D: usize>(
        &self,
        batch: &MicroBatch<D>,
        net: impl Fn(Tensor<D>, Tensor<1>) -> Tensor<D>,
    ) -> Losses {
        match self {
            Self::Chain { diffusion, loss } => {
                // Algorithm 1: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, and the loss of ε_θ(x_t, t).
                let t = batch.steps();
                let x_t = diffusion.q_sample(batch.x0.clone(), t, batch.noise.clone());
                let out = net(x_t.clone(), diffusion.model_timesteps(t, &x_t));
                let l = diffusion.training_losses(
                    loss,
                    out,
                    batch.x0.clone(),
                    x_t,
                    t,
                    batch.noise.clone(),
                );
                Losses {
                    per_example: l.loss,
                    vdm: None,
                }
            }
            Self::Vdm {
                time,
                gamma,
                decoder,
                ..
            } => {
                let gamma: &dyn GammaSource = match gamma {
                    VdmGamma::Fixed(g) => g,
                    VdmGamma::Learned(l) => &l.net,
                };
                let ends = batch.vdm_ends.as_ref().expect("a VDM micro-batch");
                let times = LossTimes::new(*time, gamma, batch.continuous_times().to_vec());
                let b = VdmBatch::new(
                    times,
                    self.learned().is_some(),
                    &batch.x0.device(),
                    &ends.x,
                    &ends.eps0,
                    batch.item,
                    gamma.ends(),
                    *decoder,
                );
                Losses {
                    per_example: b.losses(batch.x0.clone(), batch.noise.clone(), net),
                    vdm: Some(b),
                }
            }
            Self::Edm { precond, .. } => Losses {
                per_example: edm_losses(precond, batch, net),
                vdm: None,
            },
        }
    }
}

/// EDM's loss of each row: x = y + σ·n, seen by the network on the chain as
/// x_t = x/√(1 + σ²) at time c_noise(σ); λ(σ)·mean‖D − y‖².
fn edm_losses<const D: usize>(
    precond: &EdmPrecond,
    batch: &MicroBatch<D>,
    net: impl Fn(Tensor<D>, Tensor<1>) -> Tensor<D>,
) -> Tensor<1> {
    let sigmas = batch.sigmas();
    let y = batch.x0.clone();
    let scale: Vec<f64> = sigmas.iter().map(|s| 1.0 / (1.0 + s * s).sqrt()).collect();
    let x_t = (y.clone() + batch.noise.clone() * per_row(sigmas, &y)) * per_row(&scale, &y);
    // One value per row, as a `[B]` tensor like y.
    let rows = |v: Vec<f64>| {
        Tensor::<1>::from_data(TensorData::new(v, [sigmas.len()]), (&y.device(), y.dtype()))
    };
    let t = rows(sigmas.iter().map(|&s| EdmPrecond::c_noise(s)).collect());
    let d = precond.denoise(x_t, t, net);
    let w = rows(sigmas.iter().map(|&s| precond.loss_weight(s)).collect());
    mean_flat((d - y).powi_scalar(2)) * w
}

/// The step of `chain` whose σ is nearest `sigma` in log space (where the log's loss quartiles
/// count an EDM example).
fn nearest_level(chain: &GaussianDiffusion, sigma: f64) -> usize {
    let ab = &chain.schedule.alphas_cumprod;
    let ln_sigma = |i: usize| 0.5 * ((1.0 - ab[i]) / ab[i]).ln();
    let target = sigma.ln();
    let i = ab.partition_point(|&a| (1.0 - a) / a < sigma * sigma);
    match i {
        0 => 0,
        _ if i >= ab.len() => ab.len() - 1,
        _ if (target - ln_sigma(i - 1)) < (ln_sigma(i) - target) => i - 1,
        _ => i,
    }
}

impl Losses {
    /// What the log reports for each example, given the host values of `per_example`: the
    /// loss, or for VDM the whole bound (prior and decoder terms added).
    pub fn reported(&self, diffusion: &[f64]) -> Vec<f64> {
        match &self.vdm {
            Some(b) => b.bound(diffusion),
            None => diffusion.to_vec(),
        }
    }

    /// A learned schedule's gradients from the backward pass of a loss that summed the
    /// examples' `diffusion` losses divided by `total`; `None` without one.
    pub fn schedule_grads(
        &self,
        objective: &Objective,
        backward: &Gradients,
        diffusion: Vec<f64>,
        total: f64,
    ) -> Option<BTreeMap<String, Tensor<1>>> {
        let (b, l) = (self.vdm.as_ref()?, objective.learned()?);
        Some(b.signal(backward, diffusion, total).grads(&l.net))
    }
}
