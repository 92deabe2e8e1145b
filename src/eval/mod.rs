//! Evaluation: likelihood in bits/dim and Fréchet distances.

pub mod classifier;
pub mod frechet;
pub mod nll;
