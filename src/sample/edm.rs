//! EDM's samplers (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
//! Generative Models"): the probability-flow ODE dx/dσ = (x − D(x; σ))/σ solved by Heun's
//! second-order method (their Algorithm 1, 2N − 1 network evaluations for N noise levels) or by
//! Euler's, optionally with stochastic churn (Algorithm 2), over the ρ-schedule of σ's (eq. 5).
//!
//! They sample every model of the crate: a chain's step t has σ(t) = √((1−ᾱ_t)/ᾱ_t), EDM's x is
//! x_t/√ᾱ_t = x_t·√(1+σ²), and the denoiser D(x; σ) is the model's x̂0 there, read through its
//! parameterization (ε, x0 or v). As EDM does for its DDPM baselines, each σ of the schedule is
//! rounded to the nearest σ the model was trained at (repeats after rounding are dropped).

use burn::tensor::Tensor;

use super::{Sampler, StepOutput, host_normal, predict_x0};
use crate::diffusion::{GaussianDiffusion, X0Clip};
use crate::rng::NoiseSource;
use crate::schedule::NoiseSchedule;

/// The settings of EDM's samplers; the defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmOptions {
    /// ρ of the σ schedule (7).
    pub rho: f64,
    /// The smallest σ (0.002, raised to the model's smallest).
    pub sigma_min: f64,
    /// The largest σ (80, lowered to the model's largest).
    pub sigma_max: f64,
    /// S_churn: the total noise added back along the way (0: the deterministic ODE).
    pub churn: f64,
    /// Churn only at σ ≥ S_tmin.
    pub s_tmin: f64,
    /// Churn only at σ ≤ S_tmax.
    pub s_tmax: f64,
    /// S_noise: the scale of the noise added back (1, or slightly above to offset denoisers
    /// that remove too much).
    pub s_noise: f64,
}

impl Default for EdmOptions {
    fn default() -> Self {
        Self {
            rho: 7.0,
            sigma_min: 0.002,
            sigma_max: 80.0,
            churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

/// EDM's σ schedule (eq. 5): σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for
/// i = 0..N−1, from σ_max down to σ_min.
///
/// ```
/// let s = ddpm::sample::edm::rho_sigmas(18, 0.002, 80.0, 7.0);
/// assert!((s[0] - 80.0).abs() < 1e-9 && (s[17] - 0.002).abs() < 1e-12);
/// // σ^{1/ρ} falls in equal steps.
/// let r: Vec<f64> = s.iter().map(|v| v.powf(1.0 / 7.0)).collect();
/// assert!(r.windows(3).all(|w| ((w[0] - w[1]) - (w[1] - w[2])).abs() < 1e-12));
/// ```
pub fn rho_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    match n {
        0 => Vec::new(),
        1 => vec![sigma_max],
        _ => (0..n)
            .map(|i| (hi + i as f64 / (n - 1) as f64 * (lo - hi)).powf(rho))
            .collect(),
    }
}

/// σ(t) = √((1−ᾱ_t)/ᾱ_t) of every step of a chain (∞ where ᾱ_t = 0).
pub fn chain_sigmas(schedule: &NoiseSchedule) -> Vec<f64> {
    schedule
        .alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// One network evaluation of the plan: the step of the chain it is made at and its role.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Eval {
    /// The slope at noise level i (at its churned σ̂_i).
    Slope(usize),
    /// Heun's correction of the step from level i to level i + 1 (at σ_{i+1}).
    Correct(usize),
}

/// EDM's Heun or Euler sampler over a chain.
pub struct EdmSampler {
    diffusion: GaussianDiffusion,
    clip: X0Clip,
    options: EdmOptions,
    /// The noise levels' σ's (steps of the chain), noisiest first.
    sigmas: Vec<f64>,
    /// Each level's churned step and σ̂ (the same as the level's without churn).
    churned: Vec<(usize, f64)>,
    plan: Vec<(Eval, usize)>,
    /// The current point x̂ (flattened, EDM's x-space), its slope and σ̂ while Heun corrects.
    pending: Option<(Tensor<1>, Tensor<1>, f64)>,
}

impl EdmSampler {
    /// Heun's method (`second_order`) or Euler's over `steps` noise levels of the ρ-schedule,
    /// rounded to the chain of `base`.
    pub fn new(
        base: &GaussianDiffusion,
        steps: usize,
        second_order: bool,
        options: EdmOptions,
        clip: X0Clip,
    ) -> Self {
        let chain = chain_sigmas(&base.schedule);
        let finite: Vec<usize> = (0..chain.len()).filter(|&t| chain[t].is_finite()).collect();
        let (first, last) = (finite[0], finite[finite.len() - 1]);
        let lo = options.sigma_min.max(chain[first]);
        let hi = options.sigma_max.min(chain[last]).max(lo);
        let nearest = |s: f64| -> usize {
            *finite
                .iter()
                .min_by(|&&a, &&b| (chain[a] - s).abs().total_cmp(&(chain[b] - s).abs()))
                .unwrap_or(&first)
        };
        let mut levels: Vec<usize> = rho_sigmas(steps.max(1), lo, hi, options.rho)
            .into_iter()
            .map(nearest)
            .collect();
        levels.dedup();
        let sigmas: Vec<f64> = levels.iter().map(|&t| chain[t]).collect();
        let n = levels.len();
        // Algorithm 2: γ_i = min(S_churn/N, √2 − 1) on [S_tmin, S_tmax], σ̂_i = σ_i(1 + γ_i).
        let gamma = (options.churn / n as f64).min(2f64.sqrt() - 1.0);
        let churned: Vec<(usize, f64)> = levels
            .iter()
            .zip(&sigmas)
            .map(|(&t, &s)| {
                if gamma > 0.0 && (options.s_tmin..=options.s_tmax).contains(&s) {
                    let u = nearest(s * (1.0 + gamma));
                    (u, chain[u].max(s))
                } else {
                    (t, s)
                }
            })
            .collect();
        let mut plan = Vec::new();
        for i in 0..n {
            plan.push((Eval::Slope(i), churned[i].0));
            if second_order && i + 1 < n {
                plan.push((Eval::Correct(i), levels[i + 1]));
            }
        }
        Self {
            diffusion: base.clone(),
            clip,
            options,
            sigmas,
            churned,
            plan,
            pending: None,
        }
    }

    /// The noise levels' σ's after rounding to the chain, noisiest first.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The input of level i's slope in the chain's x_t-space, from x_i in EDM's x-space: with
    /// churn, x̂_i = x_i + √(σ̂_i² − σ_i²)·S_noise·ε first.
    fn enter_level<const D: usize>(
        &self,
        i: usize,
        x: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> Tensor<D> {
        let (s, (_, s_hat)) = (self.sigmas[i], self.churned[i]);
        let x = if s_hat > s {
            let extra = (s_hat * s_hat - s * s).sqrt() * self.options.s_noise;
            x.clone() + host_normal(x.dims(), rng, &x.device()) * extra
        } else {
            x
        };
        x / (1.0 + s_hat * s_hat).sqrt()
    }
}

impl<const D: usize> Sampler<D> for EdmSampler {
    fn timesteps(&self) -> Vec<usize> {
        self.plan.iter().map(|&(_, t)| t).collect()
    }

    fn chain_at(&self, i: usize) -> (&GaussianDiffusion, usize) {
        (&self.diffusion, self.plan[i].1)
    }

    fn step(
        &mut self,
        k: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        let (eval, t) = self.plan[k];
        let x0 = predict_x0(&self.diffusion, x_t.clone(), t, model_output, self.clip);
        let dims = x_t.dims();
        let n = self.sigmas.len();
        let next_sigma = |i: usize| if i + 1 < n { self.sigmas[i + 1] } else { 0.0 };
        let x_next = match eval {
            Eval::Slope(i) => {
                let s_hat = self.churned[i].1;
                // The first input is the sampler's unit noise: x_0 = σ̂_0·n.
                let x = if k == 0 {
                    x_t * s_hat
                } else {
                    x_t * (1.0 + s_hat * s_hat).sqrt()
                };
                let d = (x.clone() - x0.clone()) / s_hat;
                let euler = x.clone() + d.clone() * (next_sigma(i) - s_hat);
                if matches!(self.plan.get(k + 1), Some((Eval::Correct(_), _))) {
                    self.pending = Some((x.flatten(0, D - 1), d.flatten(0, D - 1), s_hat));
                    let s = next_sigma(i);
                    return StepOutput {
                        prev_sample: euler / (1.0 + s * s).sqrt(),
                        pred_x0: x0,
                    };
                }
                (i, euler)
            }
            Eval::Correct(i) => {
                let s = next_sigma(i);
                let (x, d, s_hat) = self.pending.take().expect("a slope before its correction");
                let (x, d) = (x.reshape(dims), d.reshape(dims));
                let x_prime = x_t * (1.0 + s * s).sqrt();
                let d_prime = (x_prime - x0.clone()) / s;
                (i, x + (d + d_prime) * (0.5 * (s - s_hat)))
            }
        };
        let (i, x) = x_next;
        let prev_sample = if i + 1 < n {
            self.enter_level(i + 1, x, rng)
        } else {
            x
        };
        StepOutput {
            prev_sample,
            pred_x0: x0,
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::*;
    use crate::diffusion::{Denoiser, Parameterization, VarianceType};
    use crate::rng::Rng;
    use crate::sample::sample_loop;
    use crate::schedule::BetaSchedule;

    fn chain(name: &str, zero_terminal_snr: bool) -> GaussianDiffusion {
        let s = NoiseSchedule::new(
            &BetaSchedule::named(name, 1000, None, None).unwrap(),
            1000,
            zero_terminal_snr,
        )
        .unwrap();
        GaussianDiffusion::new(s, Parameterization::Eps, VarianceType::FixedSmall)
    }

    /// The exact ε-predictor of data N(0, s²I) on `sigmas` (the chain's σ(t)): D(x; σ) =
    /// x·s²/(s² + σ²), ε̂ = (x − D)/σ with x = x_t·√(1 + σ²).
    struct Gaussian {
        s: f64,
        sigmas: Vec<f64>,
    }

    impl Denoiser<2> for Gaussian {
        fn forward(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
            let t = t.into_data().iter::<f32>().next().unwrap() as usize;
            let sigma = self.sigmas[t];
            let x = x_t * (1.0 + sigma * sigma).sqrt();
            let d = x.clone() * (self.s * self.s / (self.s * self.s + sigma * sigma));
            (x - d) / sigma
        }
    }

    /// The largest error of the sampler's output against the ODE's exact solution from the same
    /// start: x(σ) = x(σ_0)·√((s² + σ²)/(s² + σ_0²)) down to the last level σ_L, then the
    /// sampler's last (Euler) step to σ = 0, which lands on D(x(σ_L); σ_L).
    fn ode_error(steps: usize, second_order: bool) -> f64 {
        let q = chain("linear", false);
        let model = Gaussian {
            s: 0.5,
            sigmas: chain_sigmas(&q.schedule),
        };
        let mut sampler =
            EdmSampler::new(&q, steps, second_order, EdmOptions::default(), X0Clip::None);
        let sig = sampler.sigmas().to_vec();
        let device = crate::device::by_name("cpu").unwrap();
        let got = sample_loop(
            &model,
            &mut sampler,
            [64, 2],
            &device,
            &mut Rng::new(3),
            |_, _, _, _| {},
        );
        let got: Vec<f32> = got.into_data().iter::<f32>().collect();
        let n = Rng::new(3).normal_f32(128);
        let (s0, sl, s2) = (sig[0], sig[sig.len() - 1], 0.25);
        let scale = ((s2 + sl * sl) / (s2 + s0 * s0)).sqrt() * s2 / (s2 + sl * sl);
        got.iter()
            .zip(&n)
            .map(|(g, n)| (*g as f64 - s0 * *n as f64 * scale).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn heun_solves_the_probability_flow_ode_to_second_order_and_euler_to_first() {
        let heun: Vec<f64> = [8, 16, 32].iter().map(|&n| ode_error(n, true)).collect();
        let euler: Vec<f64> = [8, 16, 32].iter().map(|&n| ode_error(n, false)).collect();
        // Doubling the levels divides Heun's error by about 4 and Euler's by about 2 (the
        // rounding to the chain's σ's leaves the grid slightly uneven).
        for w in heun.windows(2) {
            assert!(w[1] < w[0] / 3.0, "Heun errors {heun:?}");
        }
        for w in euler.windows(2) {
            assert!(
                w[1] < w[0] / 1.6 && w[1] > w[0] / 3.0,
                "Euler errors {euler:?}"
            );
        }
        assert!(heun[2] < euler[2] / 5.0, "Heun {heun:?} vs Euler {euler:?}");
    }

    #[test]
    fn the_sigma_view_of_a_ddpm_model_gives_its_own_x0_at_every_trained_step() {
        let q = chain("cosine", false);
        let sigmas = chain_sigmas(&q.schedule);
        let device = crate::device::by_name("cpu").unwrap();
        let mut sampler = EdmSampler::new(&q, 12, true, EdmOptions::default(), X0Clip::None);
        let plan = Sampler::<2>::timesteps(&sampler);
        assert_eq!(plan.len(), 2 * sampler.sigmas().len() - 1);
        let mut rng = Rng::new(5);
        for (k, &t) in plan.iter().enumerate() {
            let x_t = rng.normal_f32(6);
            let eps = rng.normal_f32(6);
            let tensor =
                |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [3, 2]), &device);
            let out = Sampler::<2>::step(&mut sampler, k, tensor(&x_t), tensor(&eps), &mut rng);
            let x0: Vec<f32> = out.pred_x0.into_data().iter::<f32>().collect();
            // EDM's D(x; σ) = x − σ·ε̂ with x = x_t·√(1 + σ²), σ = σ(t).
            let sigma = sigmas[t];
            for j in 0..6 {
                let want = x_t[j] as f64 * (1.0 + sigma * sigma).sqrt() - sigma * eps[j] as f64;
                assert!(
                    (x0[j] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "step {t}: {} vs {want}",
                    x0[j]
                );
            }
        }
    }

    #[test]
    fn levels_are_rounded_to_the_chain_and_churn_raises_sigma_within_its_range() {
        let q = chain("linear", false);
        let sigmas = chain_sigmas(&q.schedule);
        let s = EdmSampler::new(&q, 18, true, EdmOptions::default(), X0Clip::None);
        assert!(s.sigmas().iter().all(|v| sigmas.contains(v)));
        assert!(s.sigmas().windows(2).all(|w| w[1] < w[0]));
        // σ_max = 80 and σ_min = 0.002 (below the chain's smallest σ) land on the chain's
        // nearest σ's.
        let nearest = |target: f64| {
            sigmas
                .iter()
                .copied()
                .min_by(|a, b| (a - target).abs().total_cmp(&(b - target).abs()))
                .unwrap()
        };
        assert_eq!(s.sigmas()[0], nearest(80.0));
        assert_eq!(*s.sigmas().last().unwrap(), sigmas[0]);
        let churn = EdmOptions {
            churn: 40.0,
            s_tmin: 0.05,
            s_tmax: 50.0,
            ..EdmOptions::default()
        };
        let c = EdmSampler::new(&q, 18, true, churn, X0Clip::None);
        for (i, &(_, hat)) in c.churned.iter().enumerate() {
            let sigma = c.sigmas()[i];
            if (0.05..=50.0).contains(&sigma) {
                assert!(
                    hat > sigma && hat <= sigma * 2f64.sqrt() * 1.1,
                    "{sigma} → {hat}"
                );
            } else {
                assert_eq!(hat, sigma);
            }
        }
        // A zero-terminal-SNR chain (σ = ∞ at its last step) starts at its largest finite σ.
        let z = EdmSampler::new(
            &chain("linear", true),
            10,
            false,
            EdmOptions::default(),
            X0Clip::None,
        );
        assert!(z.sigmas().iter().all(|v| v.is_finite()));
    }
}
