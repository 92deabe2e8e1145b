//! Moved to [`crate::optim::adamw`]; re-exported here at its old path while the crate's
//! layers are rearranged.

pub use crate::optim::adamw::*;
