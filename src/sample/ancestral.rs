//! Ancestral sampling, the lecture's Algorithm 2, on the full chain or a respaced one.

use burn::tensor::Tensor;

use super::{Sampler, StepOutput, host_normal, respaced};
use crate::diffusion::{GaussianDiffusion, X0Clip};
use crate::rng::NoiseSource;

/// x_{t−1} = μ_θ(x_t, t) + σ_t z, z ~ N(0, I), with no noise at the last step (Ho et al.
/// Algorithm 2). On a respaced chain β is recomputed from the kept ᾱ (Nichol & Dhariwal §4)
/// and the network is still called with the original t. σ_t² follows the diffusion's variance
/// type: β̃ (fixed-small), β (fixed-large) or the network's (learned).
pub struct Ancestral {
    diffusion: GaussianDiffusion,
    clip: X0Clip,
    variance: Option<Vec<f64>>,
}

impl Ancestral {
    /// A sampler over the kept steps of `base` (all of them for the full chain).
    pub fn new(base: &GaussianDiffusion, kept: &[usize], clip: X0Clip) -> Self {
        Self {
            diffusion: respaced(base, kept),
            clip,
            variance: None,
        }
    }

    /// Uses σ_n² = `variance[n]` for each step of the (respaced) chain instead of the model's
    /// variance type — e.g. the Analytic-DPM variance of [`crate::diffusion::analytic`].
    pub fn with_variance(mut self, variance: Vec<f64>) -> Self {
        self.set_variance(variance);
        self
    }

    /// In-place form of [`Self::with_variance`].
    pub fn set_variance(&mut self, variance: Vec<f64>) {
        assert_eq!(
            variance.len(),
            self.diffusion.num_timesteps(),
            "one variance per step"
        );
        self.variance = Some(variance);
    }

    /// The chain this sampler walks (respaced when fewer steps were kept).
    pub fn chain(&self) -> &GaussianDiffusion {
        &self.diffusion
    }
}

impl<const D: usize> Sampler<D> for Ancestral {
    fn timesteps(&self) -> Vec<usize> {
        self.diffusion
            .schedule
            .timestep_map
            .iter()
            .rev()
            .copied()
            .collect()
    }

    fn step(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        self.step_shifted(i, x_t, model_output, None, rng)
    }

    fn chain_at(&self, i: usize) -> (&GaussianDiffusion, usize) {
        (&self.diffusion, self.diffusion.num_timesteps() - 1 - i)
    }

    /// Dhariwal & Nichol's Algorithm 1: the mean moves by Σ·`grad`, Σ this step's variance.
    fn step_guided(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        grad: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        self.step_shifted(i, x_t, model_output, Some(grad), rng)
    }
}

impl Ancestral {
    /// One step, the mean shifted by Σ·`grad` when given.
    fn step_shifted<const D: usize>(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        grad: Option<Tensor<D>>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        let n = self.diffusion.num_timesteps();
        let idx = n - 1 - i;
        let b = x_t.dims()[0];
        let t = vec![idx; b];
        let p = self
            .diffusion
            .p_mean_variance(model_output, x_t.clone(), &t, self.clip);
        let mean = match grad {
            Some(g) => {
                let variance = match &self.variance {
                    Some(v) => crate::diffusion::extract(v, &t, &x_t),
                    None => p.params.variance,
                };
                p.params.mean + variance * g
            }
            None => p.params.mean,
        };
        let prev = if idx == 0 {
            mean
        } else {
            let z = host_normal(x_t.dims(), rng, &x_t.device());
            let sd = match &self.variance {
                Some(v) => crate::diffusion::extract(
                    &v.iter().map(|x| x.sqrt()).collect::<Vec<_>>(),
                    &t,
                    &x_t,
                ),
                None => (p.params.log_variance * 0.5).exp(),
            };
            mean + z * sd
        };
        StepOutput {
            prev_sample: prev,
            pred_x0: p.pred_xstart,
        }
    }
}
