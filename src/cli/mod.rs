//! The command line, one file per subcommand. Results go to stdout, progress and errors to
//! stderr. Exit codes: 0 success, 1 failure, 2 usage error.

mod bench;
mod data;
mod ema;
mod eval;
mod export;
mod fetch;
mod fid;
mod import;
mod kernels;
mod per_class;
mod plot;
mod sample;
mod sample_files;
mod schedule;
mod train;
mod train_classifier;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An error that ends a command, with its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags or arguments (exit 2).
    Usage(String),
    /// The command was well formed but failed (exit 1).
    Failure(anyhow::Error),
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failure(e)
    }
}

impl From<crate::Error> for CliError {
    fn from(e: crate::Error) -> Self {
        Self::Failure(e.into_anyhow())
    }
}

impl From<crate::schedule::ScheduleError> for CliError {
    fn from(e: crate::schedule::ScheduleError) -> Self {
        Self::Usage(e.to_string())
    }
}

/// Result of a subcommand.
pub type CliResult = Result<(), CliError>;

/// The device a `--device` flag names (an unknown or unbuilt one is a usage error).
fn device(name: &str) -> Result<burn::tensor::Device, CliError> {
    crate::device::by_name(name).map_err(|e| CliError::Usage(e.to_string()))
}

/// A progress bar on stderr over `total` units named `unit`, with `{msg}` when `with_msg`.
fn progress(total: u64, unit: &str, with_msg: bool) -> indicatif::ProgressBar {
    let msg = if with_msg { " | {msg}" } else { "" };
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit}{msg} | ETA {{eta}}"
        ))
        .expect("template"),
    );
    b
}

/// Clap parser of a count that must be at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// Clap parser of a count in 1..=MAX (training steps, epochs: bounded far above any real use,
/// so a typing error is named instead of running for ever or overflowing a total).
fn count_up_to<const MAX: usize>(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        Ok(n) => Err(format!("must be in 1..={MAX}, got {n}")),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// Clap parser of a finite number ≥ 0.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        Ok(v) => Err(format!("must be a finite number ≥ 0, got {v}")),
        Err(e) => Err(format!("expected a number: {e}")),
    }
}

/// The largest guidance weight or scale accepted: beyond it the guided network outputs
/// overflow f32 (every sample NaN), and no useful trade-off lies there (papers use up to ~10).
const GUIDANCE_MAX: f64 = 1e4;

/// Clap parser of a guidance weight or scale: a number in [0, [`GUIDANCE_MAX`]].
fn guidance_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=GUIDANCE_MAX).contains(&v) => Ok(v),
        Ok(_) => Err(format!(
            "must be in [0, {GUIDANCE_MAX}] (larger guidance overflows f32 arithmetic), got {s}"
        )),
        Err(e) => Err(format!("expected a number: {e}")),
    }
}

/// A comma-separated list of guidance weights or scales given to `flag`.
fn guidance_list(flag: &str, s: &str) -> Result<Vec<f64>, CliError> {
    s.split(',')
        .map(|w| {
            guidance_scale(w.trim()).map_err(|e| {
                CliError::Usage(format!(
                    "{flag}: `{w}` {e} (a comma-separated list, e.g. 0,0.5,1,2,4)"
                ))
            })
        })
        .collect()
}

/// Clap parser of a number in [0, 1].
fn unit_closed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("must be in [0, 1], got {v}")),
        Err(e) => Err(format!("expected a number: {e}")),
    }
}

#[derive(Parser)]
#[command(
    name = "ddpm",
    version,
    about = "Denoising diffusion probabilistic models: train, sample, evaluate",
    long_about = "Denoising Diffusion Probabilistic Models (Ho et al. 2020) in one binary.\n\nExamples:\n  ddpm schedule --schedule cosine --timesteps 1000 --format json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the noise schedule's tables (β, ᾱ, posterior coefficients, SNR).
    Schedule(schedule::ScheduleArgs),
    /// Train a diffusion model (Algorithm 1); with no flags, on the bundled MNIST digits.
    Train(Box<train::TrainArgs>),
    /// Train a noise-aware classifier p(y | x_t, t) for classifier guidance.
    TrainClassifier(Box<train_classifier::TrainClassifierArgs>),
    /// Generate images from a checkpoint (Algorithm 2, respaced, DDIM, DPM-Solver++).
    Sample(Box<sample::SampleArgs>),
    /// Evaluate a model: likelihood in bits/dim.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Measure training / sampling throughput of a preset.
    Bench(bench::BenchArgs),
    /// Datasets: download them.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// The lecture's pictures: schedules, diffused distributions, the forward process, losses.
    #[command(subcommand)]
    Plot(plot::PlotCommand),
    /// Download a Hugging Face Hub model (e.g. google/ddpm-cifar10-32) into the local cache.
    Fetch(fetch::FetchArgs),
    /// Make a run directory from a published model (Hugging Face diffusers).
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Write a run in another library's format (Hugging Face diffusers).
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Post-hoc EMA: the average of any width from a run's snapshots (Karras et al. 2024).
    #[command(subcommand)]
    Ema(ema::EmaCommand),
    /// The GPU routes' cache of compiled and tuned kernels: show, warm up, export, import.
    #[command(subcommand)]
    Kernels(kernels::KernelsCommand),
}

/// Parses the command line and runs the subcommand. Under an MPI launcher every rank runs
/// this; a rank that fails ends the whole job (no rank waits forever in a collective).
pub fn main() -> ExitCode {
    crate::heap::retain_freed_memory();
    let world = match crate::dist::init() {
        Ok(w) => *w,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    if world.is_distributed() {
        // Every rank must run the same binary on the same command line.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let binary = std::env::current_exe()
            .and_then(std::fs::read)
            .map(|b| crate::dist::fnv1a(&b))
            .unwrap_or(0);
        for (what, hash) in [
            (
                "the command line",
                crate::dist::fnv1a(args.join("\0").as_bytes()),
            ),
            ("the ddpm binary", binary),
        ] {
            if let Err(e) = world.agree(what, hash) {
                eprintln!("error (rank {} of {}): {e:#}", world.rank, world.size);
                world.abort(2);
            }
        }
        share_threads(&world);
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            world.abort(101);
        }));
    }
    let cli = Cli::parse();
    if world.is_distributed()
        && let Some(name) = single_process_only(&cli.command)
    {
        if world.is_root() {
            eprintln!(
                "error: `ddpm {name}` runs as one process; under mpirun only train, sample, eval \
                 nll, eval fid, eval fid-stats, plot chain and bench --mode allreduce split their \
                 work"
            );
        }
        world.abort(2);
    }
    let result = match cli.command {
        Command::Schedule(args) => schedule::run(args),
        Command::Train(args) => train::run(*args),
        Command::TrainClassifier(args) => train_classifier::run(*args),
        Command::Sample(args) => sample::run(*args),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Data(cmd) => data::run(cmd),
        Command::Plot(cmd) => plot::run(cmd),
        Command::Import(cmd) => import::run(cmd),
        Command::Fetch(args) => fetch::run(args),
        Command::Export(cmd) => export::run(cmd),
        Command::Ema(cmd) => ema::run(cmd),
        Command::Kernels(cmd) => kernels::run(cmd),
    };
    let who = if world.is_distributed() {
        format!(" (rank {} of {})", world.rank, world.size)
    } else {
        String::new()
    };
    let code = match result {
        Ok(()) => {
            world.finalize();
            return ExitCode::SUCCESS;
        }
        Err(CliError::Usage(m)) => {
            eprintln!("error{who}: {m}");
            2
        }
        Err(CliError::Failure(e)) => {
            eprintln!("error{who}: {e:#}");
            1
        }
    };
    if world.is_distributed() {
        world.abort(code);
    }
    ExitCode::from(code as u8)
}

/// The name of a command that does not split its work over ranks (and would only repeat it,
/// writing the same files from every rank).
fn single_process_only(cmd: &Command) -> Option<&'static str> {
    match cmd {
        Command::Train(_) | Command::Sample(_) => None,
        Command::Eval(e) => match e {
            eval::EvalCommand::Nll(_)
            | eval::EvalCommand::Fid(_)
            | eval::EvalCommand::FidStats(_) => None,
            eval::EvalCommand::JudgeTrain(_) => Some("eval judge-train"),
            eval::EvalCommand::Fd(_) => Some("eval fd"),
            eval::EvalCommand::Guidance(_) => Some("eval guidance"),
        },
        Command::Plot(plot::PlotCommand::Chain(_)) => None,
        Command::Plot(_) => Some("plot"),
        Command::Bench(b) if b.splits_over_ranks() => None,
        Command::Bench(_) => Some("bench (other than --mode allreduce)"),
        Command::TrainClassifier(_) => Some("train-classifier"),
        Command::Schedule(_) => Some("schedule"),
        Command::Data(_) => Some("data"),
        Command::Import(_) => Some("import"),
        Command::Fetch(_) => Some("fetch"),
        Command::Export(_) => Some("export"),
        Command::Ema(_) => Some("ema"),
        Command::Kernels(_) => Some("kernels"),
    }
}

/// Gives each rank on a machine its share of the cores for the CPU kernels, unless
/// `RAYON_NUM_THREADS` says otherwise.
fn share_threads(world: &crate::dist::World) {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / world.local_size.max(1)).max(1);
    // Fails only when the pool already exists, which it cannot this early.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}
