//! `ddpm sample`: generate images from a trained checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use clap::Args;

use super::{CliError, CliResult};
use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::files::write_atomic;
use crate::model::{Mlp, UNet};
use crate::rng::{ItemRngs, NoiseSource, Rng};
use crate::sample::guidance::labels_for;
use crate::sample::noise_file::NoiseFile;
use crate::sample::{
    Ancestral, ClassGuided, ClassifierGradient, ClassifierGuide, Ddim, DpmSolverPp2M, Sampler,
    Spacing, ddim::spaced_steps_on, sample_loop_guided,
};
use crate::schedule::space_timesteps;
use crate::train::TrainConfig;
use crate::train::checkpoint::{HostTensor, to_safetensors};
use crate::train::classifier::{LoadedClassifier, check_guides, load_classifier};
use crate::train::config::SamplerDefaults;
use crate::train::trainer::{Net, diffusion_from, item_shape_of, load_for_inference};

/// The DDPM chain of a run that a noise-aware classifier must share; VDM runs have none.
pub fn guided_chain(
    cfg: &crate::train::TrainConfig,
) -> Result<crate::diffusion::GaussianDiffusion, CliError> {
    if cfg.vdm_time().ok().flatten().is_some() {
        return Err(CliError::Usage(
            "--classifier: the model trains in VDM time (--time); a noise-aware classifier follows a DDPM chain of --timesteps steps, whose steps and network times differ — use classifier-free guidance (a --class-cond run) instead".into(),
        ));
    }
    Ok(diffusion_from(cfg)?)
}
use crate::viz::grid::{encode_png, image_pixels, save_grid, save_scatter, square_cols};

#[derive(Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Examples:\n  ddpm sample --checkpoint runs/default --n 64 --sampler ddim --steps 50 --out samples/\n  ddpm sample --checkpoint runs/mnist --n 16 --sampler ddpm --steps 1000 --save-chain --out chain/\n  ddpm sample --checkpoint runs/mnist/checkpoints/step-00002000 --sampler dpmpp2m --steps 20 --out fast/"
)]
pub struct SampleArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Number of images.
    #[arg(long, default_value_t = 64, value_parser = super::at_least_one)]
    n: usize,
    /// ddpm (Algorithm 2, respaced to --steps), ddim or dpmpp2m.
    #[arg(long, default_value = "ddim")]
    sampler: String,
    /// Network evaluations (the full chain for ddpm when equal to T).
    #[arg(long, default_value_t = 50, value_parser = super::at_least_one)]
    steps: usize,
    /// DDIM η (0: deterministic).
    #[arg(long, default_value_t = 0.0, value_parser = super::unit_closed)]
    eta: f64,
    /// Step spacing: linspace, leading, trailing, or snr (uniform in log SNR) [default: the model's (an imported diffusers
    /// scheduler's), else leading for ddim/dpmpp2m and improved-diffusion's even sections for
    /// ddpm].
    #[arg(long)]
    spacing: Option<String>,
    /// For --sampler ddpm: the Analytic-DPM reverse variance (Bao et al. 2022), with
    /// Γ_n = E‖ε̂‖²/d estimated on --analytic-images images of the run's training data.
    #[arg(long)]
    analytic_variance: bool,
    /// Images used to estimate Γ_n for --analytic-variance.
    #[arg(long, default_value_t = 64, value_parser = super::at_least_one)]
    analytic_images: usize,
    /// Respacing for ddpm as section counts or ddimN (overrides --steps).
    #[arg(long)]
    respace: Option<String>,
    /// x̂0 post-processing: clip, none, or dynamic:P (percentile P in (0, 1]) [default: the
    /// model's (an imported diffusers scheduler's), else clip].
    #[arg(long)]
    clip: Option<String>,
    /// Take x_T and every step's noise from this safetensors file instead of the generator:
    /// `init` [N, C, H, W] and `steps` [S, N, C, H, W] (S ≥ the stochastic steps), e.g. to compare
    /// with another implementation on the same noise.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per network batch.
    #[arg(long, default_value_t = 64, value_parser = super::at_least_one)]
    batch_size: usize,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Also save the raw values as samples.safetensors.
    #[arg(long)]
    safetensors: bool,
    /// Save x_t and x̂0 at ten steps of the chain (chain.png).
    #[arg(long)]
    save_chain: bool,
    /// cpu, cuda, wgpu, or auto (the GPU when there is one).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Classes to draw from a class-conditional model: 7, a list 0,1,2 (equal blocks, one grid
    /// row per class when --n is a multiple), or all. Without it: unconditional (null class).
    #[arg(long)]
    class: Option<String>,
    /// Classifier-free guidance weight w: (1 + w)·ε(x, c) − w·ε(x, ∅); 0 is plain conditional.
    #[arg(long, default_value_t = 0.0, value_parser = super::non_negative)]
    guidance: f64,
    /// Rescale the guided output toward the conditional one's standard deviation (Lin et al.):
    /// φ in [0, 1], 0 off.
    #[arg(long, default_value_t = 0.0, value_parser = super::unit_closed)]
    guidance_rescale: f64,
    /// Classifier guidance: a noise-aware classifier from `ddpm train-classifier` (its
    /// directory) whose gradient steers toward --class, for conditional or unconditional models.
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Classifier-guidance scale s: the step follows s·∇ log p(y | x_t).
    #[arg(long, default_value_t = 1.0, value_parser = super::non_negative)]
    classifier_scale: f64,
}

/// The noise-aware classifier at `path`, checked against the model of run `cfg` sampled on
/// `diffusion` (same schedule; same classes when the model has classes). Loaded without
/// autodiff: guidance differentiates with respect to the input only.
pub(super) fn load_guide(
    path: &Path,
    cfg: &TrainConfig,
    diffusion: &GaussianDiffusion,
    device: &Device,
) -> Result<LoadedClassifier, CliError> {
    let flag =
        |e: anyhow::Error| CliError::Usage(format!("--classifier {}: {e:#}", path.display()));
    let c = load_classifier(path, device).map_err(flag)?;
    let names = cfg
        .num_classes()
        .map(|_| cfg.classes.clone().unwrap_or_default());
    check_guides(&c.config, diffusion, names.as_deref()).map_err(flag)?;
    Ok(c)
}

fn parse_clip(s: &str) -> Result<X0Clip, CliError> {
    match s {
        "clip" => Ok(X0Clip::Clip),
        "none" => Ok(X0Clip::None),
        d => match d
            .strip_prefix("dynamic:")
            .and_then(|p| p.parse::<f64>().ok())
        {
            Some(p) if p > 0.0 && p <= 1.0 => Ok(X0Clip::Dynamic(p)),
            _ => Err(CliError::Usage(format!(
                "--clip: `{s}`; expected clip, none or dynamic:P with P in (0, 1]"
            ))),
        },
    }
}

enum AnySampler {
    Ancestral(Box<Ancestral>),
    Ddim(Box<Ddim>),
    Dpm(Box<DpmSolverPp2M>),
}

/// Samples (flat), their shape, the saved chain (step, x_t, x̂0) of the first images, and each
/// image's class when classes were requested.
type Sampled = (
    Vec<f32>,
    Vec<usize>,
    Vec<(usize, Vec<f32>, Vec<f32>)>,
    Option<Vec<usize>>,
);

fn build_sampler(
    a: &SampleArgs,
    d: &GaussianDiffusion,
    clip: X0Clip,
    defaults: Option<&SamplerDefaults>,
) -> Result<AnySampler, CliError> {
    let t = d.num_timesteps();
    if a.steps == 0 || a.steps > t {
        return Err(CliError::Usage(format!(
            "--steps must be in 1..={t}, got {}",
            a.steps
        )));
    }
    let named = a
        .spacing
        .as_deref()
        .or(defaults.map(|d| d.spacing.as_str()));
    let spacing: Spacing = named
        .unwrap_or("leading")
        .parse()
        .map_err(|e: String| CliError::Usage(format!("--spacing: {e}")))?;
    // diffusers adds steps_offset to the steps of leading spacing only (kept below T).
    let offset = match spacing {
        Spacing::Leading => defaults.map_or(0, |d| d.steps_offset),
        _ => 0,
    };
    let spaced = || -> Vec<usize> {
        let mut v: Vec<usize> = spaced_steps_on(&d.schedule.snr, a.steps, spacing)
            .into_iter()
            .map(|s| s.saturating_add(offset).min(t - 1))
            .collect();
        v.dedup();
        v
    };
    Ok(match a.sampler.as_str() {
        "ddpm" => {
            let kept = match (&a.respace, named) {
                (Some(spec), _) => space_timesteps(t, spec)?,
                (None, Some(_)) => spaced(),
                (None, None) => space_timesteps(t, &a.steps.to_string())?,
            };
            AnySampler::Ancestral(Box::new(Ancestral::new(d, &kept, clip)))
        }
        "ddim" => AnySampler::Ddim(Box::new(
            Ddim::new(d, spaced(), a.eta, clip)
                .diffusers_steps(defaults.is_some_and(|d| d.diffusers_ddim)),
        )),
        "dpmpp2m" => AnySampler::Dpm(Box::new(DpmSolverPp2M::new(d, spaced(), clip))),
        o => {
            return Err(CliError::Usage(format!(
                "--sampler: unknown sampler `{o}`; expected ddpm, ddim or dpmpp2m"
            )));
        }
    })
}

fn run_with<const D: usize, M: Net<D>>(
    a: &SampleArgs,
    device: &Device,
    guide: Option<&dyn ClassifierGradient<D>>,
) -> Result<Sampled, CliError>
where
    AnySampler: SamplerFor<D>,
{
    let loaded = load_for_inference::<M, D>(&a.checkpoint, a.no_ema, device)
        .map_err(|e| CliError::Usage(format!("--checkpoint: {e:#}")))?;
    let cfg = &loaded.config;
    let item_shape = item_shape_of(cfg)?;
    let model = loaded.model;
    let diffusion = loaded.diffusion;
    let defaults = cfg.sampler_defaults.clone();
    let clip = parse_clip(
        a.clip
            .as_deref()
            .or(defaults.as_ref().map(|d| d.clip.as_str()))
            .unwrap_or("clip"),
    )?;
    let defaults = defaults.as_ref();
    let noise_file = match &a.noise {
        Some(p) => Some(
            NoiseFile::read(p, a.n, &item_shape).map_err(|e| CliError::Usage(format!("{e:#}")))?,
        ),
        None => None,
    };
    let analytic = if a.analytic_variance {
        Some(analytic_table::<D, M>(
            a,
            cfg,
            &model,
            &diffusion,
            clip,
            &item_shape,
            device,
        )?)
    } else {
        None
    };
    let cfg_free = a.guidance != 0.0 || a.guidance_rescale != 0.0;
    let labels = match (&a.class, model.num_classes(), guide.map(|g| g.classes())) {
        (Some(spec), Some(k), _) => Some((
            labels_for(spec, a.n, k).map_err(|e| CliError::Usage(format!("{e:#}")))?,
            k,
        )),
        (Some(_), None, Some(_)) if cfg_free => {
            return Err(CliError::Usage(
                "--guidance and --guidance-rescale need a class-conditional model (train with \
                 --class-cond); this one is guided by --classifier only"
                    .into(),
            ));
        }
        (Some(spec), None, Some(k)) => Some((
            labels_for(spec, a.n, k).map_err(|e| CliError::Usage(format!("{e:#}")))?,
            k,
        )),
        (Some(_), None, None) => {
            return Err(CliError::Usage(
                "--class: this model was trained without classes (train with --class-cond, or \
                 guide it with --classifier)"
                    .into(),
            ));
        }
        (None, _, _) if cfg_free || guide.is_some() => {
            return Err(CliError::Usage(
                "--guidance, --guidance-rescale and --classifier need --class (the classes to \
                 guide toward)"
                    .into(),
            ));
        }
        (None, _, _) => None,
    };
    // Image i's noise comes from its own stream (seed, i): the same images whatever the batch
    // size or the number of processes. With several, rank r draws batches r, r + N, … and the
    // images are then summed into every rank's copy (each image is non-zero on one rank only).
    let world = crate::dist::world();
    let item: usize = item_shape.iter().product();
    let mut all = vec![0.0f32; a.n * item];
    let mut chain = Vec::new();
    let bs = a.batch_size.max(1);
    let n_batches = a.n.div_ceil(bs);
    let mine: Vec<usize> = world.batches(n_batches).collect();
    let total_steps = {
        let s = build_sampler(a, &diffusion, clip, defaults)?;
        s.steps_len() * mine.len()
    };
    let bar =
        (!a.quiet && world.is_root()).then(|| super::progress(total_steps as u64, "steps", false));
    for &b in &mine {
        let done = b * bs;
        let n = bs.min(a.n - done);
        let mut items = ItemRngs::for_items(a.seed, done, n);
        let mut from_file = noise_file.as_ref().map(|f| f.for_items(done, n));
        let rng: &mut dyn NoiseSource = match from_file.as_mut() {
            Some(f) => f,
            None => &mut items,
        };
        let mut sampler = build_sampler(a, &diffusion, clip, defaults)?;
        if let (AnySampler::Ancestral(s), Some(v)) = (&mut sampler, &analytic) {
            s.set_variance(v.clone());
        }
        let mut shape = [0usize; D];
        shape[0] = n;
        shape[1..].copy_from_slice(&item_shape);
        let k = sampler.steps_len();
        let keep: Vec<usize> = (0..10).map(|j| (j * (k - 1)) / 9).collect();
        let mut on_step = |i: usize, t: usize, xt: &Tensor<D>, x0: &Tensor<D>| {
            if let Some(b) = &bar {
                b.inc(1);
            }
            if a.save_chain && done == 0 && keep.contains(&i) {
                let m = n.min(8);
                let take = |x: &Tensor<D>| -> Vec<f32> {
                    x.clone()
                        .narrow(0, 0, m)
                        .into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .unwrap_or_default()
                };
                chain.push((t, take(xt), take(x0)));
            }
        };
        let x = match &labels {
            Some((l, k)) => {
                let batch_labels = &l[done..done + n];
                let g = guide.map(|g| (g, batch_labels));
                if model.num_classes().is_some() {
                    let guided = ClassGuided::new(
                        &model,
                        *k,
                        batch_labels,
                        a.guidance,
                        a.guidance_rescale,
                        diffusion.variance.is_learned(),
                        device,
                    )
                    .map_err(|e| CliError::Usage(format!("{e:#}")))?;
                    sampler.run(&guided, shape, g, device, rng, &mut on_step)
                } else {
                    sampler.run(&model, shape, g, device, rng, &mut on_step)
                }
            }
            None => sampler.run(&model, shape, None, device, rng, &mut on_step),
        };
        if let Some(f) = &from_file {
            f.check().map_err(|e| CliError::Usage(format!("{e:#}")))?;
        }
        let x: Vec<f32> = x
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        all[done * item..(done + n) * item].copy_from_slice(&x);
    }
    if let Some(b) = bar {
        b.finish();
    }
    world.sum_f32(&mut all)?;
    let mut shape = vec![a.n];
    shape.extend(item_shape);
    Ok((all, shape, chain, labels.map(|(l, _)| l)))
}

/// The Analytic-DPM variance of the ddpm sampler's chain, with Γ estimated on the run's data.
fn analytic_table<const D: usize, M: Net<D>>(
    a: &SampleArgs,
    cfg: &TrainConfig,
    model: &M,
    diffusion: &GaussianDiffusion,
    clip: X0Clip,
    item_shape: &[usize],
    device: &Device,
) -> Result<Vec<f64>, CliError> {
    let AnySampler::Ancestral(s) =
        build_sampler(a, diffusion, clip, cfg.sampler_defaults.as_ref())?
    else {
        return Err(CliError::Usage(
            "--analytic-variance applies to --sampler ddpm".into(),
        ));
    };
    let ds = crate::train::trainer::open_dataset(cfg)?;
    let k = a.analytic_images.clamp(1, ds.len());
    let item: usize = item_shape.iter().product();
    let mut buf = vec![0.0f32; k * item];
    for i in 0..k {
        ds.get(i, &mut buf[i * item..(i + 1) * item]);
    }
    let mut shape = [0usize; D];
    shape[0] = k;
    shape[1..].copy_from_slice(item_shape);
    let x0 = Tensor::<D>::from_data(burn::tensor::TensorData::new(buf, shape), device);
    let mut rng = Rng::new(a.seed ^ 0xA7A1);
    let chain = s.chain();
    let gamma = crate::diffusion::analytic::estimate_gamma(chain, model, x0, &mut rng);
    Ok(crate::diffusion::analytic::analytic_variance(
        &chain.schedule,
        &gamma,
    ))
}

/// Runs whichever sampler was chosen.
trait SamplerFor<const D: usize> {
    fn steps_len(&self) -> usize;
    fn run<M: Denoiser<D>>(
        &mut self,
        model: &M,
        shape: [usize; D],
        guide: Option<(&dyn ClassifierGradient<D>, &[usize])>,
        device: &Device,
        rng: &mut dyn NoiseSource,
        on: impl FnMut(usize, usize, &Tensor<D>, &Tensor<D>),
    ) -> Tensor<D>;
}

macro_rules! impl_sampler_for {
    ($d:literal) => {
        impl SamplerFor<$d> for AnySampler {
            fn steps_len(&self) -> usize {
                match self {
                    AnySampler::Ancestral(s) => Sampler::<$d>::timesteps(s.as_ref()).len(),
                    AnySampler::Ddim(s) => Sampler::<$d>::timesteps(s.as_ref()).len(),
                    AnySampler::Dpm(s) => Sampler::<$d>::timesteps(s.as_ref()).len(),
                }
            }
            fn run<M: Denoiser<$d>>(
                &mut self,
                model: &M,
                shape: [usize; $d],
                guide: Option<(&dyn ClassifierGradient<$d>, &[usize])>,
                device: &Device,
                rng: &mut dyn NoiseSource,
                on: impl FnMut(usize, usize, &Tensor<$d>, &Tensor<$d>),
            ) -> Tensor<$d> {
                match self {
                    AnySampler::Ancestral(s) => {
                        sample_loop_guided(model, s.as_mut(), shape, guide, device, rng, on)
                    }
                    AnySampler::Ddim(s) => {
                        sample_loop_guided(model, s.as_mut(), shape, guide, device, rng, on)
                    }
                    AnySampler::Dpm(s) => {
                        sample_loop_guided(model, s.as_mut(), shape, guide, device, rng, on)
                    }
                }
            }
        }
    };
}
impl_sampler_for!(2);
impl_sampler_for!(4);

pub fn run(a: SampleArgs) -> CliResult {
    let secs = generate(&a)?;
    if !crate::dist::world().is_root() {
        return Ok(());
    }
    println!(
        "sampled {} in {secs:.1} s with {} ({} steps); wrote {}",
        a.n,
        a.sampler,
        a.steps,
        a.out.join("grid.png").display()
    );
    Ok(())
}

/// Samples and writes everything `a` asks for; returns the sampling time in seconds.
fn generate(a: &SampleArgs) -> Result<f64, CliError> {
    if a.n == 0 {
        return Err(CliError::Usage("--n must be at least 1".into()));
    }
    let cfg = crate::train::trainer::config_of(&a.checkpoint)
        .map_err(|e| CliError::Usage(format!("--checkpoint: {e:#}")))?;
    // Every image is held until the grid is drawn: refuse what cannot fit before sampling.
    let item_shape = item_shape_of(&cfg)?;
    let item: usize = item_shape.iter().product();
    let per_image = if cfg.preset == "mlp" {
        <Mlp as Net<2>>::activation_bytes_per_item(&cfg, &item_shape)
    } else {
        <UNet as Net<4>>::activation_bytes_per_item(&cfg, &item_shape)
    };
    // Every rank holds all the images (and each rank on this machine needs as much).
    let need = (a.n as f64 * item as f64 * 4.0 * 3.0 + a.batch_size.min(a.n) as f64 * per_image)
        * crate::dist::world().local_size.max(1) as f64;
    if let Some((need_gib, avail_gib)) = crate::heap::shortfall_gib(need) {
        return Err(CliError::Usage(format!(
            "--n {} at --batch-size {}: sampling needs about {need_gib:.1} GiB, this machine has \
             {avail_gib:.1} GiB available; sample fewer images per call (with other --seed values) \
             or a smaller batch",
            a.n, a.batch_size
        )));
    }
    // Images of an earlier call would mix with these in images/ (and `eval fd` would count
    // them): a new --out, or an emptied one.
    let images = a.out.join("images");
    if std::fs::read_dir(&images).is_ok_and(|mut d| d.next().is_some()) {
        return Err(CliError::Usage(format!(
            "--out {}: {} already holds images from an earlier call; choose a new --out or \
             remove it",
            a.out.display(),
            images.display()
        )));
    }
    let device = super::device(&a.device)?;
    let start = std::time::Instant::now();
    let mut class_names = cfg.classes.clone().filter(|_| cfg.num_classes().is_some());
    let (data, shape, chain, labels) = if cfg.preset == "mlp" {
        if a.classifier.is_some() {
            return Err(CliError::Usage(
                "--classifier: classifier guidance is for image models (a noise-aware classifier \
                 of images)"
                    .into(),
            ));
        }
        run_with::<2, Mlp>(a, &device, None)?
    } else {
        let loaded = match &a.classifier {
            Some(p) => Some(load_guide(p, &cfg, &guided_chain(&cfg)?, &device)?),
            None => None,
        };
        if class_names.is_none() {
            class_names = loaded.as_ref().map(|c| c.config.classes.clone());
        }
        let guide = loaded
            .as_ref()
            .map(|c| ClassifierGuide::new(&c.model, a.classifier_scale));
        run_with::<4, UNet>(
            a,
            &device,
            guide.as_ref().map(|g| g as &dyn ClassifierGradient<4>),
        )?
    };
    let secs = start.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    if shape.len() == 4 {
        let s4 = [shape[0], shape[1], shape[2], shape[3]];
        // One PNG per image in images/ (a clean folder for `eval fd --samples folder:…`), in
        // one sub-directory per class when classes were requested (for `--per-class`).
        let dirs = image_dirs(
            &a.out.join("images"),
            shape[0],
            labels.as_deref(),
            class_names.as_deref(),
        );
        // Rank 0 holds every image and writes them all (the others' --out may be elsewhere).
        if !crate::dist::world().is_root() {
            return Ok(secs);
        }
        for (i, dir) in dirs.iter().enumerate() {
            let px = image_pixels(&data, s4, i);
            write_atomic(
                &dir.join(format!("{i:05}.png")),
                &encode_png(s4[3], s4[2], s4[1], &px)?,
            )?;
        }
        // One row per requested class when the images divide evenly among them.
        let rows = match a.class.as_deref() {
            Some("all") => class_names.as_ref().map_or(1, Vec::len),
            Some(list) => list.split(',').count(),
            None => 0,
        };
        let cols = if rows > 0 && shape[0] % rows == 0 {
            shape[0] / rows
        } else {
            square_cols(shape[0])
        };
        save_grid(&a.out.join("grid.png"), &data, s4, cols)?;
        if a.save_chain && !chain.is_empty() {
            save_chain(&a.out.join("chain.png"), &chain, s4)?;
        }
    } else {
        if !crate::dist::world().is_root() {
            return Ok(secs);
        }
        save_scatter(&a.out.join("grid.png"), &data, 512, 1.5)?;
        let csv: String = data
            .chunks(shape[1])
            .map(|p| {
                p.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
                    + "\n"
            })
            .collect();
        write_atomic(&a.out.join("samples.csv"), csv.as_bytes())?;
    }
    if a.safetensors {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "samples".to_string(),
            HostTensor {
                shape: shape.clone(),
                data: data.clone(),
            },
        );
        write_atomic(&a.out.join("samples.safetensors"), &to_safetensors(&m)?)?;
    }
    Ok(secs)
}

/// The directory of each image: `images` itself, or `images/CLASS` when classes were requested.
/// A name that is not a plain file name (a path separator, `.`, `..`) is used by its number.
fn image_dirs(
    images: &Path,
    n: usize,
    labels: Option<&[usize]>,
    names: Option<&[String]>,
) -> Vec<PathBuf> {
    let Some(labels) = labels else {
        return vec![images.to_path_buf(); n];
    };
    labels
        .iter()
        .map(|&l| {
            let name = names
                .and_then(|n| n.get(l))
                .filter(|n| {
                    !n.is_empty() && *n != "." && *n != ".." && !n.contains(['/', '\\', '\0'])
                })
                .cloned()
                .unwrap_or_else(|| l.to_string());
            images.join(name)
        })
        .collect()
}

/// Rows: for each of the first images, x_t then x̂0; columns: the saved steps, noisiest first.
fn save_chain(path: &Path, chain: &[(usize, Vec<f32>, Vec<f32>)], s4: [usize; 4]) -> Result<()> {
    let [_, c, h, w] = s4;
    let per = c * h * w;
    let m = chain[0].1.len() / per;
    if m == 0 {
        bail!("empty chain");
    }
    let mut rows = Vec::with_capacity(2 * m);
    for i in 0..m {
        for (which, label) in [(0, "x_t"), (1, "x̂0")] {
            let panels = chain
                .iter()
                .map(|(_, xt, x0)| {
                    let src = if which == 0 { xt } else { x0 };
                    src[i * per..(i + 1) * per].to_vec()
                })
                .collect();
            rows.push((format!("{label} ({})", i + 1), panels));
        }
    }
    let columns: Vec<String> = chain.iter().map(|(t, _, _)| format!("t = {t}")).collect();
    crate::viz::panels::save_panels(
        path,
        "The denoising chain: x_t and the model's prediction x̂0 (content first, then detail)",
        &columns,
        &rows,
        [c, h, w],
        (64 / h.max(w)).max(1),
    )
}

/// What `ddpm plot chain` draws.
pub(super) struct ChainRequest {
    pub checkpoint: PathBuf,
    pub sampler: String,
    pub steps: usize,
    pub n: usize,
    pub seed: u64,
    pub class: Option<String>,
    pub guidance: f64,
    pub classifier: Option<PathBuf>,
    pub classifier_scale: f64,
}

/// `ddpm plot chain`: the denoising chain (x_t and x̂0 at ten steps) of `n` samples as one PNG.
pub(super) fn chain(r: ChainRequest, out: &Path) -> CliResult {
    let ChainRequest {
        checkpoint,
        sampler,
        steps,
        n,
        seed,
        class,
        guidance,
        classifier,
        classifier_scale,
    } = r;
    let is_mlp = crate::train::trainer::config_of(&checkpoint)
        .map_err(|e| CliError::Usage(format!("--checkpoint: {e:#}")))?
        .preset
        == "mlp";
    if is_mlp {
        return Err(CliError::Usage(
            "--checkpoint: the chain is drawn for image models; a 2-D model's samples come from \
             `ddpm sample` (samples.csv, grid.png)"
                .into(),
        ));
    }
    // This process's own scratch folder (one per rank under mpirun), removed afterwards.
    let tmp = out.with_extension(format!("chain-tmp-{}", std::process::id()));
    let args = SampleArgs {
        checkpoint,
        no_ema: false,
        n,
        sampler,
        steps,
        eta: 0.0,
        spacing: None,
        respace: None,
        analytic_variance: false,
        analytic_images: 64,
        clip: None,
        noise: None,
        seed,
        batch_size: n,
        out: tmp.clone(),
        safetensors: false,
        save_chain: true,
        device: "cpu".into(),
        quiet: false,
        class,
        guidance,
        guidance_rescale: 0.0,
        classifier,
        classifier_scale,
    };
    let secs = generate(&args);
    if !crate::dist::world().is_root() || secs.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return secs.map(|_| ());
    }
    let secs = secs?;
    let res = std::fs::rename(tmp.join("chain.png"), out)
        .with_context(|| format!("cannot write {}", out.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    res?;
    println!(
        "sampled the chain of {n} images in {secs:.1} s; wrote {}",
        out.display()
    );
    Ok(())
}
