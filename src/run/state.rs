//! What `state.json` holds besides tensors: the step, the random generators, the data position,
//! the timestep sampler and the update counts a run continues from bit-identically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, TimestepSamplerName};
use crate::data::loader::Position;
use crate::diffusion::timestep_sampler::TimestepSampler;
use crate::rng::Rng;

/// What `state.json` holds: everything besides tensors needed to continue bit-identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Draws timesteps.
    pub rng_t: Rng,
    /// Draws the noise ε.
    pub rng_noise: Rng,
    /// Next item of the data stream.
    pub data: Position,
    /// The timestep sampler (with its loss history).
    pub t_sampler: TimestepSampler,
    /// AdamW's step count.
    pub adam_step: u64,
    /// EMA updates done.
    pub ema_updates: u64,
    /// CRC-32 of each other file of the checkpoint, as written (absent in checkpoints made
    /// before they were recorded): a byte changed later is found when the file is read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

impl TrainState {
    /// The state of a new run of `cfg` over a chain of `n_t` steps.
    pub(crate) fn start(cfg: &RunConfig, n_t: usize) -> Self {
        let (rng_t, rng_noise) = crate::rng::streams::training(cfg.seed);
        Self {
            step: 0,
            rng_t,
            rng_noise,
            data: Position::default(),
            t_sampler: match cfg.t_sampler {
                TimestepSamplerName::LossSecondMoment => TimestepSampler::loss_second_moment(n_t),
                TimestepSamplerName::Uniform => TimestepSampler::uniform(n_t),
            },
            adam_step: 0,
            ema_updates: 0,
            checksums: BTreeMap::new(),
        }
    }
}
