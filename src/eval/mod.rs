//! Evaluation: likelihood in bits/dim and Fréchet distances.

pub mod classifier;
pub mod fid;
pub mod frechet;
pub mod guidance;
pub mod inception;
pub mod nll;
