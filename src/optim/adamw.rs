//! AdamW (Loshchilov & Hutter 2019) over named parameters, with global-norm gradient clipping
//! and a linear learning-rate warm-up. Its state is plain named tensors, saved with checkpoints.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::kernels::AdamWScalars;
use crate::store::params::map_params;

/// AdamW hyper-parameters. The defaults are PyTorch's and the papers' (ε = 1e-8, not burn's
/// 1e-5), with no weight decay as in Ho et al. and Improved DDPM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW state: the step count and the first and second moments by parameter name.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates taken.
    pub step: u64,
    /// First moments.
    pub m: BTreeMap<String, Tensor<1>>,
    /// Second moments.
    pub v: BTreeMap<String, Tensor<1>>,
}

/// The factor that scales gradients to a global L2 norm of at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`), and the norm before clipping.
pub fn clip_factor(grads: &BTreeMap<String, Tensor<1>>, max_norm: Option<f64>) -> (f64, f64) {
    let total = grads
        .values()
        .map(|g| g.clone().powf_scalar(2.0).sum())
        .reduce(|a, b| a + b);
    let norm = total
        .map(|t| (t.into_scalar::<f64>()).sqrt())
        .unwrap_or(0.0);
    let factor = match max_norm {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    };
    (factor, norm)
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient in `grads` (named as by
    /// [`crate::store::params::named_params`]), with learning rate `lr` and gradients scaled by
    /// `grad_scale` (the clipping factor).
    pub fn step<M: Module>(
        &mut self,
        model: M,
        grads: &BTreeMap<String, Tensor<1>>,
        lr: f64,
        grad_scale: f64,
    ) -> M {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let (m_all, v_all) = (&mut self.m, &mut self.v);
        let scalars = AdamWScalars {
            grad_scale: grad_scale as f32,
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            bc2: bc2 as f32,
            eps: c.eps as f32,
            step: (lr / bc1) as f32,
            keep: (1.0 - lr * c.weight_decay) as f32,
        };
        map_params(model, |name, p| {
            let Some(g) = grads.get(name) else {
                return p;
            };
            // One kernel for the whole update where the device has it (CubeCL routes).
            let (m, v) = (m_all.get(name), v_all.get(name));
            if let Some((p, m, v)) = crate::kernels::adamw(&p, g, m, v, scalars) {
                m_all.insert(name.to_string(), m);
                v_all.insert(name.to_string(), v);
                return p;
            }
            let g = if grad_scale != 1.0 {
                g.clone() * grad_scale
            } else {
                g.clone()
            };
            let m = match m_all.remove(name) {
                Some(m) => m * c.beta1 + g.clone() * (1.0 - c.beta1),
                None => g.clone() * (1.0 - c.beta1),
            };
            let v = match v_all.remove(name) {
                Some(v) => v * c.beta2 + g.clone() * g.clone() * (1.0 - c.beta2),
                None => g.clone() * g * (1.0 - c.beta2),
            };
            let denom = (v.clone() / bc2).sqrt() + c.eps;
            let update = m.clone() / denom * (lr / bc1);
            let p = if c.weight_decay != 0.0 {
                p * (1.0 - lr * c.weight_decay)
            } else {
                p
            };
            m_all.insert(name.to_string(), m);
            v_all.insert(name.to_string(), v);
            p - update
        })
    }
}

/// Learning rate at optimizer step `step` (1-based): linear warm-up over `warmup` steps, then
/// constant.
pub fn learning_rate(base: f64, warmup: u64, step: u64) -> f64 {
    if warmup == 0 || step >= warmup {
        base
    } else {
        base * step as f64 / warmup as f64
    }
}
