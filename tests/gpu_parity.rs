//! The GPU route against the CPU: the same U-Net weights and inputs give the same output, loss
//! and gradients on every GPU backend this binary has (built with `--features cuda` or `wgpu`;
//! `bench/gpu.sh` runs this test binary on the GPU machine), and on CubeCL's CPU runtime (built
//! with `--features cubecl-cpu`: the GPU route's code, this crate's CubeCL kernels included,
//! checked without a GPU). Without any of them it says so and checks nothing more; without
//! their features it is not compiled.
#![cfg(all(
    feature = "flex",
    any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu")
))]

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::model::{UNet, UNetConfig};
use ddpm::rng::Rng;
use ddpm::store::params::named_grads;
use ddpm::store::params::{host_params, load_params};
use ddpm::store::tensors::HostTensor;

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// max |a − b| / max |a|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Output and gradients of one training step's forward and backward on `device`.
fn step(
    cfg: &UNetConfig,
    weights: &BTreeMap<String, HostTensor>,
    device: &Device,
    x: &[f32],
    t: &[f32],
) -> (Vec<f32>, BTreeMap<String, Vec<f32>>) {
    let dev = device.clone().autodiff();
    let model = UNet::new(cfg, &dev).unwrap();
    let model = load_params(model, weights, "weights", &dev).unwrap();
    let b = t.len();
    let shape = [b, cfg.in_channels, cfg.image_size, cfg.image_size];
    let x = Tensor::<4>::from_data(TensorData::new(x.to_vec(), shape), &dev);
    let t = Tensor::<1>::from_data(TensorData::new(t.to_vec(), [b]), &dev);
    let out = model.forward(x, t);
    let loss = out.clone().powf_scalar(2.0).mean();
    let grads = named_grads(&model, &loss.backward());
    let out = host(out.reshape([-1]).detach());
    (out, grads.into_iter().map(|(k, g)| (k, host(g))).collect())
}

#[test]
fn gpu_matches_cpu_forward_and_backward() {
    let gpus: Vec<(&str, Device)> = ["cuda", "wgpu", "cubecl-cpu"]
        .into_iter()
        .filter_map(|n| ddpm::device::by_name(n).ok().map(|d| (n, d)))
        .collect();
    if gpus.is_empty() {
        eprintln!("no GPU route on this machine: nothing to compare");
        return;
    }
    let cpu = Device::flex();
    for (preset, batch) in [("tiny", 3usize), ("mnist", 4)] {
        let cfg = UNetConfig::preset(preset).unwrap();
        // Random weights everywhere (the output layer starts at zero, which would hide most
        // gradients).
        let mut weights = host_params(&UNet::new(&cfg, &cpu).unwrap());
        let mut rng = Rng::new(11);
        for w in weights.values_mut() {
            let noise = rng.normal_f32(w.data.len());
            let fan: usize = w.shape.iter().skip(1).product::<usize>().max(1);
            for (v, n) in w.data.iter_mut().zip(noise) {
                *v += n / (fan as f32).sqrt() * 0.5;
            }
        }
        let n = batch * cfg.in_channels * cfg.image_size * cfg.image_size;
        let x = rng.normal_f32(n);
        let t: Vec<f32> = (0..batch).map(|i| (i * 997 % 1000) as f32).collect();
        let (out_cpu, g_cpu) = step(&cfg, &weights, &cpu, &x, &t);
        for (name, dev) in &gpus {
            let (out, g) = step(&cfg, &weights, dev, &x, &t);
            // TF32 tensor-core products round to 10 bits of mantissa: 1e-2 relative.
            let e = rel_err(&out_cpu, &out);
            assert!(
                e < 1e-2,
                "{name} {preset}: output differs by {e} (relative)"
            );
            for (k, gc) in &g_cpu {
                let e = rel_err(gc, &g[k]);
                assert!(
                    e < 3e-2,
                    "{name} {preset}: gradient of {k} differs by {e} (relative)"
                );
            }
            eprintln!(
                "{name} {preset}: output and {} gradients match the CPU",
                g.len()
            );
        }
    }
}
