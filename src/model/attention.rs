//! Multi-head self-attention over the pixels of a feature map (Ho et al.'s AttnBlock).

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

/// x + proj(softmax(q·kᵀ/√d)·v) with q, k, v from GroupNorm(x); the output projection starts at
/// zero so the block starts as the identity.
#[derive(Module, Debug)]
pub struct AttentionBlock {
    norm: GroupNorm,
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl AttentionBlock {
    /// A block over `channels` with `heads` heads (`channels % heads == 0`).
    pub fn new(channels: usize, heads: usize, groups: usize, device: &Device) -> Self {
        Self {
            norm: GroupNormConfig::new(groups, channels).init(device),
            qkv: LinearConfig::new(channels, 3 * channels).init(device),
            proj: LinearConfig::new(channels, channels)
                .with_initializer(Initializer::Zeros)
                .init(device),
            heads,
        }
    }

    /// `x`: `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let n = h * w;
        let heads = self.heads;
        let d = c / heads;
        let tokens = crate::kernels::group_norm(&self.norm, x.clone(), false)
            .reshape([b, c, n])
            .swap_dims(1, 2);
        let qkv = self.qkv.forward(tokens); // [B, N, 3C]
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, n, heads, d])
                .swap_dims(1, 2) // [B, heads, N, d]
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scale = 1.0 / (d as f64).sqrt();
        let weights = softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3);
        let out = weights.matmul(v).swap_dims(1, 2).reshape([b, n, c]);
        let out = self.proj.forward(out).swap_dims(1, 2).reshape([b, c, h, w]);
        x + out
    }
}
