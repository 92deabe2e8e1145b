//! The Gaussian diffusion of Ho et al. (2020) over a [`NoiseSchedule`]: the forward process,
//! its posterior, and the reverse-process mean and variance from a network output.
//!
//! Timesteps are 0-based indices into the schedule's tables (index i is lecture step t = i + 1)
//! and live on the host as `&[usize]`: every coefficient is looked up in the f64 tables, then
//! cast once to the tensor's dtype. The network is seen only through [`Denoiser`].

#![deny(missing_docs)]

pub mod analytic;
pub mod edm;
pub mod likelihood;
pub mod losses;
pub mod parameterization;
pub mod timestep_sampler;

use burn::tensor::{Tensor, TensorData};

use crate::schedule::NoiseSchedule;
pub use parameterization::Parameterization;

/// A network that maps (x_t, t) to its output (ε, x0 or v, with variance channels appended on
/// dimension 1 when the variance is learned). `t` holds the original chain's timesteps as
/// floats, one per batch element.
///
/// Any network can be sampled with the crate's samplers. For data that is N(0, I) itself, the
/// exact ε-predictor is ε̂ = √(1−ᾱ_t)·x_t; each DDIM step from s to s′ then scales x by
/// √(ᾱ_s ᾱ_s′) + √((1−ᾱ_s)(1−ᾱ_s′)), a factor that tends to 1 with more steps:
///
/// ```
/// use burn::tensor::Tensor;
/// use ddpm::diffusion::{Parameterization, VarianceType, X0Clip};
/// use ddpm::sample::{Ddim, Spacing, ddim::spaced_steps, sample_loop};
/// use ddpm::{BetaSchedule, Denoiser, GaussianDiffusion, NoiseSchedule};
///
/// struct StandardNormal<'a>(&'a GaussianDiffusion);
///
/// impl Denoiser<2> for StandardNormal<'_> {
///     fn forward(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
///         // Every item of a batch is at the same step here.
///         let t = t.into_data().iter::<f32>().next().unwrap_or(0.0) as usize;
///         x_t * (1.0 - self.0.schedule.alphas_cumprod[t]).sqrt()
///     }
/// }
///
/// let device = ddpm::device::by_name("cpu")?;
/// let s = NoiseSchedule::new(&BetaSchedule::named("linear", 1000, None, None)?, 1000, false)?;
/// let q = GaussianDiffusion::new(s, Parameterization::Eps, VarianceType::FixedSmall);
/// let steps = spaced_steps(1000, 50, Spacing::Linspace);
/// let mut ddim = Ddim::new(&q, steps.clone(), 0.0, X0Clip::None);
/// let mut rng = ddpm::rng::Rng::new(1);
/// let x0 = sample_loop(&StandardNormal(&q), &mut ddim, [4, 2], &device, &mut rng, |_, _, _, _| {});
/// let x_t = ddpm::rng::Rng::new(1).normal_f32(8); // the same x_T
/// let ab = &q.schedule.alphas_cumprod;
/// let mut c = 1.0;
/// for (i, &s) in steps.iter().enumerate() {
///     let prev = if i == 0 { 1.0 } else { ab[steps[i - 1]] }; // the last step lands on x_0
///     c *= (prev * ab[s]).sqrt() + ((1.0 - prev) * (1.0 - ab[s])).sqrt();
/// }
/// assert!(c > 0.95 && c < 1.0);
/// let got: Vec<f32> = x0.into_data().iter::<f32>().collect();
/// for (a, b) in got.iter().zip(&x_t) {
///     assert!((*a as f64 - c * *b as f64).abs() < 1e-4, "{a} vs {c}·{b}");
/// }
/// # Ok::<(), anyhow::Error>(())
/// ```
pub trait Denoiser<const D: usize> {
    /// Evaluates the network.
    fn forward(&self, x_t: Tensor<D>, t: Tensor<1>) -> Tensor<D>;
    /// Evaluates a class-conditional network on class rows `cond` (`[B, classes + 1]`, the last
    /// column the null class); `None` (and every unconditional network) as [`Self::forward`].
    fn forward_cond(&self, x_t: Tensor<D>, t: Tensor<1>, cond: Option<Tensor<2>>) -> Tensor<D> {
        match cond {
            None => self.forward(x_t, t),
            Some(_) => panic!("a class condition for a network without classes"),
        }
    }
    /// The classes of a class-conditional network.
    fn num_classes(&self) -> Option<usize> {
        None
    }
}

/// The reverse-process variance Σ_θ(x_t, t) = σ_t² I.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VarianceType {
    /// σ_t² = β̃_t, the posterior variance (Ho et al. §3.2), with β̃_1 clipped to β̃_2.
    FixedSmall,
    /// σ_t² = β_t (Ho et al. §3.2), with β̃_2 in place of β_1 so that L_0 stays well posed.
    FixedLarge,
    /// The network outputs log σ_t² directly in its extra channels.
    Learned,
    /// The network outputs v ∈ [−1, 1] and log σ_t² = ((v+1)/2)·log β_t + (1−(v+1)/2)·log β̃_t
    /// (Nichol & Dhariwal 2021, eq. 15).
    LearnedRange,
}

impl VarianceType {
    /// Whether the network must output variance channels (doubling its output).
    pub fn is_learned(self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }
}

/// How the predicted x̂0 is post-processed before it enters the posterior mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum X0Clip {
    /// Use x̂0 as predicted.
    None,
    /// Clip x̂0 to the data range [−1, 1] (Ho et al.'s sampler).
    Clip,
    /// Dynamic thresholding (Saharia et al. 2022, §2.3): s = max(1, p-th percentile of |x̂0|)
    /// per sample, x̂0 ← clip(x̂0, −s, s)/s. `p` in (0, 1].
    Dynamic(f64),
}

/// Mean and variance of a Gaussian whose variance is shared by all dimensions of a sample.
#[derive(Debug, Clone)]
pub struct GaussianParams<const D: usize> {
    /// Mean, shaped like the data.
    pub mean: Tensor<D>,
    /// Variance, shaped like the data or broadcastable to it.
    pub variance: Tensor<D>,
    /// Log-variance, shaped like `variance`.
    pub log_variance: Tensor<D>,
}

/// The reverse step p_θ(x_{t−1}|x_t) read from a network output, with the x̂0 and ε̂ it implies.
#[derive(Debug, Clone)]
pub struct ReverseStep<const D: usize> {
    /// μ_θ, variance and log-variance of p_θ(x_{t−1}|x_t).
    pub params: GaussianParams<D>,
    /// The (possibly clipped) prediction of x0.
    pub pred_xstart: Tensor<D>,
    /// The prediction of ε implied by `pred_xstart` and x_t.
    pub pred_eps: Tensor<D>,
}

/// A Gaussian diffusion process over a noise schedule, with the network's parameterization and
/// its reverse variance. Knows nothing of the network beyond [`Denoiser`].
#[derive(Debug, Clone)]
pub struct GaussianDiffusion {
    /// The f64 tables.
    pub schedule: NoiseSchedule,
    /// What the network predicts.
    pub parameterization: Parameterization,
    /// How σ_t² is obtained.
    pub variance: VarianceType,
}

/// The f64 values `table[t_i]`, one per batch element, as a tensor shaped `[B, 1, …, 1]` with
/// the dtype and device of `like` (the only place the f64 tables meet tensors).
pub fn extract<const D: usize>(table: &[f64], t: &[usize], like: &Tensor<D>) -> Tensor<D> {
    let vals: Vec<f64> = t.iter().map(|&i| table[i]).collect();
    per_row(&vals, like)
}

/// The f64 `values`, one per batch element, as a tensor `[B, 1, …, 1]` with the dtype and
/// device of `like`.
pub fn per_row<const D: usize>(values: &[f64], like: &Tensor<D>) -> Tensor<D> {
    let mut shape = [1usize; D];
    shape[0] = values.len();
    Tensor::<D>::from_data(
        TensorData::new(values.to_vec(), shape),
        (&like.device(), like.dtype()),
    )
}

/// Mean over every dimension but the batch: `[B, …] → [B]`.
pub fn mean_flat<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let b = x.dims()[0];
    x.reshape([b as i64, -1]).mean_dim(1).reshape([b])
}

impl GaussianDiffusion {
    /// A diffusion over `schedule` for a network with this parameterization and variance.
    pub fn new(
        schedule: NoiseSchedule,
        parameterization: Parameterization,
        variance: VarianceType,
    ) -> Self {
        Self {
            schedule,
            parameterization,
            variance,
        }
    }

    /// Number of steps T.
    pub fn num_timesteps(&self) -> usize {
        self.schedule.num_timesteps()
    }

    /// The timesteps the network is called with for chain steps `t` (original-chain indices,
    /// through `timestep_map`), as a float tensor on `device` with `dtype`.
    pub fn model_timesteps<const D: usize>(&self, t: &[usize], like: &Tensor<D>) -> Tensor<1> {
        let vals: Vec<f64> = t
            .iter()
            .map(|&i| self.schedule.network_time(self.schedule.timestep_map[i]))
            .collect();
        Tensor::<1>::from_data(
            TensorData::new(vals, [t.len()]),
            (&like.device(), like.dtype()),
        )
    }

    /// One forward step q(x_t|x_{t−1}) = N(√(1−β_t)·x_{t−1}, β_t I) (Ho et al. eq. 2), drawn with
    /// the given standard normal `noise`.
    pub fn q_step_sample<const D: usize>(
        &self,
        x_prev: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        let a = extract(&s.alphas, t, &x_prev).sqrt();
        let b = extract(&s.betas, t, &x_prev).sqrt();
        x_prev * a + noise * b
    }

    /// The closed-form kernel q(x_t|x_0) = N(√ᾱ_t·x_0, (1−ᾱ_t) I) (Ho et al. eq. 4).
    pub fn q_mean_variance<const D: usize>(
        &self,
        x_start: Tensor<D>,
        t: &[usize],
    ) -> GaussianParams<D> {
        let s = &self.schedule;
        let mean = x_start.clone() * extract(&s.sqrt_alphas_cumprod, t, &x_start);
        let variance = extract(&s.alphas_cumprod, t, &x_start).neg() + 1.0;
        let log_variance = extract(&s.log_one_minus_alphas_cumprod, t, &x_start);
        GaussianParams {
            mean,
            variance,
            log_variance,
        }
    }

    /// x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, a draw from q(x_t|x_0) (Ho et al. eq. 4, reparameterized).
    ///
    /// ```
    /// use burn::tensor::{Tensor, TensorData};
    /// use ddpm::diffusion::{Parameterization, VarianceType};
    /// use ddpm::{BetaSchedule, GaussianDiffusion, NoiseSchedule};
    ///
    /// let device = ddpm::device::by_name("cpu")?;
    /// let s = NoiseSchedule::new(&BetaSchedule::named("linear", 1000, None, None)?, 1000, false)?;
    /// let q = GaussianDiffusion::new(s, Parameterization::Eps, VarianceType::FixedSmall);
    /// let x0 = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -1.0], [1, 2]), &device);
    /// let eps = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, 0.5], [1, 2]), &device);
    /// let t = 499;
    /// let xt: Vec<f32> = q.q_sample(x0, &[t], eps).into_data().iter::<f32>().collect();
    /// let (a, b) = (
    ///     q.schedule.alphas_cumprod[t].sqrt(),
    ///     (1.0 - q.schedule.alphas_cumprod[t]).sqrt(),
    /// );
    /// assert!((xt[0] as f64 - (a + 0.5 * b)).abs() < 1e-5);
    /// assert!((xt[1] as f64 - (-a + 0.5 * b)).abs() < 1e-5);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn q_sample<const D: usize>(
        &self,
        x_start: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        let a = extract(&s.sqrt_alphas_cumprod, t, &x_start);
        let b = extract(&s.sqrt_one_minus_alphas_cumprod, t, &x_start);
        x_start * a + noise * b
    }

    /// The posterior q(x_{t−1}|x_t, x_0) = N(μ̃_t, β̃_t I) with
    /// μ̃_t = √ᾱ_{t−1}β_t/(1−ᾱ_t)·x_0 + √α_t(1−ᾱ_{t−1})/(1−ᾱ_t)·x_t (Ho et al. eqs. 6–7).
    /// The log-variance is the clipped one (finite at t = 1).
    ///
    /// ```
    /// use burn::tensor::Tensor;
    /// use ddpm::diffusion::{Parameterization, VarianceType};
    /// use ddpm::{BetaSchedule, GaussianDiffusion, NoiseSchedule};
    ///
    /// let device = ddpm::device::by_name("cpu")?;
    /// let s = NoiseSchedule::new(&BetaSchedule::named("linear", 100, None, None)?, 100, false)?;
    /// let q = GaussianDiffusion::new(s, Parameterization::Eps, VarianceType::FixedSmall);
    /// // With x_t = x_0 = 0 the posterior mean is 0 and its variance β̃_t = β_t(1−ᾱ_{t−1})/(1−ᾱ_t).
    /// let zero = Tensor::<2>::zeros([1, 3], &device);
    /// let p = q.q_posterior(zero.clone(), zero, &[50]);
    /// let s = &q.schedule;
    /// let want = s.betas[50] * (1.0 - s.alphas_cumprod[49]) / (1.0 - s.alphas_cumprod[50]);
    /// let var: Vec<f32> = p.variance.into_data().iter::<f32>().collect();
    /// assert!((var[0] as f64 - want).abs() < 1e-7);
    /// let mean: Vec<f32> = p.mean.into_data().iter::<f32>().collect();
    /// assert!(mean.iter().all(|m| *m == 0.0));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn q_posterior<const D: usize>(
        &self,
        x_start: Tensor<D>,
        x_t: Tensor<D>,
        t: &[usize],
    ) -> GaussianParams<D> {
        let s = &self.schedule;
        let c1 = extract(&s.posterior_mean_coef1, t, &x_t);
        let c2 = extract(&s.posterior_mean_coef2, t, &x_t);
        let mean = x_start * c1 + x_t.clone() * c2;
        GaussianParams {
            mean,
            variance: extract(&s.posterior_variance, t, &x_t),
            log_variance: extract(&s.posterior_log_variance_clipped, t, &x_t),
        }
    }

    /// μ_θ as the lecture writes it for an ε-prediction (Ho et al. eq. 11):
    /// μ_θ = 1/√α_t · (x_t − β_t/√(1−ᾱ_t) · ε_θ).
    pub fn mean_from_eps<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: &[usize],
        eps: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        let coef: Vec<f64> = s
            .betas
            .iter()
            .zip(&s.sqrt_one_minus_alphas_cumprod)
            .map(|(b, d)| b / d)
            .collect();
        let recip_sqrt_alpha: Vec<f64> = s.alphas.iter().map(|a| 1.0 / a.sqrt()).collect();
        let c = extract(&coef, t, &x_t);
        let r = extract(&recip_sqrt_alpha, t, &x_t);
        (x_t - eps * c) * r
    }

    /// σ_t² and log σ_t² of p_θ for the fixed variance types (Ho et al. §3.2), broadcastable
    /// against `like`. `None` for learned variances.
    pub fn fixed_variance<const D: usize>(
        &self,
        t: &[usize],
        like: &Tensor<D>,
    ) -> Option<(Tensor<D>, Tensor<D>)> {
        let (var, logvar) = self.fixed_variance_table()?;
        Some((extract(&var, t, like), extract(&logvar, t, like)))
    }

    /// The f64 tables (σ_t², log σ_t²) of a fixed variance type.
    pub fn fixed_variance_table(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        let s = &self.schedule;
        match self.variance {
            VarianceType::FixedSmall => {
                let logv = s.posterior_log_variance_clipped.clone();
                // σ² = β̃_t, except β̃_1 = 0 is replaced by β̃_2, consistent with the log.
                let v = logv.iter().map(|l| l.exp()).collect();
                Some((v, logv))
            }
            VarianceType::FixedLarge => {
                let mut v = s.betas.clone();
                if v.len() > 1 {
                    v[0] = s.posterior_variance[1];
                }
                let logv = v.iter().map(|x| x.ln()).collect();
                Some((v, logv))
            }
            VarianceType::Learned | VarianceType::LearnedRange => None,
        }
    }

    /// The reverse step p_θ(x_{t−1}|x_t) = N(μ_θ, Σ_θ) from a network output (Ho et al. eq. 1;
    /// Nichol & Dhariwal §3.1 for learned variances): x̂0 is read through the parameterization,
    /// post-processed by `clip`, and μ_θ = μ̃_t(x_t, x̂0) — for ε-prediction this is exactly the
    /// lecture's μ_θ when no clipping applies.
    pub fn p_mean_variance<const D: usize>(
        &self,
        model_output: Tensor<D>,
        x_t: Tensor<D>,
        t: &[usize],
        clip: X0Clip,
    ) -> ReverseStep<D> {
        let (out, var_values) = self.split_output(model_output);
        let (variance, log_variance) = self.variance_from(var_values, t, &x_t);
        let x0 = self
            .parameterization
            .to_x0(&self.schedule, x_t.clone(), t, out);
        let x0 = apply_clip(x0, clip);
        let eps = parameterization::eps_from_x0(&self.schedule, x_t.clone(), t, x0.clone());
        let post = self.q_posterior(x0.clone(), x_t, t);
        ReverseStep {
            params: GaussianParams {
                mean: post.mean,
                variance,
                log_variance,
            },
            pred_xstart: x0,
            pred_eps: eps,
        }
    }

    /// Splits a network output into its prediction and, for learned variances, the variance
    /// channels (the second half of dimension 1).
    pub fn split_output<const D: usize>(&self, out: Tensor<D>) -> (Tensor<D>, Option<Tensor<D>>) {
        if self.variance.is_learned() {
            let c = out.dims()[1];
            assert!(
                c.is_multiple_of(2),
                "a learned-variance output needs an even channel count, got {c}"
            );
            let mut halves = out.chunk(2, 1);
            let var = halves.pop().unwrap();
            (halves.pop().unwrap(), Some(var))
        } else {
            (out, None)
        }
    }

    /// σ_t² and log σ_t² from the variance channels (learned) or the tables (fixed).
    pub fn variance_from<const D: usize>(
        &self,
        var_values: Option<Tensor<D>>,
        t: &[usize],
        like: &Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        let s = &self.schedule;
        match (self.variance, var_values) {
            (VarianceType::Learned, Some(v)) => (v.clone().exp(), v),
            (VarianceType::LearnedRange, Some(v)) => {
                let min_log = extract(&s.posterior_log_variance_clipped, t, like);
                let logb: Vec<f64> = s.betas.iter().map(|b| b.ln()).collect();
                let max_log = extract(&logb, t, like);
                let frac = (v + 1.0) / 2.0;
                let log_var = frac.clone() * max_log + (frac.neg() + 1.0) * min_log;
                (log_var.clone().exp(), log_var)
            }
            (_, None) => self
                .fixed_variance(t, like)
                .expect("a learned variance type needs variance channels"),
            (_, Some(_)) => unreachable!("variance channels given for a fixed variance type"),
        }
    }
}

/// Applies an [`X0Clip`] policy to a prediction of x0.
pub fn apply_clip<const D: usize>(x0: Tensor<D>, clip: X0Clip) -> Tensor<D> {
    match clip {
        X0Clip::None => x0,
        X0Clip::Clip => x0.clamp(-1.0, 1.0),
        X0Clip::Dynamic(p) => {
            let dims = x0.dims();
            let b = dims[0];
            let flat = x0.clone().reshape([b as i64, -1]).abs();
            let n = flat.dims()[1];
            let sorted = flat.sort(1);
            let k = (((n as f64) * p).ceil() as usize).clamp(1, n) - 1;
            let q = sorted.narrow(1, k, 1).clamp_min(1.0);
            let mut shape = [1usize; D];
            shape[0] = b;
            let s = q.reshape(shape);
            let lo = s.clone().neg();
            // clip(x, −s, s) = max(min(x, s), −s)
            x0.min_pair(s.clone().expand(dims))
                .max_pair(lo.expand(dims))
                / s
        }
    }
}

#[cfg(test)]
mod tests;
