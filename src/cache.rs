//! The crate's cache root on this machine: Hub snapshots and downloaded files (`hub`), the
//! Inception weights of FID, the GPU routes' compiled kernels (`device::kernel_cache`).

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The cache root: `$DDPM_CACHE`, else `$XDG_CACHE_HOME/ddpm`, else `~/.cache/ddpm`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("DDPM_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("ddpm"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("ddpm")),
        None => bail!("no cache directory: set DDPM_CACHE (or HOME)"),
    }
}
