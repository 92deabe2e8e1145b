//! Moved to [`crate::optim::ema`]; re-exported here at its old path while the crate's
//! layers are rearranged.

pub use crate::optim::ema::*;
