//! `ddpm ema`: post-hoc EMA (Karras et al. 2024) — averages of any width from a run's snapshots.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};

#[derive(Subcommand)]
pub enum EmaCommand {
    /// The average of width σ_rel at a checkpoint's step, from the run's post-hoc EMA snapshots
    /// (a run trained with --posthoc-ema), as a new run directory to sample or evaluate.
    Reconstruct(ReconstructArgs),
    /// Each width's average reconstructed (into --out), sampled and judged against reference
    /// images: the classifier Fréchet distance and Inception-style score per σ_rel.
    Sweep(SweepArgs),
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm ema sweep --checkpoint runs/m --sigma-rel 0.03,0.05,0.1,0.15 --judge mnist-judge.safetensors --reference idx:../shared/data/mnist --reference-split test --n 2000 --sampler heun --steps 18 --out runs/m-sweep"
)]
pub struct SweepArgs {
    /// A run directory (its newest checkpoint) or one of its checkpoints.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The widths σ_rel to compare, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    sigma_rel: Vec<f64>,
    /// The judging classifier, from `eval judge-train`.
    #[arg(long)]
    judge: PathBuf,
    /// The reference images: a dataset (bundled, idx:DIR, …).
    #[arg(long)]
    reference: String,
    /// Split of the reference dataset.
    #[arg(long, default_value = "train")]
    reference_split: String,
    /// Samples per width.
    #[arg(long, default_value_t = 1000, value_parser = super::at_least_one)]
    n: usize,
    /// ddim, dpmpp2m, ddpm, heun or euler.
    #[arg(long, default_value = "heun")]
    sampler: String,
    /// The sampler's steps (Heun: noise levels, 2·steps − 1 evaluations).
    #[arg(long, default_value_t = 18, value_parser = super::at_least_one)]
    steps: usize,
    /// Samples per network call.
    #[arg(long, default_value_t = 100, value_parser = super::at_least_one)]
    batch_size: usize,
    /// The seed: every width draws from the same noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the reconstructed runs go (one per width; must not exist).
    #[arg(long)]
    out: PathBuf,
    /// A line of JSON per width: {sigma_rel, fd, inception_score, profile_error}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(
    after_help = "With one width, --out is the new run; with several, --out holds one run per width (sigma-0.050/, …).\n\nExamples:\n  ddpm train --data idx:../shared/data/mnist --steps 2000 --posthoc-ema 0.05,0.10 --out runs/m\n  ddpm ema reconstruct --checkpoint runs/m --sigma-rel 0.07 --out runs/m-ema07\n  ddpm ema reconstruct --checkpoint runs/m --sigma-rel 0.03,0.05,0.1,0.15 --out runs/m-sweep"
)]
pub struct ReconstructArgs {
    /// A run directory (its newest checkpoint) or one of its checkpoints.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The width(s) σ_rel of the average, in (0, 0.2887]: comma-separated for several.
    #[arg(long, value_delimiter = ',', required = true)]
    sigma_rel: Vec<f64>,
    /// The new run directory (must not exist).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: EmaCommand) -> CliResult {
    match cmd {
        EmaCommand::Reconstruct(a) => reconstruct(a),
        EmaCommand::Sweep(a) => sweep(a),
    }
}

/// Where each width's run goes: `out` itself for one width unless `always_nested`, else
/// `out/sigma-S`; `out` must not exist.
fn width_dirs(
    out: &std::path::Path,
    widths: &[f64],
    always_nested: bool,
) -> Result<Vec<PathBuf>, CliError> {
    if out.exists() {
        return Err(CliError::Usage(format!(
            "--out {}: exists; post-hoc EMA never overwrites",
            out.display()
        )));
    }
    Ok(match widths {
        [_] if !always_nested => vec![out.to_path_buf()],
        _ => widths
            .iter()
            .map(|s| out.join(format!("sigma-{s:.3}")))
            .collect(),
    })
}

fn reconstruct(a: ReconstructArgs) -> CliResult {
    let dirs = width_dirs(&a.out, &a.sigma_rel, false)?;
    for (&s, out) in a.sigma_rel.iter().zip(dirs) {
        let r = crate::run::posthoc::reconstruct(&a.checkpoint, s, &out).map_err(|e| {
            CliError::Usage(format!("--checkpoint {}: {e:#}", a.checkpoint.display()))
        })?;
        println!(
            "σ_rel {:.3} at step {}: {} snapshots combined (profile error {:.2e}); run: {}",
            r.sigma_rel,
            r.step,
            r.snapshots,
            r.profile_error,
            r.out.display()
        );
    }
    Ok(())
}

fn sweep(a: SweepArgs) -> CliResult {
    use crate::eval::frechet::{FeatureStats, frechet_distance};
    use crate::eval::judge;
    use crate::{ImagePipeline, SampleOptions};
    let dirs = width_dirs(&a.out, &a.sigma_rel, true)?;
    let device = super::device("cpu")?;
    let (model, shape) =
        judge::load(&a.judge, &device).map_err(|e| CliError::Usage(format!("--judge: {e:#}")))?;
    let split = a
        .reference_split
        .parse()
        .map_err(|e: String| CliError::Usage(format!("--reference-split: {e}")))?;
    let reference = crate::data::open(&a.reference, split, 0, Some((shape[0], shape[1])))
        .map_err(|e| CliError::Usage(format!("--reference: {e:#}")))?;
    if reference.item_shape() != shape {
        return Err(CliError::Usage(format!(
            "--reference {}: items are {:?}, the judge takes {shape:?}",
            a.reference,
            reference.item_shape()
        )));
    }
    if a.n < 2 {
        return Err(CliError::Usage(
            "--n: a covariance needs at least 2 samples".into(),
        ));
    }
    let (fr, _, nr) = judge::features(&model, reference.as_ref(), None, 256, &device);
    let reference_stats = FeatureStats::from_features(&fr, nr, judge::FEATURES)?;
    let options = SampleOptions {
        n: a.n,
        sampler: crate::sample::SamplerSpec {
            name: a.sampler.clone(),
            steps: a.steps,
            eta: 0.0,
            spacing: None,
            respace: None,
            edm: Default::default(),
        },
        seed: a.seed,
        batch_size: a.batch_size,
        classes: None,
        guidance: 0.0,
        guidance_rescale: 0.0,
        clip: crate::diffusion::X0Clip::Clip,
    };
    for (&s, out) in a.sigma_rel.iter().zip(dirs) {
        let r = crate::run::posthoc::reconstruct(&a.checkpoint, s, &out).map_err(|e| {
            CliError::Usage(format!("--checkpoint {}: {e}", a.checkpoint.display()))
        })?;
        let pipeline = ImagePipeline::load_on(&out, &device, false)?;
        if pipeline.config().item_shape()? != shape {
            return Err(CliError::Usage(format!(
                "--judge: it takes {shape:?}, the model draws {:?}",
                pipeline.config().item_shape()?
            )));
        }
        let samples = pipeline.sample(&options).map_err(|e| match e.kind() {
            crate::ErrorKind::Config => CliError::Usage(e.to_string()),
            _ => CliError::Failure(e.into_anyhow()),
        })?;
        let data = samples.to_dataset()?;
        let (fs, ps, ns) = judge::features(&model, &data, None, 256, &device);
        let stats = FeatureStats::from_features(&fs, ns, judge::FEATURES)?;
        let fd = frechet_distance(&stats, &reference_stats)?;
        let is = judge::inception_score(&ps, ns);
        if a.json {
            println!(
                "{}",
                serde_json::json!({"sigma_rel": s, "fd": fd, "inception_score": is,
                    "profile_error": r.profile_error, "n_samples": ns, "n_reference": nr})
            );
        } else {
            println!(
                "σ_rel {s:.3}: classifier FD {fd:.4}, IS {is:.3} ({ns} samples vs {nr} reference \
                 images; profile error {:.2e}); run: {}",
                r.profile_error,
                out.display()
            );
        }
    }
    Ok(())
}
