//! `ddpm`: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in Rust on burn.
//!
//! Layers, each knowing only those below it: [`schedule`] (f64 noise-schedule tables) →
//! [`diffusion`] (the forward process, posterior, reverse step, likelihood and losses of the
//! lecture, generic over any [`diffusion::Denoiser`]) → the command line in [`cli`]. Beneath the
//! layers that keep tensors on disk: [`store`] (named host tensors, safetensors files, a module's
//! parameters by name) and [`files`] (atomic writes, bounded reads, locks).

pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod dist;
pub mod eval;
pub mod files;
pub mod heap;
pub mod hub;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod pretrained;
pub mod rng;
pub mod run;
pub mod sample;
pub mod schedule;
pub mod store;
pub mod train;
pub mod vdm;
pub mod viz;
