//! The networks a run can train: each builds itself from a run's configuration and says how much
//! memory a training step takes per item.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::Device;

use crate::config::RunConfig;
use crate::diffusion::Denoiser;
use crate::model::{Mlp, UNet};

/// A network the trainer can build from a configuration.
pub trait Net<const D: usize>: Module + Denoiser<D> + Clone + 'static {
    /// Builds the network of `cfg` on `device`, checking that it fits items of `item_shape`.
    fn build(cfg: &RunConfig, item_shape: &[usize], device: &Device) -> Result<Self>;
    /// About how many bytes one item's training forward and backward pass holds at its peak.
    fn activation_bytes_per_item(cfg: &RunConfig, item_shape: &[usize]) -> f64;
}

impl Net<4> for UNet {
    fn build(cfg: &RunConfig, item_shape: &[usize], device: &Device) -> Result<Self> {
        let c = cfg.unet_config()?;
        let want = [c.in_channels, c.image_size, c.image_size];
        if item_shape != want {
            bail!(
                "--data {}: items are {:?} but the {} network takes {}×{}×{} images; choose a preset (or model) of that size",
                cfg.data,
                item_shape,
                cfg.preset,
                want[0],
                want[1],
                want[2]
            );
        }
        UNet::new(&c, device).map_err(|e| anyhow::anyhow!("model: {e}"))
    }
    fn activation_bytes_per_item(cfg: &RunConfig, _item_shape: &[usize]) -> f64 {
        // The values the forward pass produces, in f32, with a margin for what the count leaves
        // out (inputs, noise, targets, time embeddings: relatively more on small images). Peak
        // RSS per item measured against the plain count: cifar10 batch 128 0.91× (5.1 GiB for
        // 5.6 GB), tiny 8×8 batches 2000 → 8000 1.16× (240 → 901 MB, 2026-12-06).
        cfg.unet_config()
            .map(|c| c.activation_values() as f64 * 4.0 * ACTIVATION_MARGIN)
            .unwrap_or(0.0)
    }
}

impl Net<2> for Mlp {
    fn build(cfg: &RunConfig, item_shape: &[usize], device: &Device) -> Result<Self> {
        let mut c = cfg.mlp.clone().unwrap_or_default();
        c.learn_sigma = cfg.variance.is_learned();
        c.num_classes = cfg.num_classes();
        if item_shape != [c.dim] {
            bail!(
                "--data {}: items are {item_shape:?} but the MLP takes {}-D points",
                cfg.data,
                c.dim
            );
        }
        Ok(Mlp::new(&c, device))
    }
    fn activation_bytes_per_item(cfg: &RunConfig, _item_shape: &[usize]) -> f64 {
        let c = cfg.mlp.clone().unwrap_or_default();
        (c.hidden * (c.layers + 2) * 8) as f64 * 4.0
    }
}

/// The factor on the counted activation values that the memory checks use (see
/// `activation_bytes_per_item`).
pub const ACTIVATION_MARGIN: f64 = 1.25;
