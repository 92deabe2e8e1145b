//! The noise-aware classifier p(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021,
//! §4): the U-Net's encoder half — time embedding, the levels on the way down and the middle
//! blocks — with a pooling head (GroupNorm, SiLU, global average pool, linear) giving class
//! logits. Like the U-Net it knows nothing of diffusion: it maps (x, t) to logits.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::attention::AttentionBlock;
use super::blocks::{ResBlock, Resample, conv3x3};
use super::config::{ConfigError, UNetConfig};
use super::unet::{DownPath, Level, embed_time, res_spec, run_down};
use crate::kernels;

/// The encoder of a [`UNetConfig`] with a classification head of `classes` outputs.
#[derive(Module, Debug)]
pub struct NoisyClassifier {
    emb1: Linear,
    emb2: Linear,
    conv_in: Conv2d,
    down: Vec<Level>,
    mid1: ResBlock,
    mid_attn: AttentionBlock,
    mid2: ResBlock,
    norm_out: GroupNorm,
    head: Linear,
    base_channels: usize,
    #[module(skip)]
    #[module(skip)]
    time: super::embedding::TimeEmbedding,
    classes: usize,
}

impl NoisyClassifier {
    /// The encoder of `config` (its output channels, variance and class keys are not used) with
    /// a head over `classes` classes.
    pub fn new(config: &UNetConfig, classes: usize, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        if !(2..=100_000).contains(&classes) {
            return Err(ConfigError(format!(
                "a classifier needs 2..=100000 classes, got {classes}"
            )));
        }
        let ch = config.base_channels;
        let emb_dim = 4 * ch;
        let down = DownPath::new(config, device);
        let cur = down.channels;
        let mid = |device| ResBlock::new(&res_spec(config, cur, cur, Resample::None), device);
        let mid1 = mid(device);
        let mid_attn = super::unet::attention_block(config, cur, device);
        let mid2 = mid(device);
        Ok(Self {
            emb1: LinearConfig::new(ch, emb_dim).init(device),
            emb2: LinearConfig::new(emb_dim, emb_dim).init(device),
            conv_in: conv3x3(config.in_channels, ch, 1, false, device),
            down: down.levels,
            mid1,
            mid_attn,
            mid2,
            norm_out: super::blocks::group_norm(config.groups, cur, config.norm_eps, device),
            head: LinearConfig::new(cur, classes).init(device),
            base_channels: ch,
            time: super::embedding::TimeEmbedding::of(config),
            classes,
        })
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Class logits `[B, classes]` of `x` (`[B, C, H, W]`) at timesteps `t` (`[B]`).
    pub fn logits(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<2> {
        let emb = embed_time(
            &self.emb1,
            &self.emb2,
            t,
            self.base_channels,
            &self.time,
            x.dtype(),
        );
        let h = kernels::conv2d(&self.conv_in, x);
        let h = run_down(&self.down, h, &emb, None);
        let h = self.mid1.forward(h, emb.clone());
        let h = self.mid_attn.forward(h);
        let h = self.mid2.forward(h, emb);
        let h = kernels::group_norm(&self.norm_out, h, true);
        let [b, c, _, _] = h.dims();
        let pooled: Tensor<2> = h.mean_dim(3).mean_dim(2).reshape([b, c]);
        self.head.forward(pooled)
    }
}
