//! Training (Algorithm 1): the loop in `trainer.rs`, its parts in the files beside it.

pub mod guide_classifier;
pub mod learned_schedule;
pub mod learner;
pub mod micro_batch;
pub mod objective;
mod open;
pub mod progress;
pub mod resume;
pub mod trainer;
pub mod vdm_batch;
pub mod warmup;

pub use progress::StepReport;
pub use trainer::{TrainOptions, TrainSummary, train, train_auto, train_dataset, train_with};

#[cfg(test)]
mod tests;
