//! One Monte-Carlo sample of the variational bound for a batch (Kingma et al. 2021, eq. 11):
//! the prior and decoder terms in closed form per dimension on the host, the diffusion term
//! through the network. What `ddpm eval nll` averages for VDM runs, and what training logs.

use burn::tensor::{Tensor, TensorData};

use super::loss::diffusion_losses;
use super::time::{GammaSource, LossTimes, Time};
use super::vlb::{decoder_nll_and_dgamma, gaussian_decoder_nll, prior_kl, prior_kl_dgamma};
use crate::rng::Rng;

/// How x is read back from z₀.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// 8-bit data on the grid 2k/255 − 1: VDM's discretized decoder.
    Discretized,
    /// Continuous data: N(x; z₀/α₀, e^{γ₀}).
    Gaussian,
}

/// The bound's terms for each example, in nats.
#[derive(Debug, Clone, Default)]
pub struct BoundTerms {
    /// D_KL(q(z₁|x) ‖ N(0, I)).
    pub prior: Vec<f64>,
    /// −log p(x | z₀) at one draw of z₀.
    pub decoder: Vec<f64>,
    /// The diffusion loss at one draw of t and ε.
    pub diffusion: Vec<f64>,
}

impl BoundTerms {
    /// Prior + decoder + diffusion of example i.
    pub fn total(&self, i: usize) -> f64 {
        self.prior[i] + self.decoder[i] + self.diffusion[i]
    }
}

/// The prior and decoder terms of a batch, per example (nats), with the derivatives of their
/// sum over the batch with respect to γ₀ and γ₁ (what a learned schedule's endpoints follow).
#[derive(Debug, Clone, Default)]
pub struct EndTerms {
    /// D_KL(q(z₁|x) ‖ N(0, I)) of each example.
    pub prior: Vec<f64>,
    /// −log p(x | z₀) of each example.
    pub decoder: Vec<f64>,
    /// ∂/∂γ₀ of Σ decoder.
    pub d_gamma0: f64,
    /// ∂/∂γ₁ of Σ prior.
    pub d_gamma1: f64,
}

/// Prior and decoder terms of each example of `x` (rows of `item` values) at the schedule's ends
/// (γ₀, γ₁), the decoder at z₀ = α₀x + σ₀ε for `eps`.
pub fn end_terms(
    x: &[f64],
    eps: &[f64],
    item: usize,
    ends: (f64, f64),
    decoder: Decoder,
) -> EndTerms {
    let (g0, g1) = ends;
    let rows = x.len() / item;
    let mut out = EndTerms::default();
    for i in 0..rows {
        let r = i * item..(i + 1) * item;
        let (mut p, mut d) = (0.0, 0.0);
        for (&v, &e) in x[r.clone()].iter().zip(&eps[r]) {
            p += prior_kl(g1, v);
            out.d_gamma1 += prior_kl_dgamma(g1, v);
            let (nll, dn) = match decoder {
                Decoder::Discretized => decoder_nll_and_dgamma(g0, v, e),
                Decoder::Gaussian => (gaussian_decoder_nll(g0, e), 0.5),
            };
            d += nll;
            out.d_gamma0 += dn;
        }
        out.prior.push(p);
        out.decoder.push(d);
    }
    out
}

/// One sample of each example's bound: t drawn antithetically over the batch (each example's
/// t is uniform), ε and the decoder's ε from `rng`. `eps_hat(z_t, network times)` is the
/// network's noise prediction.
pub fn bound_terms<const D: usize>(
    x0: Tensor<D>,
    time: Time,
    gamma: &dyn GammaSource,
    decoder: Decoder,
    rng: &mut Rng,
    eps_hat: impl FnOnce(Tensor<D>, Tensor<1>) -> Tensor<D>,
) -> BoundTerms {
    let dims = x0.dims();
    let b = dims[0];
    let item: usize = dims[1..].iter().product();
    let (device, dtype) = (x0.device(), x0.dtype());
    let x: Vec<f64> = x0
        .clone()
        .into_data()
        .convert::<f64>()
        .try_into_vec()
        .expect("a float tensor");
    let lt = LossTimes::new(time, gamma, time.draw(b, true, rng));
    let host = |v: Vec<f64>, shape: [usize; 1]| {
        Tensor::<1>::from_data(TensorData::new(v, shape), (&device, dtype))
    };
    let mut eps = vec![0.0f64; b * item];
    rng.fill_normal(&mut eps);
    let eps_t = Tensor::<D>::from_data(TensorData::new(eps, dims), (&device, dtype));
    let net_t = host(lt.network_times(), [b]);
    let diffusion: Vec<f64> = diffusion_losses(
        x0,
        eps_t,
        host(lt.gamma.clone(), [b]),
        host(lt.weight.clone(), [b]),
        |z| eps_hat(z, net_t),
    )
    .into_data()
    .convert::<f64>()
    .try_into_vec()
    .expect("a float tensor");
    let mut eps0 = vec![0.0f64; b * item];
    rng.fill_normal(&mut eps0);
    let ends = end_terms(&x, &eps0, item, gamma.ends(), decoder);
    BoundTerms {
        prior: ends.prior,
        decoder: ends.decoder,
        diffusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdm::FixedGamma;
    use crate::vdm::gamma::{alpha_sq, sigma_sq};
    use burn::tensor::{DType, Device};

    /// The exact ε-prediction for x ~ N(μ, s²): E[ε | z_t] = σ(z − αμ)/(α²s² + σ²).
    fn exact(z: Tensor<2>, t: Tensor<1>, g: FixedGamma, mu: f64, s: f64) -> Tensor<2> {
        let zs: Vec<f64> = z.to_data().convert::<f64>().try_into_vec().unwrap();
        let ts: Vec<f64> = t.into_data().convert::<f64>().try_into_vec().unwrap();
        let out: Vec<f64> = zs
            .iter()
            .zip(&ts)
            .map(|(z, t)| {
                let gt = g.gamma(t / 1000.0);
                let (a, sg) = (alpha_sq(gt).sqrt(), sigma_sq(gt).sqrt());
                sg * (z - a * mu) / (a * a * s * s + sg * sg)
            })
            .collect();
        Tensor::<2>::from_data(
            TensorData::new(out, [zs.len(), 1]),
            (&z.device(), DType::F64),
        )
    }

    #[test]
    fn the_bound_of_the_exact_denoiser_estimates_the_exact_likelihood_of_gaussian_data() {
        let dev = Device::flex();
        let (mu, s) = (0.3, 0.5);
        for (g, time) in [
            (
                FixedGamma::Linear {
                    gamma_min: -12.0,
                    gamma_max: 10.0,
                },
                Time::Continuous,
            ),
            (
                FixedGamma::Cosine {
                    gamma_min: -12.0,
                    gamma_max: 10.0,
                },
                Time::Continuous,
            ),
        ] {
            let mut rng = Rng::new(11);
            // Per example: the bound's sample minus −log N(x; μ, s²), the exact value.
            let (mut sum, mut sum2) = (0.0, 0.0);
            let (batches, b) = (400, 500);
            for _ in 0..batches {
                let mut x = vec![0.0f64; b];
                rng.fill_normal(&mut x);
                for v in &mut x {
                    *v = mu + s * *v;
                }
                let nll: Vec<f64> = x
                    .iter()
                    .map(|v| {
                        0.5 * (2.0 * std::f64::consts::PI * s * s).ln()
                            + 0.5 * ((v - mu) / s).powi(2)
                    })
                    .collect();
                let x0 = Tensor::<2>::from_data(TensorData::new(x, [b, 1]), (&dev, DType::F64));
                let terms = bound_terms(x0, time, &g, Decoder::Gaussian, &mut rng, |z, t| {
                    exact(z, t, g, mu, s)
                });
                for (i, want) in nll.iter().enumerate() {
                    let d = terms.total(i) - want;
                    sum += d;
                    sum2 += d * d;
                }
            }
            let n = (batches * b) as f64;
            let mean = sum / n;
            let se = ((sum2 / n - mean * mean) / n).sqrt();
            // The bound is tight for the exact denoiser up to the ends (SNR(1) = e^{−10} and
            // e^{γ₀}/s² = 2.5e-5 here); the rest is Monte-Carlo error.
            assert!(
                mean.abs() < 4.0 * se + 1e-3,
                "{g:?}: bound − (−log p) = {mean} ± {se}"
            );
            // The estimator's own spread (γ'(t)·χ² at a uniform t) sets the tolerance; it is
            // what `eval nll` reports as its standard error.
            assert!(se < 0.1, "{se}");
        }
    }

    #[test]
    fn the_discrete_bound_of_the_exact_denoiser_is_looser_and_tends_to_the_continuous_one() {
        // For the exact denoiser L_T decreases toward L_∞ as T grows (Kingma et al. §4.2): the
        // expected bound is computed by summing the T terms exactly (no Monte Carlo in t).
        let g = FixedGamma::Linear {
            gamma_min: -12.0,
            gamma_max: 10.0,
        };
        let (mu, s) = (0.0, 0.5);
        let expected = |steps: usize| -> f64 {
            (1..=steps)
                .map(|i| {
                    let (t, u) = (i as f64 / steps as f64, (i - 1) as f64 / steps as f64);
                    let gt = g.gamma(t);
                    let (a, sg) = (alpha_sq(gt).sqrt(), sigma_sq(gt).sqrt());
                    let c = sg / (a * a * s * s + sg * sg);
                    let err = (1.0 - c * sg).powi(2) + c * c * a * a * s * s;
                    0.5 * crate::vdm::discrete_weight(gt, g.gamma(u), steps) * err / steps as f64
                })
                .sum()
        };
        let l: Vec<f64> = [2, 8, 32, 128, 512].iter().map(|&t| expected(t)).collect();
        for w in l.windows(2) {
            assert!(w[0] > w[1], "{l:?}");
        }
        // The Monte-Carlo estimator of L_T agrees with the exact sum.
        let dev = Device::flex();
        let mut rng = Rng::new(2);
        let (mut sum, mut sum2, n) = (0.0, 0.0, 40_000usize);
        for _ in 0..n / 400 {
            let mut x = vec![0.0f64; 400];
            rng.fill_normal(&mut x);
            x.iter_mut().for_each(|v| *v = mu + s * *v);
            let x0 = Tensor::<2>::from_data(TensorData::new(x, [400, 1]), (&dev, DType::F64));
            let terms = bound_terms(
                x0,
                Time::Discrete(8),
                &g,
                Decoder::Gaussian,
                &mut rng,
                |z, t| exact(z, t, g, mu, s),
            );
            for v in terms.diffusion {
                sum += v;
                sum2 += v * v;
            }
        }
        let mean = sum / n as f64;
        let se = ((sum2 / n as f64 - mean * mean) / n as f64).sqrt();
        assert!((mean - l[1]).abs() < 4.0 * se, "{mean} ± {se} vs {}", l[1]);
    }
}
