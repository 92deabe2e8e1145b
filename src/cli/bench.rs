//! `ddpm bench`: training / sampling throughput of a preset.

use std::io::Write;

use clap::Args;

use super::{CliError, CliResult};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm bench --preset mnist --batch-size 64 --mode train --steps 5\n  mpirun -np 2 ddpm bench --preset cifar10 --mode allreduce --steps 20\n  ddpm bench --preset cifar10 --batch-size 128 --mode sample --device cuda --json\n\nbench/compare.sh runs this and the PyTorch peer (bench/torch_peer.py) side by side."
)]
pub struct BenchArgs {
    /// mnist, cifar10 or tiny.
    #[arg(long, default_value = "mnist")]
    preset: String,
    /// Images per step.
    #[arg(long, default_value_t = 64, value_parser = super::at_least_one)]
    batch_size: usize,
    /// train (forward, L_simple, backward, AdamW), sample (one network evaluation), or
    /// allreduce (summing the preset's gradients over the ranks of an `mpirun` job).
    #[arg(long, default_value = "train")]
    mode: String,
    /// cpu, cuda, wgpu, or auto (the GPU when there is one).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, or bf16: the network in bfloat16 (training: f32 master weights, as `ddpm train
    /// --precision bf16`).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = super::at_least_one)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// Also time every CPU kernel call (convolutions, GroupNorms, attention) and print, per
    /// operation and shape, its share of a step (to standard error with --json).
    #[arg(long)]
    profile: bool,
    /// Run burn's composed operations instead of this crate's kernels (CPU and CubeCL alike):
    /// the kernels' share of a step, measured with one binary.
    #[arg(long)]
    no_kernels: bool,
}

impl BenchArgs {
    /// Whether this benchmark splits over the ranks of an `mpirun` job (the all-reduce does).
    pub fn splits_over_ranks(&self) -> bool {
        self.mode == "allreduce"
    }
}

/// The most timed or warm-up steps of one benchmark (a day of the `cifar10` preset on a CPU).
const BENCH_MAX_STEPS: usize = 100_000;

pub fn run(a: BenchArgs) -> CliResult {
    if a.steps == 0 || a.batch_size == 0 {
        return Err(CliError::Usage(
            "--steps and --batch-size must be at least 1".into(),
        ));
    }
    for (flag, v) in [("--steps", a.steps), ("--warmup", a.warmup)] {
        if v > BENCH_MAX_STEPS {
            return Err(CliError::Usage(format!(
                "{flag}: at most {BENCH_MAX_STEPS} steps, got {v}"
            )));
        }
    }
    let device = super::device(&a.device)?;
    let precision = crate::model::precision::Precision::parse(&a.precision, "--precision")
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    if a.mode == "allreduce" {
        let r = crate::bench::allreduce(&a.preset, a.steps, a.warmup, &device)
            .map_err(|e| CliError::Usage(format!("{e:#}")))?;
        if crate::dist::world().is_root() {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string(&r).map_err(anyhow::Error::from)?
                );
            } else {
                println!(
                    "{} gradients ({} parameters) over {} rank(s): {:.2} ms per all-reduce, {:.2} GB/s \
                     (bus {:.2} GB/s)",
                    r.preset, r.parameters, r.ranks, r.ms, r.algorithm_gb_per_s, r.bus_gb_per_s
                );
            }
        }
        return Ok(());
    }
    // On the CPU the activations live in this machine's memory: refuse a batch that cannot fit
    // before allocating it (the estimate `ddpm train` applies).
    if matches!(
        crate::device::resolve_name(&a.device),
        Ok("cpu" | "cubecl-cpu")
    ) {
        let cfg = crate::model::UNetConfig::preset(&a.preset)
            .map_err(|e| CliError::Usage(format!("--preset: {e}")))?;
        let need = a.batch_size as f64
            * cfg.activation_values() as f64
            * 4.0
            * crate::run::net::ACTIVATION_MARGIN;
        if let Some((need_gib, avail_gib)) = crate::heap::shortfall_gib(need) {
            return Err(CliError::Usage(format!(
                "--batch-size {}: a step of the {} preset needs about {need_gib:.1} GiB, this \
                 machine has {avail_gib:.1} GiB available; use a smaller batch",
                a.batch_size, a.preset
            )));
        }
    }
    crate::kernels::profile::set_enabled(a.profile);
    crate::kernels::set_enabled(!a.no_kernels);
    let r = crate::bench::run(
        &a.preset,
        &a.mode,
        a.batch_size,
        a.steps,
        a.warmup,
        &device,
        precision,
    )
    .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    if a.profile {
        let table = profile_table(a.steps, r.ms_per_step);
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = if a.json {
            std::io::stderr().write_all(table.as_bytes())
        } else {
            std::io::stdout().write_all(table.as_bytes())
        };
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(anyhow::Error::from)?
        );
    } else {
        println!(
            "{} {} batch {}: {:.1} ms/step, {:.1} img/s, peak RSS {:.0} MiB",
            r.preset, r.mode, r.batch_size, r.ms_per_step, r.img_per_s, r.peak_rss_mb
        );
    }
    Ok(())
}

/// The kernel timings of `steps` timed steps, per step, against the median step time.
fn profile_table(steps: usize, step_ms: f64) -> String {
    use crate::kernels::profile::{STEP, report};
    use std::fmt::Write;
    let (phases, lines): (Vec<_>, Vec<_>) =
        report().into_iter().partition(|(k, _)| k.starts_with(STEP));
    let per_step = |seconds: f64| seconds * 1000.0 / steps as f64;
    let total: f64 = lines.iter().map(|(_, e)| per_step(e.seconds)).sum();
    let mut out = String::new();
    let phases: Vec<String> = phases
        .iter()
        .map(|(k, e)| format!("{} {:.1} ms", &k[STEP.len()..], per_step(e.seconds)))
        .collect();
    if !phases.is_empty() {
        let _ = writeln!(out, "step: {step_ms:.1} ms: {}", phases.join(", "));
    }
    let _ = writeln!(
        out,
        "kernels: {total:.1} ms of the step (the rest: burn's own operations, loss, optimizer)"
    );
    let _ = writeln!(
        out,
        "{:>9} {:>6} {:>7}  operation",
        "ms/step", "calls", "share"
    );
    for (what, e) in lines {
        let ms = per_step(e.seconds);
        let _ = writeln!(
            out,
            "{ms:>9.2} {:>6} {:>6.1}%  {what}",
            e.calls as f64 / steps as f64,
            100.0 * ms / step_ms
        );
    }
    out
}
