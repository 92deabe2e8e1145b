//! Where the GPU routes keep their compiled kernels and autotune results between runs.
//!
//! The first steps of a run on `cuda`, `wgpu` or `cubecl-cpu` compile every kernel the training
//! step and the sampler need and benchmark the candidates of each tunable one (convolutions,
//! matrix products, reductions): minutes, once. CubeCL can keep both results on disk in one
//! database per machine; this crate turns both on (CubeCL keeps only the tuning results by
//! default) and puts them in its own cache rather than beside the working directory's
//! `target/`:
//!
//! - `DDPM_KERNEL_CACHE` unset: `$DDPM_CACHE/kernels` (else `$XDG_CACHE_HOME/ddpm/kernels`,
//!   else `~/.cache/ddpm/kernels`), unless a `cubecl.toml` chooses another `[environment]
//!   path` than `target`;
//! - `DDPM_KERNEL_CACHE=DIR`: that directory;
//! - `DDPM_KERNEL_CACHE=off`: nothing kept (every run compiles and tunes again).
//!
//! A cache is only ever an accelerator: its entries carry the CubeCL version and the device's
//! fingerprint, so a cache from another card or version is ignored, never trusted.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Result, bail};

/// The environment variable that chooses the kernel cache.
pub const ENV: &str = "DDPM_KERNEL_CACHE";

/// Where kernels and tuning results are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In this directory (the cache database is a file inside it).
    Directory(PathBuf),
    /// Nowhere: each process compiles and tunes afresh.
    Off,
    /// Where a `cubecl.toml` says (no `DDPM_KERNEL_CACHE`, and no cache directory of this
    /// crate's to offer: neither `DDPM_CACHE`, `XDG_CACHE_HOME` nor `HOME` is set).
    CubeclDefault,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Directory(d) => write!(f, "{}", d.display()),
            Location::Off => write!(f, "off ({ENV}=off)"),
            Location::CubeclDefault => write!(f, "CubeCL's default (cubecl.toml)"),
        }
    }
}

/// The location `DDPM_KERNEL_CACHE` (`var`) asks for; `default` is this crate's cache root
/// (`cache::cache_dir`), consulted only when the variable is unset or empty.
pub fn location(
    var: Option<OsString>,
    default: impl FnOnce() -> Result<PathBuf>,
) -> Result<Location> {
    match var.filter(|v| !v.is_empty()) {
        Some(v) if v == "off" => Ok(Location::Off),
        Some(v) => {
            let dir = PathBuf::from(v);
            if dir.is_file() {
                bail!(
                    "{ENV}={}: a file; expected a directory to keep the kernel cache in, or `off` \
                     (a bundle from `ddpm kernels export` goes in with `ddpm kernels import FILE`)",
                    dir.display()
                );
            }
            Ok(Location::Directory(dir))
        }
        None => Ok(default()
            .map(|root| Location::Directory(root.join("kernels")))
            .unwrap_or(Location::CubeclDefault)),
    }
}

/// The location this process uses: `DDPM_KERNEL_CACHE` read once, the crate's cache root as
/// its default.
pub fn current() -> Result<Location> {
    location(std::env::var_os(ENV), crate::cache::cache_dir)
}

#[cfg(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu"))]
pub use cubecl_side::*;

#[cfg(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu"))]
mod cubecl_side {
    use std::path::Path;
    use std::sync::OnceLock;

    use anyhow::{Result, anyhow, bail};
    use burn::cubecl::bundle::{self, BundleFormat, ExportOptions};
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    use burn::cubecl::environment;

    use super::{Location, current};

    /// Applies the kernel cache's location to CubeCL before any GPU device exists (called by
    /// every GPU route's device constructor; later calls return the first outcome). A
    /// `cubecl.toml` and CubeCL's own `CUBECL_*` variables are read first, as CubeCL would.
    pub fn configure() -> Result<&'static Location> {
        static DONE: OnceLock<std::result::Result<Location, String>> = OnceLock::new();
        DONE.get_or_init(|| {
            let location = current().map_err(|e| e.to_string())?;
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            match &location {
                Location::Off => {
                    config.compilation.cache = false;
                    config.autotune.disable_cache = true;
                }
                Location::Directory(dir) => {
                    config.compilation.cache = true;
                    // A cubecl.toml that names its own place keeps it unless the variable is set.
                    if std::env::var_os(super::ENV).is_some_and(|v| !v.is_empty())
                        || matches!(config.environment.path, CacheConfig::Target)
                    {
                        if let Err(e) = std::fs::create_dir_all(dir) {
                            eprintln!(
                                "warning: kernel cache {}: cannot create it ({e}); kernels will \
                                 be compiled and tuned again by the next run",
                                dir.display()
                            );
                        }
                        config.environment.path = CacheConfig::Directory(dir.clone());
                    }
                }
                Location::CubeclDefault => config.compilation.cache = true,
            }
            let effective = match &config.environment.path {
                _ if location == Location::Off => Location::Off,
                CacheConfig::Directory(d) => Location::Directory(d.clone()),
                _ => Location::CubeclDefault,
            };
            // `false`: CubeCL's configuration was read before (by code outside this crate);
            // what it chose stands.
            if !CubeClRuntimeConfig::try_set(config) {
                return Ok(Location::CubeclDefault);
            }
            Ok(effective)
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
    }

    /// What the cache holds: (namespace, entries, bytes), one row per namespace.
    pub fn summary() -> Result<Vec<(String, u64, u64)>> {
        configure()?;
        Ok(environment::namespaces()
            .into_iter()
            .map(|n| (n.namespace, n.entries, n.bytes))
            .collect())
    }

    /// The database file of the cache (it may not exist yet).
    pub fn database() -> Result<std::path::PathBuf> {
        configure()?;
        Ok(environment::path())
    }

    /// Writes the cache into a bundle file `out` (SQLite) named `name`, for another machine
    /// with the same card and the same build: `ddpm kernels import` there. `only`: the
    /// namespace prefixes to include (say `autotune`: the tuning results without the compiled
    /// kernels); empty: everything. Returns the entries written. Refuses an existing `out`
    /// and an empty or disabled cache.
    pub fn export(out: &Path, name: &str, only: &[String]) -> Result<u64> {
        if matches!(configure()?, Location::Off) {
            bail!(
                "the kernel cache is off ({}=off): nothing to export",
                super::ENV
            );
        }
        if out.exists() {
            bail!(
                "{}: exists; choose a new file for the bundle",
                out.display()
            );
        }
        let entries: u64 = summary()?.iter().map(|s| s.1).sum();
        if entries == 0 {
            bail!(
                "the kernel cache {} is empty: run `ddpm kernels warmup` (or a training run) on \
                 this machine's GPU first",
                database()?.display()
            );
        }
        let source = database()?;
        let root = source.parent().unwrap_or(Path::new("."));
        let options = ExportOptions {
            name: name.to_string(),
            format: BundleFormat::Sqlite,
            namespaces: only.to_vec(),
            ..Default::default()
        };
        bundle::export(&[root], out, &options)
            .map_err(|e| anyhow!("{}: cannot write the bundle: {e}", out.display()))?;
        let written = bundle::SqliteBundle::open(out)
            .map_err(|e| anyhow!("{}: cannot read the bundle back: {e}", out.display()))?;
        let written: u64 = written.summary().iter().map(|n| n.entries).sum();
        if written == 0 {
            // Nothing matched `only`: no empty file left behind to be shipped by mistake.
            let _ = std::fs::remove_file(out);
            let mut kinds: Vec<String> = summary()?
                .into_iter()
                .filter_map(|s| s.0.split('/').next().map(str::to_string))
                .collect();
            kinds.dedup();
            bail!(
                "--only {}: no entry of the cache is under these prefixes (it has: {})",
                only.join(","),
                kinds.join(", ")
            );
        }
        Ok(written)
    }

    /// Copies the entries of the bundle `file` into this machine's cache (entries it already has
    /// are kept). Returns (imported, already there, refused).
    pub fn import(file: &Path) -> Result<(usize, usize, usize)> {
        if matches!(configure()?, Location::Off) {
            bail!(
                "the kernel cache is off ({}=off): nowhere to import into",
                super::ENV
            );
        }
        if !file.is_file() {
            bail!(
                "{}: no such bundle file (one written by `ddpm kernels export`)",
                file.display()
            );
        }
        let opened = bundle::open(file)
            .map_err(|e| anyhow!("{}: not a kernel cache bundle: {e}", file.display()))?;
        let report = bundle::import(opened.as_ref());
        Ok((report.imported, report.skipped, report.failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Result<PathBuf> {
        Ok(PathBuf::from("/home/u/.cache/ddpm"))
    }

    #[test]
    fn the_variable_chooses_a_directory_or_off_and_unset_means_the_crate_cache() {
        assert_eq!(
            location(None, root).unwrap(),
            Location::Directory("/home/u/.cache/ddpm/kernels".into())
        );
        assert_eq!(
            location(Some("".into()), root).unwrap(),
            Location::Directory("/home/u/.cache/ddpm/kernels".into())
        );
        assert_eq!(location(Some("off".into()), root).unwrap(), Location::Off);
        assert_eq!(
            location(Some("/scratch/k".into()), || bail!("not consulted")).unwrap(),
            Location::Directory("/scratch/k".into())
        );
        // No cache root of the crate's: CubeCL's own choice.
        assert_eq!(
            location(None, || bail!("no HOME")).unwrap(),
            Location::CubeclDefault
        );
    }

    #[test]
    fn a_file_is_refused_with_the_variable_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bundle.db");
        std::fs::write(&f, b"x").unwrap();
        let e = location(Some(f.clone().into()), root)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{ENV}={}: a file", f.display())),
            "{e}"
        );
        assert!(e.contains("ddpm kernels import"), "{e}");
    }
}
