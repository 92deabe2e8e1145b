//! A learned noise schedule (VDM) as training state: its weights, their EMA and its own AdamW,
//! saved in a checkpoint's `schedule.safetensors` (keys `w.`, `ema.`, `m.`, `v.` + name) and
//! read back to resume or to sample.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

use crate::optim::adamw::{AdamW, AdamWConfig};
use crate::optim::ema::{Ema, EmaConfig, ema_model};
use crate::run::schedule_file::{SCHEDULE_FILE, with_prefix};
use crate::store::params::{from_host_map, host_params, load_params, named_params, to_host_map};
use crate::store::tensors::{HostTensor, read_safetensors, to_safetensors};
use crate::vdm::LearnedGamma;

/// The schedule being learned.
pub struct LearnedSchedule {
    /// The γ network (on the training device, with autodiff).
    pub net: LearnedGamma,
    /// Its optimizer.
    pub opt: AdamW,
    /// Its weights' moving average (what sampling uses, like the network's).
    pub ema: Ema,
}

impl LearnedSchedule {
    /// A new schedule linear in γ from `gamma_min` to `gamma_max`.
    pub fn new(range: (f64, f64), opt: AdamWConfig, ema: EmaConfig, device: &Device) -> Self {
        Self {
            net: LearnedGamma::new(range.0, range.1, device),
            opt: AdamW::new(opt),
            ema: Ema::new(ema),
        }
    }

    /// One AdamW step along `grads` (from [`crate::vdm::loss::ScheduleSignal::grads`]), then
    /// the EMA update.
    pub fn step(&mut self, grads: &BTreeMap<String, Tensor<1>>, lr: f64) {
        let net = self.net.clone();
        self.net = self.opt.step(net, grads, lr, 1.0);
        self.ema.update(
            &named_params(&self.net)
                .into_iter()
                .map(|(k, v)| (k, v.value))
                .collect(),
        );
    }

    /// The averaged schedule without autodiff, on the training device's backend.
    pub fn averaged(&self) -> LearnedGamma {
        ema_model(&self.net, &self.ema, &self.net.device())
    }

    /// `schedule.safetensors`: weights, EMA, optimizer moments; refuses non-finite values.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let weights = host_params(&self.net);
        let mut all = BTreeMap::new();
        for (k, t) in &weights {
            all.insert(format!("w.{k}"), t.clone());
        }
        for (k, t) in &self.ema.params {
            let shape = weights
                .get(k)
                .map(|w| w.shape.clone())
                .unwrap_or_else(|| vec![t.dims()[0]]);
            all.insert(format!("ema.{k}"), HostTensor::from_tensor(t, shape));
        }
        all.extend(to_host_map(&self.opt.m, "m."));
        all.extend(to_host_map(&self.opt.v, "v."));
        if let Some((name, _)) = all
            .iter()
            .find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
        {
            bail!("the learned schedule's {name} is not finite; the checkpoint is not written");
        }
        to_safetensors(&all)
    }

    /// Restores weights, EMA and optimizer moments from a checkpoint directory (the step
    /// counts come from the run's state).
    pub fn load(&mut self, ckpt: &Path, step: u64, ema_updates: u64) -> Result<()> {
        let file = ckpt.join(SCHEDULE_FILE);
        let name = file.display().to_string();
        let all = read_safetensors(&file)?;
        let device = self.net.device();
        let inner = device.clone().inner();
        self.net = load_params(self.net.clone(), &with_prefix(&all, "w."), &name, &inner)?;
        let ema = with_prefix(&all, "ema.");
        self.ema.params = from_host_map(&ema, "", &inner);
        self.opt.m = from_host_map(&all, "m.", &inner);
        self.opt.v = from_host_map(&all, "v.", &inner);
        // Every parameter has an average and (after a first step) both moments, of its size.
        let sizes: BTreeMap<String, usize> = named_params(&self.net)
            .into_iter()
            .map(|(k, v)| (k, v.value.dims()[0]))
            .collect();
        let fits = |m: &BTreeMap<String, burn::tensor::Tensor<1>>, may_be_empty: bool| {
            (may_be_empty && m.is_empty())
                || (m.len() == sizes.len()
                    && m.iter().all(|(k, t)| sizes.get(k) == Some(&t.dims()[0])))
        };
        if !fits(&self.ema.params, false)
            || !fits(&self.opt.m, true)
            || !fits(&self.opt.v, true)
            || self.opt.v.is_empty() != self.opt.m.is_empty()
            || all
                .iter()
                .any(|(k, t)| k.starts_with("v.") && t.data.iter().any(|x| *x < 0.0))
        {
            bail!("{name}: the schedule's average or optimizer moments are damaged");
        }
        self.opt.step = step;
        self.ema.updates = ema_updates;
        Ok(())
    }
}
