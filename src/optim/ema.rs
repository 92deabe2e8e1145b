//! Exponential moving average of the weights (Ho et al. §B: decay 0.9999), with the warm-up of
//! diffusers' `EMAModel`.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::store::params::map_params;
use serde::{Deserialize, Serialize};

/// EMA hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// The largest decay.
    pub decay: f64,
    /// Warm-up power p: the decay at update n is min(decay, 1 − (1 + n)^(−p)) (diffusers'
    /// `use_ema_warmup` with inv_gamma = 1); `None` uses decay from the first update.
    pub warmup_power: Option<f64>,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            decay: 0.9999,
            warmup_power: Some(2.0 / 3.0),
        }
    }
}

impl EmaConfig {
    /// The decay used at the `n`-th update (n = 1 for the first); the first update copies
    /// the weights.
    pub fn decay_at(&self, n: u64) -> f64 {
        let step = n.saturating_sub(1);
        if step == 0 {
            return 0.0;
        }
        match self.warmup_power {
            Some(p) => (1.0 - (1.0 + step as f64).powf(-p)).clamp(0.0, self.decay),
            None => self.decay,
        }
    }
}

/// The averaged weights by parameter name.
#[derive(Debug, Clone)]
pub struct Ema {
    /// Hyper-parameters.
    pub config: EmaConfig,
    /// Updates taken.
    pub updates: u64,
    /// Averaged weights (flattened).
    pub params: BTreeMap<String, Tensor<1>>,
}

impl Ema {
    /// An empty average.
    pub fn new(config: EmaConfig) -> Self {
        Self {
            config,
            updates: 0,
            params: BTreeMap::new(),
        }
    }

    /// ema ← d·ema + (1 − d)·θ for every parameter.
    pub fn update(&mut self, current: &BTreeMap<String, Tensor<1>>) {
        self.updates += 1;
        blend(
            &mut self.params,
            current,
            self.config.decay_at(self.updates),
        );
    }
}

/// average ← d·average + (1 − d)·θ for every parameter θ of `current` (a copy of θ where d = 0
/// or the average has none yet).
pub fn blend(
    average: &mut BTreeMap<String, Tensor<1>>,
    current: &BTreeMap<String, Tensor<1>>,
    d: f64,
) {
    for (name, p) in current {
        let new = match average.remove(name) {
            Some(e) if d > 0.0 => e * d + p.clone() * (1.0 - d),
            _ => p.clone(),
        };
        average.insert(name.clone(), new);
    }
}

/// A copy of `model` without autodiff holding the EMA weights.
pub fn ema_model<M: Module>(model: &M, ema: &Ema, device: &Device) -> M {
    let inner = device.clone().inner();
    map_params(model.valid(), |name, p| match ema.params.get(name) {
        Some(e) => e.clone().to_device(&inner),
        None => p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_warms_up_then_caps() {
        let c = EmaConfig::default();
        assert_eq!(c.decay_at(1), 0.0);
        assert!((c.decay_at(2) - (1.0 - 2f64.powf(-2.0 / 3.0))).abs() < 1e-15);
        assert_eq!(c.decay_at(10_000_000_000), 0.9999);
        let plain = EmaConfig {
            decay: 0.99,
            warmup_power: None,
        };
        assert_eq!(plain.decay_at(5), 0.99);
    }
}
