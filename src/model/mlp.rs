//! A small residual MLP denoiser for 2-D toy data.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::class_embedding::ClassEmbedding;
use super::config::{MlpConfig, TimeFeatures};
use super::embedding::time_features;

/// x → Linear → [SiLU → Linear (+ time embedding)]×layers → SiLU → Linear (zero-initialized).
#[derive(Module, Debug)]
pub struct Mlp {
    input: Linear,
    time: Vec<Linear>,
    hidden: Vec<Linear>,
    output: Linear,
    class_emb: Option<ClassEmbedding>,
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
            class_emb: config
                .num_classes
                .map(|k| ClassEmbedding::new(k, w, device)),
            width: w,
            time_features: config.time_features,
        }
    }

    /// `x`: `[B, dim]`, `t`: `[B]`. A class-conditional network gets the null class.
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        self.forward_cond(x, t, None)
    }

    /// As [`Self::forward`], with class rows `cond` (`[B, classes + 1]`, one-hot; `None`: the
    /// null class). An unconditional network ignores `cond`.
    pub fn forward_cond(&self, x: Tensor<2>, t: Tensor<1>, cond: Option<Tensor<2>>) -> Tensor<2> {
        let b = x.dims()[0];
        // The features in the parameters' precision (f32, or bf16 under mixed precision).
        let emb = time_features(t, self.width, self.time_features).cast(x.dtype());
        let emb = match &self.class_emb {
            Some(c) => {
                let e = c.forward(cond, b, &emb);
                emb + e
            }
            None => emb,
        };
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
    fn forward_cond(&self, x_t: Tensor<2>, t: Tensor<1>, cond: Option<Tensor<2>>) -> Tensor<2> {
        Mlp::forward_cond(self, x_t, t, cond)
    }
    fn num_classes(&self) -> Option<usize> {
        self.class_emb.as_ref().map(|e| e.classes())
    }
}
