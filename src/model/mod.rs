//! The networks. They know nothing of diffusion: each maps (x, t) — and, when class-conditional,
//! a class — to an output tensor.

pub mod attention;
pub mod blocks;
pub mod class_embedding;
pub mod config;
pub mod embedding;
pub mod mlp;
pub mod noisy_classifier;
pub mod precision;
pub mod unet;

pub use class_embedding::one_hot;
pub use config::{MlpConfig, TimeFeatures, TimeInjection, UNetConfig};
pub use mlp::Mlp;
pub use noisy_classifier::NoisyClassifier;
pub use unet::UNet;

#[cfg(test)]
mod tests;
