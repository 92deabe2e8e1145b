//! EDM's preconditioning and training noise (Karras et al. 2022, "Elucidating the Design Space
//! of Diffusion-Based Generative Models", §5 and Table 1).
//!
//! The denoiser is D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)) on x = y + σ·n
//! (data y, n ~ N(0, I)), with
//! c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²),
//! c_noise = ¼·ln σ; training draws ln σ ~ N(P_mean, P_std²) and weights the squared error of D
//! by λ(σ) = (σ² + σ_d²)/(σ·σ_d)², which makes F's own error weigh one at every σ
//! (λ·c_out² = 1, their eq. 8).
//!
//! The rest of the crate sees an EDM model as an x0-predicting [`Denoiser`] on a variance-
//! preserving chain: step i of [`edm_chain`] has σ_i on a geometric grid, ᾱ_i = 1/(1 + σ_i²),
//! x_t = x/√(1 + σ_i²), and the network time ¼·ln σ_i (an affine function of i, so the chain's
//! `network_time` gives it exactly). [`Preconditioned`] turns the network F into D on that chain,
//! reading σ back from the time it is called with.

use burn::tensor::Tensor;

use super::Denoiser;
use crate::schedule::{NoiseSchedule, ScheduleError};

/// EDM's preconditioning for data of standard deviation σ_d.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmPrecond {
    /// σ_d, the standard deviation of the data (0.5 in EDM for images in [−1, 1]).
    pub sigma_data: f64,
}

impl EdmPrecond {
    /// c_skip(σ) = σ_d²/(σ² + σ_d²).
    pub fn c_skip(&self, sigma: f64) -> f64 {
        let sd2 = self.sigma_data * self.sigma_data;
        sd2 / (sigma * sigma + sd2)
    }

    /// c_out(σ) = σ·σ_d/√(σ² + σ_d²).
    pub fn c_out(&self, sigma: f64) -> f64 {
        sigma * self.sigma_data / (sigma * sigma + self.sigma_data * self.sigma_data).sqrt()
    }

    /// c_in(σ) = 1/√(σ² + σ_d²).
    pub fn c_in(&self, sigma: f64) -> f64 {
        1.0 / (sigma * sigma + self.sigma_data * self.sigma_data).sqrt()
    }

    /// c_noise(σ) = ¼·ln σ, the network's time input.
    pub fn c_noise(sigma: f64) -> f64 {
        0.25 * sigma.ln()
    }

    /// The σ of a network time: the inverse of [`Self::c_noise`].
    pub fn sigma_of(c_noise: f64) -> f64 {
        (4.0 * c_noise).exp()
    }

    /// λ(σ) = (σ² + σ_d²)/(σ·σ_d)², the weight of ‖D − y‖².
    pub fn loss_weight(&self, sigma: f64) -> f64 {
        let sd = self.sigma_data;
        (sigma * sigma + sd * sd) / (sigma * sd).powi(2)
    }

    /// D at the variance-preserving x_t = x/√(1 + σ²), with `c_noise` (`[B]`) the network time of
    /// each row: σ = e^{4·c_noise}, and `net(c_in·x, c_noise)` is F. Returns D, the prediction of
    /// the data.
    pub fn denoise<const D: usize>(
        &self,
        x_t: Tensor<D>,
        c_noise: Tensor<1>,
        net: impl FnOnce(Tensor<D>, Tensor<1>) -> Tensor<D>,
    ) -> Tensor<D> {
        let b = x_t.dims()[0];
        let mut shape = [1i64; D];
        shape[0] = b as i64;
        let sigma = c_noise.clone().mul_scalar(4.0).exp().reshape(shape);
        let s2 = sigma.clone().powi_scalar(2);
        let sd = self.sigma_data;
        let norm = s2.clone().add_scalar(sd * sd).sqrt();
        let x = x_t * s2.add_scalar(1.0).sqrt();
        let f = net(x.clone() / norm.clone(), c_noise);
        let c_skip = norm.clone().powi_scalar(2).recip().mul_scalar(sd * sd);
        let c_out = sigma.mul_scalar(sd) / norm;
        x * c_skip + f * c_out
    }
}

/// EDM's training distribution of σ: ln σ ~ N(P_mean, P_std²).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogNormalSigma {
    /// P_mean (−1.2 in EDM).
    pub p_mean: f64,
    /// P_std (1.2 in EDM).
    pub p_std: f64,
}

impl LogNormalSigma {
    /// `n` σ's, each from one standard normal of `rng`.
    pub fn draw(&self, n: usize, rng: &mut crate::rng::Rng) -> Vec<f64> {
        (0..n)
            .map(|_| (self.p_mean + self.p_std * rng.normal()).exp())
            .collect()
    }
}

/// The chain an EDM model is sampled on: `levels` σ's spaced geometrically from `sigma_min` to
/// `sigma_max` (step 0 the smallest), ᾱ_i = 1/(1 + σ_i²), and the network time of step i
/// c_noise(σ_i) = ¼·ln σ_i.
///
/// ```
/// use ddpm::diffusion::edm::{EdmPrecond, edm_chain};
/// let s = edm_chain(1000, 0.002, 80.0)?;
/// let sigma = |i: usize| ((1.0 - s.alphas_cumprod[i]) / s.alphas_cumprod[i]).sqrt();
/// assert!((sigma(0) - 0.002).abs() < 1e-9 && (sigma(999) - 80.0).abs() < 1e-6);
/// assert!((s.network_time(500) - EdmPrecond::c_noise(sigma(500))).abs() < 1e-9);
/// # Ok::<(), ddpm::schedule::ScheduleError>(())
/// ```
pub fn edm_chain(
    levels: usize,
    sigma_min: f64,
    sigma_max: f64,
) -> Result<NoiseSchedule, ScheduleError> {
    let ok = levels >= 2 && sigma_min > 0.0 && sigma_min < sigma_max && sigma_max.is_finite();
    if !ok {
        return Err(ScheduleError::new(
            "edm",
            format!(
                "the EDM chain needs at least 2 levels and 0 < sigma_min < sigma_max < ∞ (got \
                 {levels} levels, {sigma_min} .. {sigma_max})"
            ),
        ));
    }
    let step = (sigma_max / sigma_min).ln() / (levels - 1) as f64;
    let alpha_bar = |i: usize| {
        let s = (sigma_min.ln() + i as f64 * step).exp();
        1.0 / (1.0 + s * s)
    };
    let betas = (0..levels)
        .map(|i| match i {
            0 => 1.0 - alpha_bar(0),
            _ => 1.0 - alpha_bar(i) / alpha_bar(i - 1),
        })
        .collect();
    let mut s = NoiseSchedule::from_betas(betas)?;
    s.time_scale = step / 4.0;
    s.time_offset = sigma_min.ln() / step;
    Ok(s)
}

/// A network F made EDM's denoiser D, seen as an x0-predicting [`Denoiser`] on [`edm_chain`]; with
/// no preconditioning it is the network itself.
pub struct Preconditioned<'a, M> {
    /// F.
    pub net: &'a M,
    /// The preconditioning (`None`: pass the network through).
    pub precond: Option<EdmPrecond>,
}

impl<const D: usize, M: Denoiser<D>> Denoiser<D> for Preconditioned<'_, M> {
    fn forward(&self, x_t: Tensor<D>, t: Tensor<1>) -> Tensor<D> {
        match &self.precond {
            Some(p) => p.denoise(x_t, t, |x, t| self.net.forward(x, t)),
            None => self.net.forward(x_t, t),
        }
    }

    fn forward_cond(&self, x_t: Tensor<D>, t: Tensor<1>, cond: Option<Tensor<2>>) -> Tensor<D> {
        match &self.precond {
            Some(p) => p.denoise(x_t, t, |x, t| self.net.forward_cond(x, t, cond)),
            None => self.net.forward_cond(x_t, t, cond),
        }
    }

    fn num_classes(&self) -> Option<usize> {
        self.net.num_classes()
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::*;
    use crate::diffusion::{GaussianDiffusion, Parameterization, VarianceType, X0Clip};
    use crate::rng::Rng;
    use crate::sample::edm::{EdmOptions, EdmSampler};
    use crate::sample::sample_loop;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        t.into_data().iter::<f32>().map(f64::from).collect()
    }

    /// Their eq. 8 and Appendix B.6: the weight makes F's own error weigh one (λ·c_out² = 1,
    /// so λ‖D − y‖² = ‖F − F_target‖² with F_target = (y − c_skip·x)/c_out), and for data of
    /// standard deviation σ_d the network's input c_in·x and its target both have unit variance
    /// (Monte Carlo, tolerance 5 standard errors).
    #[test]
    fn the_weight_and_scalings_give_unit_weight_and_unit_variance() {
        let mut rng = Rng::new(7);
        for sd in [0.5, 1.0, 2.0] {
            let p = EdmPrecond { sigma_data: sd };
            for sigma in [0.002, 0.05, 0.5, 3.0, 80.0] {
                let lc = p.loss_weight(sigma) * p.c_out(sigma).powi(2);
                assert!(
                    (lc - 1.0).abs() < 1e-12,
                    "σ_d {sd}, σ {sigma}: λ·c_out² = {lc}"
                );
                let (y, n, f) = (rng.normal() * sd, rng.normal(), rng.normal());
                let x = y + sigma * n;
                let d = p.c_skip(sigma) * x + p.c_out(sigma) * f;
                let target = (y - p.c_skip(sigma) * x) / p.c_out(sigma);
                let (lhs, rhs) = (p.loss_weight(sigma) * (d - y).powi(2), (f - target).powi(2));
                assert!((lhs - rhs).abs() < 1e-9 * (1.0 + rhs), "{lhs} vs {rhs}");
                let m = 20_000;
                let (mut vin, mut vout) = (0.0, 0.0);
                for _ in 0..m {
                    let (y, n) = (rng.normal() * sd, rng.normal());
                    let x = y + sigma * n;
                    vin += (p.c_in(sigma) * x).powi(2) / m as f64;
                    vout += ((y - p.c_skip(sigma) * x) / p.c_out(sigma)).powi(2) / m as f64;
                }
                // The second moment of a unit normal has standard deviation √2.
                let tol = 5.0 * 2f64.sqrt() / (m as f64).sqrt();
                assert!(
                    (vin - 1.0).abs() < tol,
                    "σ_d {sd}, σ {sigma}: Var(c_in·x) = {vin}"
                );
                assert!(
                    (vout - 1.0).abs() < tol,
                    "σ_d {sd}, σ {sigma}: Var(target) = {vout}"
                );
            }
        }
    }

    /// For Gaussian data N(0, σ_d²), E[y | x] = σ_d²/(σ² + σ_d²)·x: with F ≡ 0 the
    /// preconditioned denoiser is exact. Checked against the least-squares slope of y on x from
    /// samples, and through the tensor path from the chain's x_t and network time.
    #[test]
    fn preconditioning_is_exact_for_gaussian_data_with_a_zero_network() {
        let p = EdmPrecond { sigma_data: 0.5 };
        let device = crate::device::by_name("cpu").unwrap();
        let mut rng = Rng::new(3);
        for sigma in [0.01, 0.3, 1.0, 10.0] {
            let m = 40_000;
            let (mut sxy, mut sxx) = (0.0, 0.0);
            for _ in 0..m {
                let y = rng.normal() * 0.5;
                let x = y + sigma * rng.normal();
                sxy += x * y;
                sxx += x * x;
            }
            let slope = sxy / sxx;
            // The slope's standard error: √(Var(y|x)/Σx²).
            let resid = 0.25 * sigma * sigma / (0.25 + sigma * sigma);
            let se = (resid / sxx).sqrt();
            assert!(
                (slope - p.c_skip(sigma)).abs() < 5.0 * se,
                "σ {sigma}: slope {slope} vs c_skip {}",
                p.c_skip(sigma)
            );
            let x = [0.7f64, -1.3, 2.0];
            let x_t: Vec<f64> = x.iter().map(|v| v / (1.0 + sigma * sigma).sqrt()).collect();
            let x_t = Tensor::<2>::from_data(TensorData::new(x_t, [3, 1]), &device);
            let t = Tensor::<1>::from_data(
                TensorData::new(vec![EdmPrecond::c_noise(sigma); 3], [3]),
                &device,
            );
            let d = host(p.denoise(x_t, t, |u, _| u.zeros_like()));
            for (d, x) in d.iter().zip(x) {
                let want = 0.25 / (0.25 + sigma * sigma) * x;
                assert!(
                    (d - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "σ {sigma}: {d} vs {want}"
                );
            }
        }
    }

    /// F(u, c) = 2u + c, called by [`Preconditioned`] at step i of the chain, gives
    /// D = c_skip·x + c_out·(2·c_in·x + c_noise) with x = x_t·√(1 + σ_i²), computed in f64.
    #[test]
    fn the_chain_and_preconditioning_agree_with_the_formulas_at_every_level() {
        struct Affine;
        impl Denoiser<2> for Affine {
            fn forward(&self, u: Tensor<2>, c: Tensor<1>) -> Tensor<2> {
                u * 2.0 + c.unsqueeze_dim::<2>(1)
            }
        }
        let device = crate::device::by_name("cpu").unwrap();
        let s = edm_chain(200, 0.002, 80.0).unwrap();
        let q = GaussianDiffusion::new(s, Parameterization::X0, VarianceType::FixedSmall);
        let p = EdmPrecond { sigma_data: 0.5 };
        let model = Preconditioned {
            net: &Affine,
            precond: Some(p),
        };
        let step = (80.0f64 / 0.002).ln() / 199.0;
        for i in [0, 1, 57, 120, 199] {
            let ab = q.schedule.alphas_cumprod[i];
            let sigma = ((1.0 - ab) / ab).sqrt();
            let want_sigma = (0.002f64.ln() + i as f64 * step).exp();
            assert!((sigma / want_sigma - 1.0).abs() < 1e-9, "σ_{i} = {sigma}");
            let x_t = [0.4f64, -0.9];
            let input = Tensor::<2>::from_data(TensorData::new(x_t.to_vec(), [2, 1]), &device);
            let d = host(model.forward(input.clone(), q.model_timesteps(&[i, i], &input)));
            for (d, xt) in d.iter().zip(x_t) {
                let x = xt * (1.0 + sigma * sigma).sqrt();
                let f = 2.0 * p.c_in(sigma) * x + EdmPrecond::c_noise(sigma);
                let want = p.c_skip(sigma) * x + p.c_out(sigma) * f;
                assert!(
                    (d - want).abs() < 2e-4 * (1.0 + want.abs()),
                    "step {i}: {d} vs {want}"
                );
            }
        }
    }

    /// A network F that makes D the exact denoiser of a mixture of two Gaussians at ±μ (each
    /// coordinate's std s, weights ½): D = Σ_k r_k(x)·(s²·x + σ²·μ_k)/(s² + σ²), r_k the
    /// posterior responsibilities; F = (D − c_skip·x)/c_out.
    struct MixtureF {
        p: EdmPrecond,
        mu: [f64; 2],
        s: f64,
    }

    impl Denoiser<2> for MixtureF {
        fn forward(&self, u: Tensor<2>, c: Tensor<1>) -> Tensor<2> {
            let device = u.device();
            let [b, dim] = u.dims();
            let (u, c) = (host(u), host(c));
            let mut out = Vec::with_capacity(b * dim);
            for r in 0..b {
                let sigma = EdmPrecond::sigma_of(c[r]);
                let x: Vec<f64> = u[r * dim..(r + 1) * dim]
                    .iter()
                    .map(|v| v / self.p.c_in(sigma))
                    .collect();
                let v = self.s * self.s + sigma * sigma;
                let d2 = |sign: f64| -> f64 {
                    x.iter()
                        .zip(self.mu)
                        .map(|(x, m)| (x - sign * m).powi(2))
                        .sum()
                };
                // Responsibility of +μ: a logistic function of the squared-distance difference.
                let r_plus = 1.0 / (1.0 + ((d2(1.0) - d2(-1.0)) / (2.0 * v)).exp());
                for (j, &xj) in x.iter().enumerate() {
                    let mean =
                        |sign: f64| (self.s * self.s * xj + sigma * sigma * sign * self.mu[j]) / v;
                    let d = r_plus * mean(1.0) + (1.0 - r_plus) * mean(-1.0);
                    out.push((d - self.p.c_skip(sigma) * xj) / self.p.c_out(sigma));
                }
            }
            Tensor::from_data(TensorData::new(out, [b, dim]), &device)
        }
    }

    /// Heun (35 evaluations) on an EDM chain with the exact preconditioned denoiser of a
    /// Gaussian mixture draws the mixture: half the points near each mode, and the first two
    /// moments of each coordinate within 5 standard errors (plus 0.02 for the discretization).
    #[test]
    fn heun_on_an_edm_chain_samples_a_gaussian_mixture() {
        let (mu, s) = ([1.0, -0.5], 0.2);
        let p = EdmPrecond { sigma_data: 0.5 };
        let f = MixtureF { p, mu, s };
        let model = Preconditioned {
            net: &f,
            precond: Some(p),
        };
        let q = GaussianDiffusion::new(
            edm_chain(1000, 0.002, 80.0).unwrap(),
            Parameterization::X0,
            VarianceType::FixedSmall,
        );
        let mut heun = EdmSampler::new(&q, 18, true, EdmOptions::default(), X0Clip::None);
        let device = crate::device::by_name("cpu").unwrap();
        let n = 2000;
        let out = host(sample_loop(
            &model,
            &mut heun,
            [n, 2],
            &device,
            &mut Rng::new(11),
            |_, _, _, _| {},
        ));
        let plus = (0..n).filter(|&r| out[2 * r] > 0.0).count() as f64 / n as f64;
        let se = (0.25 / n as f64).sqrt();
        assert!((plus - 0.5).abs() < 5.0 * se, "fraction at +μ: {plus}");
        for j in 0..2 {
            let xs: Vec<f64> = (0..n).map(|r| out[2 * r + j]).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let second = xs.iter().map(|x| x * x).sum::<f64>() / n as f64;
            let var = mu[j] * mu[j] + s * s;
            assert!(
                mean.abs() < 5.0 * (var / n as f64).sqrt() + 0.02,
                "mean[{j}] {mean}"
            );
            // Var(x²) of the mixture: E[x⁴] − (E[x²])², E[x⁴] = μ⁴ + 6μ²s² + 3s⁴.
            let m4 = mu[j].powi(4) + 6.0 * mu[j].powi(2) * s * s + 3.0 * s.powi(4);
            let tol = 5.0 * ((m4 - var * var) / n as f64).sqrt() + 0.02;
            assert!((second - var).abs() < tol, "E[x{j}²] {second} vs {var}");
        }
    }
}
