//! Analytic-DPM (Bao et al. 2022): the optimal reverse variance of a trained ε-model, in closed
//! form from Γ_n = E‖ε_θ(x_n, n)‖²/d, estimated once by Monte Carlo.

use burn::tensor::{Tensor, TensorData};

use super::{Denoiser, GaussianDiffusion, mean_flat};
use crate::rng::Rng;
use crate::schedule::NoiseSchedule;

/// σ*_n² = β̃_n + (√(β̄_n/α_n) − √(β̄_{n−1} − β̃_n))²·(1 − Γ_n) (Bao et al. 2022, Theorem 1 with
/// λ_n² = β̃_n), where β̄_n = 1 − ᾱ_n and α_n = 1 − β_n are of `schedule`'s chain (full or
/// respaced). Γ_n is clamped to [0, 1], which keeps σ*² within the bounds of their Theorem 2.
pub fn analytic_variance(schedule: &NoiseSchedule, gamma: &[f64]) -> Vec<f64> {
    let s = schedule;
    (0..s.num_timesteps())
        .map(|n| {
            let bt = s.posterior_variance[n];
            let bbar = 1.0 - s.alphas_cumprod[n];
            let bbar_prev = 1.0 - s.alphas_cumprod_prev[n];
            let gap = (bbar / s.alphas[n]).sqrt() - (bbar_prev - bt).max(0.0).sqrt();
            bt + gap * gap * (1.0 - gamma[n].clamp(0.0, 1.0))
        })
        .collect()
}

/// Γ_n = E‖ε_θ(x_n, n)‖²/d for every step of `diffusion`'s chain, estimated on `x_start`
/// (a batch of data) with x_n ~ q(x_n|x_0) drawn from `rng`.
pub fn estimate_gamma<const D: usize, M: Denoiser<D>>(
    diffusion: &GaussianDiffusion,
    model: &M,
    x_start: Tensor<D>,
    rng: &mut Rng,
) -> Vec<f64> {
    let b = x_start.dims()[0];
    let numel: usize = x_start.dims().iter().product();
    (0..diffusion.num_timesteps())
        .map(|n| {
            let t = vec![n; b];
            let noise = Tensor::<D>::from_data(
                TensorData::new(rng.normal_f32(numel), x_start.dims()),
                (&x_start.device(), x_start.dtype()),
            );
            let x_t = diffusion.q_sample(x_start.clone(), &t, noise);
            let out = model.forward(x_t.clone(), diffusion.model_timesteps(&t, &x_t));
            let (out, _) = diffusion.split_output(out);
            let eps = diffusion
                .parameterization
                .to_eps(&diffusion.schedule, x_t, &t, out);
            let per = mean_flat(eps.powf_scalar(2.0));
            per.mean().into_scalar::<f64>()
        })
        .collect()
}
