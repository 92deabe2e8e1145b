//! Samplers driven by exact denoisers of known data distributions.

use burn::tensor::{Device, Tensor, TensorData};

use super::*;
use crate::diffusion::{Parameterization, VarianceType};
use crate::rng::Rng;
use crate::schedule::{BetaSchedule, NoiseSchedule, space_timesteps};

fn dev() -> Device {
    Device::flex()
}

/// The exact ε-predictor E[ε | x_t] for 1-D data drawn from a mixture of Gaussians
/// Σ π_k N(μ_k, s_k²): x_t | k ~ N(√ᾱ μ_k, ᾱ s_k² + 1 − ᾱ), and E[ε | x_t, k] =
/// √(1−ᾱ)(x_t − √ᾱ μ_k)/(ᾱ s_k² + 1 − ᾱ), averaged over the posterior of k.
///
/// With `learned` (the chain being sampled), it also outputs the exact reverse log-variance
/// log(β̃ + coef1²·Var[x0 | x_t]) of that chain as a learned-variance channel.
struct ExactMixture {
    alphas_cumprod: Vec<f64>,
    comps: Vec<(f64, f64, f64)>, // (π, μ, s)
    learned: Option<NoiseSchedule>,
}

impl crate::diffusion::Denoiser<2> for ExactMixture {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        let ts: Vec<f64> = t.into_data().convert::<f64>().try_into_vec().unwrap();
        let [n, d] = x_t.dims();
        let xs: Vec<f64> = x_t.into_data().convert::<f64>().try_into_vec().unwrap();
        let mut eps = Vec::with_capacity(n * d);
        let mut logvar = Vec::with_capacity(n * d);
        for (i, &x) in xs.iter().enumerate() {
            let t = ts[i / d] as usize;
            let ab = self.alphas_cumprod[t];
            let (mut den, mut e, mut m1, mut m2) = (0.0, 0.0, 0.0, 0.0);
            for &(pi, mu, s) in &self.comps {
                let v = ab * s * s + 1.0 - ab;
                let m = ab.sqrt() * mu;
                let w = pi * (-(x - m) * (x - m) / (2.0 * v)).exp() / v.sqrt();
                // Given component k: E[ε|x_t], E[x0|x_t], Var[x0|x_t].
                let post_mean = mu + ab.sqrt() * s * s * (x - m) / v;
                let post_var = s * s * (1.0 - ab) / v;
                e += w * (1.0 - ab).sqrt() * (x - m) / v;
                m1 += w * post_mean;
                m2 += w * (post_var + post_mean * post_mean);
                den += w;
            }
            eps.push((e / den) as f32);
            if let Some(rs) = &self.learned {
                let j = rs
                    .timestep_map
                    .iter()
                    .position(|&k| rs.network_time(k) as usize == t)
                    .expect("a step of the chain");
                let var_x0 = (m2 / den - (m1 / den).powi(2)).max(0.0);
                let v = rs.posterior_variance[j] + rs.posterior_mean_coef1[j].powi(2) * var_x0;
                logvar.push(v.max(1e-20).ln() as f32);
            }
        }
        let e = Tensor::<2>::from_data(TensorData::new(eps, [n, d]), &dev());
        if self.learned.is_some() {
            let lv = Tensor::<2>::from_data(TensorData::new(logvar, [n, d]), &dev());
            Tensor::cat(vec![e, lv], 1)
        } else {
            e
        }
    }
}

fn base(t: usize) -> GaussianDiffusion {
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", t, None, None).unwrap(),
        t,
        false,
    )
    .unwrap();
    GaussianDiffusion::new(s, Parameterization::Eps, VarianceType::FixedSmall)
}

fn moments(x: Tensor<2>) -> (Vec<f64>, f64, f64) {
    let v: Vec<f64> = x.into_data().convert::<f64>().try_into_vec().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (v, mean, var)
}

fn run<S: Sampler<2>>(model: &ExactMixture, sampler: &mut S, n: usize, seed: u64) -> Tensor<2> {
    let mut rng = Rng::new(seed);
    sample_loop(model, sampler, [n, 1], &dev(), &mut rng, |_, _, _, _| {})
}

/// A named sampler run and its discretization allowance.
type SamplerCase = (
    &'static str,
    Box<dyn FnMut(&ExactMixture, usize, u64) -> Tensor<2>>,
    f64,
);

/// Every sampler, with the discretization allowance it is granted on top of Monte Carlo error.
fn samplers(d: &GaussianDiffusion) -> Vec<SamplerCase> {
    let t = d.num_timesteps();
    let full: Vec<usize> = (0..t).collect();
    let r50 = space_timesteps(t, "50").unwrap();
    let d1 = d.clone();
    let d2 = d.clone();
    let d3 = d.clone();
    let d4 = d.clone();
    let d5 = d.clone();
    vec![
        (
            "ancestral-1000",
            Box::new(move |m, n, s| run(m, &mut Ancestral::new(&d1, &full, X0Clip::None), n, s)),
            0.0,
        ),
        (
            "ancestral-respaced-50-learned-variance",
            Box::new(move |m, n, s| {
                // The exact denoiser also knows the respaced chain's optimal reverse variance.
                let learned = GaussianDiffusion::new(
                    d2.schedule.clone(),
                    d2.parameterization,
                    VarianceType::Learned,
                );
                let exact = ExactMixture {
                    alphas_cumprod: m.alphas_cumprod.clone(),
                    comps: m.comps.clone(),
                    learned: Some(d2.schedule.respace(&r50).unwrap()),
                };
                run(
                    &exact,
                    &mut Ancestral::new(&learned, &r50, X0Clip::None),
                    n,
                    s,
                )
            }),
            0.03,
        ),
        (
            "ddim-50-eta0",
            Box::new(move |m, n, s| {
                run(
                    m,
                    &mut Ddim::new(
                        &d3,
                        ddim::spaced_steps(t, 50, Spacing::Leading),
                        0.0,
                        X0Clip::None,
                    ),
                    n,
                    s,
                )
            }),
            0.03,
        ),
        (
            "ddim-50-eta1",
            Box::new(move |m, n, s| {
                run(
                    m,
                    &mut Ddim::new(
                        &d4,
                        ddim::spaced_steps(t, 50, Spacing::Trailing),
                        1.0,
                        X0Clip::None,
                    ),
                    n,
                    s,
                )
            }),
            0.03,
        ),
        (
            "dpmpp2m-20",
            Box::new(move |m, n, s| {
                run(
                    m,
                    &mut DpmSolverPp2M::new(
                        &d5,
                        ddim::spaced_steps(t, 20, Spacing::Linspace),
                        X0Clip::None,
                    ),
                    n,
                    s,
                )
            }),
            0.03,
        ),
    ]
}

/// x as an affine function of independent standard normals: x = c + Σ w_i z_i.
#[derive(Clone)]
struct Affine {
    c: f64,
    w: Vec<f64>,
}

impl Affine {
    fn scale(&self, k: f64) -> Self {
        Self {
            c: self.c * k,
            w: self.w.iter().map(|x| x * k).collect(),
        }
    }
    fn add(&self, o: &Self) -> Self {
        let n = self.w.len().max(o.w.len());
        let g = |v: &Vec<f64>, i: usize| v.get(i).copied().unwrap_or(0.0);
        Self {
            c: self.c + o.c,
            w: (0..n).map(|i| g(&self.w, i) + g(&o.w, i)).collect(),
        }
    }
    fn plus(&self, k: f64) -> Self {
        Self {
            c: self.c + k,
            w: self.w.clone(),
        }
    }
    fn var(&self) -> f64 {
        self.w.iter().map(|x| x * x).sum()
    }
}

/// The exact output distribution of DDIM (η) or DPM-Solver++(2M) driven by the exact denoiser of
/// N(μ, s²) data: every update is affine in x_T and the step noises, so mean and variance follow
/// in closed form, written here from the papers' update rules independently of the samplers.
fn gaussian_chain(ab: &[f64], steps: &[usize], mu: f64, s2: f64, eta: Option<f64>) -> (f64, f64) {
    let desc: Vec<usize> = steps.iter().rev().copied().collect();
    let mut x = Affine {
        c: 0.0,
        w: vec![1.0],
    };
    let mut noises = 1;
    let x0_of = |x: &Affine, a: f64| {
        let v = a * s2 + 1.0 - a;
        x.plus(-a.sqrt() * mu).scale(a.sqrt() * s2 / v).plus(mu)
    };
    let lam = |a: f64| (a.sqrt() / (1.0 - a).sqrt()).ln();
    let (mut prev_x0, mut prev_h): (Option<Affine>, f64) = (None, 0.0);
    for (i, &t) in desc.iter().enumerate() {
        let a = ab[t];
        let x0 = x0_of(&x, a);
        if i + 1 == desc.len() && eta.is_none() {
            return (x0.c, x0.var());
        }
        let ap = if i + 1 < desc.len() {
            ab[desc[i + 1]]
        } else {
            1.0
        };
        let eps = x.add(&x0.scale(-a.sqrt())).scale(1.0 / (1.0 - a).sqrt());
        match eta {
            Some(e) => {
                let sigma = e * ((1.0 - ap) / (1.0 - a)).sqrt() * (1.0 - a / ap).max(0.0).sqrt();
                let mut nx = x0
                    .scale(ap.sqrt())
                    .add(&eps.scale((1.0 - ap - sigma * sigma).max(0.0).sqrt()));
                if sigma > 0.0 {
                    let mut w = vec![0.0; noises + 1];
                    w[noises] = sigma;
                    noises += 1;
                    nx = nx.add(&Affine { c: 0.0, w });
                }
                x = nx;
            }
            None => {
                let h = lam(ap) - lam(a);
                let d = match &prev_x0 {
                    Some(p) if i + 2 != desc.len() => {
                        let r = prev_h / h;
                        x0.scale(1.0 + 0.5 / r).add(&p.scale(-0.5 / r))
                    }
                    _ => x0.clone(),
                };
                x = x
                    .scale((1.0 - ap).sqrt() / (1.0 - a).sqrt())
                    .add(&d.scale(-ap.sqrt() * ((-h).exp() - 1.0)));
                prev_x0 = Some(x0);
                prev_h = h;
            }
        }
    }
    (x.c, x.var())
}

#[test]
fn samplers_reproduce_a_gaussian() {
    check_gaussian(&base(1000));
}

#[test]
fn samplers_reproduce_a_gaussian_on_a_continuous_schedule() {
    // VDM's linear-in-γ schedule discretized on 1000 points (a continuous-time model's chain):
    // the same samplers, the same guarantees.
    let g = crate::vdm::FixedGamma::Linear {
        gamma_min: -13.3,
        gamma_max: 5.0,
    };
    let s = crate::vdm::time::chain(&g, 1000).unwrap();
    check_gaussian(&GaussianDiffusion::new(
        s,
        Parameterization::Eps,
        VarianceType::FixedSmall,
    ));
}

/// Every sampler driven by the exact denoiser of N(0.5, 0.3²) on the chain of `d`.
fn check_gaussian(d: &GaussianDiffusion) {
    let d = d.clone();
    let (mu, s) = (0.5, 0.3);
    // The exact denoiser reads ᾱ by the network's time input (step i + 1 on a VDM chain).
    let sch = &d.schedule;
    let last = sch.network_time(sch.num_timesteps() - 1) as usize;
    let mut by_time = vec![1.0; last + 1];
    for (i, &a) in sch.alphas_cumprod.iter().enumerate() {
        by_time[sch.network_time(i) as usize] = a;
    }
    let model = ExactMixture {
        alphas_cumprod: by_time,
        comps: vec![(1.0, mu, s)],
        learned: None,
    };
    let n = 4000;
    let ab = &d.schedule.alphas_cumprod;
    // The exact distribution each sampler produces: the data's for the ancestral chains (the
    // 1000-step chain up to its O(β) error, the respaced one with the exact reverse variance);
    // the closed-form chain for DDIM and DPM-Solver++, whose few large steps shrink the variance
    // of this narrow Gaussian by up to ~30% (a property of the discretization, not of sampling).
    let t = 1000;
    let expected = [
        (mu, s * s),
        (mu, s * s),
        gaussian_chain(
            ab,
            &ddim::spaced_steps(t, 50, Spacing::Leading),
            mu,
            s * s,
            Some(0.0),
        ),
        gaussian_chain(
            ab,
            &ddim::spaced_steps(t, 50, Spacing::Trailing),
            mu,
            s * s,
            Some(1.0),
        ),
        gaussian_chain(
            ab,
            &ddim::spaced_steps(t, 20, Spacing::Linspace),
            mu,
            s * s,
            None,
        ),
    ];
    for ((name, mut f, _), (want_mean, want_var)) in samplers(&d).into_iter().zip(expected) {
        assert!(
            (want_var - s * s).abs() < 0.3 * s * s,
            "{name}: closed form {want_var}"
        );
        let (_, mean, var) = moments(f(&model, n, 1));
        // Plus 2% for the 1000-step chain's own O(β) error.
        assert_moments(name, (mean, var), (want_mean, want_var), n, (0.02, s));
    }
}

/// The sample mean and variance of `n` draws against a Gaussian's (`want`): within 5 standard
/// errors, plus a discretization allowance `(a, sd)` of a·sd on the mean and a·sd² on the
/// variance.
fn assert_moments(name: &str, got: (f64, f64), want: (f64, f64), n: usize, allow: (f64, f64)) {
    let ((mean, var), (want_mean, want_var), (a, sd)) = (got, want, allow);
    let tol_mean = 5.0 * (want_var / n as f64).sqrt() + a * sd;
    let tol_var = 5.0 * want_var * (2.0 / (n - 1) as f64).sqrt() + a * sd * sd;
    assert!(
        (mean - want_mean).abs() < tol_mean,
        "{name}: mean {mean} vs {want_mean}"
    );
    assert!(
        (var - want_var).abs() < tol_var,
        "{name}: var {var} vs {want_var}"
    );
}

#[test]
fn samplers_reproduce_a_two_gaussian_mixture() {
    let d = base(1000);
    let comps = vec![(0.3, -0.6, 0.1), (0.7, 0.6, 0.1)];
    let model = ExactMixture {
        alphas_cumprod: d.schedule.alphas_cumprod.clone(),
        comps: comps.clone(),
        learned: None,
    };
    let mean_true: f64 = comps.iter().map(|(p, m, _)| p * m).sum();
    let var_true: f64 = comps
        .iter()
        .map(|(p, m, s)| p * (s * s + m * m))
        .sum::<f64>()
        - mean_true * mean_true;
    let n = 4000;
    for (name, mut f, allow) in samplers(&d) {
        let (v, mean, var) = moments(f(&model, n, 2));
        let sd = var_true.sqrt();
        assert!(
            (mean - mean_true).abs() < 5.0 * sd / (n as f64).sqrt() + allow * sd,
            "{name}: mean {mean} vs {mean_true}"
        );
        // Variance of the sample variance: (μ4 − σ⁴)/n, bounded here by 2σ⁴/n·3.
        let tol_var = 5.0 * var_true * (6.0 / n as f64).sqrt() + allow * var_true;
        assert!(
            (var - var_true).abs() < tol_var,
            "{name}: var {var} vs {var_true}"
        );
        // The mixture weight: the share of samples in the left mode, a binomial proportion.
        let left = v.iter().filter(|&&x| x < 0.0).count() as f64 / n as f64;
        let se = (0.3f64 * 0.7 / n as f64).sqrt();
        assert!(
            (left - 0.3).abs() < 5.0 * se + allow,
            "{name}: left weight {left}"
        );
    }
}

#[test]
fn ancestral_sampler_follows_algorithm_2_line_by_line() {
    // Algorithm 2 of Ho et al. transcribed with σ_t² = β_t: x_T ~ N(0, I); for t = T..1:
    // z ~ N(0, I) if t > 1 else 0; x_{t−1} = 1/√α_t (x_t − (1−α_t)/√(1−ᾱ_t) ε_θ(x_t, t)) + σ_t z.
    let t_max = 100;
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", t_max, None, None).unwrap(),
        t_max,
        false,
    )
    .unwrap();
    let d = GaussianDiffusion::new(s.clone(), Parameterization::Eps, VarianceType::FixedLarge);
    let model = ExactMixture {
        alphas_cumprod: s.alphas_cumprod.clone(),
        comps: vec![(0.5, -0.5, 0.2), (0.5, 0.5, 0.2)],
        learned: None,
    };
    let n = 16;
    let ours: Vec<f64> = {
        let mut rng = Rng::new(9);
        let mut a = Ancestral::new(&d, &(0..t_max).collect::<Vec<_>>(), X0Clip::None);
        let x = sample_loop(&model, &mut a, [n, 1], &dev(), &mut rng, |_, _, _, _| {});
        x.into_data().convert::<f64>().try_into_vec().unwrap()
    };
    let mut rng = Rng::new(9);
    let mut x: Vec<f64> = rng.normal_f32(n).into_iter().map(|v| v as f64).collect();
    for t in (1..=t_max).rev() {
        let i = t - 1;
        let z: Vec<f64> = if t > 1 {
            rng.normal_f32(n).into_iter().map(|v| v as f64).collect()
        } else {
            vec![0.0; n]
        };
        let xt = Tensor::<2>::from_data(
            TensorData::new(x.iter().map(|&v| v as f32).collect::<Vec<_>>(), [n, 1]),
            &dev(),
        );
        let tt = Tensor::<1>::from_data(TensorData::new(vec![i as f32; n], [n]), &dev());
        let eps: Vec<f64> = crate::diffusion::Denoiser::forward(&model, xt, tt)
            .into_data()
            .convert::<f64>()
            .try_into_vec()
            .unwrap();
        let (a, ab, b) = (s.alphas[i], s.alphas_cumprod[i], s.betas[i]);
        for k in 0..n {
            x[k] = (x[k] - (1.0 - a) / (1.0 - ab).sqrt() * eps[k]) / a.sqrt() + b.sqrt() * z[k];
        }
    }
    for (o, r) in ours.iter().zip(&x) {
        assert!((o - r).abs() < 1e-3 * (1.0 + r.abs()), "{o} vs {r}");
    }
}

#[test]
fn same_seed_same_samples() {
    let d = base(200);
    let model = ExactMixture {
        alphas_cumprod: d.schedule.alphas_cumprod.clone(),
        comps: vec![(1.0, 0.0, 0.5)],
        learned: None,
    };
    let steps = ddim::spaced_steps(200, 10, Spacing::Linspace);
    let a = run(
        &model,
        &mut Ddim::new(&d, steps.clone(), 1.0, X0Clip::Clip),
        8,
        5,
    );
    let b = run(
        &model,
        &mut Ddim::new(&d, steps.clone(), 1.0, X0Clip::Clip),
        8,
        5,
    );
    let c = run(&model, &mut Ddim::new(&d, steps, 1.0, X0Clip::Clip), 8, 6);
    let v = |t: Tensor<2>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    assert_eq!(v(a.clone()), v(b));
    assert_ne!(v(a), v(c));
}

#[test]
fn spacings_pick_the_documented_steps() {
    assert_eq!(
        ddim::spaced_steps(1000, 4, Spacing::Leading),
        vec![0, 250, 500, 750]
    );
    assert_eq!(
        ddim::spaced_steps(1000, 4, Spacing::Trailing),
        vec![249, 499, 749, 999]
    );
    assert_eq!(
        ddim::spaced_steps(1000, 3, Spacing::Linspace),
        vec![0, 500, 999]
    );
}

#[test]
fn analytic_variance_is_the_exact_reverse_variance_for_gaussian_data() {
    // For N(μ, s²) data Γ_n = E‖ε̂‖²/d = (1 − ᾱ_n)/(ᾱ_n s² + 1 − ᾱ_n) exactly, and the best
    // reverse variance is β̃_n + coef1_n²·Var[x0 | x_n]: Analytic-DPM's closed form must agree.
    let d = base(1000);
    let s2 = 0.09;
    let kept = space_timesteps(1000, "50").unwrap();
    let chain = d.schedule.respace(&kept).unwrap();
    let gamma: Vec<f64> = chain
        .alphas_cumprod
        .iter()
        .map(|ab| (1.0 - ab) / (ab * s2 + 1.0 - ab))
        .collect();
    let got = crate::diffusion::analytic::analytic_variance(&chain, &gamma);
    for (n, g) in got.iter().enumerate() {
        let ab = chain.alphas_cumprod[n];
        let var_x0 = s2 * (1.0 - ab) / (ab * s2 + 1.0 - ab);
        let want = chain.posterior_variance[n] + chain.posterior_mean_coef1[n].powi(2) * var_x0;
        assert!(
            (g - want).abs() < 1e-12 * want.max(1e-12),
            "n={n}: {g} vs {want}"
        );
    }
}

#[test]
fn respaced_sampling_with_estimated_analytic_variance_recovers_the_data_variance() {
    let d = base(1000);
    let (mu, s) = (0.5, 0.3);
    let model = ExactMixture {
        alphas_cumprod: d.schedule.alphas_cumprod.clone(),
        comps: vec![(1.0, mu, s)],
        learned: None,
    };
    let kept = space_timesteps(1000, "50").unwrap();
    let sampler = Ancestral::new(&d, &kept, X0Clip::None);
    // Γ estimated by Monte Carlo on 2000 data draws.
    let mut rng = Rng::new(11);
    let x0: Vec<f32> = (0..2000).map(|_| (mu + s * rng.normal()) as f32).collect();
    let x0 = Tensor::<2>::from_data(TensorData::new(x0, [2000, 1]), &dev());
    let gamma = crate::diffusion::analytic::estimate_gamma(sampler.chain(), &model, x0, &mut rng);
    let var = crate::diffusion::analytic::analytic_variance(&sampler.chain().schedule, &gamma);
    let mut sampler = sampler.with_variance(var);
    let n = 4000;
    let (_, mean, v) = moments(run(&model, &mut sampler, n, 3));
    assert!(
        (mean - mu).abs() < 5.0 * s / (n as f64).sqrt(),
        "mean {mean}"
    );
    // Monte Carlo error of the sample variance plus that of the Γ estimate (2000 draws).
    assert!(
        (v - s * s).abs() < 5.0 * s * s * (2.0 / n as f64).sqrt() + 0.01 * s * s,
        "var {v}"
    );
}

/// The exact posterior p(k | x_t) of the 1-D mixture as a differentiable classifier: logits
/// ln π_k − ½ ln v_k − (x − √ᾱ_t μ_k)²/(2 v_k), v_k = ᾱ_t s_k² + 1 − ᾱ_t, written in tensor
/// operations so that guidance differentiates it like a trained network.
struct ExactPosterior {
    alphas_cumprod: Vec<f64>,
    comps: Vec<(f64, f64, f64)>,
}

impl NoisyLogits<2> for ExactPosterior {
    fn logits(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        let ts: Vec<f64> = t.into_data().convert::<f64>().try_into_vec().unwrap();
        let n = ts.len();
        let device = x_t.device();
        let cols: Vec<Tensor<2>> = self
            .comps
            .iter()
            .map(|&(pi, mu, s)| {
                let (mut mean, mut inv2v, mut c) = (vec![], vec![], vec![]);
                for &t in &ts {
                    let ab = self.alphas_cumprod[t as usize];
                    let v = ab * s * s + 1.0 - ab;
                    mean.push((ab.sqrt() * mu) as f32);
                    inv2v.push((0.5 / v) as f32);
                    c.push((pi.ln() - 0.5 * v.ln()) as f32);
                }
                let col = |v: Vec<f32>| {
                    Tensor::<2>::from_data(TensorData::new(v, [n, 1]), &device).autodiff()
                };
                let d = x_t.clone() - col(mean);
                col(c) - d.clone() * d * col(inv2v)
            })
            .collect();
        Tensor::cat(cols, 1)
    }
    fn classes(&self) -> usize {
        self.comps.len()
    }
}

/// ∂/∂x log p(y | x_t) of the mixture in closed form, in f64.
fn exact_grad(ab: f64, comps: &[(f64, f64, f64)], x: f64, y: usize) -> f64 {
    let terms: Vec<(f64, f64)> = comps
        .iter()
        .map(|&(pi, mu, s)| {
            let v = ab * s * s + 1.0 - ab;
            let m = ab.sqrt() * mu;
            let w = pi * (-(x - m) * (x - m) / (2.0 * v)).exp() / v.sqrt();
            (w, (x - m) / v)
        })
        .collect();
    let total: f64 = terms.iter().map(|t| t.0).sum();
    -terms[y].1 + terms.iter().map(|(w, d)| w / total * d).sum::<f64>()
}

#[test]
fn classifier_gradient_is_the_closed_form_posterior_score() {
    let d = base(1000);
    let comps = vec![(0.3, -0.6, 0.1), (0.7, 0.6, 0.1)];
    let guide = ClassifierGuide::new(
        ExactPosterior {
            alphas_cumprod: d.schedule.alphas_cumprod.clone(),
            comps: comps.clone(),
        },
        2.5,
    );
    let xs = [-1.3f32, -0.4, 0.0, 0.2, 0.9, 1.7];
    let ts = [0usize, 10, 200, 500, 800, 999];
    let x = Tensor::<2>::from_data(TensorData::new(xs.to_vec(), [6, 1]), &dev());
    let t = Tensor::<1>::from_data(
        TensorData::new(ts.iter().map(|&v| v as f32).collect::<Vec<_>>(), [6]),
        &dev(),
    );
    let labels = [0usize, 1, 0, 1, 0, 1];
    let g: Vec<f64> = ClassifierGradient::gradient(&guide, x, t, &labels)
        .into_data()
        .convert::<f64>()
        .try_into_vec()
        .unwrap();
    for i in 0..6 {
        let want = 2.5
            * exact_grad(
                d.schedule.alphas_cumprod[ts[i]],
                &comps,
                xs[i] as f64,
                labels[i],
            );
        assert!(
            (g[i] - want).abs() < 1e-3 * want.abs().max(1.0),
            "x {} t {}: {} vs {want}",
            xs[i],
            ts[i],
            g[i]
        );
    }
}

#[test]
fn guidance_corrects_every_parameterization_by_the_same_noise() {
    // Whatever the network predicts, the corrected output implies ε̂ − √(1−ᾱ_t)·g.
    let s = base(1000).schedule;
    for p in [
        Parameterization::Eps,
        Parameterization::X0,
        Parameterization::V,
    ] {
        for variance in [VarianceType::FixedSmall, VarianceType::Learned] {
            let d = GaussianDiffusion::new(s.clone(), p, variance);
            let c = if variance.is_learned() { 4 } else { 2 };
            let mut rng = Rng::new(5);
            let mk = |rng: &mut Rng, c: usize| {
                Tensor::<2>::from_data(TensorData::new(rng.normal_f32(3 * c), [3, c]), &dev())
            };
            let (x, out, g) = (mk(&mut rng, 2), mk(&mut rng, c), mk(&mut rng, 2));
            for t in [0usize, 300, 999] {
                let tv = vec![t; 3];
                let fixed = classifier_guidance::eps_corrected(&d, t, out.clone(), g.clone());
                let (mean, var) = d.split_output(fixed);
                let (mean0, var0) = d.split_output(out.clone());
                let eps = p.to_eps(&s, x.clone(), &tv, mean);
                let want = p.to_eps(&s, x.clone(), &tv, mean0)
                    - g.clone() * (1.0 - s.alphas_cumprod[t]).sqrt();
                let diff: f32 = (eps - want).abs().max().into_scalar();
                assert!(diff < 2e-3, "{p:?} t {t}: {diff}");
                if let (Some(a), Some(b)) = (var, var0) {
                    let dv: f32 = (a - b).abs().max().into_scalar();
                    assert_eq!(dv, 0.0, "the variance channels stay");
                }
            }
        }
    }
}

#[test]
fn guidance_leaves_a_zero_terminal_snr_step_finite() {
    // ᾱ = 0 at the last step of a zero-terminal-SNR chain: the corrected output stays finite
    // (it is the output itself) for every parameterization.
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", 100, None, None).unwrap(),
        100,
        true,
    )
    .unwrap();
    assert_eq!(s.alphas_cumprod[99], 0.0);
    for p in [
        Parameterization::Eps,
        Parameterization::X0,
        Parameterization::V,
    ] {
        let d = GaussianDiffusion::new(s.clone(), p, VarianceType::FixedSmall);
        let out = Tensor::<2>::from_floats([[0.3, -1.2]], &dev());
        let g = Tensor::<2>::from_floats([[2.0, 0.0]], &dev());
        let fixed = classifier_guidance::eps_corrected(&d, 99, out.clone(), g.clone());
        let v: Vec<f32> = fixed.into_data().convert::<f32>().try_into_vec().unwrap();
        assert_eq!(v, [0.3, -1.2], "{p:?}");
        let inside = classifier_guidance::eps_corrected(&d, 98, out.clone(), g);
        let v: Vec<f32> = inside.into_data().convert::<f32>().try_into_vec().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()) && v[0] != 0.3,
            "{p:?}: {v:?}"
        );
    }
}

#[test]
fn classifier_guidance_at_scale_one_samples_the_requested_component() {
    // With an exact classifier and s = 1, ∇log p(x_t) + ∇log p(y | x_t) = ∇log p(x_t | y): the
    // guided chain samples component y alone (Dhariwal & Nichol §4.1). ε-correction samplers
    // follow that score exactly; the ancestral mean shift to first order in the step.
    let d = base(1000);
    let comps = vec![(0.3, -0.6, 0.1), (0.7, 0.6, 0.1)];
    let model = ExactMixture {
        alphas_cumprod: d.schedule.alphas_cumprod.clone(),
        comps: comps.clone(),
        learned: None,
    };
    let guide = ClassifierGuide::new(
        ExactPosterior {
            alphas_cumprod: d.schedule.alphas_cumprod.clone(),
            comps: comps.clone(),
        },
        1.0,
    );
    let n = 2000;
    let t = d.num_timesteps();
    let full: Vec<usize> = (0..t).collect();
    let ab = &d.schedule.alphas_cumprod;
    let ddim_steps = ddim::spaced_steps(t, 50, Spacing::Leading);
    let dpm_steps = ddim::spaced_steps(t, 20, Spacing::Linspace);
    for y in [0usize, 1] {
        let labels = vec![y; n];
        let g: &dyn ClassifierGradient<2> = &guide;
        let (_, mu, sd) = comps[y];
        let go = |smp: &mut dyn FnMut(&mut Rng) -> Tensor<2>| smp(&mut Rng::new(3 + y as u64));
        // Each sampler against what it makes of component y's exact score: the data for the
        // 1000-step ancestral chain (up to its O(β) error), the closed-form chain for DDIM and
        // DPM-Solver++ (their large steps shrink this narrow Gaussian's variance).
        let cases: Vec<(&str, Tensor<2>, (f64, f64), f64)> = vec![
            (
                "ancestral-1000",
                go(&mut |rng| {
                    let mut smp = Ancestral::new(&d, &full, X0Clip::None);
                    let shape = [n, 1];
                    sample_loop_guided(
                        &model,
                        &mut smp,
                        shape,
                        Some((g, &labels)),
                        &dev(),
                        rng,
                        |_, _, _, _| {},
                    )
                }),
                (mu, sd * sd),
                0.05,
            ),
            (
                "ddim-50",
                go(&mut |rng| {
                    let mut smp = Ddim::new(&d, ddim_steps.clone(), 0.0, X0Clip::None);
                    let shape = [n, 1];
                    sample_loop_guided(
                        &model,
                        &mut smp,
                        shape,
                        Some((g, &labels)),
                        &dev(),
                        rng,
                        |_, _, _, _| {},
                    )
                }),
                gaussian_chain(ab, &ddim_steps, mu, sd * sd, Some(0.0)),
                0.02,
            ),
            (
                "dpmpp2m-20",
                go(&mut |rng| {
                    let mut smp = DpmSolverPp2M::new(&d, dpm_steps.clone(), X0Clip::None);
                    let shape = [n, 1];
                    sample_loop_guided(
                        &model,
                        &mut smp,
                        shape,
                        Some((g, &labels)),
                        &dev(),
                        rng,
                        |_, _, _, _| {},
                    )
                }),
                gaussian_chain(ab, &dpm_steps, mu, sd * sd, None),
                0.02,
            ),
        ];
        for (name, x, (want_mean, want_var), allow) in cases {
            let (v, mean, var) = moments(x);
            // All samples in component y's mode (the other is 12 sd away).
            let wrong = v.iter().filter(|&&x| (x - mu).abs() > 0.6).count();
            assert_eq!(
                wrong, 0,
                "{name}, class {y}: {wrong} samples outside the class"
            );
            assert_moments(
                &format!("{name}, class {y}"),
                (mean, var),
                (want_mean, want_var),
                n,
                (allow, sd),
            );
        }
    }
}

#[test]
fn stronger_classifier_guidance_raises_the_class_posterior() {
    // Scales above one sharpen toward p(y | x)^s: the classifier's confidence in the requested
    // class grows with s on the same noise.
    let d = base(1000);
    let comps = vec![(0.5, -0.3, 0.3), (0.5, 0.3, 0.3)];
    let model = ExactMixture {
        alphas_cumprod: d.schedule.alphas_cumprod.clone(),
        comps: comps.clone(),
        learned: None,
    };
    let n = 1000;
    let labels = vec![1usize; n];
    let mut last = 0.0;
    for s in [0.0, 1.0, 4.0] {
        let guide = ClassifierGuide::new(
            ExactPosterior {
                alphas_cumprod: d.schedule.alphas_cumprod.clone(),
                comps: comps.clone(),
            },
            s,
        );
        let steps = ddim::spaced_steps(1000, 50, Spacing::Leading);
        let mut smp = Ddim::new(&d, steps, 0.0, X0Clip::None);
        let mut rng = Rng::new(8);
        let g: &dyn ClassifierGradient<2> = &guide;
        let x = sample_loop_guided(
            &model,
            &mut smp,
            [n, 1],
            Some((g, &labels)),
            &dev(),
            &mut rng,
            |_, _, _, _| {},
        );
        let (v, _, _) = moments(x);
        // The mean posterior of class 1 at t = 0, in closed form per sample.
        let post: f64 = v
            .iter()
            .map(|&x| {
                let l = |mu: f64| (-(x - mu) * (x - mu) / (2.0 * 0.09)).exp();
                l(0.3) / (l(0.3) + l(-0.3))
            })
            .sum::<f64>()
            / n as f64;
        assert!(
            post > last + 0.02,
            "s {s}: mean p(y | x) {post} after {last}"
        );
        last = post;
    }
}

#[test]
fn log_snr_spacing_is_even_in_log_snr_and_keeps_distinct_steps() {
    use crate::sample::ddim::spaced_steps_on;
    // A chain whose log SNR falls slowly then steeply (as a learned VDM schedule's): even steps
    // in log SNR crowd where it falls.
    let t = 1000;
    let snr: Vec<f64> = (0..t)
        .map(|i| {
            let u = (i + 1) as f64 / t as f64;
            (12.0 - 4.0 * u - 14.0 * u.powi(6)).exp()
        })
        .collect();
    let steps = spaced_steps_on(&snr, 20, Spacing::LogSnr);
    assert_eq!(steps.len(), 20);
    assert_eq!((steps[0], steps[19]), (0, t - 1));
    assert!(steps.windows(2).all(|w| w[1] > w[0]));
    let lam: Vec<f64> = steps.iter().map(|&i| snr[i].ln()).collect();
    let want = (lam[0] - lam[19]) / 19.0;
    for w in lam.windows(2) {
        // Each gap is the even one up to the chain's own resolution near there.
        assert!((w[0] - w[1] - want).abs() < 0.05 * want + 0.2, "{lam:?}");
    }
    // More of the steps lie in the steep last third of the chain than uniform spacing puts there.
    assert!(steps.iter().filter(|&&s| s > 666).count() > 10, "{steps:?}");
    // Asking for every step gives every step; other spacings are unchanged.
    assert_eq!(
        spaced_steps_on(&snr, t, Spacing::LogSnr),
        (0..t).collect::<Vec<_>>()
    );
    assert_eq!(
        spaced_steps_on(&snr, 10, Spacing::Leading),
        ddim::spaced_steps(t, 10, Spacing::Leading)
    );
}
