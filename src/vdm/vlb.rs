//! The variational bound of a continuous-time diffusion model (Kingma et al. 2021, eq. 11):
//! −log p(x) ≤ D_KL(q(z_1 | x) ‖ N(0, I)) + E[−log p(x | z_0)] + L_∞(x), per dimension,
//! with the diffusion loss L_∞ = ½ E_{t∼U(0,1), ε}[γ'(t)‖ε − ε̂(z_t; t)‖²] (eq. 15). Host f64
//! forms of each term, for one dimension of one example.

use super::gamma::{alpha_sq, sigma_sq};

/// D_KL(N(α₁x, σ₁²) ‖ N(0, 1)) = ½(α₁²x² + σ₁² − 1 − log σ₁²): the prior term at γ₁ = γ(1).
pub fn prior_kl(gamma1: f64, x: f64) -> f64 {
    let (a2, s2) = (alpha_sq(gamma1), sigma_sq(gamma1));
    0.5 * (a2 * x * x + s2 - 1.0 - s2.ln())
}

/// d/dγ₁ of [`prior_kl`]: with dα²/dγ = −α²σ² and dσ²/dγ = α²σ², ½α₁²(σ₁²(1 − x²) − 1).
pub fn prior_kl_dgamma(gamma1: f64, x: f64) -> f64 {
    let (a2, s2) = (alpha_sq(gamma1), sigma_sq(gamma1));
    0.5 * a2 * (s2 * (1.0 - x * x) - 1.0)
}

/// [`discretized_decoder_nll`] at z₀ = α₀x + σ₀ε, with its derivative in γ₀ at fixed ε (the
/// reparameterized gradient the endpoint γ₀ learns from). Bin j's logit is −½r_j² with r_j =
/// e^{−γ₀/2}(x − v_j) + ε, so dlogit_j/dγ₀ = ½r_j·e^{−γ₀/2}(x − v_j). Only bins within 60 nats of
/// the likeliest enter the normalizer (each other one adds less than e^{−60} of it), so the cost
/// is a few bins when the noise is finer than the grid.
pub fn decoder_nll_and_dgamma(gamma0: f64, x: f64, eps: f64) -> (f64, f64) {
    let q = (-0.5 * gamma0).exp();
    let v = |j: usize| 2.0 * j as f64 / 255.0 - 1.0;
    let logit = |j: usize| {
        let r = q * (x - v(j)) + eps;
        (-0.5 * r * r, 0.5 * r * q * (x - v(j)))
    };
    let k = ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as usize;
    let centre = ((x + eps / q + 1.0) * 127.5).round().clamp(0.0, 255.0) as usize;
    let top = logit(centre).0;
    let (mut lo, mut hi) = (centre, centre);
    while lo > 0 && logit(lo - 1).0 > top - 60.0 {
        lo -= 1;
    }
    while hi < 255 && logit(hi + 1).0 > top - 60.0 {
        hi += 1;
    }
    let (mut z, mut dz) = (0.0, 0.0);
    for j in lo..=hi {
        let (l, d) = logit(j);
        let w = (l - top).exp();
        z += w;
        dz += w * d;
    }
    let (lk, dk) = logit(k);
    (top + z.ln() - lk, dz / z - dk)
}

/// −log p(x | z₀) for continuous data under the Gaussian decoder N(x; z₀/α₀, σ₀²/α₀²) =
/// N(x; z₀/α₀, e^{γ₀}): with z₀ = α₀x + σ₀ε it is ½ log(2π e^{γ₀}) + ½ε².
pub fn gaussian_decoder_nll(gamma0: f64, eps: f64) -> f64 {
    0.5 * ((2.0 * std::f64::consts::PI).ln() + gamma0) + 0.5 * eps * eps
}

/// One Monte-Carlo sample of the diffusion loss at time t: ½ γ'(t)‖ε − ε̂‖².
pub fn diffusion_term(dgamma: f64, eps: f64, eps_hat: f64) -> f64 {
    0.5 * dgamma * (eps - eps_hat) * (eps - eps_hat)
}

/// −log p(x | z₀) for 8-bit data under VDM's discretized decoder (Kingma et al. Appendix C):
/// each of the 256 values v_k = 2k/255 − 1 gets logit −½((z₀ − α₀v_k)/σ₀)², so p(x = v_k | z₀)
/// is their softmax; `x` must be on that grid. With σ₀/α₀ = e^{γ₀/2} much finer than the grid
/// the true value's probability tends to 1; much coarser, to 1/256.
pub fn discretized_decoder_nll(gamma0: f64, x: f64, z0: f64) -> f64 {
    let (a, s) = (alpha_sq(gamma0).sqrt(), sigma_sq(gamma0).sqrt());
    let logit = |v: f64| -0.5 * ((z0 - a * v) / s).powi(2);
    let k = ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as usize;
    let logits: Vec<f64> = (0..256)
        .map(|j| logit(2.0 * j as f64 / 255.0 - 1.0))
        .collect();
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    lse - logits[k]
}

#[cfg(test)]
mod tests {
    use super::super::gamma::FixedGamma;
    use super::*;

    /// The bound's expectation over x ~ N(μ, s²) and ε for a denoiser ε̂ = k·ε̂* (k = 1: the
    /// exact E[ε | z_t] = c(z_t − αμ), c = σ/(α²s² + σ²)): the prior and decoder terms in
    /// closed form, E‖ε − kc(z − αμ)‖² = (1 − kcσ)² + k²c²α²s² in closed form, and the
    /// integral over t by Simpson's rule on 20,000 intervals.
    fn expected_bound(g: &FixedGamma, mu: f64, s: f64, k: f64) -> f64 {
        let (g0, g1) = (g.gamma(0.0), g.gamma(1.0));
        let prior =
            0.5 * (alpha_sq(g1) * (mu * mu + s * s) + sigma_sq(g1) - 1.0 - sigma_sq(g1).ln());
        // E_ε[gaussian_decoder_nll] = ½ log(2π e^{γ₀}) + ½.
        let decoder = gaussian_decoder_nll(g0, 1.0);
        let f = |t: f64| {
            let gt = g.gamma(t);
            let (a, sg) = (alpha_sq(gt).sqrt(), sigma_sq(gt).sqrt());
            let c = k * sg / (a * a * s * s + sg * sg);
            let err = (1.0 - c * sg).powi(2) + c * c * a * a * s * s;
            // ½γ'·E‖ε − ε̂‖²: diffusion_term with ε − ε̂ of that mean square.
            diffusion_term(g.dgamma(t), err.sqrt(), 0.0)
        };
        let m = 20_000;
        let h = 1.0 / m as f64;
        let mut integral = f(0.0) + f(1.0);
        for i in 1..m {
            integral += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        prior + decoder + integral * h / 3.0
    }

    fn schedules() -> [FixedGamma; 2] {
        [
            FixedGamma::Linear {
                gamma_min: -13.0,
                gamma_max: 10.0,
            },
            FixedGamma::Cosine {
                gamma_min: -13.0,
                gamma_max: 10.0,
            },
        ]
    }

    #[test]
    fn the_bound_of_the_exact_denoiser_is_the_exact_likelihood_of_gaussian_data() {
        // −log p(x) ≤ bound, with equality for the exact model up to the endpoints' mismatch:
        // the prior's q(z₁) is N(0, 1) to O(α₁²), the decoder's variance e^{γ₀} is the true
        // posterior's to O(e^{γ₀}/s²).
        let (mu, s) = (0.7, 0.4);
        let exact = 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * s * s).ln();
        for g in schedules() {
            let bound = expected_bound(&g, mu, s, 1.0);
            let endpoints =
                alpha_sq(g.gamma(1.0)) * (mu * mu + s * s + 1.0) + g.gamma(0.0).exp() / (s * s);
            assert!(
                (bound - exact).abs() < endpoints + 1e-6,
                "{g:?}: bound {bound} vs −log p {exact} (endpoints {endpoints})"
            );
        }
    }

    #[test]
    fn a_wrong_denoiser_gives_a_looser_bound() {
        let exact = 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E).ln();
        for g in schedules() {
            for k in [0.9, 1.1] {
                let bound = expected_bound(&g, 0.0, 1.0, k);
                assert!(bound > exact + 0.01, "{g:?} k {k}: {bound} vs {exact}");
            }
        }
    }

    #[test]
    fn the_monte_carlo_terms_average_to_their_closed_forms() {
        // The sampled terms (prior at a drawn x, decoder at a drawn ε, diffusion at a drawn t
        // and ε) average to the closed-form bound within 5 standard errors.
        let g = FixedGamma::Linear {
            gamma_min: -13.0,
            gamma_max: 10.0,
        };
        let (mu, s) = (0.7, 0.4);
        let mut rng = crate::rng::Rng::new(21);
        let n = 400_000;
        let (mut sum, mut sum2) = (0.0, 0.0);
        for _ in 0..n {
            let x = mu + s * rng.normal();
            let t = rng.uniform();
            let gt = g.gamma(t);
            let (a, sg) = (alpha_sq(gt).sqrt(), sigma_sq(gt).sqrt());
            let eps = rng.normal();
            let z = a * x + sg * eps;
            let eps_hat = sg * (z - a * mu) / (a * a * s * s + sg * sg);
            let v = prior_kl(g.gamma(1.0), x)
                + gaussian_decoder_nll(g.gamma(0.0), rng.normal())
                + diffusion_term(g.dgamma(t), eps, eps_hat);
            sum += v;
            sum2 += v * v;
        }
        let mean = sum / n as f64;
        let se = ((sum2 / n as f64 - mean * mean) / n as f64).sqrt();
        let want = expected_bound(&g, mu, s, 1.0);
        assert!((mean - want).abs() < 5.0 * se, "{mean} ± {se} vs {want}");
    }

    #[test]
    fn the_endpoint_derivatives_match_finite_differences() {
        let v = |k: usize| 2.0 * k as f64 / 255.0 - 1.0;
        let h = 1e-5;
        for gamma in [-13.3, -8.0, -3.0, 0.5, 4.0] {
            for x in [-1.0, -0.3, 0.0, 0.9] {
                let fd = (prior_kl(gamma + h, x) - prior_kl(gamma - h, x)) / (2.0 * h);
                let an = prior_kl_dgamma(gamma, x);
                assert!((fd - an).abs() < 1e-7 * an.abs().max(1.0), "{fd} vs {an}");
            }
            for (k, eps) in [(0, 0.4), (37, -1.3), (128, 0.0), (255, 2.2), (200, -3.1)] {
                let x = v(k);
                // The windowed value equals the sum over all 256 bins.
                let z0 = alpha_sq(gamma).sqrt() * x + sigma_sq(gamma).sqrt() * eps;
                let full = discretized_decoder_nll(gamma, x, z0);
                let (nll, d) = decoder_nll_and_dgamma(gamma, x, eps);
                assert!(
                    (nll - full).abs() < 1e-9 * full.abs().max(1.0),
                    "γ₀ {gamma}, k {k}: {nll} vs {full}"
                );
                let f = |g: f64| decoder_nll_and_dgamma(g, x, eps).0;
                let fd = (f(gamma + h) - f(gamma - h)) / (2.0 * h);
                assert!(
                    (fd - d).abs() < 1e-5 * d.abs().max(1.0),
                    "γ₀ {gamma}, k {k}: d/dγ₀ {d} vs {fd}"
                );
            }
        }
    }

    #[test]
    fn the_discretized_decoder_is_a_distribution_over_the_256_values() {
        let v = |k: usize| 2.0 * k as f64 / 255.0 - 1.0;
        for (gamma0, z_of) in [(-13.0, 0.3), (-5.0, -0.7), (2.0, 0.1)] {
            let a = alpha_sq(gamma0).sqrt();
            let z0 = a * z_of;
            // The probabilities of all 256 values sum to one.
            let total: f64 = (0..256)
                .map(|k| (-discretized_decoder_nll(gamma0, v(k), z0)).exp())
                .sum();
            assert!((total - 1.0).abs() < 1e-12, "γ₀ {gamma0}: {total}");
        }
        // Fine noise: the value z₀/α₀ lies on is nearly certain. Coarse: nearly uniform.
        let x = v(200);
        let fine = discretized_decoder_nll(-13.0, x, alpha_sq(-13.0).sqrt() * x);
        // Neighbours 5.2 noise sd away: 2·e^{−5.2²/2} ≈ 2.5e-6.
        assert!(fine < 1e-5, "{fine}");
        let coarse = discretized_decoder_nll(12.0, x, 0.0);
        assert!((coarse - 256f64.ln()).abs() < 1e-3, "{coarse}");
        // In between, a z₀ halfway between two grid values splits the mass between them.
        let g = 2.0 * (1.0 / 255.0f64).ln(); // σ₀/α₀ = one grid step
        let a = alpha_sq(g).sqrt();
        let mid = a * (v(100) + v(101)) / 2.0;
        let (p100, p101) = (
            (-discretized_decoder_nll(g, v(100), mid)).exp(),
            (-discretized_decoder_nll(g, v(101), mid)).exp(),
        );
        assert!((p100 - p101).abs() < 1e-12 && p100 > 0.3, "{p100} {p101}");
    }
}
