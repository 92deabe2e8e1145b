//! `ddpm plot`: the lecture's pictures.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::viz::plot;

#[derive(Subcommand)]
pub enum PlotCommand {
    /// β_t, ᾱ_t and log-SNR of the linear, quadratic, sigmoid, cosine and VDM linear-γ
    /// schedules.
    Schedules(SchedulesArgs),
    /// The diffused data distribution q(x_t) at several t.
    Diffusion(DiffusionArgs),
    /// A real image noised by q(x_t|x_0) at several t.
    Forward(ForwardArgs),
    /// Training loss over steps, overall and by t-quartile.
    Loss(LossArgs),
    /// The denoising chain of a trained model: x_t and its x̂0 at ten steps (content, then
    /// detail).
    Chain(ChainArgs),
}

#[derive(Args)]
pub struct ChainArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// ddpm, ddim or dpmpp2m.
    #[arg(long, default_value = "ddpm")]
    sampler: String,
    /// Steps of the sampler.
    #[arg(long, default_value_t = 1000, value_parser = super::at_least_one)]
    steps: usize,
    /// Samples (rows of x_t / x̂0 pairs), at most 8.
    #[arg(long, default_value_t = 4, value_parser = super::at_least_one)]
    n: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Classes of a class-conditional model, as `ddpm sample --class`.
    #[arg(long)]
    class: Option<String>,
    /// Classifier-free guidance weight, as `ddpm sample --guidance`.
    #[arg(long, default_value_t = 0.0, value_parser = super::guidance_scale)]
    guidance: f64,
    /// A noise-aware classifier to guide with, as `ddpm sample --guide-classifier`.
    #[arg(long, alias = "classifier")]
    guide_classifier: Option<PathBuf>,
    /// Classifier-guidance scale, as `ddpm sample --classifier-scale`.
    #[arg(long, default_value_t = 1.0, value_parser = super::guidance_scale)]
    classifier_scale: f64,
}

#[derive(Args)]
pub struct SchedulesArgs {
    /// T.
    #[arg(long, default_value_t = 1000, value_parser = super::at_least_one)]
    timesteps: usize,
    /// Also draw the schedule of these trained runs (a learned VDM schedule's EMA; repeatable).
    #[arg(long)]
    run: Vec<PathBuf>,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm plot diffusion --data toy:swiss-roll --out diffused.png\n  ddpm plot diffusion --data toy:mixture-1d --t 0,50,100,250,999 --out mixture.png"
)]
pub struct DiffusionArgs {
    /// toy:swiss-roll, toy:two-moons, toy:8-gaussians, toy:checkerboard or toy:mixture-1d.
    #[arg(long, default_value = "toy:swiss-roll")]
    data: String,
    /// Timesteps (0-based) to show.
    #[arg(long, default_value = "0,100,250,500,999", value_delimiter = ',')]
    t: Vec<usize>,
    /// Noise schedule over 1000 steps.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct ForwardArgs {
    /// A PNG or JPEG image.
    #[arg(long)]
    image: PathBuf,
    /// Timesteps (0-based) to show.
    #[arg(long, default_value = "0,50,100,250,500,999", value_delimiter = ',')]
    t: Vec<usize>,
    /// Noise schedule over 1000 steps.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct LossArgs {
    /// A run directory (with log.jsonl).
    #[arg(long)]
    run: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

fn schedule_1000(name: &str) -> Result<crate::schedule::NoiseSchedule, CliError> {
    let k = crate::schedule::BetaSchedule::named(name, 1000, None, None)?;
    Ok(crate::schedule::NoiseSchedule::new(&k, 1000, false)?)
}

fn check_ts(ts: &[usize]) -> Result<(), CliError> {
    if ts.is_empty() || ts.iter().any(|&t| t >= 1000) {
        return Err(CliError::Usage(format!(
            "--t: expected timesteps in 0..=999, got {ts:?}"
        )));
    }
    Ok(())
}

pub fn run(cmd: PlotCommand) -> CliResult {
    match cmd {
        PlotCommand::Schedules(a) => {
            let t_max = crate::schedule::MAX_TIMESTEPS;
            if a.timesteps > t_max {
                return Err(CliError::Usage(format!(
                    "--timesteps: T must be at most {t_max}, got {}",
                    a.timesteps
                )));
            }
            if a.timesteps < 21 {
                return Err(CliError::Usage(
                    "--timesteps: at least 21 (the default β ranges scale by 1000/T)".into(),
                ));
            }
            let mut runs = Vec::new();
            for r in &a.run {
                let (s, _) = crate::run::load::run_schedule(r, Some(a.timesteps))
                    .map_err(|e| CliError::Usage(format!("--run {}: {e:#}", r.display())))?;
                let name = r
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| r.display().to_string());
                runs.push((name, s));
            }
            plot::schedules(&a.out, a.timesteps, runs)?;
        }
        PlotCommand::Diffusion(a) => {
            check_ts(&a.t)?;
            let s = schedule_1000(&a.schedule)?;
            plot::diffusion(&a.out, &a.data, &a.t, &s, a.seed)
                .map_err(|e| CliError::Usage(format!("{e:#}")))?;
        }
        PlotCommand::Forward(a) => {
            check_ts(&a.t)?;
            let s = schedule_1000(&a.schedule)?;
            let img = image::open(&a.image)
                .map_err(|e| CliError::Usage(format!("--image {}: {e}", a.image.display())))?;
            let gray = !img.color().has_color();
            let c = if gray { 1 } else { 3 };
            let rgb = img.to_rgb8();
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            let x0: Vec<f64> = (0..c)
                .flat_map(|ch| {
                    rgb.pixels()
                        .map(move |p| p.0[ch] as f64 / 127.5 - 1.0)
                        .collect::<Vec<_>>()
                })
                .collect();
            let mut rng = crate::rng::streams::plot_noise(a.seed);
            let mut noise = vec![0.0; x0.len()];
            rng.fill_normal(&mut noise);
            let panels: Vec<Vec<f32>> = a
                .t
                .iter()
                .map(|&t| {
                    let (m, sd) = (s.sqrt_alphas_cumprod[t], s.sqrt_one_minus_alphas_cumprod[t]);
                    x0.iter()
                        .zip(&noise)
                        .map(|(x, e)| (m * x + sd * e) as f32)
                        .collect()
                })
                .collect();
            let name = a
                .image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            crate::viz::panels::save_panels(
                &a.out,
                &format!("q(x_t | x_0) of {name}, {} schedule", a.schedule),
                &a.t.iter().map(|t| format!("t = {t}")).collect::<Vec<_>>(),
                &[("x_t".to_string(), panels)],
                [c, h, w],
                (112 / h.max(w)).max(1),
            )?;
        }
        PlotCommand::Chain(a) => {
            super::sample::chain(
                super::sample::ChainRequest {
                    checkpoint: a.checkpoint,
                    sampler: a.sampler,
                    steps: a.steps,
                    n: a.n.clamp(1, 8),
                    seed: a.seed,
                    class: a.class,
                    guidance: a.guidance,
                    classifier: a.guide_classifier,
                    classifier_scale: a.classifier_scale,
                },
                &a.out,
            )?;
        }
        PlotCommand::Loss(a) => {
            plot::loss(&a.out, &a.run.join("log.jsonl"))
                .map_err(|e| CliError::Usage(format!("--run: {e:#}")))?;
        }
    }
    Ok(())
}
