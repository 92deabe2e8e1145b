//! Tests of the diffusion math against independent computations, in f64 tensors.

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::likelihood::*;
use super::losses::*;
use super::parameterization::*;
use super::*;
use crate::rng::Rng;
use crate::schedule::{BetaSchedule, NoiseSchedule};

fn dev() -> Device {
    Device::flex()
}

fn tensor(vals: Vec<f64>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(vals, shape), (&dev(), DType::F64))
}

fn normal(rng: &mut Rng, shape: [usize; 2]) -> Tensor<2> {
    let mut v = vec![0.0; shape[0] * shape[1]];
    rng.fill_normal(&mut v);
    tensor(v, shape)
}

fn host(x: Tensor<2>) -> Vec<f64> {
    x.into_data_as::<f64>().try_to_vec::<f64>().unwrap()
}

fn all_schedules(t: usize) -> Vec<(String, NoiseSchedule)> {
    let mut out: Vec<(String, NoiseSchedule)> =
        ["linear", "quadratic", "sigmoid", "cosine", "constant"]
            .iter()
            .map(|n| {
                let k = BetaSchedule::named(n, t, None, None).unwrap();
                (n.to_string(), NoiseSchedule::new(&k, t, false).unwrap())
            })
            .collect();
    let custom: Vec<f64> = (0..t)
        .map(|i| 0.01 + 0.1 * (i as f64 / t as f64).powi(2))
        .collect();
    out.push((
        "custom".into(),
        NoiseSchedule::new(&BetaSchedule::Custom(custom), t, false).unwrap(),
    ));
    out
}

fn diffusion(s: NoiseSchedule, p: Parameterization, v: VarianceType) -> GaussianDiffusion {
    GaussianDiffusion::new(s, p, v)
}

#[test]
fn forward_steps_agree_with_closed_form_kernel() {
    // Chain q(x_t|x_{t−1}) t times from a fixed x0 and compare sample mean and variance with
    // q(x_t|x_0) = N(√ᾱ_t x0, 1−ᾱ_t); tolerances are 5 standard errors of the estimators.
    let n = 20_000;
    let t_max = 100;
    for (name, s) in all_schedules(t_max) {
        let d = diffusion(s.clone(), Parameterization::Eps, VarianceType::FixedSmall);
        let mut rng = Rng::new(11);
        let x0 = 0.7;
        let mut x = tensor(vec![x0; n], [n, 1]);
        for step in 0..t_max {
            let noise = normal(&mut rng, [n, 1]);
            x = d.q_step_sample(x, &vec![step; n], noise);
            if [0, 9, 49, 99].contains(&step) {
                let v = host(x.clone());
                let mean = v.iter().sum::<f64>() / n as f64;
                let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                let want_mean = s.sqrt_alphas_cumprod[step] * x0;
                let want_var = 1.0 - s.alphas_cumprod[step];
                let se_mean = (want_var / n as f64).sqrt();
                let se_var = want_var * (2.0 / (n - 1) as f64).sqrt();
                assert!(
                    (mean - want_mean).abs() < 5.0 * se_mean,
                    "{name} t={step} mean {mean} vs {want_mean}"
                );
                assert!(
                    (var - want_var).abs() < 5.0 * se_var,
                    "{name} t={step} var {var} vs {want_var}"
                );
                // The closed-form draw has the same moments.
                let q = d.q_mean_variance(tensor(vec![x0], [1, 1]), &[step]);
                assert!((host(q.mean)[0] - want_mean).abs() < 1e-12);
                assert!((host(q.variance)[0] - want_var).abs() < 1e-12);
            }
        }
    }
}

fn log_normal(x: f64, mean: f64, var: f64) -> f64 {
    -0.5 * ((2.0 * std::f64::consts::PI * var).ln() + (x - mean).powi(2) / var)
}

#[test]
fn posterior_is_the_bayes_product() {
    // q(x_{t−1}|x_t,x0) = q(x_t|x_{t−1}) q(x_{t−1}|x0) / q(x_t|x0), compared as log densities at
    // random points with each factor written out from its definition.
    for (name, s) in all_schedules(50) {
        let d = diffusion(s.clone(), Parameterization::Eps, VarianceType::FixedSmall);
        let mut rng = Rng::new(3);
        for t in 1..50 {
            let (x0, xt, xprev) = (rng.normal(), rng.normal(), rng.normal());
            let bayes = log_normal(xt, (1.0 - s.betas[t]).sqrt() * xprev, s.betas[t])
                + log_normal(
                    xprev,
                    s.alphas_cumprod[t - 1].sqrt() * x0,
                    1.0 - s.alphas_cumprod[t - 1],
                )
                - log_normal(
                    xt,
                    s.alphas_cumprod[t].sqrt() * x0,
                    1.0 - s.alphas_cumprod[t],
                );
            let post = d.q_posterior(tensor(vec![x0], [1, 1]), tensor(vec![xt], [1, 1]), &[t]);
            let ours = log_normal(xprev, host(post.mean)[0], host(post.variance)[0]);
            assert!(
                (bayes - ours).abs() < 1e-9 * (1.0 + bayes.abs()),
                "{name} t={t}: {bayes} vs {ours}"
            );
        }
    }
}

#[test]
fn mean_through_eps_equals_posterior_mean() {
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", 1000, None, None).unwrap(),
        1000,
        false,
    )
    .unwrap();
    let d = diffusion(s, Parameterization::Eps, VarianceType::FixedSmall);
    let mut rng = Rng::new(1);
    let n = 1000;
    let t: Vec<usize> = (0..n).collect();
    let x0 = normal(&mut rng, [n, 4]);
    let eps = normal(&mut rng, [n, 4]);
    let xt = d.q_sample(x0.clone(), &t, eps.clone());
    let via_eps = host(d.mean_from_eps(xt.clone(), &t, eps));
    let direct = host(d.q_posterior(x0, xt, &t).mean);
    for (a, b) in via_eps.iter().zip(&direct) {
        assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    }
}

#[test]
fn parameterization_conversions_round_trip() {
    let s = NoiseSchedule::new(
        &BetaSchedule::named("cosine", 1000, None, None).unwrap(),
        1000,
        false,
    )
    .unwrap();
    let mut rng = Rng::new(2);
    let n = 500;
    let t: Vec<usize> = (0..n).map(|i| i * 2).collect();
    let x0 = normal(&mut rng, [n, 3]);
    let eps = normal(&mut rng, [n, 3]);
    let d = diffusion(s.clone(), Parameterization::Eps, VarianceType::FixedSmall);
    let xt = d.q_sample(x0.clone(), &t, eps.clone());
    let close = |a: Tensor<2>, b: Tensor<2>, tol: f64| {
        for (x, y) in host(a).iter().zip(host(b)) {
            assert!((x - y).abs() < tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    };
    close(
        x0_from_eps(&s, xt.clone(), &t, eps.clone()),
        x0.clone(),
        1e-9,
    );
    close(
        eps_from_x0(&s, xt.clone(), &t, x0.clone()),
        eps.clone(),
        1e-9,
    );
    let v = v_from(&s, x0.clone(), eps.clone(), &t);
    close(x0_from_v(&s, xt.clone(), &t, v.clone()), x0.clone(), 1e-12);
    close(
        eps_from_v(&s, xt.clone(), &t, v.clone()),
        eps.clone(),
        1e-12,
    );
    for p in [
        Parameterization::Eps,
        Parameterization::X0,
        Parameterization::V,
    ] {
        let target = p.target(&s, x0.clone(), eps.clone(), &t);
        close(
            p.to_x0(&s, xt.clone(), &t, target.clone()),
            x0.clone(),
            1e-9,
        );
        close(p.to_eps(&s, xt.clone(), &t, target), eps.clone(), 1e-9);
    }
}

#[test]
fn normal_kl_matches_monte_carlo() {
    let mut rng = Rng::new(9);
    for (m1, lv1, m2, lv2) in [
        (0.3f64, -0.5f64, -0.2f64, 0.4f64),
        (1.0, 0.0, 0.0, 0.0),
        (-2.0, -3.0, -1.5, -2.0),
    ] {
        let n = 200_000;
        let s1 = (lv1 / 2.0).exp();
        let mut samples = vec![0.0; n];
        rng.fill_normal(&mut samples);
        let ratios: Vec<f64> = samples
            .iter()
            .map(|z| {
                let x = m1 + s1 * z;
                log_normal(x, m1, lv1.exp()) - log_normal(x, m2, lv2.exp())
            })
            .collect();
        let mc = ratios.iter().sum::<f64>() / n as f64;
        let sd = (ratios.iter().map(|r| (r - mc).powi(2)).sum::<f64>() / n as f64).sqrt();
        let one = |v: f64| tensor(vec![v], [1, 1]);
        let kl = host(normal_kl(one(m1), one(lv1), one(m2), one(lv2)))[0];
        assert!(
            (kl - mc).abs() < 5.0 * sd / (n as f64).sqrt() + 1e-12,
            "{kl} vs {mc}"
        );
    }
}

fn grid() -> Vec<f64> {
    (0..256).map(|k| 2.0 * k as f64 / 255.0 - 1.0).collect()
}

#[test]
fn decoder_bins_sum_to_one_and_edges_behave() {
    let mut rng = Rng::new(4);
    for _ in 0..50 {
        let mean = 1.5 * rng.normal();
        let log_scale = -4.0 + 4.0 * rng.uniform();
        let x = tensor(grid(), [256, 1]);
        let lp = host(discretized_gaussian_log_likelihood(
            x,
            tensor(vec![mean; 256], [256, 1]),
            tensor(vec![log_scale; 256], [256, 1]),
        ));
        let total: f64 = lp.iter().map(|l| l.exp()).sum();
        // Each bin mass is accurate to ~1e-5 relative (see the function's numerics note).
        assert!(
            (total - 1.0).abs() < 2e-5,
            "mean {mean} log_scale {log_scale}: {total}"
        );
    }
    let one = |v: f64| tensor(vec![v], [1, 1]);
    // A mean far below −1 puts all mass in the open bottom bin, far above in the top bin.
    let p = |x: f64, m: f64, ls: f64| {
        host(discretized_gaussian_log_likelihood(one(x), one(m), one(ls)))[0]
    };
    assert!(p(-1.0, -5.0, -2.0).abs() < 1e-6);
    assert!(p(1.0, 5.0, -2.0).abs() < 1e-6);
    // Far tails get their true log-probability, not a clamp: z = 100 standard deviations away
    // gives log Q(z) ≈ −z²/2 − log(z√(2π)) (Mills ratio, relative error ~1/z²).
    let mills = |z: f64| -z * z / 2.0 - (z * (2.0 * std::f64::consts::PI).sqrt()).ln();
    let sigma = 0.01f64;
    let lo = (1.0 - 1.0 / 255.0 - 0.0) / sigma;
    let top = p(1.0, 0.0, sigma.ln());
    assert!(
        (top - mills(lo)).abs() < 1e-3 * mills(lo).abs(),
        "{top} vs {}",
        mills(lo)
    );
    let mid = p(grid()[200], -0.5, sigma.ln());
    let z_lo = (grid()[200] - 1.0 / 255.0 + 0.5) / sigma;
    assert!(
        mid.is_finite() && mid < mills(z_lo) + 1.0 && mid > mills(z_lo) - 1.0,
        "{mid}"
    );
    // A sharp Gaussian centred on an interior bin puts all its mass there.
    assert!(p(grid()[100], grid()[100], -10.0).abs() < 1e-6);
}

/// A denoiser that knows the batch's x0 and returns the exact ε for it: then p_θ equals the
/// true posterior (fixed-small variance).
struct Oracle {
    x0: Tensor<2>,
    schedule: NoiseSchedule,
}

impl Denoiser<2> for Oracle {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        let t: Vec<usize> = t
            .into_data_as::<f64>()
            .try_to_vec::<f64>()
            .unwrap()
            .iter()
            .map(|&v| v as usize)
            .collect();
        eps_from_x0(&self.schedule, x_t, &t, self.x0.clone())
    }
}

#[test]
fn oracle_model_makes_every_kl_term_zero() {
    let t_max = 100;
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", t_max, None, None).unwrap(),
        t_max,
        false,
    )
    .unwrap();
    let d = diffusion(s.clone(), Parameterization::Eps, VarianceType::FixedSmall);
    let mut rng = Rng::new(5);
    let b = 4;
    let vals: Vec<f64> = (0..b * 16).map(|_| grid()[rng.below(256)]).collect();
    let x0 = tensor(vals, [b, 16]);
    let oracle = Oracle {
        x0: x0.clone(),
        schedule: s,
    };
    let r = calc_bpd_loop(&d, &oracle, x0, X0Clip::None, &mut rng, |_| {});
    for i in 0..b {
        for t in 1..t_max {
            assert!(r.vb[i][t].abs() < 1e-9, "sample {i} t {t}: {}", r.vb[i][t]);
        }
        assert!(r.vb[i][0] > 0.0);
        let want = r.prior_bpd[i] + r.vb[i][0];
        assert!((r.total_bpd[i] - want).abs() < 1e-9);
        assert!(r.mse[i].iter().all(|m| *m < 1e-12));
    }
}

#[test]
fn prior_term_matches_closed_form() {
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", 10, Some(0.1), Some(0.2)).unwrap(),
        10,
        false,
    )
    .unwrap();
    let d = diffusion(s.clone(), Parameterization::Eps, VarianceType::FixedSmall);
    let x0 = tensor(vec![0.5, -1.0], [1, 2]);
    let got = super::likelihood::to_vec(prior_bpd(&d, x0))[0];
    let ab = s.alphas_cumprod[9];
    assert!(ab > 0.05, "the test needs a prior term well away from zero");
    // KL(N(√ᾱ x, 1−ᾱ) ‖ N(0,1)) = ½(ᾱx² + (1−ᾱ) − 1 − ln(1−ᾱ)), averaged over dims, in bits.
    let kl = |x: f64| 0.5 * (ab * x * x + (1.0 - ab) - 1.0 - (1.0 - ab).ln());
    let want = (kl(0.5) + kl(-1.0)) / 2.0 / std::f64::consts::LN_2;
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn vlb_weighting_turns_target_mse_into_the_kl_term() {
    // λ_t·‖Δε‖² (and its x0 / v counterparts) equals KL(q posterior ‖ p_θ) for a fixed σ_t² = β̃_t.
    let t_max = 200;
    let s = NoiseSchedule::new(
        &BetaSchedule::named("cosine", t_max, None, None).unwrap(),
        t_max,
        false,
    )
    .unwrap();
    for p in [
        Parameterization::Eps,
        Parameterization::X0,
        Parameterization::V,
    ] {
        let d = diffusion(s.clone(), p, VarianceType::FixedSmall);
        let w = Weighting::Vlb.table(&d);
        let mut rng = Rng::new(6);
        let n = t_max - 1;
        let t: Vec<usize> = (1..t_max).collect();
        let x0 = normal(&mut rng, [n, 8]);
        let eps = normal(&mut rng, [n, 8]);
        let xt = d.q_sample(x0.clone(), &t, eps.clone());
        let target = p.target(&s, x0.clone(), eps.clone(), &t);
        let out = target.clone() + normal(&mut rng, [n, 8]) * 0.1;
        let mse = super::likelihood::to_vec(mean_flat((out.clone() - target).powf_scalar(2.0)));
        let post = d.q_posterior(x0, xt.clone(), &t);
        let pm = d.p_mean_variance(out, xt, &t, X0Clip::None);
        let kl = normal_kl(
            post.mean,
            post.log_variance.expand([n, 8]),
            pm.params.mean,
            pm.params.log_variance.expand([n, 8]),
        );
        let kl = super::likelihood::to_vec(mean_flat(kl));
        for i in 0..n {
            let want = kl[i];
            let got = w[t[i]] * mse[i];
            assert!(
                (got - want).abs() < 1e-8 * (1.0 + want.abs()),
                "{p:?} t={}: {got} vs {want}",
                t[i]
            );
        }
    }
}

#[test]
fn weightings_have_their_defining_values() {
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", 1000, None, None).unwrap(),
        1000,
        false,
    )
    .unwrap();
    let eps = diffusion(s.clone(), Parameterization::Eps, VarianceType::FixedSmall);
    let x0 = diffusion(s.clone(), Parameterization::X0, VarianceType::FixedSmall);
    let v = diffusion(s.clone(), Parameterization::V, VarianceType::FixedSmall);
    let ms = Weighting::MinSnr { gamma: 5.0 };
    for t in [0, 10, 500, 999] {
        let snr = s.alphas_cumprod[t] / (1.0 - s.alphas_cumprod[t]);
        assert!((ms.table(&x0)[t] - snr.min(5.0)).abs() < 1e-9 * snr.max(1.0));
        assert!((ms.table(&eps)[t] - snr.min(5.0) / snr).abs() < 1e-12);
        assert!((ms.table(&v)[t] - snr.min(5.0) / (snr + 1.0)).abs() < 1e-12);
        let p2 = Weighting::P2 { k: 1.0, gamma: 0.5 };
        assert!((p2.table(&eps)[t] - 1.0 / (1.0 + snr).sqrt()).abs() < 1e-12);
        assert_eq!(Weighting::None.table(&v)[t], 1.0);
    }
}

#[test]
fn learned_range_interpolates_between_posterior_and_beta() {
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", 100, None, None).unwrap(),
        100,
        false,
    )
    .unwrap();
    let d = diffusion(s.clone(), Parameterization::Eps, VarianceType::LearnedRange);
    let t = vec![5, 50];
    let like = tensor(vec![0.0; 4], [2, 2]);
    for (v, want) in [
        (-1.0, s.posterior_log_variance_clipped.clone()),
        (1.0, s.betas.iter().map(|b| b.ln()).collect()),
    ] {
        let (_, lv) = d.variance_from(Some(tensor(vec![v; 4], [2, 2])), &t, &like);
        let lv = host(lv);
        assert!((lv[0] - want[5]).abs() < 1e-12 && (lv[2] - want[50]).abs() < 1e-12);
    }
    let (_, mid) = d.variance_from(Some(tensor(vec![0.0; 4], [2, 2])), &t, &like);
    let want = 0.5 * (s.posterior_log_variance_clipped[5] + s.betas[5].ln());
    assert!((host(mid)[0] - want).abs() < 1e-12);
    let learned = diffusion(s, Parameterization::Eps, VarianceType::Learned);
    let (var, _) = learned.variance_from(Some(tensor(vec![-2.0; 4], [2, 2])), &t, &like);
    assert!((host(var)[0] - (-2.0f64).exp()).abs() < 1e-15);
}

#[test]
fn fixed_large_uses_beta_with_posterior_at_first_step() {
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", 100, None, None).unwrap(),
        100,
        false,
    )
    .unwrap();
    let d = diffusion(s.clone(), Parameterization::Eps, VarianceType::FixedLarge);
    let (v, lv) = d.fixed_variance_table().unwrap();
    assert_eq!(v[0], s.posterior_variance[1]);
    assert_eq!(v[42], s.betas[42]);
    assert_eq!(lv[42], s.betas[42].ln());
}

#[test]
fn hybrid_loss_stops_the_mean_gradient_in_the_vlb_term() {
    let dev = Device::flex().autodiff();
    let s = NoiseSchedule::new(
        &BetaSchedule::named("linear", 100, None, None).unwrap(),
        100,
        false,
    )
    .unwrap();
    let d = diffusion(s, Parameterization::Eps, VarianceType::LearnedRange);
    let mut rng = Rng::new(8);
    let mk = |rng: &mut Rng, c: usize| {
        let mut v = vec![0.0; 3 * c];
        rng.fill_normal(&mut v);
        Tensor::<2>::from_data(TensorData::new(v, [3, c]), (&dev, DType::F64))
    };
    let x0 = mk(&mut rng, 2);
    let noise = mk(&mut rng, 2);
    let t = vec![0, 40, 99];
    let xt = d.q_sample(x0.clone(), &t, noise.clone());
    let raw = mk(&mut rng, 4);
    let grad_of = |kind: LossKind| {
        let out = raw.clone().require_grad();
        let cfg = LossConfig {
            kind,
            weighting: Weighting::None,
        };
        let l = d.training_losses(&cfg, out.clone(), x0.clone(), xt.clone(), &t, noise.clone());
        let grads = l.loss.sum().backward();
        out.grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f64>()
            .unwrap()
    };
    let simple = grad_of(LossKind::Simple);
    let hybrid = grad_of(LossKind::Hybrid { lambda: 0.001 });
    for row in 0..3 {
        for c in 0..2 {
            // Mean channels: identical gradients — the VLB term does not reach them.
            assert_eq!(simple[row * 4 + c], hybrid[row * 4 + c]);
        }
        // Variance channels: only the VLB term trains them.
        assert_eq!(simple[row * 4 + 2], 0.0);
        assert!(hybrid[row * 4 + 2] != 0.0);
    }
}

#[test]
fn dynamic_thresholding_rescales_only_samples_beyond_the_range() {
    // Sample 0 lies in [−1, 1]: s = max(1, q) = 1 leaves it unchanged. Sample 1 reaches ±4 with
    // its 50th percentile of |x| at 2: it is clipped to [−2, 2] and divided by 2.
    let x = tensor(vec![0.5, -0.9, 0.1, 0.3, 1.0, -2.0, 3.0, -4.0], [2, 4]);
    let y = host(apply_clip(x, X0Clip::Dynamic(0.5)));
    let want = [0.5, -0.9, 0.1, 0.3, 0.5, -1.0, 1.0, -1.0];
    for (a, b) in y.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{y:?}");
    }
}

/// The exact ε-predictor of N(0, s²) data: a fixed model with no weights.
struct GaussianEps {
    alphas_cumprod: Vec<f64>,
    s2: f64,
}

impl Denoiser<2> for GaussianEps {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        let t: Vec<f64> = t.into_data().convert::<f64>().try_into_vec().unwrap();
        let k: Vec<f64> = t
            .iter()
            .map(|&ti| {
                let ab = self.alphas_cumprod[ti as usize];
                (1.0 - ab).sqrt() / (ab * self.s2 + 1.0 - ab)
            })
            .collect();
        let b = k.len();
        x_t * Tensor::<2>::from_data(TensorData::new(k, [b, 1]), (&dev(), DType::F64))
    }
}

#[test]
fn bits_per_dim_match_an_independent_float64_computation() {
    // tests/fixtures/make_bpd_fixture.py computes the same bound in numpy, with the same noise
    // stream and the exact normal CDF for L_0.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bpd.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let t_max = fx["timesteps"].as_u64().unwrap() as usize;
    let kind = BetaSchedule::Linear {
        beta_start: fx["beta_start"].as_f64().unwrap(),
        beta_end: fx["beta_end"].as_f64().unwrap(),
    };
    let s = NoiseSchedule::new(&kind, t_max, false).unwrap();
    let d = diffusion(s.clone(), Parameterization::Eps, VarianceType::FixedLarge);
    let codes: Vec<Vec<f64>> = serde_json::from_value(fx["codes"].clone()).unwrap();
    let (b, dim) = (codes.len(), codes[0].len());
    let x0: Vec<f64> = codes
        .iter()
        .flatten()
        .map(|c| c * 2.0 / 255.0 - 1.0)
        .collect();
    let model = GaussianEps {
        alphas_cumprod: s.alphas_cumprod.clone(),
        s2: fx["data_variance"].as_f64().unwrap(),
    };
    let mut rng = Rng::new(fx["seed"].as_u64().unwrap());
    let r = calc_bpd_loop(
        &d,
        &model,
        tensor(x0, [b, dim]),
        X0Clip::None,
        &mut rng,
        |_| {},
    );
    let want_vb: Vec<Vec<f64>> = serde_json::from_value(fx["vb"].clone()).unwrap();
    let want_mse: Vec<Vec<f64>> = serde_json::from_value(fx["mse"].clone()).unwrap();
    let close = |a: f64, b: f64, rel: f64| (a - b).abs() <= rel * b.abs().max(1e-12);
    for i in 0..b {
        // L_0 goes through the erfc fit (fractional error < 1.2e-7 per tail), the rest is exact.
        assert!(
            close(r.vb[i][0], want_vb[i][0], 1e-5),
            "L_0 of {i}: {} vs {}",
            r.vb[i][0],
            want_vb[i][0]
        );
        for t in 1..t_max {
            assert!(
                close(r.vb[i][t], want_vb[i][t], 1e-9),
                "L_{t} of {i}: {} vs {}",
                r.vb[i][t],
                want_vb[i][t]
            );
            assert!(close(r.mse[i][t], want_mse[i][t], 1e-9));
        }
        assert!(close(
            r.prior_bpd[i],
            fx["prior_bpd"][i].as_f64().unwrap(),
            1e-9
        ));
        assert!(close(
            r.total_bpd[i],
            fx["total_bpd"][i].as_f64().unwrap(),
            1e-6
        ));
    }
}
