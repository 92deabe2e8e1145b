//! Evaluation: likelihood in bits/dim and Fréchet distances.

pub mod fid;
pub mod frechet;
pub mod guidance;
pub mod inception;
pub mod judge;
pub mod nll;
