//! Noise schedules in continuous time as γ(t) = −log SNR(t), t ∈ [0, 1], monotone increasing
//! (Kingma et al. 2021, "Variational Diffusion Models", §3): α_t² = sigmoid(−γ(t)),
//! σ_t² = sigmoid(γ(t)) (variance preserving), with γ'(t) in closed form. All in f64.

use serde::{Deserialize, Serialize};

use crate::schedule::sigmoid;

/// A fixed continuous-time schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum FixedGamma {
    /// The continuous limit of Ho et al.'s linear β's: β(t) = T·(β_1 + t(β_T − β_1)), so
    /// ᾱ(t) = exp(−∫₀ᵗ β) = exp(−(b₀t + ½(b₁ − b₀)t²)) with b₀ = T·β_1, b₁ = T·β_T, and
    /// γ(t) = log(exp(b₀t + ½(b₁ − b₀)t²) − 1).
    LinearBeta {
        /// T·β_1 (0.1 for T = 1000, β_1 = 1e-4).
        b0: f64,
        /// T·β_T (20 for T = 1000, β_T = 0.02).
        b1: f64,
    },
    /// The cosine schedule's log-SNR, −2 log tan(πt/2), shifted and scaled in t to run from
    /// γ_min at t = 0 to γ_max at t = 1: γ(t) = 2 log tan(a·t + b), b = atan(e^{γ_min/2}),
    /// a = atan(e^{γ_max/2}) − b.
    Cosine {
        /// γ(0).
        gamma_min: f64,
        /// γ(1).
        gamma_max: f64,
    },
    /// Linear in γ (VDM's fixed baseline): γ(t) = γ_min + (γ_max − γ_min)·t.
    Linear {
        /// γ(0).
        gamma_min: f64,
        /// γ(1).
        gamma_max: f64,
    },
}

impl FixedGamma {
    /// The continuous limit of DDPM's default schedule (linear β from 1e-4 to 0.02, T = 1000).
    pub fn ddpm_linear() -> Self {
        Self::LinearBeta { b0: 0.1, b1: 20.0 }
    }

    /// γ(t).
    ///
    /// ```
    /// use ddpm::vdm::{FixedGamma, alpha_sq};
    ///
    /// let g = FixedGamma::Linear { gamma_min: -13.3, gamma_max: 5.0 };
    /// assert_eq!((g.gamma(0.0), g.gamma(1.0)), (-13.3, 5.0));
    /// // α_t² = sigmoid(−γ(t)): almost all signal at t = 0, little at t = 1.
    /// assert!(alpha_sq(g.gamma(0.0)) > 0.999_99 && alpha_sq(g.gamma(1.0)) < 0.01);
    /// ```
    pub fn gamma(&self, t: f64) -> f64 {
        match *self {
            Self::LinearBeta { b0, b1 } => {
                let i = b0 * t + 0.5 * (b1 - b0) * t * t;
                // log(e^i − 1) = i + log(1 − e^{−i}), stable for large and small i.
                i + (-(-i).exp_m1()).ln()
            }
            Self::Cosine {
                gamma_min,
                gamma_max,
            } => {
                let (a, b) = cosine_ab(gamma_min, gamma_max);
                2.0 * (a * t + b).tan().ln()
            }
            Self::Linear {
                gamma_min,
                gamma_max,
            } => gamma_min + (gamma_max - gamma_min) * t,
        }
    }

    /// γ'(t).
    pub fn dgamma(&self, t: f64) -> f64 {
        match *self {
            Self::LinearBeta { b0, b1 } => {
                let i = b0 * t + 0.5 * (b1 - b0) * t * t;
                // d/dt log(e^i − 1) = i'·e^i/(e^i − 1) = i' / (1 − e^{−i}).
                (b0 + (b1 - b0) * t) / (-(-i).exp_m1())
            }
            Self::Cosine {
                gamma_min,
                gamma_max,
            } => {
                let (a, b) = cosine_ab(gamma_min, gamma_max);
                // d/dt 2 log tan(u) = 2a / (sin u cos u) = 4a / sin 2u.
                4.0 * a / (2.0 * (a * t + b)).sin()
            }
            Self::Linear {
                gamma_min,
                gamma_max,
            } => gamma_max - gamma_min,
        }
    }
}

fn cosine_ab(gamma_min: f64, gamma_max: f64) -> (f64, f64) {
    let b = (0.5 * gamma_min).exp().atan();
    (((0.5 * gamma_max).exp()).atan() - b, b)
}

/// α_t² = sigmoid(−γ): the signal's share of the variance.
pub fn alpha_sq(gamma: f64) -> f64 {
    sigmoid(-gamma)
}

/// σ_t² = sigmoid(γ): the noise's share.
pub fn sigma_sq(gamma: f64) -> f64 {
    sigmoid(gamma)
}

/// The weight of ‖ε − ε̂‖² in the discrete-time diffusion loss with T steps at t = i/T
/// (s = (i − 1)/T), per unit of t: L_T = ½ E_{i∼U{1..T}} [T·(e^{γ(t) − γ(s)} − 1) ‖ε − ε̂‖²]
/// (Kingma et al. eq. 13 written with SNR(s)/SNR(t) − 1 = e^{γ(t) − γ(s)} − 1). As T → ∞ it
/// tends to γ'(t), the continuous loss's weight (eq. 15), with an error of order 1/T.
pub fn discrete_weight(gamma_t: f64, gamma_s: f64, steps: usize) -> f64 {
    steps as f64 * (gamma_t - gamma_s).exp_m1()
}

/// `n` times in [0, 1) for one batch: independent uniforms, or (`antithetic`) the
/// low-discrepancy set (u₀ + i/n) mod 1 of one uniform u₀ (Kingma et al. Appendix I.1), which
/// keeps each t marginally uniform and lowers the variance of the batch's loss.
pub fn sample_times(n: usize, antithetic: bool, rng: &mut crate::rng::Rng) -> Vec<f64> {
    if antithetic {
        let u0 = rng.uniform();
        (0..n).map(|i| (u0 + i as f64 / n as f64).fract()).collect()
    } else {
        (0..n).map(|_| rng.uniform()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<FixedGamma> {
        vec![
            FixedGamma::ddpm_linear(),
            FixedGamma::Cosine {
                gamma_min: -13.3,
                gamma_max: 5.0,
            },
            FixedGamma::Linear {
                gamma_min: -13.3,
                gamma_max: 5.0,
            },
        ]
    }

    #[test]
    fn derivatives_match_finite_differences_and_schedules_increase() {
        for g in all() {
            let mut last = f64::NEG_INFINITY;
            for k in 1..200 {
                let t = k as f64 / 200.0;
                let h = 1e-6;
                let fd = (g.gamma(t + h) - g.gamma(t - h)) / (2.0 * h);
                let d = g.dgamma(t);
                assert!(
                    (fd - d).abs() < 1e-5 * d.abs().max(1.0),
                    "{g:?} t {t}: {d} vs {fd}"
                );
                assert!(d > 0.0 && g.gamma(t) > last, "{g:?} not increasing at {t}");
                last = g.gamma(t);
            }
        }
    }

    #[test]
    fn endpoints_and_variance_preservation() {
        let c = FixedGamma::Cosine {
            gamma_min: -10.0,
            gamma_max: 7.0,
        };
        assert!((c.gamma(0.0) + 10.0).abs() < 1e-9 && (c.gamma(1.0) - 7.0).abs() < 1e-9);
        for t in [0.0, 0.3, 0.99] {
            let g = c.gamma(t);
            assert!((alpha_sq(g) + sigma_sq(g) - 1.0).abs() < 1e-15);
            // The cosine schedule's shape: SNR = cot²(a·t + b).
            let (a, b) = cosine_ab(-10.0, 7.0);
            let snr = 1.0 / (a * t + b).tan().powi(2);
            assert!(((-g).exp() - snr).abs() < 1e-9 * snr);
        }
    }

    #[test]
    fn the_linear_beta_limit_is_the_limit_of_the_discrete_chains() {
        // T steps of linear β from 0.1/T to 20/T (Ho et al.'s schedule at T = 1000): log ᾱ at
        // step i against the continuous log ᾱ(i/T). The gap (½Σβ² from log(1 − β) ≈ −β − β²/2,
        // and the Riemann sum) is O(1/T): doubling T halves it.
        let g = FixedGamma::ddpm_linear();
        let gap = |t_max: usize| -> f64 {
            let betas = crate::schedule::linspace(0.1 / t_max as f64, 20.0 / t_max as f64, t_max);
            let mut log_ab = 0.0;
            let mut worst = 0.0f64;
            for (i, b) in betas.iter().enumerate() {
                log_ab += (1.0 - b).ln();
                let t = (i + 1) as f64 / t_max as f64;
                worst = worst.max((log_ab - alpha_sq(g.gamma(t)).ln()).abs());
            }
            worst
        };
        let gaps: Vec<f64> = [1000, 2000, 4000, 8000].iter().map(|&n| gap(n)).collect();
        assert!(gaps[0] < 0.1, "{gaps:?}");
        for w in gaps.windows(2) {
            assert!((1.8..2.2).contains(&(w[0] / w[1])), "{gaps:?}");
        }
    }

    #[test]
    fn discrete_weights_converge_to_the_continuous_integrand_as_one_over_t() {
        // max_t |T(e^{γ(t)−γ(t−1/T)} − 1) − γ'(t)| shrinks in proportion to 1/T: doubling T
        // halves it (a ratio near 2 at every doubling).
        for g in all() {
            // Away from t = 0, where the linear-β limit's γ'(t) ~ 1/t diverges.
            let err = |steps: usize| -> f64 {
                (steps / 20 + 1..=steps)
                    .map(|i| {
                        let (t, s) = (i as f64 / steps as f64, (i - 1) as f64 / steps as f64);
                        (discrete_weight(g.gamma(t), g.gamma(s), steps) - g.dgamma(t)).abs()
                            / g.dgamma(t)
                    })
                    .fold(0.0, f64::max)
            };
            let errs: Vec<f64> = [250, 500, 1000, 2000, 4000]
                .iter()
                .map(|&n| err(n))
                .collect();
            for w in errs.windows(2) {
                let ratio = w[0] / w[1];
                assert!((1.7..2.3).contains(&ratio), "{g:?}: errors {errs:?}");
            }
        }
    }

    #[test]
    fn antithetic_times_are_spread_and_uniform() {
        let mut rng = crate::rng::Rng::new(4);
        let t = sample_times(8, true, &mut rng);
        let mut sorted = t.clone();
        sorted.sort_by(f64::total_cmp);
        for w in sorted.windows(2) {
            assert!((w[1] - w[0] - 0.125).abs() < 1e-12);
        }
        // Marginally uniform: the mean of many batches' first time is ½ ± a few standard errors.
        let n = 20000;
        let mean: f64 = (0..n)
            .map(|_| sample_times(4, true, &mut rng)[0])
            .sum::<f64>()
            / n as f64;
        assert!((mean - 0.5).abs() < 5.0 * (1.0 / 12.0f64 / n as f64).sqrt());
    }
}
