//! The command-line tests, one module per command or concern, in one test binary (each
//! integration-test binary links the whole crate; one binary links it once).

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod classifier_guidance;
mod conditional;
mod crash;
mod edm;
mod edm_training;
mod fetch;
mod fid;
mod kernels;
mod plot;
mod posthoc_ema;
mod reliability;
mod schedule;
mod train;
mod vdm;
