//! The continuous-time diffusion loss and the gradients that learn the schedule (Kingma et al.
//! 2021, §5 and Appendix I.2). The network sees γ(t_i) and γ'(t_i) as leaves of its graph, so
//! one backward pass gives both the network's gradient and, per example, ∂L_i/∂γ(t_i) and
//! ∂L_i/∂γ'(t_i); the schedule's gradients then follow by the chain rule through the small γ
//! network alone — no second forward of the denoiser:
//! - its interior minimizes the variance of the loss estimator: ∇_η E\[L²\] =
//!   E[2L·(∂L/∂γ ∇_η γ + ∂L/∂γ' ∇_η γ')] (the mean of L_∞ does not depend on the interior);
//! - its endpoints minimize the bound itself: E[∂L/∂γ ∇γ + ∂L/∂γ' ∇γ'] plus the prior and
//!   reconstruction terms' own gradients.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use super::learned::LearnedGamma;
use crate::store::params::named_grads;

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

/// ∇_η [Σ_i (c_i·γ(t_i) + d_i·γ'(t_i)) + e₀·γ(0) + e₁·γ(1)] for the learned schedule, by
/// name: the chain rule from derivatives with respect to γ and γ' at the times `t` (and to the
/// endpoints) to the schedule's parameters, by one backward pass through the γ network.
pub fn schedule_grads(
    schedule: &LearnedGamma,
    t: &[f64],
    c: &[f64],
    d: &[f64],
    ends: (f64, f64),
) -> BTreeMap<String, Tensor<1>> {
    let (device, dtype) = (schedule.device(), schedule.dtype());
    let n = t.len();
    let host =
        |v: &[f64]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), (&device, dtype));
    let (g, dg) = schedule.gamma(host(t));
    let (g0, g1) = schedule.endpoints_t();
    let objective =
        (g * host(c)).sum() + (dg * host(d)).sum() + g0.sum() * ends.0 + g1.sum() * ends.1;
    named_grads(schedule, &objective.backward())
}

/// What one batch tells the learned schedule: each example's loss and the derivatives of that
/// loss with respect to γ (and γ') at the times it used.
#[derive(Debug, Clone, Default)]
pub struct ScheduleSignal {
    /// Each example's diffusion loss L_i (the variance gradient weights by 2·L_i).
    pub loss: Vec<f64>,
    /// (example, time, ∂L_i/∂γ(time), ∂L_i/∂γ'(time)).
    pub terms: Vec<(usize, f64, f64, f64)>,
    /// Σ over the examples of ∂/∂γ₀ and ∂/∂γ₁ of the prior and decoder terms.
    pub ends: (f64, f64),
    /// What the sums are divided by: the examples of the whole batch, on every process.
    pub total: f64,
    /// From the discrete-time loss L_T, whose mean depends on the whole schedule.
    pub discrete: bool,
}

impl ScheduleSignal {
    /// The signal of one batch: per-example losses, their derivatives with respect to the γ and
    /// the weight each used (`d_gamma`, `d_weight`), and the endpoint terms' summed derivatives.
    /// In discrete time the weight T·expm1(γ(t) − γ(s)) passes its derivative on to γ(t) and
    /// γ(s); in continuous time the weight is γ'(t) itself.
    pub fn from_batch(
        times: &super::time::LossTimes,
        loss: Vec<f64>,
        d_gamma: &[f64],
        d_weight: &[f64],
        ends: (f64, f64),
        total: f64,
    ) -> Self {
        let mut terms = Vec::with_capacity(2 * loss.len());
        for i in 0..loss.len() {
            match &times.prev {
                None => terms.push((i, times.t[i], d_gamma[i], d_weight[i])),
                Some((s, _)) => {
                    // d/dγ of T·(e^{γ_t − γ_s} − 1) = ±(weight + T).
                    let steps = 1.0 / (times.t[i] - s[i]).max(f64::MIN_POSITIVE);
                    let k = d_weight[i] * (times.weight[i] + steps);
                    terms.push((i, times.t[i], d_gamma[i] + k, 0.0));
                    terms.push((i, s[i], -k, 0.0));
                }
            }
        }
        Self {
            loss,
            terms,
            ends,
            total,
            discrete: times.prev.is_some(),
        }
    }

    /// ∇_η of the estimator's second moment E\[L²\] (the interior's objective).
    pub fn variance_grads(&self, schedule: &LearnedGamma) -> BTreeMap<String, Tensor<1>> {
        let w: Vec<f64> = self.loss.iter().map(|l| 2.0 * l).collect();
        self.weighted_grads(schedule, &w, (0.0, 0.0))
    }

    /// ∇_η of the bound E\[L\] + prior + decoder (the endpoints' objective).
    pub fn mean_grads(&self, schedule: &LearnedGamma) -> BTreeMap<String, Tensor<1>> {
        let ends = (self.ends.0 / self.total, self.ends.1 / self.total);
        self.weighted_grads(schedule, &vec![1.0; self.loss.len()], ends)
    }

    /// The schedule's update direction. Continuous time: the bound's gradient for the endpoint
    /// parameters, the second moment's for the rest (L_∞'s mean does not depend on them). Discrete
    /// time: the bound's gradient for all (L_T's mean depends on the whole schedule).
    pub fn grads(&self, schedule: &LearnedGamma) -> BTreeMap<String, Tensor<1>> {
        if self.discrete {
            return self.mean_grads(schedule);
        }
        let mut out = self.variance_grads(schedule);
        for (name, g) in self.mean_grads(schedule) {
            if super::learned::ENDPOINT_PARAMS.contains(&name.as_str()) {
                out.insert(name, g);
            }
        }
        out
    }

    fn weighted_grads(
        &self,
        schedule: &LearnedGamma,
        w: &[f64],
        ends: (f64, f64),
    ) -> BTreeMap<String, Tensor<1>> {
        let t: Vec<f64> = self.terms.iter().map(|x| x.1).collect();
        let scale = |f: fn(&(usize, f64, f64, f64)) -> f64| -> Vec<f64> {
            self.terms
                .iter()
                .map(|x| w[x.0] * f(x) / self.total)
                .collect()
        };
        schedule_grads(schedule, &t, &scale(|x| x.2), &scale(|x| x.3), ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::store::params::map_params;
    use crate::vdm::time::{LossTimes, Time};
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

    /// The per-example losses with the schedule in the graph (no leaves): the weight γ'(t), or
    /// T·(exp(γ(t) − γ(t − 1/T)) − 1).
    fn losses(s: &LearnedGamma, x: Tensor<2>, e: Tensor<2>, t: &[f64], time: Time) -> Vec<f64> {
        let dev = x.device();
        let at =
            |v: Vec<f64>| Tensor::<1>::from_data(TensorData::new(v, [t.len()]), (&dev, DType::F64));
        let (g, dg) = s.gamma(at(t.to_vec()));
        let w = match time {
            Time::Continuous => dg,
            Time::Discrete(steps) => {
                let (gs, _) = s.gamma(at(t.iter().map(|t| t - 1.0 / steps as f64).collect()));
                ((g.clone() - gs).exp() - 1.0) * steps as f64
            }
        };
        host(diffusion_losses(x, e, g, w, denoiser))
    }

    /// A made-up endpoint term f(γ₀, γ₁) = 0.7γ₀ + 0.2γ₁² and its gradient.
    fn end_term(s: &LearnedGamma) -> (f64, (f64, f64)) {
        let (g0, g1) = s.endpoints();
        (0.7 * g0 + 0.2 * g1 * g1, (0.7, 0.4 * g1))
    }

    #[test]
    fn the_variance_gradient_is_the_derivative_of_the_second_moment() {
        for time in [Time::Continuous, Time::Discrete(8)] {
            check_schedule_gradients(time);
        }
    }

    fn check_schedule_gradients(time: Time) {
        let dev = Device::flex().autodiff();
        dev.seed(5);
        let n = 16;
        let (x, e, t) = samples(n, &dev);
        let t = time
            .draw(n, true, &mut Rng::new(8))
            .into_iter()
            .zip(t)
            .map(|(a, _)| a)
            .collect::<Vec<_>>();
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
        // The trick: γ(t_i) and the weight as leaves of the loss's graph, evaluated on the host.
        let lt = LossTimes::new(time, &schedule, t.clone());
        let leaf = |v: &[f64]| {
            Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), (&dev, DType::F64))
                .require_grad()
        };
        let (g_leaf, w_leaf) = (leaf(&lt.gamma), leaf(&lt.weight));
        let l = diffusion_losses(
            x.clone(),
            e.clone(),
            g_leaf.clone(),
            w_leaf.clone(),
            denoiser,
        );
        let grads = l.clone().sum().backward();
        let (_, ends) = end_term(&schedule);
        let signal = ScheduleSignal::from_batch(
            &lt,
            host(l.detach()),
            &host(g_leaf.grad(&grads).unwrap()),
            &host(w_leaf.grad(&grads).unwrap()),
            (ends.0 * n as f64, ends.1 * n as f64),
            n as f64,
        );
        let var_grads = signal.variance_grads(&schedule);
        let mean_grads = signal.mean_grads(&schedule);
        let update = signal.grads(&schedule);
        // Central differences of M(η) = (1/n)Σ L_i² and m(η) = (1/n)Σ L_i + f(γ₀, γ₁) along
        // each parameter tensor, in a random direction v: ∇M·v against (M(η + hv) − M(η − hv))/2h.
        let moment = |s: &LearnedGamma, p: u32| -> f64 {
            let m = losses(s, x.clone(), e.clone(), &t, time)
                .iter()
                .map(|l| l.powi(p as i32))
                .sum::<f64>()
                / n as f64;
            if p == 1 { m + end_term(s).0 } else { m }
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
                    "{time:?}, {what}, {name}: trick {an} vs finite difference {fd}"
                );
            }
            // The update takes the bound's gradient at the endpoints (everywhere in discrete
            // time), the variance's inside.
            let want = if time != Time::Continuous
                || crate::vdm::learned::ENDPOINT_PARAMS.contains(&name.as_str())
            {
                &mean_grads
            } else {
                &var_grads
            };
            assert_eq!(host(update[name].clone()), host(want[name].clone()));
        }
    }
}
