//! The trained state of one network and the two halves of a step on it: the gradient of a
//! micro-batch's loss, and the update (clipping, AdamW, the finite check, the EMA).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use super::micro_batch::MicroBatch;
use super::objective::Objective;
use crate::diffusion::Denoiser;
use crate::model::precision::Precision;
use crate::optim::adamw::{AdamW, clip_factor};
use crate::optim::ema::Ema;
use crate::optim::power_ema::PowerEma;
use crate::store::params::{named_grads, named_params};

/// Named gradients (or their sums), flattened.
pub type Grads = BTreeMap<String, Tensor<1>>;

/// A network with its optimizer and weight average.
pub struct Learner<M> {
    /// The network being trained (with autodiff); taken out only for the moment of an update,
    /// so that AdamW owns the only reference and burn updates the weights in place.
    model: Option<M>,
    /// Its optimizer.
    pub opt: AdamW,
    /// Its weights' moving average.
    pub ema: Ema,
    /// Post-hoc EMA's power-function averages (none unless the run tracks them).
    pub power: Vec<PowerEma>,
    /// The precision of the forward and backward passes.
    pub precision: Precision,
}

/// What one micro-batch contributes to a step.
pub struct MicroStep {
    /// The gradient of the micro-batch's share of the step's loss.
    pub grads: Grads,
    /// A learned schedule's gradients.
    pub schedule_grads: Option<Grads>,
    /// Each of this rank's examples' loss as the log reports it (for VDM the whole bound).
    pub losses: Vec<f64>,
}

/// How a micro-batch's loss is scaled so that a step's gradients sum to the gradient of the
/// mean loss over its whole batch.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// Micro-batches per step.
    pub accum: usize,
    /// Examples per micro-batch (all ranks').
    pub micro: usize,
    /// With several ranks each takes its rows' sum over the whole count (the gradients are
    /// summed across them); one process takes its micro-batch's mean.
    pub distributed: bool,
}

/// Why an update was refused: the step diverged.
#[derive(Debug, Clone, PartialEq)]
pub enum Diverged {
    /// The gradients' global norm is not finite.
    GradientNorm(f64),
    /// A parameter is not finite after the update.
    Weights {
        /// The parameter.
        name: String,
        /// The learning rate of the update.
        lr: f64,
        /// The gradient norm of the update.
        grad_norm: f64,
    },
}

impl Diverged {
    /// What went wrong at `step`.
    pub fn at_step(&self, step: u64) -> String {
        match self {
            Self::GradientNorm(norm) => format!(
                "non-finite gradient norm ({norm}) at step {step}: the gradients overflow (a loss \
                 weight such as --hybrid-lambda, or the loss itself, is too large)"
            ),
            Self::Weights {
                name,
                lr,
                grad_norm,
            } => format!(
                "non-finite weights after the update of step {step} (parameter {name}; learning \
                 rate {lr}, gradient norm {grad_norm})"
            ),
        }
    }
}

impl<M> Learner<M> {
    /// A learner for `model`.
    pub fn new(model: M, opt: AdamW, ema: Ema, precision: Precision) -> Self {
        Self {
            model: Some(model),
            opt,
            ema,
            power: Vec::new(),
            precision,
        }
    }

    /// The network.
    pub fn model(&self) -> &M {
        self.model
            .as_ref()
            .expect("the network is in place between updates")
    }

    /// Replaces the network by `f` of it (restoring its weights, say).
    pub fn map_model<E>(&mut self, f: impl FnOnce(M) -> Result<M, E>) -> Result<(), E> {
        let model = self
            .model
            .take()
            .expect("the network is in place between updates");
        self.model = Some(f(model)?);
        Ok(())
    }
}

impl<M: Module + Clone> Learner<M> {
    /// Backpropagates the loss of this rank's rows of `batch` under `objective`, scaled by
    /// `share`.
    pub fn micro_step<const D: usize>(
        &self,
        objective: &Objective,
        batch: &MicroBatch<D>,
        share: Share,
    ) -> MicroStep
    where
        M: Denoiser<D>,
    {
        let model = self.model();
        let working = self.precision.working_copy(model);
        let net = |x: Tensor<D>, time: Tensor<1>| {
            self.precision.forward(model, working.as_ref(), x, |m, x| {
                m.forward_cond(x, time.clone(), batch.cond.clone())
            })
        };
        let losses = objective.losses(batch, net);
        let rows = batch.rows.len();
        let device = batch.x0.device();
        let w = Tensor::<1>::from_data(TensorData::new(batch.weights().to_vec(), [rows]), &device);
        let diffusion: Vec<f64> = losses
            .per_example
            .clone()
            .detach()
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap_or_default();
        let reported = losses.reported(&diffusion);
        let weighted = losses.per_example.clone() * w;
        let loss = if share.distributed {
            weighted.sum() / (share.micro * share.accum) as f64
        } else {
            weighted.mean() / share.accum as f64
        };
        let backward = loss.backward();
        let grads = named_grads(model, &backward);
        let total = (share.micro * share.accum) as f64;
        MicroStep {
            grads,
            schedule_grads: losses.schedule_grads(objective, &backward, diffusion, total),
            losses: reported,
        }
    }

    /// One update along the summed gradients `grads` with learning rate `lr`, clipped to a
    /// global norm of `clip`: AdamW, then the EMA. Returns the gradient norm before clipping.
    pub fn update(&mut self, grads: Grads, lr: f64, clip: Option<f64>) -> Result<f64, Diverged> {
        let (factor, grad_norm) = clip_factor(&grads, clip.filter(|c| *c > 0.0));
        if !grad_norm.is_finite() {
            // Clipping by an infinite norm would zero the update: every step would "train".
            return Err(Diverged::GradientNorm(grad_norm));
        }
        let model = self
            .model
            .take()
            .expect("the network is in place between updates");
        self.model = Some(self.opt.step(model, &grads, lr, factor));
        drop(grads);
        if let Some(name) = first_non_finite(self.model()) {
            return Err(Diverged::Weights {
                name,
                lr,
                grad_norm,
            });
        }
        let current = named_params(self.model())
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect();
        self.ema.update(&current);
        for p in &mut self.power {
            p.update(&current);
        }
        Ok(grad_norm)
    }
}

/// Adds `more` into `sum`, parameter by parameter.
pub fn accumulate(sum: &mut Grads, more: Grads) {
    for (name, g) in more {
        let total = match sum.remove(&name) {
            Some(acc) => acc + g,
            None => g,
        };
        sum.insert(name, total);
    }
}

/// The name of the first parameter holding a NaN or an infinity, if any: one device reduction
/// per parameter (0·x sums to 0 exactly when every x is finite) and one read-back.
fn first_non_finite<M: Module>(model: &M) -> Option<String> {
    let named = named_params(model);
    let probes: Vec<Tensor<1>> = named
        .values()
        .map(|p| (p.value.clone() * 0.0).sum())
        .collect();
    if probes.is_empty() {
        return None;
    }
    let sums = Tensor::cat(probes, 0)
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap_or_default();
    named
        .keys()
        .zip(&sums)
        .find(|(_, s)| !s.is_finite())
        .map(|(k, _)| k.clone())
}
