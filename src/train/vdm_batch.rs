//! One micro-batch of VDM training: the diffusion loss with γ(t) and its weight as leaves of the
//! network's graph (so one backward pass also yields what a learned schedule learns from), the
//! bound's end terms for the log, all in bits per dimension.

use burn::tensor::{Device, Gradients, Tensor, TensorData};

use crate::vdm::LossTimes;
use crate::vdm::bound::{Decoder, EndTerms, end_terms};
use crate::vdm::loss::{ScheduleSignal, diffusion_losses};

/// A micro-batch's times, leaves and end terms.
pub struct VdmBatch {
    times: LossTimes,
    gamma: Tensor<1>,
    weight: Tensor<1>,
    network_times: Tensor<1>,
    ends: EndTerms,
    /// nats → bits per dimension.
    per_nat: f64,
}

impl VdmBatch {
    /// Leaves for γ(t) and the weight (tracked when the schedule is `learned`); the prior and
    /// decoder terms of the host images `x` (rows of `item`) with the decoder noise `eps0`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        times: LossTimes,
        learned: bool,
        device: &Device,
        x: &[f32],
        eps0: &[f32],
        item: usize,
        ends: (f64, f64),
        decoder: Decoder,
    ) -> Self {
        let n = times.t.len();
        let leaf = |v: &[f64]| {
            let t = Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), device);
            if learned { t.require_grad() } else { t }
        };
        let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        Self {
            gamma: leaf(&times.gamma),
            weight: leaf(&times.weight),
            network_times: Tensor::<1>::from_data(
                TensorData::new(times.network_times(), [n]),
                device,
            ),
            ends: end_terms(&wide(x), &wide(eps0), item, ends, decoder),
            per_nat: 1.0 / (item as f64 * std::f64::consts::LN_2),
            times,
        }
    }

    /// Each example's diffusion loss in bits/dim; `net(z_t, network times)` predicts ε.
    pub fn losses<const D: usize>(
        &self,
        x0: Tensor<D>,
        eps: Tensor<D>,
        net: impl Fn(Tensor<D>, Tensor<1>) -> Tensor<D>,
    ) -> Tensor<1> {
        let t = self.network_times.clone();
        diffusion_losses(x0, eps, self.gamma.clone(), self.weight.clone(), |z| {
            net(z, t)
        }) * self.per_nat
    }

    /// Each example's bound in bits/dim: prior + decoder + the given diffusion losses.
    pub fn bound(&self, diffusion: &[f64]) -> Vec<f64> {
        diffusion
            .iter()
            .enumerate()
            .map(|(i, d)| d + (self.ends.prior[i] + self.ends.decoder[i]) * self.per_nat)
            .collect()
    }

    /// What the learned schedule learns from this micro-batch, given the backward pass of a
    /// loss that summed the examples' `diffusion` losses divided by `total`.
    pub fn signal(&self, grads: &Gradients, diffusion: Vec<f64>, total: f64) -> ScheduleSignal {
        let host = |t: &Tensor<1>| -> Vec<f64> {
            t.grad(grads)
                .map(|g| {
                    g.into_data()
                        .convert::<f64>()
                        .try_into_vec::<f64>()
                        .unwrap_or_default()
                })
                .unwrap_or_else(|| vec![0.0; self.times.t.len()])
                .into_iter()
                .map(|g| g * total)
                .collect()
        };
        ScheduleSignal::from_batch(
            &self.times,
            diffusion,
            &host(&self.gamma),
            &host(&self.weight),
            (
                self.ends.d_gamma0 * self.per_nat,
                self.ends.d_gamma1 * self.per_nat,
            ),
            total,
        )
    }
}
