//! Throughput measurement of the U-Net presets: one training step (forward, L_simple, backward,
//! AdamW) or one network evaluation (sampling), timed after a warm-up.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::model::precision::Precision;
use crate::model::{UNet, UNetConfig};
use crate::optim::adamw::{AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::store::params::named_grads;

/// One benchmark result (the JSON line of `ddpm bench --json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Preset name.
    pub preset: String,
    /// `train` or `sample`.
    pub mode: String,
    /// Images per step.
    pub batch_size: usize,
    /// Median wall time of a step.
    pub ms_per_step: f64,
    /// batch_size / median step time.
    pub img_per_s: f64,
    /// Peak resident memory of the process.
    pub peak_rss_mb: f64,
    /// Wall time of each untimed warm-up step: on GPU backends the first holds the one-time
    /// cost of compiling (and autotuning) the kernels, which the timed steps no longer pay.
    pub warmup_ms: Vec<f64>,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `steps` steps (after `warmup`) of `mode` for the preset at `batch` on `device`.
pub fn run(
    preset: &str,
    mode: &str,
    batch: usize,
    steps: usize,
    warmup: usize,
    device: &Device,
    precision: Precision,
) -> Result<BenchResult> {
    let cfg = UNetConfig::preset(preset).map_err(|e| anyhow::anyhow!("--preset: {e}"))?;
    let train = match mode {
        "train" => true,
        "sample" => false,
        o => anyhow::bail!("--mode: unknown mode `{o}`; expected train or sample"),
    };
    let dev = if train {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    dev.seed(0);
    let mut model = UNet::new(&cfg, &dev).map_err(|e| anyhow::anyhow!("{e}"))?;
    let shape = [batch, cfg.in_channels, cfg.image_size, cfg.image_size];
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(0);
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut times = Vec::with_capacity(steps);
    let mut warmup_ms = Vec::with_capacity(warmup);
    for i in 0..warmup + steps {
        if i == warmup {
            crate::kernels::profile::reset();
        }
        let x = Tensor::<4>::from_data(TensorData::new(rng.normal_f32(n), shape), &dev);
        let t = Tensor::<1>::from_data(
            TensorData::new(
                (0..batch)
                    .map(|_| rng.below(1000) as f32)
                    .collect::<Vec<_>>(),
                [batch],
            ),
            &dev,
        );
        let start = Instant::now();
        if train {
            let target = Tensor::<4>::from_data(TensorData::new(rng.normal_f32(n), shape), &dev);
            use crate::kernels::profile::{STEP, time};
            let working = precision.working_copy(&model);
            let out = time(
                || format!("{STEP}forward"),
                || precision.forward(&model, working.as_ref(), x, |m, x| m.forward(x, t.clone())),
            );
            let loss = (out - target).powf_scalar(2.0).mean();
            let grads = time(|| format!("{STEP}backward"), || loss.backward());
            let grads: BTreeMap<String, Tensor<1>> = named_grads(&model, &grads);
            model = time(
                || format!("{STEP}optimizer"),
                || opt.step(model, &grads, 1e-4, 1.0),
            );
            // Wait for the update to finish (asynchronous backends).
            dev.sync().ok();
        } else {
            let working = precision.working_copy(&model);
            let out =
                precision.forward(&model, working.as_ref(), x, |m, x| m.forward(x, t.clone()));
            let _ = out.into_data();
        }
        let secs = start.elapsed().as_secs_f64();
        if i >= warmup {
            times.push(secs);
        } else {
            warmup_ms.push(secs * 1000.0);
            if on_warmup_step(i, secs) {
                eprintln!(
                    "warm-up step {} of {warmup}: {secs:.1} s (includes compiling and tuning kernels)",
                    i + 1
                );
            }
        }
    }
    let ms = median(times) * 1000.0;
    Ok(BenchResult {
        preset: preset.to_string(),
        mode: mode.to_string(),
        batch_size: batch,
        ms_per_step: ms,
        img_per_s: batch as f64 / (ms / 1000.0),
        peak_rss_mb: peak_rss_mb(),
        warmup_ms,
    })
}

/// Whether to report a warm-up step: the first when it takes over a second, and any that takes
/// over five (a backend still compiling kernels), so a slow start does not look like a hang.
fn on_warmup_step(i: usize, secs: f64) -> bool {
    i == 0 && secs > 1.0 || secs > 5.0
}

/// The time to sum a preset's gradients over the ranks of the job (`ddpm bench --mode
/// allreduce` under `mpirun`).
#[derive(Debug, Clone, Serialize)]
pub struct AllreduceResult {
    /// Preset name.
    pub preset: String,
    /// Ranks in the job.
    pub ranks: usize,
    /// Parameters (f32 values summed).
    pub parameters: usize,
    /// Median wall time of one gradient all-reduce (packing, MPI, unpacking).
    pub ms: f64,
    /// Bytes / time.
    pub algorithm_gb_per_s: f64,
    /// What a ring moves per rank, 2(N−1)/N · bytes, over the time: comparable with a link's
    /// bandwidth.
    pub bus_gb_per_s: f64,
}

/// Times `steps` all-reduces (after `warmup`) of gradients shaped like the preset's parameters.
pub fn allreduce(
    preset: &str,
    steps: usize,
    warmup: usize,
    device: &Device,
) -> Result<AllreduceResult> {
    let cfg = UNetConfig::preset(preset).map_err(|e| anyhow::anyhow!("--preset: {e}"))?;
    let model = UNet::new(&cfg, device).map_err(|e| anyhow::anyhow!("{e}"))?;
    let named = crate::store::params::named_params(&model);
    let parameters: usize = named.values().map(|p| p.value.dims()[0]).sum();
    let world = crate::dist::world();
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let mut grads: BTreeMap<String, Tensor<1>> = named
            .iter()
            .map(|(k, p)| (k.clone(), p.value.clone()))
            .collect();
        let start = Instant::now();
        crate::dist::sum_gradients(&world, &mut grads)?;
        let secs = start.elapsed().as_secs_f64();
        if i >= warmup {
            times.push(secs);
        }
    }
    let secs = median(times);
    let bytes = (parameters * 4) as f64;
    let n = world.size as f64;
    Ok(AllreduceResult {
        preset: preset.to_string(),
        ranks: world.size,
        parameters,
        ms: secs * 1000.0,
        algorithm_gb_per_s: bytes / secs / 1e9,
        bus_gb_per_s: 2.0 * (n - 1.0) / n * bytes / secs / 1e9,
    })
}
