//! A small CNN classifier for MNIST-like data: its penultimate features give a fast domain
//! Fréchet distance, its class posteriors a classifier-based Inception Score. Both are proxies
//! for FID, comparable only between runs that use the same classifier file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Dataset;
use crate::files::write_atomic;
use crate::optim::adamw::{AdamW, AdamWConfig};
use crate::store::params::named_grads;
use crate::store::params::{host_params, load_params};
use crate::store::tensors::{read_safetensors, to_safetensors};

/// Width of the feature layer.
pub const FEATURES: usize = 128;
/// Classes.
pub const CLASSES: usize = 10;

/// conv 3×3 (c→16) → ReLU → conv 3×3 stride 2 (→32) → ReLU → conv 3×3 stride 2 (→64) → ReLU
/// → linear (→128, the features) → ReLU → linear (→10).
#[derive(Module, Debug)]
pub struct Judge {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

fn conv(cin: usize, cout: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

impl Judge {
    /// A classifier for `channels`×`size`×`size` images.
    pub fn new(channels: usize, size: usize, device: &Device) -> Self {
        let s = size.div_ceil(2).div_ceil(2);
        Self {
            conv1: conv(channels, 16, 1, device),
            conv2: conv(16, 32, 2, device),
            conv3: conv(32, 64, 2, device),
            fc1: LinearConfig::new(64 * s * s, FEATURES).init(device),
            fc2: LinearConfig::new(FEATURES, CLASSES).init(device),
        }
    }

    /// The penultimate features, `[B, 128]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let h = relu(self.conv1.forward(x));
        let h = relu(self.conv2.forward(h));
        let h = relu(self.conv3.forward(h));
        let b = h.dims()[0];
        relu(self.fc1.forward(h.reshape([b as i64, -1])))
    }

    /// Class logits, `[B, 10]`.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc2.forward(self.features(x))
    }
}

fn batch_tensor(data: &dyn Dataset, idx: &[usize], device: &Device) -> Tensor<4> {
    let shape = data.item_shape();
    let item: usize = shape.iter().product();
    let mut buf = vec![0.0f32; idx.len() * item];
    for (k, &i) in idx.iter().enumerate() {
        data.get(i, &mut buf[k * item..(k + 1) * item]);
    }
    Tensor::<4>::from_data(
        TensorData::new(buf, [idx.len(), shape[0], shape[1], shape[2]]),
        device,
    )
}

/// Trains a classifier with cross-entropy and AdamW (lr 1e-3) for `epochs` epochs.
pub fn train(
    data: &dyn Dataset,
    labels: &[u8],
    epochs: usize,
    batch: usize,
    seed: u64,
    device: &Device,
    mut on_step: impl FnMut(usize, f64),
) -> Result<Judge> {
    if labels.len() != data.len() {
        bail!("{} images but {} labels", data.len(), labels.len());
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= CLASSES) {
        bail!("label {bad} outside 0..{CLASSES}");
    }
    let shape = data.item_shape();
    let dev = device.clone().autodiff();
    dev.seed(seed);
    let mut model = Judge::new(shape[0], shape[1], &dev);
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut rng = crate::rng::streams::judge_training(seed);
    let mut step = 0;
    for _ in 0..epochs {
        let mut order: Vec<usize> = (0..data.len()).collect();
        rng.shuffle(&mut order);
        for chunk in order.chunks(batch) {
            let x = batch_tensor(data, chunk, &dev);
            let mut onehot = vec![0.0f32; chunk.len() * CLASSES];
            for (k, &i) in chunk.iter().enumerate() {
                onehot[k * CLASSES + labels[i] as usize] = 1.0;
            }
            let y = Tensor::<2>::from_data(TensorData::new(onehot, [chunk.len(), CLASSES]), &dev);
            let loss = (log_softmax(model.logits(x), 1) * y).sum().neg() / chunk.len() as f64;
            let value = loss.clone().into_scalar::<f64>();
            let grads: BTreeMap<String, Tensor<1>> = named_grads(&model, &loss.backward());
            model = opt.step(model, &grads, 1e-3, 1.0);
            step += 1;
            on_step(step, value);
        }
    }
    Ok(model.valid())
}

/// Accuracy on labelled data.
pub fn accuracy(
    model: &Judge,
    data: &dyn Dataset,
    labels: &[u8],
    batch: usize,
    device: &Device,
) -> f64 {
    let mut right = 0;
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch) {
        let pred: Vec<i64> = model
            .logits(batch_tensor(data, chunk, device))
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap_or_default();
        right += chunk
            .iter()
            .zip(&pred)
            .filter(|(i, p)| labels[**i] as i64 == **p)
            .count();
    }
    right as f64 / data.len().max(1) as f64
}

/// Penultimate features (`n`×128, row-major f64) and class posteriors (`n`×10) of the first
/// `limit` items.
pub fn features(
    model: &Judge,
    data: &dyn Dataset,
    limit: Option<usize>,
    batch: usize,
    device: &Device,
) -> (Vec<f64>, Vec<f64>, usize) {
    let n = limit.unwrap_or(data.len()).min(data.len());
    let idx: Vec<usize> = (0..n).collect();
    let (mut feats, mut probs) = (Vec::new(), Vec::new());
    for chunk in idx.chunks(batch) {
        let f = model.features(batch_tensor(data, chunk, device));
        let p = softmax(model.fc2.forward(f.clone()), 1);
        feats.extend(
            f.into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap_or_default(),
        );
        probs.extend(
            p.into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap_or_default(),
        );
    }
    (feats, probs, n)
}

/// The classifier-based Inception Score exp(E_x KL(p(y|x) ‖ p(y))) of `n` posteriors.
pub fn inception_score(probs: &[f64], n: usize) -> f64 {
    let mut marginal = [0.0f64; CLASSES];
    for row in probs.chunks(CLASSES) {
        for (m, p) in marginal.iter_mut().zip(row) {
            *m += p / n as f64;
        }
    }
    let kl: f64 = probs
        .chunks(CLASSES)
        .map(|row| {
            row.iter()
                .zip(&marginal)
                .map(|(p, m)| {
                    if *p > 0.0 {
                        p * (p / m.max(1e-300)).ln()
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
        })
        .sum::<f64>()
        / n as f64;
    kl.exp()
}

/// Saves the classifier with its input shape (`meta.shape` = [c, h, w]).
pub fn save(model: &Judge, shape: &[usize], path: &Path) -> Result<()> {
    let mut t = host_params(model);
    t.insert(
        "meta.shape".into(),
        crate::store::tensors::HostTensor {
            shape: vec![3],
            data: shape.iter().map(|&v| v as f32).collect(),
        },
    );
    write_atomic(path, &to_safetensors(&t)?)
}

/// Loads a classifier saved by [`save`]; returns it with its input shape.
pub fn load(path: &Path, device: &Device) -> Result<(Judge, Vec<usize>)> {
    let mut t = read_safetensors(path)?;
    let Some(meta) = t.remove("meta.shape") else {
        bail!("{}: not a ddpm classifier (no meta.shape)", path.display());
    };
    let shape: Vec<usize> = meta.data.iter().map(|&v| v as usize).collect();
    if shape.len() != 3 {
        bail!(
            "{}: meta.shape should hold [channels, height, width]",
            path.display()
        );
    }
    let model = Judge::new(shape[0], shape[1], device);
    Ok((
        load_params(model, &t, &path.display().to_string(), device)?,
        shape,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inception_score_bounds() {
        // Confident and uniform over classes: IS = number of classes.
        let mut p = vec![0.0; 10 * CLASSES];
        for i in 0..10 {
            p[i * CLASSES + i] = 1.0;
        }
        assert!((inception_score(&p, 10) - 10.0).abs() < 1e-9);
        // All the same posterior: IS = 1.
        let q: Vec<f64> = (0..5).flat_map(|_| vec![0.1; CLASSES]).collect();
        assert!((inception_score(&q, 5) - 1.0).abs() < 1e-9);
    }
}
