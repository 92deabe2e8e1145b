//! A run directory, the one place that knows its layout:
//!
//! ```text
//! RUN/
//!   config.toml            the run's configuration (crate::config::RunConfig)
//!   .lock                  held by the one process writing the run
//!   log.jsonl              a line every log_every steps
//!   samples/step-N.png     sample grids written while training
//!   checkpoints/
//!     latest               names the newest checkpoint (advisory: see newest_complete)
//!     step-N/              model, ema, optimizer .safetensors, state.json
//!                          (schedule.safetensors for a learned VDM schedule,
//!                          power-ema-S.safetensors for each tracked post-hoc EMA width S)
//!   posthoc/step-N/        snapshots of the post-hoc EMA averages every snapshot_every steps
//! ```
//!
//! Also the networks a run trains ([`net::Net`]), a new run from imported weights
//! ([`init::write_initial_run`]) and loading a run, a checkpoint, a diffusers folder or a fetched
//! Hub repo for inference ([`load`]).

pub mod checkpoints;
pub mod init;
pub mod load;
pub mod net;
pub mod posthoc;
pub mod schedule_file;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;

use crate::config::RunConfig;
use crate::data::{Dataset, Split};

/// The configuration file of a run directory.
pub fn config_path(run: &Path) -> PathBuf {
    run.join("config.toml")
}

/// The directory of a run's post-hoc EMA snapshots at `step`: `RUN/posthoc/step-XXXXXXXX`, one
/// `power-ema-<σ_rel>.safetensors` per tracked average.
pub fn posthoc_dir(run: &Path, step: u64) -> PathBuf {
    run.join("posthoc").join(format!("step-{step:08}"))
}

/// Opens the training split of `cfg`'s data, at the network's image size.
pub fn open_dataset(cfg: &RunConfig) -> Result<Arc<dyn Dataset>> {
    let image = (cfg.preset != "mlp")
        .then(|| {
            cfg.unet_config()
                .ok()
                .map(|u| (u.in_channels, u.image_size))
        })
        .flatten();
    Ok(Arc::from(crate::data::open(
        &cfg.data,
        Split::Train,
        cfg.seed,
        image,
    )?))
}
