//! Updating a network's parameters from their gradients, whoever computes them: AdamW with
//! warm-up and global-norm clipping ([`adamw`]) and the exponential moving average of the
//! weights ([`ema`]). Used by the diffusion trainer, the classifiers' trainers and `bench`.

pub mod adamw;
pub mod ema;
pub mod power_ema;
