//! The continuous-time diffusion loss and the gradients that learn the schedule (Kingma et al.
//! 2021, §5 and Appendix I.2). The network sees γ(t_i) and γ'(t_i) as leaves of its graph, so
//! one backward pass gives both the network's gradient and, per example, ∂L_i/∂γ(t_i) and
//! ∂L_i/∂γ'(t_i); the schedule's gradients then follow by the chain rule through the small γ
//! network alone — no second forward of the denoiser:
//! - its interior minimizes the variance of the loss estimator: ∇_η E[L²] =
//!   E[2L·(∂L/∂γ ∇_η γ + ∂L/∂γ' ∇_η γ')] (the mean of L_∞ does not depend on the interior);
//! - its endpoints minimize the bound itself: E[∂L/∂γ ∇γ + ∂L/∂γ' ∇γ'] plus the prior and
//!   reconstruction terms' own gradients.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use super::learned::LearnedGamma;
use crate::train::params::named_grads;

/// Per-example losses L_i = ½ γ'(t_i)‖ε_i − ε̂(z_{t_i}; t_i)‖², z_t = α_t x + σ_t ε with
/// α² = sigmoid(−γ), σ² = sigmoid(γ); `gamma` and `dgamma` are `[B]`, `eps_hat(z_t)` the
/// network's prediction.
pub fn diffusion_losses<const D: usize>(
    x0: Tensor<D>,
    eps: Tensor<D>,
    gamma: Tensor<1>,
    dgamma: Tensor<1>,
    eps_hat: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<1> {
    let b = x0.dims()[0];
    let mut shape = [1i64; D];
    shape[0] = b as i64;
    let alpha = burn::tensor::activation::sigmoid(gamma.clone().neg()).sqrt();
    let sigma = burn::tensor::activation::sigmoid(gamma).sqrt();
    let z = x0 * alpha.reshape(shape) + eps.clone() * sigma.reshape(shape);
    let err = (eps - eps_hat(z)).powf_scalar(2.0);
    let per: Tensor<2> = err.reshape([b as i64, -1]);
    per.sum_dim(1).reshape([b]) * dgamma * 0.5
}

/// ∇_η Σ_i (c_i·γ(t_i) + d_i·γ'(t_i)) for the learned schedule, by name: the chain rule from
/// per-example derivatives with respect to γ(t_i) and γ'(t_i) (`c`, `d`) to the schedule's
/// parameters. `schedule` must live on an autodiff device.
pub fn schedule_grads(
    schedule: &LearnedGamma,
    t: &[f64],
    c: &[f64],
    d: &[f64],
) -> BTreeMap<String, Tensor<1>> {
    let (device, dtype) = (schedule.device(), schedule.dtype());
    let n = t.len();
    let host =
        |v: &[f64]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), (&device, dtype));
    let (g, dg) = schedule.gamma(host(t));
    let objective = (g * host(c)).sum() + (dg * host(d)).sum();
    named_grads(schedule, &objective.backward())
}

/// The per-example signal one backward pass of the network's loss leaves for the schedule.
#[derive(Debug, Clone)]
pub struct ScheduleSignal {
    /// The times t_i.
    pub t: Vec<f64>,
    /// L_i.
    pub loss: Vec<f64>,
    /// ∂L_i/∂γ(t_i).
    pub d_gamma: Vec<f64>,
    /// ∂L_i/∂γ'(t_i).
    pub d_dgamma: Vec<f64>,
}

impl ScheduleSignal {
    /// The gradient of the mean squared loss (1/B)Σ L_i² — the loss estimator's second moment,
    /// whose interior gradient is that of its variance.
    pub fn variance_grads(&self, schedule: &LearnedGamma) -> BTreeMap<String, Tensor<1>> {
        let w: Vec<f64> = self.loss.iter().map(|l| 2.0 * l).collect();
        self.weighted_grads(schedule, &w)
    }

    /// The gradient of the mean loss (1/B)Σ L_i with respect to the schedule.
    pub fn mean_grads(&self, schedule: &LearnedGamma) -> BTreeMap<String, Tensor<1>> {
        self.weighted_grads(schedule, &vec![1.0; self.t.len()])
    }

    /// ∇_η (1/B)Σ_i w_i·L_i with the weights w_i held constant.
    fn weighted_grads(&self, schedule: &LearnedGamma, w: &[f64]) -> BTreeMap<String, Tensor<1>> {
        let n = self.t.len() as f64;
        let scale = |d: &[f64]| -> Vec<f64> { w.iter().zip(d).map(|(w, g)| w * g / n).collect() };
        schedule_grads(
            schedule,
            &self.t,
            &scale(&self.d_gamma),
            &scale(&self.d_dgamma),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::train::params::map_params;
    use burn::tensor::{DType, Device};

    fn host(t: Tensor<1>) -> Vec<f64> {
        t.into_data().convert::<f64>().try_into_vec().unwrap()
    }

    /// A small fixed denoiser: ε̂(z) = tanh(0.8·z + 0.3·z²)·1.1, applied element-wise.
    fn denoiser(z: Tensor<2>) -> Tensor<2> {
        (z.clone() * 0.8 + z.powf_scalar(2.0) * 0.3).tanh() * 1.1
    }

    /// Fixed samples: x (4 dims), ε and t for `n` examples.
    fn samples(n: usize, dev: &Device) -> (Tensor<2>, Tensor<2>, Vec<f64>) {
        let mut rng = Rng::new(17);
        let mut normal = |k: usize| {
            let mut v = vec![0.0f64; k];
            rng.fill_normal(&mut v);
            Tensor::<2>::from_data(TensorData::new(v, [n, 4]), (dev, DType::F64))
        };
        let (x, e) = (normal(n * 4), normal(n * 4));
        let t = super::super::gamma::sample_times(n, true, &mut rng);
        (x, e, t)
    }

    /// The per-example losses with the schedule in the graph (no leaves).
    fn losses(s: &LearnedGamma, x: Tensor<2>, e: Tensor<2>, t: &[f64]) -> Vec<f64> {
        let dev = x.device();
        let tt = Tensor::<1>::from_data(TensorData::new(t.to_vec(), [t.len()]), (&dev, DType::F64));
        let (g, dg) = s.gamma(tt);
        host(diffusion_losses(x, e, g, dg, denoiser))
    }

    #[test]
    fn the_variance_gradient_is_the_derivative_of_the_second_moment() {
        let dev = Device::flex().autodiff();
        dev.seed(5);
        let n = 16;
        let (x, e, t) = samples(n, &dev);
        // Randomize the schedule's interior so that every weight matters.
        let mut rng = Rng::new(3);
        // In f64, so that finite differences are not drowned by rounding.
        let schedule = map_params(LearnedGamma::new(-6.0, 6.0, &dev), |_, p| {
            let k = p.dims()[0];
            let mut noise = vec![0.0f64; k];
            rng.fill_normal(&mut noise);
            let d = p.device();
            p.cast(DType::F64)
                + Tensor::<1>::from_data(TensorData::new(noise, [k]), (&d, DType::F64)) * 0.5
        });
        // The trick: γ(t_i) and γ'(t_i) as leaves of the loss's graph.
        let tt = Tensor::<1>::from_data(TensorData::new(t.clone(), [n]), (&dev, DType::F64));
        let (g, dg) = schedule.gamma(tt);
        let g_leaf = g.detach().require_grad();
        let dg_leaf = dg.detach().require_grad();
        let l = diffusion_losses(
            x.clone(),
            e.clone(),
            g_leaf.clone(),
            dg_leaf.clone(),
            denoiser,
        );
        let grads = l.clone().sum().backward();
        let signal = ScheduleSignal {
            t: t.clone(),
            loss: host(l.detach()),
            d_gamma: host(g_leaf.grad(&grads).unwrap()),
            d_dgamma: host(dg_leaf.grad(&grads).unwrap()),
        };
        let var_grads = signal.variance_grads(&schedule);
        let mean_grads = signal.mean_grads(&schedule);
        // Central differences of M(η) = (1/n)Σ L_i² and m(η) = (1/n)Σ L_i along each
        // parameter tensor, in a random direction v: ∇M·v against (M(η + hv) − M(η − hv))/2h.
        let moment = |s: &LearnedGamma, p: u32| -> f64 {
            losses(s, x.clone(), e.clone(), &t)
                .iter()
                .map(|l| l.powi(p as i32))
                .sum::<f64>()
                / n as f64
        };
        let mut dir = Rng::new(9);
        for name in var_grads.keys() {
            let len = var_grads[name].dims()[0];
            let mut v = vec![0.0f64; len];
            dir.fill_normal(&mut v);
            let h = 1e-5;
            let shifted = |sign: f64| {
                map_params(schedule.clone(), |pn, p| {
                    if pn == name {
                        let step: Vec<f64> = v.iter().map(|x| x * h * sign).collect();
                        let d = p.device();
                        p + Tensor::<1>::from_data(TensorData::new(step, [len]), (&d, DType::F64))
                    } else {
                        p
                    }
                })
            };
            let (up, down) = (shifted(1.0), shifted(-1.0));
            let dot =
                |g: &Tensor<1>| -> f64 { host(g.clone()).iter().zip(&v).map(|(a, b)| a * b).sum() };
            for (p, grads, what) in [(2, &var_grads, "second moment"), (1, &mean_grads, "mean")] {
                let fd = (moment(&up, p) - moment(&down, p)) / (2.0 * h);
                let an = dot(&grads[name]);
                assert!(
                    (fd - an).abs() < 1e-5 * fd.abs().max(an.abs()) + 1e-7,
                    "{what}, {name}: trick {an} vs finite difference {fd}"
                );
            }
        }
    }
}
