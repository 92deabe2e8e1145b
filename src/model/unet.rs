//! The U-Net ε_θ(x_t, t) of Ho et al. (2020), Appendix B, with the options of Improved DDPM.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::attention::AttentionBlock;
use super::blocks::{Downsample, ResBlock, ResBlockSpec, Resample, Upsample, conv3x3};
use super::class_embedding::ClassEmbedding;
use super::config::{ConfigError, TimeInjection, UNetConfig};
use crate::kernels;

/// A residual block, optionally followed by self-attention.
#[derive(Module, Debug)]
pub struct Stage {
    res: ResBlock,
    attn: Option<AttentionBlock>,
}

impl Stage {
    fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        let h = self.res.forward(x, emb);
        match &self.attn {
            Some(a) => a.forward(h),
            None => h,
        }
    }
}

/// One resolution level: its stages and the resampling that leaves it.
#[derive(Module, Debug)]
pub struct Level {
    stages: Vec<Stage>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

/// The U-Net. Knows nothing of diffusion: it maps (x, t) to an output of `output_channels`.
#[derive(Module, Debug)]
pub struct UNet {
    emb1: Linear,
    emb2: Linear,
    class_emb: Option<ClassEmbedding>,
    conv_in: Conv2d,
    down: Vec<Level>,
    mid1: ResBlock,
    mid_attn: AttentionBlock,
    mid2: ResBlock,
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    base_channels: usize,
    #[module(skip)]
    time: super::embedding::TimeEmbedding,
    #[module(skip)]
    fourier: Vec<u32>,
    center_input: bool,
}

/// The input with its Fourier features appended along the channels: sin and cos of 2ⁿ·2π·x for
/// each exponent n (the identity for none).
pub fn with_fourier_features(x: Tensor<4>, exponents: &[u32]) -> Tensor<4> {
    if exponents.is_empty() {
        return x;
    }
    let mut parts = vec![x.clone()];
    for &n in exponents {
        let h = x.clone() * (2f64.powi(n as i32) * std::f64::consts::TAU);
        parts.push(h.clone().sin());
        parts.push(h.cos());
    }
    Tensor::cat(parts, 1)
}

/// The residual-block shape of `config` from `cin` to `cout` channels.
pub(crate) fn res_spec(
    config: &UNetConfig,
    cin: usize,
    cout: usize,
    resample: Resample,
) -> ResBlockSpec {
    ResBlockSpec {
        cin,
        cout,
        emb_dim: 4 * config.base_channels,
        groups: config.groups,
        dropout: config.dropout,
        scale_shift: config.time_injection == TimeInjection::ScaleShift,
        resample,
        eps: config.norm_eps,
    }
}

/// Self-attention after a block of `c` channels at resolution `res`, where `config` asks for it.
pub(crate) fn attention_at(
    config: &UNetConfig,
    c: usize,
    res: usize,
    device: &Device,
) -> Option<AttentionBlock> {
    config
        .attention_resolutions
        .contains(&res)
        .then(|| attention_block(config, c, device))
}

/// Self-attention over `c` channels with `config`'s heads, groups and ε (also the middle's).
pub(crate) fn attention_block(config: &UNetConfig, c: usize, device: &Device) -> AttentionBlock {
    AttentionBlock::with_eps(
        c,
        config.heads_for(c),
        config.groups,
        config.norm_eps,
        device,
    )
}

/// The way down, shared by the U-Net and the noise-aware classifier (its encoder half).
pub(crate) struct DownPath {
    /// One level per channel multiplier.
    pub levels: Vec<Level>,
    /// The channels of every activation kept for a skip connection, in order.
    pub skips: Vec<usize>,
    /// Channels at the bottom.
    pub channels: usize,
    /// Resolution at the bottom.
    pub resolution: usize,
}

impl DownPath {
    /// The levels of `config` on the way down.
    pub fn new(config: &UNetConfig, device: &Device) -> Self {
        let ch = config.base_channels;
        let n_levels = config.channel_mult.len();
        let mut skips = vec![ch];
        let mut cur = ch;
        let mut res = config.image_size;
        let mut levels = Vec::new();
        for (i, m) in config.channel_mult.iter().enumerate() {
            let mut stages = Vec::new();
            for _ in 0..config.num_res_blocks {
                stages.push(Stage {
                    res: ResBlock::new(&res_spec(config, cur, ch * m, Resample::None), device),
                    attn: attention_at(config, ch * m, res, device),
                });
                cur = ch * m;
                skips.push(cur);
            }
            let ds = (i + 1 < n_levels).then(|| {
                skips.push(cur);
                if config.resblock_updown {
                    Downsample::res(&res_spec(config, cur, cur, Resample::Down), device)
                } else {
                    Downsample::conv(cur, config.downsample_padding, device)
                }
            });
            if ds.is_some() {
                res /= 2;
            }
            levels.push(Level {
                stages,
                down: ds,
                up: None,
            });
        }
        Self {
            levels,
            skips,
            channels: cur,
            resolution: res,
        }
    }
}

/// Runs `h` down through `levels`, pushing every activation a skip connection needs onto `hs`
/// (when given).
pub(crate) fn run_down(
    levels: &[Level],
    mut h: Tensor<4>,
    emb: &Tensor<2>,
    mut hs: Option<&mut Vec<Tensor<4>>>,
) -> Tensor<4> {
    for level in levels {
        for stage in &level.stages {
            h = stage.forward(h, emb.clone());
            if let Some(hs) = hs.as_deref_mut() {
                hs.push(h.clone());
            }
        }
        if let Some(d) = &level.down {
            h = d.forward(h, emb.clone());
            if let Some(hs) = hs.as_deref_mut() {
                hs.push(h.clone());
            }
        }
    }
    h
}

/// The time embedding MLP(features(t·scale)) in `dtype`: `emb1` → SiLU → `emb2`.
pub(crate) fn embed_time(
    emb1: &Linear,
    emb2: &Linear,
    t: Tensor<1>,
    base_channels: usize,
    time: &super::embedding::TimeEmbedding,
    dtype: burn::tensor::DType,
) -> Tensor<2> {
    let f = super::embedding::time_features_with(
        t * time.scale,
        base_channels,
        time.features,
        time.flip_sin_to_cos,
        time.freq_shift,
    )
    .cast(dtype);
    emb2.forward(silu(emb1.forward(f)))
}

impl UNet {
    /// Builds the network of `config` on `device` (after validating the configuration).
    pub fn new(config: &UNetConfig, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        let ch = config.base_channels;
        let emb_dim = 4 * ch;
        let spec =
            |cin: usize, cout: usize, resample: Resample| res_spec(config, cin, cout, resample);
        let attn = |c: usize, res: usize| attention_at(config, c, res, device);
        let DownPath {
            levels: down,
            mut skips,
            channels: mut cur,
            resolution: mut res,
        } = DownPath::new(config, device);
        let mid1 = ResBlock::new(&spec(cur, cur, Resample::None), device);
        let mid_attn = attention_block(config, cur, device);
        let mid2 = ResBlock::new(&spec(cur, cur, Resample::None), device);
        let mut up = Vec::new();
        for (i, m) in config.channel_mult.iter().enumerate().rev() {
            let mut stages = Vec::new();
            for _ in 0..=config.num_res_blocks {
                let skip = skips.pop().expect("one skip per stage");
                stages.push(Stage {
                    res: ResBlock::new(&spec(cur + skip, ch * m, Resample::None), device),
                    attn: attn(ch * m, res),
                });
                cur = ch * m;
            }
            let us = (i > 0).then(|| {
                if config.resblock_updown {
                    Upsample::res(&spec(cur, cur, Resample::Up), device)
                } else {
                    Upsample::conv(cur, device)
                }
            });
            if us.is_some() {
                res *= 2;
            }
            up.push(Level {
                stages,
                down: None,
                up: us,
            });
        }
        Ok(Self {
            emb1: LinearConfig::new(ch, emb_dim).init(device),
            emb2: LinearConfig::new(emb_dim, emb_dim).init(device),
            class_emb: config
                .num_classes
                .map(|k| ClassEmbedding::new(k, emb_dim, device)),
            conv_in: conv3x3(
                config.in_channels * (1 + 2 * config.fourier_features.len()),
                ch,
                1,
                false,
                device,
            ),
            down,
            mid1,
            mid_attn,
            mid2,
            up,
            norm_out: super::blocks::group_norm(config.groups, cur, config.norm_eps, device),
            conv_out: conv3x3(cur, config.output_channels(), 1, true, device),
            base_channels: ch,
            time: super::embedding::TimeEmbedding::of(config),
            fourier: config.fourier_features.clone(),
            center_input: config.center_input,
        })
    }

    /// `x`: `[B, C, H, W]`, `t`: `[B]` timesteps (floats). Returns `[B, output_channels, H, W]`.
    /// A class-conditional network gets the null class (no condition).
    ///
    /// ```
    /// use burn::tensor::Tensor;
    /// use ddpm::model::{UNet, UNetConfig};
    ///
    /// let device = ddpm::device::by_name("cpu")?;
    /// let net = UNet::new(&UNetConfig::tiny(), &device)?;
    /// let x = Tensor::<4>::zeros([2, 1, 8, 8], &device);
    /// let t = Tensor::<1>::from_floats([10.0, 500.0], &device);
    /// assert_eq!(net.forward(x, t).dims(), [2, 1, 8, 8]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward_cond(x, t, None)
    }

    /// The number of classes of a class-conditional network.
    pub fn num_classes(&self) -> Option<usize> {
        self.class_emb.as_ref().map(|e| e.classes())
    }

    /// As [`Self::forward`], with class rows `cond` (`[B, classes + 1]`, one-hot; `None`: the
    /// null class). An unconditional network ignores `cond`.
    pub fn forward_cond(&self, x: Tensor<4>, t: Tensor<1>, cond: Option<Tensor<2>>) -> Tensor<4> {
        let b = x.dims()[0];
        // The features in the parameters' precision (f32, or bf16 under mixed precision).
        let emb = embed_time(
            &self.emb1,
            &self.emb2,
            t,
            self.base_channels,
            &self.time,
            x.dtype(),
        );
        let emb = match &self.class_emb {
            Some(c) => {
                let e = c.forward(cond, b, &emb);
                emb + e
            }
            None => emb,
        };
        let x = if self.center_input { x * 2.0 - 1.0 } else { x };
        let h = kernels::conv2d(&self.conv_in, with_fourier_features(x, &self.fourier));
        let mut hs = vec![h.clone()];
        let mut h = run_down(&self.down, h, &emb, Some(&mut hs));
        h = self.mid1.forward(h, emb.clone());
        h = self.mid_attn.forward(h);
        h = self.mid2.forward(h, emb.clone());
        for level in &self.up {
            for stage in &level.stages {
                let skip = hs.pop().expect("one skip per stage");
                h = stage.forward(kernels::cat_channels(h, skip), emb.clone());
            }
            if let Some(u) = &level.up {
                h = u.forward(h, emb.clone());
            }
        }
        kernels::conv2d(&self.conv_out, kernels::group_norm(&self.norm_out, h, true))
    }
}

impl crate::diffusion::Denoiser<4> for UNet {
    fn forward(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        UNet::forward(self, x_t, t)
    }
    fn forward_cond(&self, x_t: Tensor<4>, t: Tensor<1>, cond: Option<Tensor<2>>) -> Tensor<4> {
        UNet::forward_cond(self, x_t, t, cond)
    }
    fn num_classes(&self) -> Option<usize> {
        UNet::num_classes(self)
    }
}
