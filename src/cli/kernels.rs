//! `ddpm kernels`: the GPU routes' cache of compiled kernels and autotune results — where it is,
//! filling it ahead of a run, and carrying it to other machines with the same card.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::device::kernel_cache;

#[derive(Subcommand)]
pub enum KernelsCommand {
    /// Where the kernel cache is (DDPM_KERNEL_CACHE) and what it holds.
    Show,
    /// Compile and tune, ahead of a training run, the kernels it needs: two of its training
    /// steps and its sample grid, in a temporary directory (removed after).
    Warmup(Box<WarmupArgs>),
    /// Write the kernel cache into one file, for other machines with the same GPU and the same
    /// ddpm build (`ddpm kernels import` there).
    Export(ExportArgs),
    /// Add the kernels of a file from `ddpm kernels export` to this machine's cache (what the
    /// cache has already is kept).
    Import(ImportArgs),
}

#[derive(Args)]
#[command(
    after_help = "Takes `ddpm train`'s flags: the warm-up compiles exactly the kernels that training would (the network, loss, optimizer and EMA at that batch size and precision, and the sample grid's sampler). --out, --resume, --steps and the logging and checkpoint cadence are not used: the warm-up runs two steps in a temporary directory and removes it.\n\nExamples:\n  ddpm kernels warmup --device cuda --preset cifar10 --batch-size 128 --data cifar10:data/cifar10\n  ddpm kernels warmup --device cuda --preset cifar10 --batch-size 128 --precision bf16 --data cifar10:data/cifar10\n  ddpm kernels export h100.kernels && scp h100.kernels node2: && ssh node2 ddpm kernels import h100.kernels"
)]
pub struct WarmupArgs {
    #[command(flatten)]
    train: super::train::TrainArgs,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The file to write (must not exist).
    out: PathBuf,
    /// A name stored in the file, say the card it was tuned on [default: the file's name].
    #[arg(long)]
    name: Option<String>,
    /// Only the entries under these namespace prefixes, comma-separated (`ddpm kernels show`
    /// lists them): `autotune` is the tuning results alone, without the compiled kernels.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A file written by `ddpm kernels export`.
    file: PathBuf,
}

pub fn run(cmd: KernelsCommand) -> CliResult {
    match cmd {
        KernelsCommand::Show => cache::show(),
        KernelsCommand::Warmup(args) => warmup(*args),
        KernelsCommand::Export(args) => cache::export(args),
        KernelsCommand::Import(args) => cache::import(args),
    }
}

fn warmup(args: WarmupArgs) -> CliResult {
    if args.train.resume {
        return Err(CliError::Usage(
            "--resume: a warm-up starts no run to resume; give the run's flags (or --config \
             RUN/config.toml)"
                .into(),
        ));
    }
    let cfg = super::train::resolve(&args.train)?;
    let device =
        crate::device::resolve_name(&cfg.device).map_err(|e| CliError::Usage(e.to_string()))?;
    if device == "cpu" {
        return Err(CliError::Usage(format!(
            "--device {}: the cpu backend runs kernels compiled into this binary; there is nothing \
             to warm up (use --device cuda, wgpu or cubecl-cpu)",
            cfg.device
        )));
    }
    let location = kernel_cache::effective().map_err(|e| CliError::Usage(e.to_string()))?;
    if location == kernel_cache::Location::Off {
        return Err(CliError::Usage(format!(
            "{}=off: a warm-up fills the kernel cache, which is off",
            kernel_cache::ENV
        )));
    }
    if !args.train.quiet {
        eprintln!(
            "warm-up on {device}: compiling and tuning the kernels of two training steps and a \
             sample grid of {} images ({} steps); kernel cache: {location}",
            cfg.sample_count, cfg.sample_steps
        );
    }
    let w = crate::train::warmup::warmup(&cfg, args.train.quiet)?;
    println!(
        "warmed up on {device} in {:.1} s: first step {:.1} s (with setup, compiling and tuning), \
         second step {:.2} s, sample grid and checkpoint {:.1} s; kernel cache: {location}",
        w.total, w.first_step, w.second_step, w.grid
    );
    Ok(())
}

/// `show`, `export` and `import` in a binary with a GPU route.
#[cfg(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu"))]
mod cache {
    use super::{CliError, CliResult, ExportArgs, ImportArgs, kernel_cache};

    fn megabytes(bytes: u64) -> f64 {
        bytes as f64 / 1e6
    }

    pub fn show() -> CliResult {
        use std::fmt::Write as _;
        let location = kernel_cache::configure().map_err(|e| CliError::Usage(e.to_string()))?;
        let mut text = format!("kernel cache: {location}\n");
        if !matches!(location, kernel_cache::Location::Off) {
            let _ = writeln!(text, "database: {}", kernel_cache::database()?.display());
            let rows = kernel_cache::summary()?;
            if rows.is_empty() {
                text.push_str(
                    "empty: the first run on a GPU device (or `ddpm kernels warmup`) fills it\n",
                );
            }
            for (namespace, entries, bytes) in &rows {
                let _ = writeln!(
                    text,
                    "{namespace}: {entries} entries, {:.1} MB",
                    megabytes(*bytes)
                );
            }
        }
        // A reader that stops early (`| head`) ends the listing, without a panic.
        std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())
            .map_err(|e| anyhow::anyhow!("standard output: {e}"))?;
        Ok(())
    }

    pub fn export(args: ExportArgs) -> CliResult {
        let name = args.name.clone().unwrap_or_else(|| {
            args.out
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let entries = kernel_cache::export(&args.out, &name, &args.only)?;
        println!(
            "wrote {} ({entries} entries, {:.1} MB)",
            args.out.display(),
            megabytes(std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0))
        );
        Ok(())
    }

    pub fn import(args: ImportArgs) -> CliResult {
        let done = kernel_cache::import(&args.file)?;
        println!(
            "{} (\"{}\", CubeCL {}): {} entries imported, {} already in the cache; kernel \
             cache: {}",
            args.file.display(),
            done.name,
            done.cubecl_version,
            done.imported,
            done.kept,
            kernel_cache::configure()?
        );
        Ok(())
    }
}

/// `show`, `export` and `import` in a binary without a GPU route: nothing is compiled at run
/// time, so there is no cache; each says so.
#[cfg(not(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu")))]
mod cache {
    use super::{CliError, CliResult, ExportArgs, ImportArgs};

    fn no_gpu_route(what: &str) -> CliError {
        CliError::Usage(format!(
            "{what}: this binary has no GPU backend (built with: {}); only the cuda, wgpu and \
             cubecl-cpu routes compile kernels at run time (cargo build --release --features \
             cuda)",
            crate::device::built_backends().join(", ")
        ))
    }

    pub fn show() -> CliResult {
        Err(no_gpu_route("kernels show"))
    }

    pub fn export(_: ExportArgs) -> CliResult {
        Err(no_gpu_route("kernels export"))
    }

    pub fn import(_: ImportArgs) -> CliResult {
        Err(no_gpu_route("kernels import"))
    }
}
