//! Evaluation: likelihood in bits/dim and Fréchet distances.

pub mod frechet;
pub mod nll;
