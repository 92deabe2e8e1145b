//! Where the GPU routes keep their compiled kernels and autotune results between runs.
//!
//! The first steps of a run on `cuda`, `wgpu` or `cubecl-cpu` compile every kernel the training
//! step and the sampler need and benchmark the candidates of each tunable one (convolutions,
//! matrix products, reductions): minutes, once. CubeCL can keep both results on disk in one
//! database per machine; this crate turns both on (CubeCL keeps only the tuning results by
//! default; of the routes built here only `cuda` stores compiled kernels) and puts them in its
//! own cache rather than beside the working directory's `target/`:
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

/// The location `DDPM_KERNEL_CACHE` asks for in this process, the crate's cache root as its
/// default (what CubeCL is given; [`effective`] says what it uses).
pub fn current() -> Result<Location> {
    location(std::env::var_os(ENV), crate::cache::cache_dir)
}

/// Where the kernel cache of this process is, for messages: what CubeCL was configured with in
/// a binary with a GPU route, else what `DDPM_KERNEL_CACHE` asks for.
pub fn effective() -> Result<Location> {
    #[cfg(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu"))]
    return configure().cloned();
    #[cfg(not(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu")))]
    current()
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
    use burn::cubecl::records::RecordLevel;

    use super::{ENV, Location, current};

    /// Applies the kernel cache's location to CubeCL before any GPU device exists (called by
    /// every GPU route's device constructor; later calls return the first outcome) and returns
    /// the directory CubeCL keeps it in. A `cubecl.toml` and CubeCL's own `CUBECL_*` variables
    /// are read first, as CubeCL would; a `cubecl.toml` `[environment] path` other than
    /// `target` is kept unless `DDPM_KERNEL_CACHE` is set.
    pub fn configure() -> Result<&'static Location> {
        static DONE: OnceLock<std::result::Result<Location, String>> = OnceLock::new();
        DONE.get_or_init(|| {
            let location = current().map_err(|e| e.to_string())?;
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            match &location {
                Location::Off => {
                    config.compilation.cache = false;
                    config.autotune.disable_cache = true;
                    config.throughput.disable_cache = true;
                    config.environment.records.level = RecordLevel::Off;
                }
                Location::Directory(dir) => {
                    config.compilation.cache = true;
                    if std::env::var_os(ENV).is_some_and(|v| !v.is_empty())
                        || matches!(config.environment.path, CacheConfig::Target)
                    {
                        config.environment.path = CacheConfig::Directory(dir.clone());
                    }
                }
                Location::CubeclDefault => config.compilation.cache = true,
            }
            let effective = if location == Location::Off {
                Location::Off
            } else {
                Location::Directory(config.environment.path.root())
            };
            // `false`: CubeCL's configuration was read before (by code outside this crate);
            // what it chose stands.
            if !CubeClRuntimeConfig::try_set(config) {
                return Ok(Location::Directory(environment::root()));
            }
            Ok(effective)
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
    }

    /// The configured cache, refused when it is off (`what`: the operation, for the message).
    fn enabled(what: &str) -> Result<()> {
        if matches!(configure()?, Location::Off) {
            bail!("the kernel cache is off ({ENV}=off): {what}");
        }
        Ok(())
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
    /// kernels); empty: everything but CubeCL's account of how the cache was built. Returns the
    /// entries written. Refuses an existing `out` (or files CubeCL would replace beside it) and
    /// an empty or disabled cache; writes nothing when no entry matches `only`.
    pub fn export(out: &Path, name: &str, only: &[String]) -> Result<u64> {
        enabled("nothing to export")?;
        for suffix in ["", ".tmp", ".tmp-wal", ".tmp-shm", "-wal", "-shm"] {
            let path = std::path::PathBuf::from(format!("{}{suffix}", out.display()));
            if path.exists() {
                bail!(
                    "{}: exists; choose a new file for the bundle",
                    path.display()
                );
            }
        }
        let rows = summary()?;
        if rows.iter().all(|r| r.1 == 0) {
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
            excluded_namespaces: vec!["records".into()],
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
            let kinds: std::collections::BTreeSet<&str> = rows
                .iter()
                .filter_map(|r| r.0.split('/').next())
                .filter(|k| *k != "records")
                .collect();
            bail!(
                "--only {}: no entry of the cache is under these prefixes (it has: {})",
                only.join(","),
                kinds.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(written)
    }

    /// What an import did.
    #[derive(Debug, Clone)]
    pub struct Imported {
        /// Entries copied into the cache.
        pub imported: usize,
        /// Entries the cache had already (kept as they were).
        pub kept: usize,
        /// The bundle's name (`ddpm kernels export --name`).
        pub name: String,
        /// The CubeCL version that wrote the bundle (entries of another version are never
        /// looked up).
        pub cubecl_version: String,
    }

    /// Copies the entries of the bundle `file` into this machine's cache (entries it already has
    /// are kept). Fails when the cache refused to store some of them (a full disk, say).
    pub fn import(file: &Path) -> Result<Imported> {
        enabled("nowhere to import into")?;
        if !file.is_file() {
            bail!(
                "{}: no such bundle file (one written by `ddpm kernels export`)",
                file.display()
            );
        }
        let opened = bundle::SqliteBundle::open(file)
            .map_err(|e| anyhow!("{}: not a kernel cache bundle: {e}", file.display()))?;
        let manifest = opened.manifest().clone();
        let report = bundle::import(&opened);
        if report.failed > 0 {
            bail!(
                "{}: {} of its entries could not be written into the kernel cache {} (full disk? \
                 read-only directory?); {} were imported",
                file.display(),
                report.failed,
                database()?.display(),
                report.imported
            );
        }
        Ok(Imported {
            imported: report.imported,
            kept: report.skipped,
            name: manifest.name,
            cubecl_version: manifest.cubecl_version,
        })
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
