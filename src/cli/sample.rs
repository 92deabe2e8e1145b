//! `ddpm sample`: generate images from a trained checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use clap::Args;

use super::sample_files::{GRID_MAX, SampleFiles};
use super::{CliError, CliResult};
use crate::config::RunConfig;
use crate::config::diffusion::diffusion_from;
use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::model::{Mlp, UNet};
use crate::pipeline::{DrawExtras, Pipeline, SampleOptions};
use crate::run::net::Net;
use crate::sample::SamplerDefaults;
use crate::sample::edm::EdmOptions;
use crate::sample::guidance::labels_for;
use crate::sample::noise_file::NoiseFile;
use crate::sample::{AnySampler, ClassifierGradient, ClassifierGuide, DrawError, SamplerSpec};
use crate::train::guide_classifier::{LoadedClassifier, check_guides, load_classifier};

/// The DDPM chain of a run that a noise-aware classifier must share; VDM runs have none.
pub fn guided_chain(
    cfg: &crate::config::RunConfig,
) -> Result<crate::diffusion::GaussianDiffusion, CliError> {
    if cfg.vdm_time().ok().flatten().is_some() {
        return Err(CliError::Usage(
            "--guide-classifier: the model trains in VDM time (--time); a noise-aware classifier follows a DDPM chain of --timesteps steps, whose steps and network times differ — use classifier-free guidance (a --class-cond run) instead".into(),
        ));
    }
    if cfg.edm.is_some() {
        return Err(CliError::Usage(
            "--guide-classifier: the model is an EDM run (--objective edm) on its own σ grid; a noise-aware classifier follows a DDPM chain of --timesteps steps, whose steps and network times differ — use classifier-free guidance (a --class-cond run) instead".into(),
        ));
    }
    Ok(diffusion_from(cfg)?)
}

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
    /// ddpm (Algorithm 2, respaced to --steps), ddim, dpmpp2m, or EDM's heun (2·steps − 1
    /// network evaluations) or euler on the ρ-schedule of σ's.
    #[arg(long, default_value = "ddim")]
    sampler: String,
    #[command(flatten)]
    edm: EdmFlags,
    /// Steps (for heun and euler: noise levels; the full chain for ddpm when equal to T).
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
    #[arg(long, default_value_t = 0.0, value_parser = super::guidance_scale)]
    guidance: f64,
    /// Rescale the guided output toward the conditional one's standard deviation (Lin et al.):
    /// φ in [0, 1], 0 off.
    #[arg(long, default_value_t = 0.0, value_parser = super::unit_closed)]
    guidance_rescale: f64,
    /// Classifier guidance: a noise-aware classifier from `ddpm train-classifier` (its
    /// directory) whose gradient steers toward --class, for conditional or unconditional models.
    #[arg(long, alias = "classifier")]
    guide_classifier: Option<PathBuf>,
    /// Classifier-guidance scale s: the step follows s·∇ log p(y | x_t).
    #[arg(long, default_value_t = 1.0, value_parser = super::guidance_scale)]
    classifier_scale: f64,
}

/// The noise-aware classifier at `path`, checked against the model of run `cfg` sampled on
/// `diffusion` (same schedule; same classes when the model has classes). Loaded without
/// autodiff: guidance differentiates with respect to the input only.
pub(super) fn load_guide(
    path: &Path,
    cfg: &RunConfig,
    diffusion: &GaussianDiffusion,
    device: &Device,
) -> Result<LoadedClassifier, CliError> {
    let flag =
        |e: anyhow::Error| CliError::Usage(format!("--guide-classifier {}: {e:#}", path.display()));
    let c = load_classifier(path, device).map_err(flag)?;
    let names = cfg
        .num_classes()
        .map(|_| cfg.classes.clone().unwrap_or_default());
    check_guides(&c.config, diffusion, names.as_deref()).map_err(flag)?;
    let net = &c.config.net;
    let takes = [net.in_channels, net.image_size, net.image_size];
    let makes = cfg.item_shape()?;
    if makes != takes {
        return Err(flag(anyhow::anyhow!(
            "the classifier takes {}×{}×{} images, the model makes {}",
            takes[0],
            takes[1],
            takes[2],
            makes
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("×")
        )));
    }
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

/// The sampler the flags name.
fn build_sampler(
    a: &SampleArgs,
    d: &GaussianDiffusion,
    clip: X0Clip,
    defaults: Option<&SamplerDefaults>,
) -> Result<AnySampler, CliError> {
    AnySampler::build(&sampler_spec(a), d, clip, defaults).map_err(|e| CliError::Usage(e.0))
}

/// EDM's sampler settings (Karras et al. 2022), for --sampler heun and euler.
#[derive(Args, Clone, Copy)]
pub struct EdmFlags {
    /// ρ of EDM's σ schedule.
    #[arg(long, default_value_t = 7.0)]
    rho: f64,
    /// The smallest σ (raised to the model's smallest).
    #[arg(long, default_value_t = 0.002)]
    sigma_min: f64,
    /// The largest σ (lowered to the model's largest).
    #[arg(long, default_value_t = 80.0)]
    sigma_max: f64,
    /// S_churn: noise added back along the way (EDM's Algorithm 2; 0: the deterministic ODE).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Churn only at σ ≥ S_tmin.
    #[arg(long, default_value_t = 0.0)]
    s_tmin: f64,
    /// Churn only at σ ≤ S_tmax.
    #[arg(long, default_value_t = f64::INFINITY)]
    s_tmax: f64,
    /// S_noise: the scale of the noise added back.
    #[arg(long, default_value_t = 1.0)]
    s_noise: f64,
}

impl Default for EdmFlags {
    fn default() -> Self {
        let o = EdmOptions::default();
        Self {
            rho: o.rho,
            sigma_min: o.sigma_min,
            sigma_max: o.sigma_max,
            churn: o.churn,
            s_tmin: o.s_tmin,
            s_tmax: o.s_tmax,
            s_noise: o.s_noise,
        }
    }
}

impl From<EdmFlags> for EdmOptions {
    fn from(f: EdmFlags) -> Self {
        Self {
            rho: f.rho,
            sigma_min: f.sigma_min,
            sigma_max: f.sigma_max,
            churn: f.churn,
            s_tmin: f.s_tmin,
            s_tmax: f.s_tmax,
            s_noise: f.s_noise,
        }
    }
}

/// The sampler as the flags spell it.
fn sampler_spec(a: &SampleArgs) -> SamplerSpec {
    SamplerSpec {
        name: a.sampler.clone(),
        steps: a.steps,
        eta: a.eta,
        spacing: a.spacing.clone(),
        respace: a.respace.clone(),
        edm: a.edm.into(),
    }
}

/// The saved chain (step, x_t, x̂0) of the first images.
type Chain = Vec<(usize, Vec<f32>, Vec<f32>)>;

/// What a sampling call did: the saved chain, and the network steps each image took.
struct Sampled {
    chain: Chain,
    steps: usize,
}

fn run_with<const D: usize, M: Net<D>>(
    a: &SampleArgs,
    device: &Device,
    guide: Option<&dyn ClassifierGradient<D>>,
    mut files: Option<&mut SampleFiles>,
) -> Result<Sampled, CliError> {
    let pipeline = Pipeline::<M, D>::load_on(&a.checkpoint, device, a.no_ema)
        .map_err(|e| CliError::Usage(format!("--checkpoint: {e}")))?;
    let cfg = pipeline.config();
    let item_shape = cfg.item_shape()?;
    let diffusion = pipeline.diffusion();
    let defaults = cfg.sampler_defaults.as_ref();
    let clip = parse_clip(
        a.clip
            .as_deref()
            .or(defaults.map(|d| d.clip.as_str()))
            .unwrap_or("clip"),
    )?;
    let noise_file = match &a.noise {
        Some(p) => Some(
            NoiseFile::read(p, a.n, &item_shape, diffusion.num_timesteps())
                .map_err(|e| CliError::Usage(format!("{e:#}")))?,
        ),
        None => None,
    };
    let variance = if a.analytic_variance {
        let model = pipeline.denoiser();
        let table = analytic_table::<D>(a, cfg, &model, diffusion, clip, &item_shape, device);
        Some(table?)
    } else {
        None
    };
    let labels = labels_of(
        a,
        pipeline.model().num_classes(),
        guide.map(|g| g.classes()),
    )?;
    let options = SampleOptions {
        n: a.n,
        sampler: sampler_spec(a),
        seed: a.seed,
        batch_size: a.batch_size,
        classes: labels.as_ref().map(|(l, _)| l.clone()),
        guidance: a.guidance,
        guidance_rescale: a.guidance_rescale,
        clip,
    };
    let extras = DrawExtras {
        guide,
        variance,
        noise_file: noise_file.as_ref(),
    };
    let world = crate::dist::world();
    let steps = build_sampler(a, diffusion, clip, defaults)?.steps_len();
    let n_batches = a.n.div_ceil(a.batch_size.max(1));
    let total_steps = steps * world.batches(n_batches).count();
    let bar =
        (!a.quiet && world.is_root()).then(|| super::progress(total_steps as u64, "steps", false));
    // The chain of the first images: ten steps spread over the sampler's.
    let keep: Vec<usize> = (0..10).map(|j| (j * (steps - 1)) / 9).collect();
    let mut chain = Vec::new();
    let on_step = |first: usize, i: usize, t: usize, xt: &Tensor<D>, x0: &Tensor<D>| {
        if let Some(b) = &bar {
            b.inc(1);
        }
        if a.save_chain && first == 0 && keep.contains(&i) {
            let m = a.batch_size.max(1).min(a.n).min(8);
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
    let write = |first: usize, values: &[f32]| -> Result<()> {
        if let Some(f) = files.as_deref_mut() {
            let n = values.len() / item_shape.iter().product::<usize>().max(1);
            let l = labels.as_ref().map(|(l, _)| &l[first..first + n]);
            f.write(first, values, l)?;
        }
        Ok(())
    };
    match pipeline.draw_rounds(&options, &extras, on_step, write) {
        Ok(()) => {}
        Err(DrawError::Refused(m)) => return Err(CliError::Usage(m)),
        Err(DrawError::NonFinite { first, n }) => {
            return Err(non_finite(a, pipeline.model(), first, n));
        }
        Err(DrawError::Failed(e)) => return Err(CliError::Failure(e)),
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok(Sampled { chain, steps })
}

/// Each image's class and the number of classes, when classes were requested (`--class`) of a
/// class-conditional model or of a guiding classifier (`guide_classes`); the combinations that
/// cannot guide are refused by name.
fn labels_of(
    a: &SampleArgs,
    model_classes: Option<usize>,
    guide_classes: Option<usize>,
) -> Result<Option<(Vec<usize>, usize)>, CliError> {
    let cfg_free = a.guidance != 0.0 || a.guidance_rescale != 0.0;
    let k = match (&a.class, model_classes, guide_classes) {
        (Some(_), Some(k), _) => k,
        (Some(_), None, Some(_)) if cfg_free => {
            return Err(CliError::Usage(
                "--guidance and --guidance-rescale need a class-conditional model (train with \
                 --class-cond); this one is guided by --guide-classifier only"
                    .into(),
            ));
        }
        (Some(_), None, Some(k)) => k,
        (Some(_), None, None) => {
            return Err(CliError::Usage(
                "--class: this model was trained without classes (train with --class-cond, or \
                 guide it with --guide-classifier)"
                    .into(),
            ));
        }
        (None, _, _) if cfg_free || guide_classes.is_some() => {
            return Err(CliError::Usage(
                "--guidance, --guidance-rescale and --guide-classifier need --class (the classes to \
                 guide toward)"
                    .into(),
            ));
        }
        (None, _, _) => return Ok(None),
    };
    let spec = a.class.as_deref().unwrap_or_default();
    let labels = labels_for(spec, a.n, k).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    Ok(Some((labels, k)))
}

/// The error for a batch (images `first`..`first + n`) that came out NaN or infinite, naming
/// what most likely caused it: diverged weights, a guidance scale or a noise file.
fn non_finite<const D: usize, M: Net<D>>(
    a: &SampleArgs,
    model: &M,
    first: usize,
    n: usize,
) -> CliError {
    let mut largest = 0.0f32;
    crate::store::params::visit_params(model, |_, t, _, _| {
        let m: f32 = t.clone().abs().max().into_scalar();
        largest = largest.max(m);
    });
    let mut causes = Vec::new();
    if largest.is_nan() || largest >= 1e4 {
        causes.push(format!(
            "the weights of {} reach |w| = {largest:.3e} (a diverged or damaged checkpoint; an \
             earlier checkpoint may be sound)",
            a.checkpoint.display()
        ));
    }
    if a.guidance != 0.0 {
        causes.push(format!("--guidance {} (try a smaller weight)", a.guidance));
    }
    if a.guide_classifier.is_some() {
        causes.push(format!(
            "--classifier-scale {} (try a smaller scale)",
            a.classifier_scale
        ));
    }
    if let Some(p) = &a.noise {
        causes.push(format!("the values of --noise {}", p.display()));
    }
    if causes.is_empty() {
        causes.push(format!(
            "the network of {} (its output overflows on these inputs)",
            a.checkpoint.display()
        ));
    }
    CliError::Failure(anyhow::anyhow!(
        "sampling gave non-finite values (NaN or ±∞) for images {first}..{}; none of them was \
         written. Likely cause: {}",
        first + n,
        causes.join("; or ")
    ))
}

/// The Analytic-DPM variance of the ddpm sampler's chain, with Γ estimated on the run's data.
fn analytic_table<const D: usize>(
    a: &SampleArgs,
    cfg: &RunConfig,
    model: &impl Denoiser<D>,
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
    let ds = crate::run::open_dataset(cfg)?;
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
    let mut rng = crate::rng::streams::analytic_variance(a.seed);
    let chain = s.chain();
    let gamma = crate::diffusion::analytic::estimate_gamma(chain, model, x0, &mut rng);
    Ok(crate::diffusion::analytic::analytic_variance(
        &chain.schedule,
        &gamma,
    ))
}

/// `ddpm sample`: draws the images and reports the time taken.
pub fn run(a: SampleArgs) -> CliResult {
    let (secs, steps) = generate(&a)?;
    if !crate::dist::world().is_root() {
        return Ok(());
    }
    println!(
        "sampled {} in {secs:.1} s with {} ({steps} network evaluations); wrote {}",
        a.n,
        a.sampler,
        a.out.join("grid.png").display()
    );
    Ok(())
}

/// Samples and writes everything `a` asks for; returns the sampling time in seconds and the
/// network steps each image took.
fn generate(a: &SampleArgs) -> Result<(f64, usize), CliError> {
    if a.n == 0 {
        return Err(CliError::Usage("--n must be at least 1".into()));
    }
    let cfg = crate::run::load::config_of(&a.checkpoint)
        .map_err(|e| CliError::Usage(format!("--checkpoint: {e:#}")))?;
    // Images are written batch by batch: a round of batches (one per rank) and the grid's
    // images are held, whatever --n. Refuse what cannot fit before sampling.
    let world = crate::dist::world();
    let item_shape = cfg.item_shape()?;
    let item: usize = item_shape.iter().product();
    let per_image = if cfg.preset == "mlp" {
        <Mlp as Net<2>>::activation_bytes_per_item(&cfg, &item_shape)
    } else {
        <UNet as Net<4>>::activation_bytes_per_item(&cfg, &item_shape)
    };
    let batch = a.batch_size.min(a.n) as f64;
    let held = (a.n.min(GRID_MAX) as f64 + 2.0 * batch * world.size.max(1) as f64) * item as f64;
    let need = (held * 4.0 + batch * per_image) * world.local_size.max(1) as f64;
    if let Some((need_gib, avail_gib)) = crate::heap::shortfall_gib(need) {
        return Err(CliError::Usage(format!(
            "--batch-size {}: sampling needs about {need_gib:.1} GiB, this machine has \
             {avail_gib:.1} GiB available; choose a smaller batch",
            a.batch_size
        )));
    }
    // Every image is a file of its own (a file system block at least) or a CSV line, plus its
    // values in samples.safetensors: refuse a call whose files cannot fit on the disk.
    let per_file = if item_shape.len() == 3 {
        (item as u64 + 200).next_multiple_of(4096)
    } else {
        16 * item as u64
    };
    let disk =
        (a.n as u64).saturating_mul(per_file + if a.safetensors { 4 * item as u64 } else { 0 });
    if let Some(free) = crate::files::free_space(&a.out)
        && disk > free
    {
        let gib = (1u64 << 30) as f64;
        return Err(CliError::Usage(format!(
            "--n {}: the samples need about {:.1} GiB on disk, the file system of --out {} has \
             {:.1} GiB free; sample fewer images per call (with other --seed values)",
            a.n,
            disk as f64 / gib,
            a.out.display(),
            free as f64 / gib
        )));
    }
    // Rank 0 writes every image (the others' --out may be elsewhere), holding the folder's lock
    // so that two calls cannot write into one --out; images of an earlier call would mix with
    // these in images/ (and `eval fd` would count them): a new --out, or an emptied one.
    let _lock = if world.is_root() {
        std::fs::create_dir_all(&a.out)
            .with_context(|| format!("cannot create {}", a.out.display()))?;
        let lock =
            crate::files::lock_dir(&a.out).map_err(|e| CliError::Usage(format!("--out: {e:#}")))?;
        crate::files::remove_stale(&a.out, &["grid.png", "samples.", "chain.png"])?;
        let images = a.out.join("images");
        if std::fs::read_dir(&images).is_ok_and(|mut d| d.next().is_some()) {
            return Err(CliError::Usage(format!(
                "--out {}: {} already holds images from an earlier call; choose a new --out or \
                 remove it",
                a.out.display(),
                images.display()
            )));
        }
        Some(lock)
    } else {
        None
    };
    let device = super::device(&a.device)?;
    let start = std::time::Instant::now();
    let mut class_names = cfg.classes.clone().filter(|_| cfg.num_classes().is_some());
    let guide = if cfg.preset != "mlp" {
        match &a.guide_classifier {
            Some(p) => Some(load_guide(p, &cfg, &guided_chain(&cfg)?, &device)?),
            None => None,
        }
    } else if a.guide_classifier.is_some() {
        return Err(CliError::Usage(
            "--guide-classifier: classifier guidance is for image models (a noise-aware classifier \
             of images)"
                .into(),
        ));
    } else {
        None
    };
    if class_names.is_none() {
        class_names = guide.as_ref().map(|c| c.config.classes.clone());
    }
    // One grid row per requested class.
    let class_rows = match a.class.as_deref() {
        Some("all") => class_names.as_ref().map_or(1, Vec::len),
        Some(list) => list.split(',').count(),
        None => 0,
    };
    let mut files = if world.is_root() {
        Some(SampleFiles::create(
            &a.out,
            a.n,
            &item_shape,
            class_rows,
            class_names,
            a.safetensors,
        )?)
    } else {
        None
    };
    let Sampled { chain, steps } = if cfg.preset == "mlp" {
        run_with::<2, Mlp>(a, &device, None, files.as_mut())?
    } else {
        let g = guide
            .as_ref()
            .map(|c| ClassifierGuide::new(&c.model, a.classifier_scale));
        let g = g.as_ref().map(|g| g as &dyn ClassifierGradient<4>);
        run_with::<4, UNet>(a, &device, g, files.as_mut())?
    };
    let secs = start.elapsed().as_secs_f64();
    let Some(files) = files else {
        return Ok((secs, steps));
    };
    files.finish()?;
    if a.save_chain && !chain.is_empty() && item_shape.len() == 3 {
        let s4 = [a.n, item_shape[0], item_shape[1], item_shape[2]];
        save_chain(&a.out.join("chain.png"), &chain, s4)?;
    }
    Ok((secs, steps))
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
    let is_mlp = crate::run::load::config_of(&checkpoint)
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
        edm: EdmFlags::default(),
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
        guide_classifier: classifier,
        classifier_scale,
    };
    let secs = generate(&args);
    if !crate::dist::world().is_root() || secs.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return secs.map(|_| ());
    }
    let (secs, _) = secs?;
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
