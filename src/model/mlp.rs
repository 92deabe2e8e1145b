//! A small residual MLP denoiser for 2-D toy data.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::config::{MlpConfig, TimeFeatures};
use super::embedding::time_features;

/// x → Linear → [SiLU → Linear (+ time embedding)]×layers → SiLU → Linear (zero-initialized).
#[derive(Module, Debug)]
pub struct Mlp {
    input: Linear,
    time: Vec<Linear>,
    hidden: Vec<Linear>,
    output: Linear,
    width: usize,
    #[module(skip)]
    time_features: TimeFeatures,
}

impl Mlp {
    /// Builds the network of `config` on `device`.
    pub fn new(config: &MlpConfig, device: &Device) -> Self {
        let w = config.hidden;
        let out = config.dim * if config.learn_sigma { 2 } else { 1 };
        Self {
            input: LinearConfig::new(config.dim, w).init(device),
            time: (0..config.layers)
                .map(|_| LinearConfig::new(w, w).init(device))
                .collect(),
            hidden: (0..config.layers)
                .map(|_| LinearConfig::new(w, w).init(device))
                .collect(),
            output: LinearConfig::new(w, out)
                .with_initializer(Initializer::Zeros)
                .init(device),
            width: w,
            time_features: config.time_features,
        }
    }

    /// `x`: `[B, dim]`, `t`: `[B]`.
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        // The features in the parameters' precision (f32, or bf16 under mixed precision).
        let emb = time_features(t, self.width, self.time_features).cast(x.dtype());
        let mut h = self.input.forward(x);
        for (lin, temb) in self.hidden.iter().zip(&self.time) {
            h = h.clone() + lin.forward(silu(h)) + temb.forward(emb.clone());
        }
        self.output.forward(silu(h))
    }
}

impl crate::diffusion::Denoiser<2> for Mlp {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        Mlp::forward(self, x_t, t)
    }
}
