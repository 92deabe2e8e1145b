//! Residual blocks and resolution changes of the U-Net.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use crate::kernels;

/// A 3×3 convolution with padding 1 (stride `stride`); zero-initialized when `zero`.
pub fn conv3x3(cin: usize, cout: usize, stride: usize, zero: bool, device: &Device) -> Conv2d {
    let mut c = Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
    if zero {
        c = c.with_initializer(Initializer::Zeros);
    }
    c.init(device)
}

/// GroupNorm over `channels` in `groups` with ε `eps`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// 2× nearest-neighbour upsampling, `[B, C, H, W] → [B, C, 2H, 2W]`.
pub fn upsample_nearest(x: Tensor<4>) -> Tensor<4> {
    kernels::upsample2(x)
}

/// 2×2 average pooling with stride 2, `[B, C, H, W] → [B, C, H/2, W/2]` (H, W even).
pub fn avg_pool2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2])
        .mean_dim(5)
        .mean_dim(3)
        .reshape([b, c, h / 2, w / 2])
}

/// What a residual block does to the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Keep it.
    None,
    /// Halve it (average pooling inside the block).
    Down,
    /// Double it (nearest upsampling inside the block).
    Up,
}

/// The residual block of Ho et al. (a Wide-ResNet block with GroupNorm and the time embedding),
/// optionally with adaptive group norm and BigGAN-style resampling.
#[derive(Module, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb_proj: Linear,
    norm2: GroupNorm,
    dropout: Dropout,
    conv2: Conv2d,
    skip: Option<Conv2d>,
    scale_shift: bool,
    /// 0 none, 1 down, 2 up.
    resample: usize,
}

/// Construction arguments of a [`ResBlock`].
pub struct ResBlockSpec {
    /// Channels in.
    pub cin: usize,
    /// Channels out.
    pub cout: usize,
    /// Width of the time embedding.
    pub emb_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// Adaptive group norm.
    pub scale_shift: bool,
    /// Resolution change.
    pub resample: Resample,
    /// GroupNorm ε.
    pub eps: f64,
}

impl ResBlock {
    /// A new block with PyTorch-default initialization and a zero-initialized last convolution
    /// (so each block starts as the identity, as in Ho et al.).
    pub fn new(s: &ResBlockSpec, device: &Device) -> Self {
        let emb_out = if s.scale_shift { 2 * s.cout } else { s.cout };
        Self {
            norm1: group_norm(s.groups, s.cin, s.eps, device),
            conv1: conv3x3(s.cin, s.cout, 1, false, device),
            emb_proj: LinearConfig::new(s.emb_dim, emb_out).init(device),
            norm2: group_norm(s.groups, s.cout, s.eps, device),
            dropout: DropoutConfig::new(s.dropout).init(),
            conv2: conv3x3(s.cout, s.cout, 1, true, device),
            skip: (s.cin != s.cout)
                .then(|| Conv2dConfig::new([s.cin, s.cout], [1, 1]).init(device)),
            scale_shift: s.scale_shift,
            resample: match s.resample {
                Resample::None => 0,
                Resample::Down => 1,
                Resample::Up => 2,
            },
        }
    }

    fn resample(&self, x: Tensor<4>) -> Tensor<4> {
        match self.resample {
            1 => avg_pool2(x),
            2 => upsample_nearest(x),
            _ => x,
        }
    }

    /// `x`: `[B, cin, H, W]`, `emb`: `[B, emb_dim]`.
    pub fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        let h = kernels::group_norm(&self.norm1, x.clone(), true);
        let (h, x) = if self.resample != 0 {
            (self.resample(h), self.resample(x))
        } else {
            (h, x)
        };
        let h = kernels::conv2d(&self.conv1, h);
        let [b, c, _, _] = h.dims();
        let e = self.emb_proj.forward(silu(emb));
        let h = if self.scale_shift {
            let e = e.reshape([b, 2 * c, 1, 1]);
            let scale = e.clone().narrow(1, 0, c);
            let shift = e.narrow(1, c, c);
            silu(kernels::group_norm(&self.norm2, h, false) * (scale + 1.0) + shift)
        } else {
            kernels::group_norm_shifted(&self.norm2, h, e, true)
        };
        let x = match &self.skip {
            Some(conv) => kernels::conv2d(conv, x),
            None => x,
        };
        // x + conv2(h), the skip added as the convolution stores its output.
        kernels::conv2d_residual(&self.conv2, kernels::dropout(&self.dropout, h), x)
    }
}

/// Halving the resolution between levels: a stride-2 3×3 convolution or a residual block.
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Option<Conv2d>,
    res: Option<ResBlock>,
}

impl Downsample {
    /// A stride-2 convolution (Ho et al.), padded by one on every side, or with `padding` 0 by
    /// one row and column at the bottom and right only (diffusers' `downsample_padding = 0`).
    pub fn conv(ch: usize, padding: usize, device: &Device) -> Self {
        let conv = if padding == 0 {
            Conv2dConfig::new([ch, ch], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
                .init(device)
        } else {
            conv3x3(ch, ch, 2, false, device)
        };
        Self {
            conv: Some(conv),
            res: None,
        }
    }

    /// A residual block with average pooling (BigGAN / Improved DDPM).
    pub fn res(spec: &ResBlockSpec, device: &Device) -> Self {
        Self {
            conv: None,
            res: Some(ResBlock::new(spec, device)),
        }
    }

    /// Applies it.
    pub fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        match (&self.conv, &self.res) {
            (Some(c), _) => kernels::conv2d(c, x),
            (None, Some(r)) => r.forward(x, emb),
            (None, None) => unreachable!("a downsample holds a conv or a residual block"),
        }
    }
}

/// Doubling the resolution between levels: nearest upsampling + 3×3 convolution, or a residual
/// block.
#[derive(Module, Debug)]
pub struct Upsample {
    conv: Option<Conv2d>,
    res: Option<ResBlock>,
}

impl Upsample {
    /// Nearest upsampling then a 3×3 convolution (Ho et al.).
    pub fn conv(ch: usize, device: &Device) -> Self {
        Self {
            conv: Some(conv3x3(ch, ch, 1, false, device)),
            res: None,
        }
    }

    /// A residual block with nearest upsampling inside.
    pub fn res(spec: &ResBlockSpec, device: &Device) -> Self {
        Self {
            conv: None,
            res: Some(ResBlock::new(spec, device)),
        }
    }

    /// Applies it.
    pub fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        match (&self.conv, &self.res) {
            (Some(c), _) => kernels::conv2d(c, upsample_nearest(x)),
            (None, Some(r)) => r.forward(x, emb),
            (None, None) => unreachable!("an upsample holds a conv or a residual block"),
        }
    }
}
