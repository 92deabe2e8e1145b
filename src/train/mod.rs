//! Training (Algorithm 1): optimizer, EMA, checkpoints and the loop.

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod ema;
pub mod learned_schedule;
pub mod optim;
pub mod params;
pub mod precision;
pub mod resume;
pub mod state;
pub mod trainer;
pub mod vdm_batch;

pub use config::TrainConfig;
pub use trainer::{TrainSummary, train, train_auto};
