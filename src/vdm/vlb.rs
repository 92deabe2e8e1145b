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

/// −log p(x | z₀) for continuous data under the Gaussian decoder N(x; z₀/α₀, σ₀²/α₀²) =
/// N(x; z₀/α₀, e^{γ₀}): with z₀ = α₀x + σ₀ε it is ½ log(2π e^{γ₀}) + ½ε².
pub fn gaussian_decoder_nll(gamma0: f64, eps: f64) -> f64 {
    0.5 * ((2.0 * std::f64::consts::PI).ln() + gamma0) + 0.5 * eps * eps
}

/// One Monte-Carlo sample of the diffusion loss at time t: ½ γ'(t)‖ε − ε̂‖².
pub fn diffusion_term(dgamma: f64, eps: f64, eps_hat: f64) -> f64 {
    0.5 * dgamma * (eps - eps_hat) * (eps - eps_hat)
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
}
