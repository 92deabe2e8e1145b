//! Parameters by name (moved to [`crate::store::params`]; re-exported here at their old path
//! while the crate's layers are rearranged).

pub use crate::store::params::*;
