//! Sampling a class-conditional network for given classes, with classifier-free guidance
//! (Ho & Salimans 2022): the network's output becomes (1 + w)·out(x, c) − w·out(x, ∅), the
//! conditional and unconditional evaluations made in one batched call. It wraps the denoiser,
//! so every sampler (ancestral, respaced, DDIM, DPM-Solver++) is guided the same way, and
//! x̂0 clipping or dynamic thresholding applies to the guided prediction. Optionally the guided
//! output is rescaled toward the conditional one's standard deviation (Lin et al. 2024, §3.4).

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

use crate::diffusion::Denoiser;
use crate::model::one_hot;

/// A class-conditional denoiser fixed to one class per batch item, optionally guided.
pub struct ClassGuided<'a, M> {
    model: &'a M,
    cond: Tensor<2>,
    null: Tensor<2>,
    guidance: f64,
    rescale: f64,
    learned_variance: bool,
}

impl<'a, M> ClassGuided<'a, M> {
    /// `model` conditioned on `labels` (one per batch item, each below the model's class count
    /// `classes`) with guidance weight `guidance` (0: plain conditional sampling) and guidance
    /// rescale φ ∈ [0, 1] (0: none). `learned_variance`: the output's second half of channels
    /// holds the variance, which is taken from the conditional pass unguided.
    pub fn new(
        model: &'a M,
        classes: usize,
        labels: &[usize],
        guidance: f64,
        rescale: f64,
        learned_variance: bool,
        device: &Device,
    ) -> Result<Self> {
        if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
            bail!("--class {bad}: the model has classes 0..={}", classes - 1);
        }
        if !(guidance.is_finite() && guidance >= 0.0) {
            bail!("--guidance must be a finite number ≥ 0, got {guidance}");
        }
        if !(0.0..=1.0).contains(&rescale) {
            bail!("--guidance-rescale must be in [0, 1], got {rescale}");
        }
        Ok(Self {
            model,
            cond: one_hot(labels, classes + 1, device),
            null: one_hot(&vec![classes; labels.len()], classes + 1, device),
            guidance,
            rescale,
            learned_variance,
        })
    }
}

/// Per-item standard deviation of `x` over all but the batch axis, shaped to broadcast.
fn item_std<const D: usize>(x: &Tensor<D>) -> Tensor<D> {
    let b = x.dims()[0];
    let flat: Tensor<2> = x.clone().reshape([b as i64, -1]);
    let std = flat.var(1).sqrt();
    let mut shape = [1i64; D];
    shape[0] = b as i64;
    std.reshape(shape)
}

impl<const D: usize, M: Denoiser<D>> Denoiser<D> for ClassGuided<'_, M> {
    fn forward(&self, x_t: Tensor<D>, t: Tensor<1>) -> Tensor<D> {
        if self.guidance == 0.0 {
            return self.model.forward_cond(x_t, t, Some(self.cond.clone()));
        }
        let b = x_t.dims()[0];
        let out = self.model.forward_cond(
            Tensor::cat(vec![x_t.clone(), x_t], 0),
            Tensor::cat(vec![t.clone(), t], 0),
            Some(Tensor::cat(vec![self.cond.clone(), self.null.clone()], 0)),
        );
        let cond = out.clone().narrow(0, 0, b);
        let uncond = out.narrow(0, b, b);
        let channels = cond.dims()[1];
        let split = if self.learned_variance {
            channels / 2
        } else {
            channels
        };
        let (c, u) = (cond.clone().narrow(1, 0, split), uncond.narrow(1, 0, split));
        let w = self.guidance;
        let mut guided = c.clone() * (1.0 + w) - u * w;
        if self.rescale > 0.0 {
            let ratio = item_std(&c) / (item_std(&guided) + 1e-12);
            let rescaled = guided.clone() * ratio;
            guided = rescaled * self.rescale + guided * (1.0 - self.rescale);
        }
        if split < channels {
            Tensor::cat(vec![guided, cond.narrow(1, split, channels - split)], 1)
        } else {
            guided
        }
    }
}

/// The classes of `n` images from a `--class` value: `7`, a list `0,1,2`, or `all` (every class
/// of a `classes`-class model). Images are given the classes in equal consecutive blocks, so a
/// grid with one row per block shows one class per row.
pub fn labels_for(spec: &str, n: usize, classes: usize) -> Result<Vec<usize>> {
    let list: Vec<usize> = if spec == "all" {
        (0..classes).collect()
    } else {
        spec.split(',')
            .map(|s| {
                let k: usize = s.trim().parse().map_err(|_| {
                    anyhow::anyhow!("--class: `{s}` is not a class number (or use all)")
                })?;
                if k >= classes {
                    bail!("--class {k}: the model has classes 0..={}", classes - 1);
                }
                Ok(k)
            })
            .collect::<Result<_>>()?
    };
    if list.is_empty() {
        bail!("--class: no class given");
    }
    Ok((0..n).map(|i| list[i * list.len() / n]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mlp, MlpConfig};

    fn model(dev: &Device) -> Mlp {
        dev.seed(3);
        let c = MlpConfig {
            num_classes: Some(3),
            learn_sigma: true,
            ..MlpConfig::default()
        };
        // Random output weights (the output layer starts at zero).
        use burn::module::Module;
        struct Noise;
        impl burn::module::ModuleMapper for Noise {
            fn map_float<const N: usize>(
                &mut self,
                p: burn::module::Param<Tensor<N>>,
            ) -> burn::module::Param<Tensor<N>> {
                p.map(|t| {
                    let n = t.random_like(burn::tensor::Distribution::Normal(0.0, 0.3));
                    t + n
                })
            }
        }
        Mlp::new(&c, dev).map(&mut Noise)
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn guidance_combines_the_two_passes_and_zero_is_plain_conditioning() {
        let dev = Device::flex();
        let m = model(&dev);
        let x = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(vec![0.3f32, -0.2, 1.1, 0.5, -0.7, 0.0], [3, 2]),
            &dev,
        );
        let t = Tensor::<1>::from_floats([10.0, 500.0, 900.0], &dev);
        let labels = [2usize, 0, 1];
        // w = 0: bit for bit the conditional network.
        let plain = ClassGuided::new(&m, 3, &labels, 0.0, 0.0, true, &dev).unwrap();
        let direct = m.forward_cond(x.clone(), t.clone(), Some(one_hot(&labels, 4, &dev)));
        assert_eq!(
            host(Denoiser::forward(&plain, x.clone(), t.clone())),
            host(direct.clone())
        );
        // w = 2: the batched pass equals (1 + w)·cond − w·uncond from two separate passes, on
        // the mean channels; the variance channels are the conditional pass's.
        let guided = ClassGuided::new(&m, 3, &labels, 2.0, 0.0, true, &dev).unwrap();
        let g = host(Denoiser::forward(&guided, x.clone(), t.clone()));
        let c = host(direct);
        let u = host(m.forward_cond(x, t, Some(one_hot(&[3, 3, 3], 4, &dev))));
        for i in 0..3 {
            for j in 0..4 {
                let k = i * 4 + j;
                let want = if j < 2 { 3.0 * c[k] - 2.0 * u[k] } else { c[k] };
                assert!(
                    (g[k] - want).abs() < 1e-5,
                    "item {i} channel {j}: {} vs {want}",
                    g[k]
                );
            }
        }
        // The null class is what the network gets without a condition.
        let none = host(m.forward(
            Tensor::<2>::zeros([1, 2], &dev),
            Tensor::<1>::from_floats([3.0], &dev),
        ));
        let null = host(m.forward_cond(
            Tensor::<2>::zeros([1, 2], &dev),
            Tensor::<1>::from_floats([3.0], &dev),
            Some(one_hot(&[3], 4, &dev)),
        ));
        assert_eq!(none, null);
        assert!(ClassGuided::new(&m, 3, &[3], 1.0, 0.0, true, &dev).is_err());
        assert!(ClassGuided::new(&m, 3, &[0], f64::NAN, 0.0, true, &dev).is_err());
    }

    #[test]
    fn rescale_restores_the_conditional_spread() {
        let dev = Device::flex();
        let m = model(&dev);
        let x = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(vec![0.3f32, -0.2, 1.1, 0.5], [2, 2]),
            &dev,
        );
        let t = Tensor::<1>::from_floats([100.0, 700.0], &dev);
        let labels = [1usize, 2];
        let full = ClassGuided::new(&m, 3, &labels, 4.0, 1.0, false, &dev).unwrap();
        let g = Denoiser::forward(&full, x.clone(), t.clone());
        let c = m.forward_cond(x, t, Some(one_hot(&labels, 4, &dev)));
        let (sg, sc) = (host(item_std(&g)), host(item_std(&c)));
        for (a, b) in sg.iter().zip(&sc) {
            assert!((a - b).abs() < 1e-4 * b.max(1e-3), "{a} vs {b}");
        }
    }

    #[test]
    fn class_lists_fill_equal_blocks() {
        assert_eq!(labels_for("7", 3, 10).unwrap(), vec![7, 7, 7]);
        assert_eq!(labels_for("0,1", 4, 10).unwrap(), vec![0, 0, 1, 1]);
        assert_eq!(labels_for("all", 6, 3).unwrap(), vec![0, 0, 1, 1, 2, 2]);
        assert!(labels_for("10", 2, 10).is_err());
        assert!(labels_for("x", 2, 10).is_err());
    }
}
