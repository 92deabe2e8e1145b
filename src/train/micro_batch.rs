//! One micro-batch of Algorithm 1: images x_0 from the data, their timesteps t and noise ε,
//! the class rows of a conditional model. Every rank draws the whole micro-batch from the same
//! generators and keeps its own rows, so N ranks train as one process does.

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::loader::Batch;
use crate::rng::Rng;

/// The timesteps of a micro-batch, for every one of its rows (all ranks').
#[derive(Debug, Clone, PartialEq)]
pub struct Times {
    /// Each example's step of the chain, 0-based (for VDM the chain step its time falls in,
    /// which the log's loss quartiles use).
    pub steps: Vec<usize>,
    /// Each example's importance weight (1 unless the timestep sampler weights them).
    pub weights: Vec<f64>,
    /// VDM: each example's time in (0, 1].
    pub continuous: Option<Vec<f64>>,
    /// EDM: each example's noise level σ.
    pub sigmas: Option<Vec<f64>>,
}

/// This rank's rows of a micro-batch, on the training device.
pub struct MicroBatch<const D: usize> {
    /// x_0, `[rows, item…]`.
    pub x0: Tensor<D>,
    /// ε, like `x0`.
    pub noise: Tensor<D>,
    /// The timesteps of every row of the micro-batch (all ranks').
    pub times: Times,
    /// This rank's rows of the micro-batch.
    pub rows: Range<usize>,
    /// A class-conditional model's one-hot class rows (`[rows, classes + 1]`).
    pub cond: Option<Tensor<2>>,
    /// Values per item.
    pub item: usize,
    /// VDM: what the prior and decoder terms take, on the host.
    pub vdm_ends: Option<VdmEnds>,
}

/// A VDM micro-batch's host values for the bound's end terms.
pub struct VdmEnds {
    /// This rank's x_0.
    pub x: Vec<f32>,
    /// The decoder's noise for them.
    pub eps0: Vec<f32>,
}

impl<const D: usize> MicroBatch<D> {
    /// This rank's rows `rows` of the data `batch` with the timesteps `times`: draws ε (and a
    /// VDM batch's decoder noise) for the whole micro-batch from `noise`, in that order.
    pub fn new(
        batch: Batch,
        times: Times,
        noise: &mut Rng,
        rows: Range<usize>,
        cond: Option<Tensor<2>>,
        device: &Device,
    ) -> Self {
        let micro = batch.shape[0];
        let mut shape: [usize; D] = batch.shape.clone().try_into().expect("batch rank");
        let item: usize = shape[1..].iter().product();
        let noise_all = noise.normal_f32(micro * item);
        let vdm = times.continuous.is_some();
        let eps0_all = vdm.then(|| noise.normal_f32(micro * item));
        shape[0] = rows.len();
        // This rank's rows (all of them, without a copy, on one process).
        let mine = |v: Vec<f32>| {
            if rows.len() == micro {
                v
            } else {
                v[rows.start * item..rows.end * item].to_vec()
            }
        };
        let vdm_ends = eps0_all.map(|e| VdmEnds {
            x: mine(batch.data.clone()),
            eps0: mine(e),
        });
        Self {
            x0: Tensor::<D>::from_data(TensorData::new(mine(batch.data), shape), device),
            noise: Tensor::<D>::from_data(TensorData::new(mine(noise_all), shape), device),
            cond: cond.map(|c| c.narrow(0, rows.start, rows.len())),
            times,
            rows,
            item,
            vdm_ends,
        }
    }

    /// This rank's timesteps (0-based steps of the chain).
    pub fn steps(&self) -> &[usize] {
        &self.times.steps[self.rows.clone()]
    }

    /// This rank's importance weights.
    pub fn weights(&self) -> &[f64] {
        &self.times.weights[self.rows.clone()]
    }

    /// This rank's EDM noise levels (empty for other objectives).
    pub fn sigmas(&self) -> &[f64] {
        self.times
            .sigmas
            .as_deref()
            .map(|s| &s[self.rows.clone()])
            .unwrap_or_default()
    }

    /// This rank's VDM times (empty for the DDPM chain).
    pub fn continuous_times(&self) -> &[f64] {
        self.times
            .continuous
            .as_deref()
            .map(|t| &t[self.rows.clone()])
            .unwrap_or_default()
    }
}

/// The one-hot class rows of a micro-batch's `labels`, each replaced by the null class with
/// probability `drop`, drawn from `rng`.
pub fn class_rows(
    labels: &[usize],
    classes: usize,
    drop: f64,
    rng: &mut Rng,
    device: &Device,
) -> Tensor<2> {
    let rows: Vec<usize> = labels
        .iter()
        .map(|&y| {
            if rng.uniform() < drop {
                classes
            } else {
                y.min(classes - 1)
            }
        })
        .collect();
    crate::model::one_hot(&rows, classes + 1, device)
}
