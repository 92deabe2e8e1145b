//! Multi-head self-attention over the pixels of a feature map (Ho et al.'s AttnBlock).

use burn::module::Module;
use burn::nn::{GroupNorm, Initializer, Linear, LinearConfig};
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
        Self::with_eps(channels, heads, groups, 1e-5, device)
    }

    /// [`Self::new`] with GroupNorm ε `eps`.
    pub fn with_eps(
        channels: usize,
        heads: usize,
        groups: usize,
        eps: f64,
        device: &Device,
    ) -> Self {
        Self {
            norm: super::blocks::group_norm(groups, channels, eps, device),
            qkv: LinearConfig::new(channels, 3 * channels).init(device),
            proj: LinearConfig::new(channels, channels)
                .with_initializer(Initializer::Zeros)
                .init(device),
            heads,
        }
    }

    /// `x`: `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = crate::kernels::group_norm(&self.norm, x.clone(), false);
        crate::kernels::self_attention(&self.qkv, &self.proj, self.heads, h, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::TensorData;
    use burn::tensor::activation::softmax;

    /// The block (on flex: the fused attention kernel) against the same block spelled out here
    /// through burn's operations as softmax(q kᵀ / √d) v.
    #[test]
    fn fused_attention_matches_the_formula() {
        let device = Device::flex();
        let (b, c, h, w, heads) = (2, 8, 3, 5, 2);
        let mut block = AttentionBlock::new(c, heads, 2, &device);
        // The output projection starts at zero; give it values so that the attention shows.
        let values = crate::rng::Rng::new(5).normal_f32(c * c);
        block.proj.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(values, [c, c]), &device));
        let x: Tensor<4> = Tensor::from_data(
            TensorData::new(
                crate::rng::Rng::new(6).normal_f32(b * c * h * w),
                [b, c, h, w],
            ),
            &device,
        );
        let got = block.forward(x.clone());

        let (n, d) = (h * w, c / heads);
        let tokens = crate::kernels::group_norm(&block.norm, x.clone(), false)
            .reshape([b, c, n])
            .swap_dims(1, 2);
        let qkv = block.qkv.forward(tokens);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, n, heads, d])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let weights = softmax(q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt(), 3);
        let out = weights.matmul(v).swap_dims(1, 2).reshape([b, n, c]);
        let want = x + block
            .proj
            .forward(out)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);

        let (got, want) = (
            got.into_data().try_to_vec::<f32>().unwrap(),
            want.into_data().try_to_vec::<f32>().unwrap(),
        );
        for (i, (a, e)) in got.iter().zip(&want).enumerate() {
            assert!((a - e).abs() < 1e-5 * (1.0 + e.abs()), "[{i}] {a} vs {e}");
        }
    }
}
