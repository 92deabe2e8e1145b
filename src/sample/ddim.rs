//! DDIM (Song et al. 2021): x_{s} = √ᾱ_s x̂0 + √(1 − ᾱ_s − σ²) ε̂ + σ z over a subsequence of
//! steps, with σ = η·√((1−ᾱ_s)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_s) (eq. 16). η = 0 is deterministic,
//! η = 1 is ancestral sampling on the subsequence.

use burn::tensor::Tensor;

use super::{Sampler, StepOutput, host_normal, predict_x0};
use crate::diffusion::{GaussianDiffusion, X0Clip, apply_clip, parameterization::eps_from_x0};
use crate::rng::NoiseSource;

/// How the visited steps are spread over the chain (Lin et al. 2024, Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// round(linspace(0, T−1, K)).
    Linspace,
    /// 0, T/K, 2T/K, … (DDIM's original spacing).
    Leading,
    /// T−1, T−1−T/K, … (always includes the last step).
    Trailing,
    /// Uniform in log SNR between the chain's ends (the chain's own table: for schedules, such
    /// as learned ones, whose SNR changes unevenly in t); see [`spaced_steps_on`].
    LogSnr,
}

impl std::str::FromStr for Spacing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linspace" => Ok(Self::Linspace),
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            "snr" => Ok(Self::LogSnr),
            o => Err(format!(
                "unknown spacing `{o}`; expected linspace, leading, trailing or snr"
            )),
        }
    }
}

/// `k` steps of a chain whose SNR table is `snr` (decreasing), sorted ascending and distinct:
/// [`spaced_steps`], or for [`Spacing::LogSnr`] the steps nearest to k log-SNR values evenly
/// spaced between the first and the last (pushed apart where the chain is coarser).
pub fn spaced_steps_on(snr: &[f64], k: usize, spacing: Spacing) -> Vec<usize> {
    let t = snr.len();
    if spacing != Spacing::LogSnr {
        return spaced_steps(t, k, spacing);
    }
    let k = k.clamp(1, t);
    let lam: Vec<f64> = snr.iter().map(|s| s.max(f64::MIN_POSITIVE).ln()).collect();
    if k == 1 {
        return vec![t - 1];
    }
    let (hi, lo) = (lam[0], lam[t - 1]);
    let mut out: Vec<usize> = Vec::with_capacity(k);
    for j in 0..k {
        let target = hi + (lo - hi) * j as f64 / (k - 1) as f64;
        // λ decreases with the step: the first step at or past the target, or the one before.
        let p = lam.partition_point(|&l| l > target).min(t - 1);
        let near = if p > 0 && (lam[p - 1] - target).abs() < (lam[p] - target).abs() {
            p - 1
        } else {
            p
        };
        let floor = out.last().map_or(0, |&l| l + 1);
        out.push(near.max(floor).min(t - k + j));
    }
    out
}

/// `k` steps out of `t` (sorted ascending, distinct); [`Spacing::LogSnr`] needs the chain
/// ([`spaced_steps_on`]) and is taken as linspace here.
pub fn spaced_steps(t: usize, k: usize, spacing: Spacing) -> Vec<usize> {
    let k = k.clamp(1, t);
    let mut v: Vec<usize> = match spacing {
        Spacing::Linspace | Spacing::LogSnr => crate::schedule::linspace(0.0, (t - 1) as f64, k)
            .iter()
            .map(|x| x.round_ties_even() as usize)
            .collect(),
        Spacing::Leading => (0..k).map(|i| i * (t / k)).collect(),
        Spacing::Trailing => {
            let step = t as f64 / k as f64;
            (0..k)
                .map(|i| {
                    ((t as f64 - i as f64 * step).round_ties_even() as usize).saturating_sub(1)
                })
                .collect()
        }
    };
    v.sort_unstable();
    v.dedup();
    v
}

/// The DDIM sampler.
pub struct Ddim {
    diffusion: GaussianDiffusion,
    steps: Vec<usize>,
    eta: f64,
    clip: X0Clip,
    diffusers: bool,
}

impl Ddim {
    /// DDIM over `steps` (ascending indices of `base`'s chain) with noise scale `eta`; each step
    /// moves along the ε implied by the (clipped) x̂0, as improved-diffusion does.
    pub fn new(base: &GaussianDiffusion, steps: Vec<usize>, eta: f64, clip: X0Clip) -> Self {
        Self {
            diffusion: base.clone(),
            steps,
            eta,
            clip,
            diffusers: false,
        }
    }

    /// With `diffusers`, steps as diffusers' DDIMScheduler takes them: along the network's own ε
    /// (the two differ only where x̂0 is clipped), from t to t − T/N with ᾱ = 1 below 0 (the
    /// next listed step for leading spacing, not always for linspace or trailing).
    pub fn diffusers_steps(mut self, diffusers: bool) -> Self {
        self.diffusers = diffusers;
        self
    }
}

impl<const D: usize> Sampler<D> for Ddim {
    fn timesteps(&self) -> Vec<usize> {
        self.steps.iter().rev().copied().collect()
    }

    fn chain_at(&self, i: usize) -> (&GaussianDiffusion, usize) {
        (&self.diffusion, self.steps[self.steps.len() - 1 - i])
    }

    fn step(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        let s = &self.diffusion.schedule;
        let n = self.steps.len();
        let t = self.steps[n - 1 - i];
        let ab_t = s.alphas_cumprod[t];
        let ab_prev = if self.diffusers {
            let stride = s.num_timesteps() / n;
            match t.checked_sub(stride) {
                Some(p) if stride > 0 => s.alphas_cumprod[p],
                _ => 1.0,
            }
        } else if i + 1 < n {
            s.alphas_cumprod[self.steps[n - 2 - i]]
        } else {
            1.0
        };
        let tv = vec![t; x_t.dims()[0]];
        // x̂0 as predicted, then post-processed (the prediction is read once).
        let raw = predict_x0(&self.diffusion, x_t.clone(), t, model_output, X0Clip::None);
        let x0 = apply_clip(raw.clone(), self.clip);
        // diffusers moves along the network's own ε even where x̂0 was clipped.
        let eps = eps_from_x0(
            s,
            x_t.clone(),
            &tv,
            if self.diffusers { raw } else { x0.clone() },
        );
        let sigma = self.eta
            * ((1.0 - ab_prev) / (1.0 - ab_t)).sqrt()
            * (1.0 - ab_t / ab_prev).max(0.0).sqrt();
        let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
        let mut prev = x0.clone() * ab_prev.sqrt() + eps * dir;
        if sigma > 0.0 {
            prev = prev + host_normal(x_t.dims(), rng, &x_t.device()) * sigma;
        }
        StepOutput {
            prev_sample: prev,
            pred_x0: x0,
        }
    }
}
