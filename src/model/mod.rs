//! The networks. They know nothing of diffusion: each maps (x, t) to an output tensor.

pub mod attention;
pub mod blocks;
pub mod config;
pub mod embedding;
pub mod mlp;
pub mod unet;

pub use config::{MlpConfig, TimeFeatures, TimeInjection, UNetConfig};
pub use mlp::Mlp;
pub use unet::UNet;

#[cfg(test)]
mod tests;
