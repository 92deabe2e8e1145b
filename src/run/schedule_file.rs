//! `schedule.safetensors`: a learned VDM schedule's weights (`w.`), their average (`ema.`) and
//! its optimizer's moments (`m.`, `v.`) in a checkpoint, and reading the schedule back to sample.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::Device;

use crate::store::params::load_params;
use crate::store::tensors::{HostTensor, read_safetensors};
use crate::vdm::LearnedGamma;

/// The file of a checkpoint that holds a learned schedule.
pub const SCHEDULE_FILE: &str = "schedule.safetensors";

/// The entries of `all` under `prefix`, renamed without it.
pub fn with_prefix(
    all: &BTreeMap<String, HostTensor>,
    prefix: &str,
) -> BTreeMap<String, HostTensor> {
    all.iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
        .collect()
}

/// The learned schedule of a checkpoint for inference: its EMA (or, with `raw`, its weights).
pub fn learned_gamma(
    ckpt: &Path,
    raw: bool,
    range: (f64, f64),
    device: &Device,
) -> Result<LearnedGamma> {
    let file = ckpt.join(SCHEDULE_FILE);
    if !file.is_file() {
        bail!(
            "{}: missing; a run with --schedule learned keeps its schedule there (a checkpoint \
             written by another version, or copied without it?)",
            file.display()
        );
    }
    let all = read_safetensors(&file)?;
    let net = LearnedGamma::new(range.0, range.1, device);
    load_params(
        net,
        &with_prefix(&all, if raw { "w." } else { "ema." }),
        &file.display().to_string(),
        device,
    )
}
