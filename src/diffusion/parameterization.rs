//! What the network predicts — ε, x0 or v — and the conversions between them given x_t,
//! all exact rearrangements of x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (Ho et al. eq. 4).

use burn::tensor::Tensor;

use super::extract;
use crate::schedule::NoiseSchedule;

/// The quantity the network outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parameterization {
    /// The noise ε (Ho et al. eq. 11), the lecture's choice.
    Eps,
    /// The clean data x0.
    X0,
    /// The velocity v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho 2022, §4).
    V,
}

impl Parameterization {
    /// The training target for this parameterization given x0 and the noise ε used for x_t.
    pub fn target<const D: usize>(
        self,
        s: &NoiseSchedule,
        x_start: Tensor<D>,
        noise: Tensor<D>,
        t: &[usize],
    ) -> Tensor<D> {
        match self {
            Self::Eps => noise,
            Self::X0 => x_start,
            Self::V => v_from(s, x_start, noise, t),
        }
    }

    /// The prediction of x0 implied by a network output `out` at x_t.
    pub fn to_x0<const D: usize>(
        self,
        s: &NoiseSchedule,
        x_t: Tensor<D>,
        t: &[usize],
        out: Tensor<D>,
    ) -> Tensor<D> {
        match self {
            Self::Eps => x0_from_eps(s, x_t, t, out),
            Self::X0 => out,
            Self::V => x0_from_v(s, x_t, t, out),
        }
    }

    /// The prediction of ε implied by a network output `out` at x_t.
    pub fn to_eps<const D: usize>(
        self,
        s: &NoiseSchedule,
        x_t: Tensor<D>,
        t: &[usize],
        out: Tensor<D>,
    ) -> Tensor<D> {
        match self {
            Self::Eps => out,
            Self::X0 => eps_from_x0(s, x_t, t, out),
            Self::V => eps_from_v(s, x_t, t, out),
        }
    }

    /// ∂out/∂ε̂ at fixed x_t: how this parameterization's output moves when the ε it implies
    /// moves by one (1 for ε; −√(1−ᾱ_t)/√ᾱ_t for x0, from x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t;
    /// 1/√ᾱ_t for v, from v = ε/√ᾱ_t − √(1−ᾱ_t)/√ᾱ_t·x_t). The outputs are linear in ε, so a
    /// correction Δε of the implied noise is the output correction Δε·(this).
    pub fn output_per_eps(self, s: &NoiseSchedule, t: usize) -> f64 {
        let ab = s.alphas_cumprod[t];
        match self {
            Self::Eps => 1.0,
            Self::X0 => -((1.0 - ab) / ab).sqrt(),
            Self::V => 1.0 / ab.sqrt(),
        }
    }

    /// c_t such that ‖Δε‖² = c_t·‖Δ(target)‖² for an error in this parameterization's target:
    /// 1 for ε, SNR(t) for x0, SNR(t)/(1+SNR(t)) = ᾱ_t for v. Loss weightings defined on the
    /// ε-loss carry over to the other parameterizations through it.
    pub fn eps_mse_factor(self, s: &NoiseSchedule, t: usize) -> f64 {
        match self {
            Self::Eps => 1.0,
            Self::X0 => s.snr[t],
            Self::V => s.alphas_cumprod[t],
        }
    }
}

/// x0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε (Ho et al. eq. 4 solved for x0).
pub fn x0_from_eps<const D: usize>(
    s: &NoiseSchedule,
    x_t: Tensor<D>,
    t: &[usize],
    eps: Tensor<D>,
) -> Tensor<D> {
    let a = extract(&s.sqrt_recip_alphas_cumprod, t, &x_t);
    let b = extract(&s.sqrt_recipm1_alphas_cumprod, t, &x_t);
    x_t * a - eps * b
}

/// ε = (√(1/ᾱ_t)·x_t − x0)/√(1/ᾱ_t − 1) (Ho et al. eq. 4 solved for ε).
pub fn eps_from_x0<const D: usize>(
    s: &NoiseSchedule,
    x_t: Tensor<D>,
    t: &[usize],
    x_start: Tensor<D>,
) -> Tensor<D> {
    let a = extract(&s.sqrt_recip_alphas_cumprod, t, &x_t);
    let b = extract(&s.sqrt_recipm1_alphas_cumprod, t, &x_t);
    (x_t * a - x_start) / b
}

/// v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho 2022, §4).
pub fn v_from<const D: usize>(
    s: &NoiseSchedule,
    x_start: Tensor<D>,
    eps: Tensor<D>,
    t: &[usize],
) -> Tensor<D> {
    let a = extract(&s.sqrt_alphas_cumprod, t, &x_start);
    let b = extract(&s.sqrt_one_minus_alphas_cumprod, t, &x_start);
    eps * a - x_start * b
}

/// x0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v (Salimans & Ho 2022, §4).
pub fn x0_from_v<const D: usize>(
    s: &NoiseSchedule,
    x_t: Tensor<D>,
    t: &[usize],
    v: Tensor<D>,
) -> Tensor<D> {
    let a = extract(&s.sqrt_alphas_cumprod, t, &x_t);
    let b = extract(&s.sqrt_one_minus_alphas_cumprod, t, &x_t);
    x_t * a - v * b
}

/// ε = √(1−ᾱ_t)·x_t + √ᾱ_t·v (Salimans & Ho 2022, §4).
pub fn eps_from_v<const D: usize>(
    s: &NoiseSchedule,
    x_t: Tensor<D>,
    t: &[usize],
    v: Tensor<D>,
) -> Tensor<D> {
    let a = extract(&s.sqrt_alphas_cumprod, t, &x_t);
    let b = extract(&s.sqrt_one_minus_alphas_cumprod, t, &x_t);
    x_t * b + v * a
}
