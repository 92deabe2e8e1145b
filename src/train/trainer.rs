//! The training loop (Ho et al. Algorithm 1) with EMA, checkpoints, logs and sample grids.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use super::checkpoint::{
    HostTensor, list_checkpoints, newest_complete, read_safetensors, resolve, to_safetensors,
    write_checkpoint,
};
use super::config::TrainConfig;
use super::ema::{Ema, EmaConfig};
use super::learned_schedule::{LearnedSchedule, SCHEDULE_FILE};
use super::optim::{AdamW, AdamWConfig, clip_factor, learning_rate};
use super::params::{named_grads, named_params, visit_params};
use super::precision::Precision;
use super::resume::{check_state, check_state_tensors, compare_configs, split_moments};
use super::vdm_batch::VdmBatch;

// At their old paths while the crate's layers are rearranged.
pub use super::ema::ema_model;
pub use super::params::{from_host_map, host_params, load_params, to_host_map};
pub use super::state::TrainState;
use crate::data::loader::{BatchStream, Loader};
use crate::data::{Dataset, Split};
use crate::diffusion::losses::LossConfig;
use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::files::{remove_stale, write_atomic};
use crate::model::{Mlp, UNet};
use crate::rng::Rng;
use crate::sample::{Conditioning, Ddim, Spacing, draw};
use crate::schedule::{BetaSchedule, NoiseSchedule, read_betas_file};
use crate::vdm::bound::Decoder;
use crate::vdm::{GammaSource, LossTimes};

/// A network the trainer can build from a configuration.
pub trait Net<const D: usize>: Module + Denoiser<D> + Clone + 'static {
    /// Builds the network of `cfg` on `device`, checking that it fits items of `item_shape`.
    fn build(cfg: &TrainConfig, item_shape: &[usize], device: &Device) -> Result<Self>;
    /// About how many bytes one item's training forward and backward pass holds at its peak.
    fn activation_bytes_per_item(cfg: &TrainConfig, item_shape: &[usize]) -> f64;
}

impl Net<4> for UNet {
    fn build(cfg: &TrainConfig, item_shape: &[usize], device: &Device) -> Result<Self> {
        let c = cfg.unet_config()?;
        let want = [c.in_channels, c.image_size, c.image_size];
        if item_shape != want {
            bail!(
                "--data {}: items are {:?} but the {} network takes {}×{}×{} images; choose a preset (or model) of that size",
                cfg.data,
                item_shape,
                cfg.preset,
                want[0],
                want[1],
                want[2]
            );
        }
        UNet::new(&c, device).map_err(|e| anyhow::anyhow!("model: {e}"))
    }
    fn activation_bytes_per_item(cfg: &TrainConfig, _item_shape: &[usize]) -> f64 {
        // The values the forward pass produces, in f32, with a margin for what the count leaves
        // out (inputs, noise, targets, time embeddings: relatively more on small images). Peak
        // RSS per item measured against the plain count: cifar10 batch 128 0.91× (5.1 GiB for
        // 5.6 GB), tiny 8×8 batches 2000 → 8000 1.16× (240 → 901 MB, 2026-12-06).
        cfg.unet_config()
            .map(|c| c.activation_values() as f64 * 4.0 * ACTIVATION_MARGIN)
            .unwrap_or(0.0)
    }
}

impl Net<2> for Mlp {
    fn build(cfg: &TrainConfig, item_shape: &[usize], device: &Device) -> Result<Self> {
        let mut c = cfg.mlp.clone().unwrap_or_default();
        c.learn_sigma = cfg.variance.is_learned();
        c.num_classes = cfg.num_classes();
        if item_shape != [c.dim] {
            bail!(
                "--data {}: items are {item_shape:?} but the MLP takes {}-D points",
                cfg.data,
                c.dim
            );
        }
        Ok(Mlp::new(&c, device))
    }
    fn activation_bytes_per_item(cfg: &TrainConfig, _item_shape: &[usize]) -> f64 {
        let c = cfg.mlp.clone().unwrap_or_default();
        (c.hidden * (c.layers + 2) * 8) as f64 * 4.0
    }
}

/// The factor on the counted activation values that the memory checks use (see
/// `activation_bytes_per_item`).
pub const ACTIVATION_MARGIN: f64 = 1.25;

/// Writes a new run directory `run` holding `model` as its step-0 checkpoint (weights and EMA
/// alike, zero optimizer moments) and `cfg` as its configuration: an imported model every
/// command can use. Refuses a directory that exists.
pub fn write_initial_run<M: Module>(run: &Path, cfg: &TrainConfig, model: &M) -> Result<PathBuf> {
    if run.exists() {
        bail!(
            "--out {}: exists; choose a new directory (an import never overwrites)",
            run.display()
        );
    }
    let mut cfg = cfg.clone();
    cfg.out = run.display().to_string();
    // Everything that can fail on the configuration fails before the directory exists.
    let n_t = diffusion_from(&cfg)?.num_timesteps();
    let toml = cfg.to_toml()?;
    std::fs::create_dir_all(run)
        .with_context(|| format!("cannot create the run directory {}", run.display()))?;
    write_atomic(&run.join("config.toml"), toml.as_bytes())?;
    let params = named_params(model);
    let mut ema = Ema::new(EmaConfig {
        decay: cfg.ema_decay,
        warmup_power: None,
    });
    ema.params = params
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    let mut opt = AdamW::new(cfg.adamw());
    for (k, v) in &params {
        opt.m.insert(k.clone(), v.value.zeros_like());
        opt.v.insert(k.clone(), v.value.zeros_like());
    }
    save_checkpoint(
        run,
        model,
        &ema,
        &opt,
        &TrainState::start(&cfg, n_t),
        Vec::new(),
        1,
    )
}

/// Builds the diffusion a configuration describes.
pub fn diffusion_from(cfg: &TrainConfig) -> Result<GaussianDiffusion> {
    if let Some(b) = &cfg.trained_betas {
        return Ok(GaussianDiffusion::new(
            NoiseSchedule::new(
                &BetaSchedule::Custom(b.clone()),
                b.len(),
                cfg.zero_terminal_snr,
            )?,
            cfg.parameterization,
            cfg.variance,
        ));
    }
    let s = match (cfg.vdm_time()?, cfg.fixed_gamma_if_vdm()?) {
        (Some(time), Some(g)) => return vdm_diffusion(cfg, time, &g),
        (Some(_), None) => bail!(
            "--schedule learned: the chain depends on the learned schedule's weights; load it \
             with the checkpoint"
        ),
        (None, _) => noise_schedule(
            &cfg.schedule,
            cfg.timesteps,
            cfg.beta_start,
            cfg.beta_end,
            (cfg.gamma_min, cfg.gamma_max),
            cfg.zero_terminal_snr,
        )?,
    };
    Ok(GaussianDiffusion::new(
        s,
        cfg.parameterization,
        cfg.variance,
    ))
}

/// The diffusion a VDM run of `cfg` samples on with schedule `gamma`: its chain of
/// [`vdm_chain_steps`] steps (see [`crate::vdm::time::chain`]).
pub fn vdm_diffusion(
    cfg: &TrainConfig,
    time: crate::vdm::Time,
    gamma: &dyn GammaSource,
) -> Result<GaussianDiffusion> {
    Ok(GaussianDiffusion::new(
        crate::vdm::time::chain(gamma, vdm_chain_steps(cfg, time))?,
        cfg.parameterization,
        cfg.variance,
    ))
}

/// The steps of the chain a VDM run samples on: T for discrete time, `timesteps` (1000 by
/// default) for continuous time.
pub fn vdm_chain_steps(cfg: &TrainConfig, time: crate::vdm::Time) -> usize {
    match time {
        crate::vdm::Time::Discrete(t) => t,
        crate::vdm::Time::Continuous => cfg.timesteps,
    }
}

/// The noise schedule of a `--schedule` value (a name, or `file:PATH` of β's) with `timesteps`
/// steps (a file sets its own), optional linear β range, optionally rescaled to zero terminal SNR.
pub fn noise_schedule(
    schedule: &str,
    timesteps: usize,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    gamma_range: (Option<f64>, Option<f64>),
    zero_terminal_snr: bool,
) -> Result<NoiseSchedule> {
    let kind = if let Some(p) = schedule.strip_prefix("file:") {
        BetaSchedule::Custom(read_betas_file(Path::new(p))?)
    } else {
        BetaSchedule::named(schedule, timesteps, beta_start, beta_end)?
            .with_gamma_range(gamma_range)
    };
    let t = match &kind {
        BetaSchedule::Custom(b) => b.len(),
        _ => timesteps,
    };
    Ok(NoiseSchedule::new(&kind, t, zero_terminal_snr)?)
}

/// One line of `log.jsonl`.
#[derive(Debug, Serialize)]
struct LogLine {
    step: u64,
    loss: f64,
    loss_by_quartile: [Option<f64>; 4],
    grad_norm: f64,
    lr: f64,
    img_per_s: f64,
    elapsed_s: f64,
    /// With several ranks: the seconds per step spent summing gradients across them.
    #[serde(skip_serializing_if = "Option::is_none")]
    allreduce_s: Option<f64>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run directory.
    pub run: PathBuf,
    /// Steps done in total.
    pub steps: u64,
    /// The last logged loss.
    pub last_loss: f64,
    /// Training throughput of this invocation.
    pub img_per_s: f64,
    /// Wall time of this invocation.
    pub wall_s: f64,
    /// The last sample grid written.
    pub grid: Option<PathBuf>,
}

/// Runs (or resumes) training as `cfg` says. `resume`: continue the run in `cfg.out` from its
/// latest checkpoint.
pub fn train<M: Net<D>, const D: usize>(
    cfg: &TrainConfig,
    dataset: Arc<dyn Dataset>,
    resume: bool,
    quiet: bool,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let world = crate::dist::world();
    // Rank 0 writes the run's files and reports progress; the other ranks only compute.
    let root = world.is_root();
    let quiet = quiet || !root;
    let micro = cfg.batch_size / cfg.grad_accum;
    if !micro.is_multiple_of(world.size) {
        bail!(
            "--batch-size {}: with --grad-accum {} its micro-batches of {micro} images do not split \
             evenly over {} processes; choose a batch size whose micro-batch is a multiple of {}",
            cfg.batch_size,
            cfg.grad_accum,
            world.size,
            world.size
        );
    }
    // The same command line can read different configuration files on different machines.
    if world.is_distributed() {
        let hash = crate::dist::fnv1a(cfg.to_toml()?.as_bytes());
        world.agree("the configuration", hash)?;
    }
    let run = PathBuf::from(&cfg.out);
    let config_path = run.join("config.toml");
    // A resumed run keeps what defines it; what may change between segments is reported.
    if resume && !config_path.is_file() && run.join("checkpoints").is_dir() {
        bail!(
            "--resume: {} is missing, so nothing says how the run was made; pass its \
             configuration with --config FILE (the one it was started with)",
            config_path.display()
        );
    }
    // One process per run: a second one would prune the first one's checkpoints.
    let _lock = if root && run.is_dir() {
        Some(crate::files::lock_dir(&run)?)
    } else {
        None
    };
    if resume && config_path.is_file() {
        let text = crate::files::read_text_capped(&config_path, crate::files::TEXT_MAX)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let saved = TrainConfig::from_toml(&text, &config_path.display().to_string())?;
        for change in compare_configs(&saved, cfg)? {
            if !quiet {
                eprintln!("resume: {change}");
            }
        }
    }
    let device = crate::device::by_name(&cfg.device)?.autodiff();
    let vdm_time = cfg.vdm_time()?;
    let fixed_gamma = cfg.fixed_gamma_if_vdm()?;
    // A learned schedule's chain is rebuilt from its average whenever samples are drawn; until
    // then the linear schedule it starts from stands in.
    let mut diffusion = match (vdm_time, fixed_gamma) {
        (Some(time), None) => {
            let (gamma_min, gamma_max) = cfg.gamma_range();
            let start = crate::vdm::FixedGamma::Linear {
                gamma_min,
                gamma_max,
            };
            vdm_diffusion(cfg, time, &start)?
        }
        _ => diffusion_from(cfg)?,
    };
    let loss_cfg: LossConfig = cfg.loss_config()?;
    let precision = Precision::parse(&cfg.precision, "--precision")?;
    let device_name = crate::device::resolve_name(&cfg.device)?;
    if precision != Precision::F32 && device_name == "cpu" && !quiet {
        eprintln!(
            "note: --precision {} on the CPU runs burn's generic bf16 operations, far slower than \
             f32 with this crate's kernels; it is meant for GPUs",
            cfg.precision
        );
    }
    let n_t = diffusion.num_timesteps();
    let item_shape = dataset.item_shape();
    if item_shape.len() + 1 != D {
        bail!(
            "--data {}: items of shape {:?} do not suit the {} network",
            cfg.data,
            item_shape,
            cfg.preset
        );
    }

    device.seed(cfg.seed);
    let mut model = M::build(cfg, &item_shape, &device)?;
    let adam = cfg.adamw();
    let ema_cfg = EmaConfig {
        decay: cfg.ema_decay,
        warmup_power: (cfg.ema_warmup_power > 0.0).then_some(cfg.ema_warmup_power),
    };
    let mut opt = AdamW::new(adam);
    let mut ema = Ema::new(ema_cfg);
    // The schedule's own AdamW: no weight decay (it would pull γ(0) and γ(1) toward 0).
    let schedule_adam = AdamWConfig {
        weight_decay: 0.0,
        ..adam
    };
    let mut learned = (vdm_time.is_some() && fixed_gamma.is_none())
        .then(|| LearnedSchedule::new(cfg.gamma_range(), schedule_adam, ema_cfg, &device));
    // The bound's decoder: 8-bit images, or continuous 2-D points.
    let decoder = if cfg.preset == "mlp" {
        Decoder::Gaussian
    } else {
        Decoder::Discretized
    };
    let mut state = TrainState::start(cfg, n_t);

    // Leftovers of interrupted writes (temporary checkpoint directories, half-written files,
    // checkpoints moved aside for deletion) by processes that are gone.
    let run_files: [(PathBuf, &[&str]); 2] = [
        (run.clone(), &["config.toml"]),
        (run.join("checkpoints"), &["step-", "latest"]),
    ];
    for (dir, targets) in run_files.into_iter().filter(|_| root) {
        let removed = remove_stale(&dir, targets)?;
        if !removed.is_empty() && !quiet {
            eprintln!(
                "removed {} leftover(s) of an interrupted write in {}",
                removed.len(),
                dir.display()
            );
        }
    }
    if resume {
        let ckpt = newest_complete(&run)?.with_context(|| {
            format!(
                "--resume: no complete checkpoint to resume in {}",
                run.display()
            )
        })?;
        let inner = device.clone().inner();
        let model_file = ckpt.join("model.safetensors");
        model = load_params(
            model,
            &read_safetensors(&model_file)?,
            &model_file.display().to_string(),
            &inner,
        )?;
        let mut shapes = BTreeMap::new();
        visit_params(&model, |name, _, shape, _| {
            shapes.insert(name.to_string(), shape);
        });
        let ema_file = ckpt.join("ema.safetensors");
        let ema_t = read_safetensors(&ema_file)?;
        check_state_tensors(&ema_t, &shapes, &ema_file.display().to_string())?;
        ema.params = from_host_map(&ema_t, "", &inner);
        let opt_file = ckpt.join("optimizer.safetensors");
        let opt_name = opt_file.display().to_string();
        let (m, v) = split_moments(read_safetensors(&opt_file)?, &opt_name)?;
        check_state_tensors(&m, &shapes, &format!("{opt_name} (first moments)"))?;
        check_state_tensors(&v, &shapes, &format!("{opt_name} (second moments)"))?;
        if let Some((name, _)) = v.iter().find(|(_, t)| t.data.iter().any(|x| *x < 0.0)) {
            bail!("{opt_name}: second moment v.{name} holds negative values; the file is damaged");
        }
        opt.m = from_host_map(&m, "", &inner);
        opt.v = from_host_map(&v, "", &inner);
        let st_path = ckpt.join("state.json");
        let text = crate::files::read_text_capped(&st_path, crate::files::TEXT_MAX)
            .with_context(|| format!("cannot read {}", st_path.display()))?;
        state = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid training state", st_path.display()))?;
        check_state(&state, &ckpt, n_t, dataset.len(), cfg.batch_size, &st_path)?;
        opt.step = state.adam_step;
        ema.updates = state.ema_updates;
        if let Some(l) = learned.take() {
            learned = Some(l.load(&ckpt, state.adam_step, state.ema_updates)?);
        }
        if !quiet {
            eprintln!("resuming {} at step {}", ckpt.display(), state.step);
        }
    } else if !list_checkpoints(&run)?.is_empty() {
        bail!(
            "--out {}: this run already has checkpoints; pass --resume to continue it or choose another --out",
            run.display()
        );
    }
    // Every rank starts from the same state: the same step, data position, generators and
    // weights (a rank that read another copy of the run would mix steps silently).
    if world.is_distributed() {
        let state_hash = crate::dist::fnv1a(serde_json::to_string(&state)?.as_bytes());
        world.agree("the training state to start from", state_hash)?;
        world.agree("the weights to start from", weights_checksum(&model))?;
    }
    check_memory::<M, D>(cfg, device_name, &model, &item_shape, &world)?;
    if root {
        std::fs::create_dir_all(&run)
            .with_context(|| format!("cannot create the run directory {}", run.display()))?;
    }
    let _lock = match _lock {
        Some(l) => Some(l),
        None if root => Some(crate::files::lock_dir(&run)?),
        None => None,
    };
    // A new run's configuration is written now; a resumed run's changes (a new --lr, say) only
    // once this segment has saved a checkpoint, so a segment that fails leaves the run as it was.
    let toml = cfg.to_toml()?;
    let mut pending_config = None;
    if root && std::fs::read_to_string(&config_path).ok().as_deref() != Some(toml.as_str()) {
        if resume {
            pending_config = Some(toml);
        } else {
            write_atomic(&config_path, toml.as_bytes())?;
        }
    }

    let mut loader = Loader::spawn(BatchStream::new(
        dataset.clone(),
        micro,
        cfg.seed,
        cfg.hflip,
        state.data,
    ));
    if device_name != "cpu" && !quiet {
        eprintln!(
            "note: the first steps on {device_name} compile (and autotune) the GPU kernels, a \
             one-time cost that can take minutes; the progress bar shows the time spent"
        );
    }
    let bar = progress_bar(cfg.steps, state.step, quiet);
    let log_path = run.join("log.jsonl");
    let mut log = if root {
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot open {} for appending", log_path.display()))?,
        )
    } else {
        None
    };
    // This rank's rows of every micro-batch.
    let (lo, hi) = world.share(micro);
    let mut allreduce_secs = 0.0f64;

    let start = Instant::now();
    let first_step = state.step;
    let mut window_start = Instant::now();
    let mut window_images = 0usize;
    let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
    let mut q_sum = [0.0f64; 4];
    let mut q_n = [0usize; 4];
    let mut last_loss = f64::NAN;
    let mut grid = None;
    // Checkpoints are only ever written with finite weights (and checked when loaded).
    let mut last_ckpt: Option<PathBuf> = newest_complete(&run)?;

    while state.step < cfg.steps {
        let step = state.step + 1;
        let mut grads: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let mut schedule_grads: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let mut step_loss = 0.0;
        for k in 0..cfg.grad_accum {
            // Dropout draws from the backend generator: seed it from (seed, step, micro-batch,
            // rank).
            device.seed(
                cfg.seed
                    ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (k as u64) << 48
                    ^ (world.rank as u64) << 56,
            );
            // Every rank draws the whole micro-batch — its data, t and noise, from the same
            // generators — and keeps its rows, so N ranks train exactly as one process does
            // (dropout aside: each rank draws its own masks).
            let batch = loader.next_batch();
            state.data = batch.next;
            // VDM time: t in (0, 1] (its step of the sampling chain for the log's quartiles).
            let vdm_t =
                vdm_time.map(|time| time.draw(micro, cfg.antithetic_time, &mut state.rng_t));
            let (t_all, w_all) = match &vdm_t {
                Some(tc) => (
                    tc.iter()
                        .map(|t| ((t * n_t as f64).ceil() as usize).clamp(1, n_t) - 1)
                        .collect(),
                    vec![1.0; micro],
                ),
                None => state.t_sampler.sample(micro, &mut state.rng_t),
            };
            let mut shape: [usize; D] = batch.shape.clone().try_into().expect("batch rank");
            let item: usize = shape[1..].iter().product();
            let noise_all = state.rng_noise.normal_f32(micro * item);
            let rows = hi - lo;
            shape[0] = rows;
            // This rank's rows (all of them, without a copy, on one process).
            let my_rows = |v: Vec<f32>| {
                if rows == micro {
                    v
                } else {
                    v[lo * item..hi * item].to_vec()
                }
            };
            // VDM: the decoder's noise, drawn for the whole micro-batch like the rest.
            let eps0 = vdm_t
                .as_ref()
                .map(|_| state.rng_noise.normal_f32(micro * item));
            let x_host = vdm_t.as_ref().map(|_| my_rows(batch.data.clone()));
            let x0 = Tensor::<D>::from_data(TensorData::new(my_rows(batch.data), shape), &device);
            let noise = Tensor::<D>::from_data(TensorData::new(my_rows(noise_all), shape), &device);
            let t = t_all[lo..hi].to_vec();
            let w = w_all[lo..hi].to_vec();
            let cond = cfg.num_classes().map(|classes| {
                class_rows(&batch.labels, classes, cfg, step, k as u64, &device).narrow(0, lo, rows)
            });
            let working = precision.working_copy(&model);
            let net = |x: Tensor<D>, time: Tensor<1>| {
                precision.forward(&model, working.as_ref(), x, |m, x| {
                    m.forward_cond(x, time.clone(), cond.clone())
                })
            };
            let (per_example, vdm_batch) = match (vdm_time, &vdm_t) {
                (Some(time), Some(tc)) => {
                    let gamma: &dyn GammaSource = match (&learned, &fixed_gamma) {
                        (Some(l), _) => &l.net,
                        (None, Some(g)) => g,
                        (None, None) => unreachable!("a VDM run has a fixed or a learned γ"),
                    };
                    let times = LossTimes::new(time, gamma, tc[lo..hi].to_vec());
                    let b = VdmBatch::new(
                        times,
                        learned.is_some(),
                        &device,
                        x_host.as_deref().unwrap_or_default(),
                        &my_rows(eps0.unwrap_or_default()),
                        item,
                        gamma.ends(),
                        decoder,
                    );
                    (b.losses(x0, noise, net), Some(b))
                }
                _ => {
                    let x_t = diffusion.q_sample(x0.clone(), &t, noise.clone());
                    let model_t = diffusion.model_timesteps(&t, &x_t);
                    let out = net(x_t.clone(), model_t);
                    let l = diffusion.training_losses(&loss_cfg, out, x0, x_t, &t, noise);
                    (l.loss, None)
                }
            };
            let w = Tensor::<1>::from_data(TensorData::new(w, [rows]), &device);
            let diffusion_part: Vec<f64> = per_example
                .clone()
                .detach()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap_or_default();
            // What the log reports per example: the loss, or for VDM the whole bound.
            let mine: Vec<f64> = match &vdm_batch {
                Some(b) => b.bound(&diffusion_part),
                None => diffusion_part.clone(),
            };
            // The loss of the whole micro-batch: its mean on one process; with several, each
            // rank's share of the sum, the gradients summed below.
            let loss = if world.is_distributed() {
                (per_example * w).sum() / (micro * cfg.grad_accum) as f64
            } else {
                (per_example * w).mean() / cfg.grad_accum as f64
            };
            let backward = loss.backward();
            let g = named_grads(&model, &backward);
            if let (Some(b), Some(l)) = (&vdm_batch, &learned) {
                let total = (micro * cfg.grad_accum) as f64;
                let signal = b.signal(&backward, diffusion_part, total);
                for (name, gi) in signal.grads(&l.net) {
                    let sum = match schedule_grads.remove(&name) {
                        Some(acc) => acc + gi,
                        None => gi,
                    };
                    schedule_grads.insert(name, sum);
                }
            }
            for (name, gi) in g {
                let sum = match grads.remove(&name) {
                    Some(acc) => acc + gi,
                    None => gi,
                };
                grads.insert(name, sum);
            }
            // Every rank sees every sample's loss (the timestep sampler learns from them all).
            let per_sample = if world.is_distributed() {
                let mut all = vec![0.0f64; micro];
                all[lo..hi].copy_from_slice(&mine);
                world.sum_f64(&mut all)?;
                all
            } else {
                mine
            };
            if per_sample.iter().any(|l| !l.is_finite()) {
                bail!(
                    "non-finite loss at step {step}; stopping without saving. The last finite checkpoint is {}",
                    last_finite(&last_ckpt)
                );
            }
            if vdm_t.is_none() {
                state.t_sampler.update(&t_all, &per_sample);
            }
            for (&ti, &l) in t_all.iter().zip(&per_sample) {
                let q = (ti * 4 / n_t).min(3);
                q_sum[q] += l;
                q_n[q] += 1;
                step_loss += l / (micro * cfg.grad_accum) as f64;
            }
        }
        // Summed over the ranks before clipping, so the clip sees the global gradient norm.
        allreduce_secs += crate::dist::sum_gradients(&world, &mut grads)?;
        let (factor, grad_norm) = clip_factor(&grads, cfg.grad_clip.filter(|c| *c > 0.0));
        if !grad_norm.is_finite() {
            // Clipping by an infinite norm would zero the update: every step would "train".
            bail!(
                "non-finite gradient norm ({grad_norm}) at step {step}: the gradients overflow \
                 (a loss weight such as --hybrid-lambda, or the loss itself, is too large); \
                 stopping without saving. The last checkpoint is {}",
                last_finite(&last_ckpt)
            );
        }
        let lr = learning_rate(cfg.lr, cfg.warmup_steps, step);
        model = opt.step(model, &grads, lr, factor);
        drop(grads);
        if let Some(l) = learned.as_mut() {
            crate::dist::sum_gradients(&world, &mut schedule_grads)?;
            let lr_s = learning_rate(cfg.schedule_lr.unwrap_or(cfg.lr), cfg.warmup_steps, step);
            l.step(&schedule_grads, lr_s);
        }
        if let Some(name) = first_non_finite(&model) {
            bail!(
                "non-finite weights after the update of step {step} (parameter {name}; learning rate \
                 {lr}, gradient norm {grad_norm}); stopping without saving. The last finite checkpoint is {}",
                last_finite(&last_ckpt)
            );
        }
        ema.update(
            &named_params(&model)
                .into_iter()
                .map(|(k, v)| (k, v.value))
                .collect(),
        );
        state.step = step;
        state.adam_step = opt.step;
        state.ema_updates = ema.updates;
        loss_sum += step_loss;
        loss_n += 1;
        window_images += cfg.batch_size;
        last_loss = step_loss;
        if let Some(b) = &bar {
            b.set_position(step);
            b.set_message(format!("loss {step_loss:.4}"));
        }

        if step.is_multiple_of(cfg.log_every.max(1)) || step == cfg.steps {
            let secs = window_start.elapsed().as_secs_f64();
            let line = LogLine {
                step,
                loss: loss_sum / loss_n.max(1) as f64,
                loss_by_quartile: std::array::from_fn(|i| {
                    (q_n[i] > 0).then(|| q_sum[i] / q_n[i] as f64)
                }),
                grad_norm,
                lr,
                img_per_s: window_images as f64 / secs.max(1e-9),
                elapsed_s: start.elapsed().as_secs_f64(),
                allreduce_s: world
                    .is_distributed()
                    .then(|| allreduce_secs / loss_n.max(1) as f64),
            };
            allreduce_secs = 0.0;
            if let Some(log) = log.as_mut() {
                writeln!(log, "{}", serde_json::to_string(&line)?)
                    .with_context(|| format!("cannot append to {}", log_path.display()))?;
            }
            if let Some(b) = &bar {
                b.set_message(format!(
                    "loss {:.4} | {:.1} img/s",
                    line.loss, line.img_per_s
                ));
            }
            window_start = Instant::now();
            window_images = 0;
            loss_sum = 0.0;
            loss_n = 0;
            q_sum = [0.0; 4];
            q_n = [0; 4];
        }
        let at_end = step == cfg.steps;
        let checkpoint_now =
            cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) || at_end;
        if checkpoint_now && world.is_distributed() {
            // The replicas must hold the same weights: a cheap checksum per checkpoint.
            world.agree(
                "the weights (the replicas diverged)",
                weights_checksum(&model),
            )?;
        }
        if root && checkpoint_now {
            let extra = match &learned {
                Some(l) => vec![(SCHEDULE_FILE, l.to_bytes()?)],
                None => Vec::new(),
            };
            last_ckpt = Some(save_checkpoint(
                &run,
                &model,
                &ema,
                &opt,
                &state,
                extra,
                cfg.keep_checkpoints,
            )?);
            if let Some(t) = pending_config.take() {
                write_atomic(&config_path, t.as_bytes())?;
            }
        }
        if root && (cfg.sample_every > 0 && step.is_multiple_of(cfg.sample_every) || at_end) {
            if let (Some(l), Some(time)) = (&learned, vdm_time) {
                diffusion = vdm_diffusion(cfg, time, &l.averaged())?;
            }
            let ema_model = ema_model(&model, &ema, &device);
            grid = Some(write_samples::<M, D>(
                &run,
                step,
                &ema_model,
                &diffusion,
                cfg,
                &item_shape,
                &device.clone().inner(),
            )?);
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    let wall = start.elapsed().as_secs_f64();
    let done = state.step - first_step;
    Ok(TrainSummary {
        run,
        steps: state.step,
        last_loss,
        img_per_s: (done as usize * cfg.batch_size) as f64 / wall.max(1e-9),
        wall_s: wall,
        grid,
    })
}

/// How a run that stops on non-finite values names its last checkpoint: its weights are finite
/// (every update is checked), but a run on its way to diverging may already give non-finite
/// samples there, which `ddpm sample` reports.
fn last_finite(last: &Option<PathBuf>) -> String {
    last.as_ref()
        .map(|p| {
            format!(
                "{} (its weights are finite, but a diverging run may already have been unstable \
                 there: check its samples, or take an earlier checkpoint)",
                p.display()
            )
        })
        .unwrap_or_else(|| "none (no checkpoint was written yet)".into())
}

/// The one-hot class rows of a micro-batch's labels, each replaced by the null class with
/// probability `cond_drop`; the draws come from (seed, step, micro-batch), so a resumed run
/// makes the same ones.
fn class_rows(
    labels: &[usize],
    classes: usize,
    cfg: &TrainConfig,
    step: u64,
    micro: u64,
    device: &Device,
) -> Tensor<2> {
    let mut rng = Rng::new(
        cfg.seed ^ 0xC1A5_5D20_0000_0000 ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro << 40,
    );
    let rows: Vec<usize> = labels
        .iter()
        .map(|&y| {
            if rng.uniform() < cfg.cond_drop {
                classes
            } else {
                y.min(classes - 1)
            }
        })
        .collect();
    crate::model::one_hot(&rows, classes + 1, device)
}

/// The bits of every weight, hashed: equal on replicas that stayed identical.
fn weights_checksum<M: Module>(model: &M) -> u64 {
    let mut bytes = Vec::new();
    for (name, p) in named_params(model) {
        bytes.extend(name.as_bytes());
        let v: Vec<f32> = p
            .value
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap_or_default();
        for x in v {
            bytes.extend(x.to_bits().to_le_bytes());
        }
    }
    crate::dist::fnv1a(&bytes)
}

/// The name of the first parameter holding a NaN or an infinity, if any: one device reduction
/// per parameter (0·x sums to 0 exactly when every x is finite) and one read-back.
fn first_non_finite<M: Module>(model: &M) -> Option<String> {
    let named = named_params(model);
    let probes: Vec<Tensor<1>> = named
        .values()
        .map(|p| (p.value.clone() * 0.0).sum())
        .collect();
    if probes.is_empty() {
        return None;
    }
    let sums = Tensor::cat(probes, 0)
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap_or_default();
    named
        .keys()
        .zip(&sums)
        .find(|(_, s)| !s.is_finite())
        .map(|(k, _)| k.clone())
}

/// Refuses a configuration whose training step would not fit in this machine's memory (CPU
/// only), with the estimate, before anything large is allocated.
fn check_memory<M: Net<D>, const D: usize>(
    cfg: &TrainConfig,
    device_name: &str,
    model: &M,
    item_shape: &[usize],
    world: &crate::dist::World,
) -> Result<()> {
    if !matches!(device_name, "cpu" | "cubecl-cpu") {
        return Ok(());
    }
    let mut params = 0u64;
    visit_params(model, |_, _, shape, _| {
        params += shape.iter().product::<usize>() as u64
    });
    let per_item = M::activation_bytes_per_item(cfg, item_shape);
    let micro = (cfg.batch_size / cfg.grad_accum / world.size.max(1)) as f64;
    // Weights, gradients, two AdamW moments, the EMA and the update's temporaries: 8 copies.
    // Every rank on this machine needs as much.
    let need = (micro * per_item + 8.0 * 4.0 * params as f64) * world.local_size.max(1) as f64;
    if let Some((need_gib, avail_gib)) = crate::heap::shortfall_gib(need) {
        bail!(
            "--batch-size {}: a training step needs about {:.1} GiB ({} images per micro-batch at \
             about {:.1} MiB each, plus the model's state{}), but this machine has {:.1} GiB \
             available; use a smaller --batch-size or split it with --grad-accum",
            cfg.batch_size,
            need_gib,
            micro,
            per_item / (1u64 << 20) as f64,
            if world.local_size > 1 {
                format!(
                    ", for each of the {} processes on this machine",
                    world.local_size
                )
            } else {
                String::new()
            },
            avail_gib
        );
    }
    Ok(())
}

fn save_checkpoint<M: Module>(
    run: &Path,
    model: &M,
    ema: &Ema,
    opt: &AdamW,
    state: &TrainState,
    extra: Vec<(&str, Vec<u8>)>,
    keep: usize,
) -> Result<PathBuf> {
    let weights = host_params(model);
    let model_b = to_safetensors(&weights)?;
    // EMA weights keep the parameters' shapes, so `ema.safetensors` loads like the model.
    let ema_host: BTreeMap<String, HostTensor> = ema
        .params
        .iter()
        .map(|(k, t)| {
            let shape = weights
                .get(k)
                .map(|w| w.shape.clone())
                .unwrap_or_else(|| vec![t.dims()[0]]);
            (k.clone(), HostTensor::from_tensor(t, shape))
        })
        .collect();
    let ema_b = to_safetensors(&ema_host)?;
    let mut o = to_host_map(&opt.m, "m.");
    o.extend(to_host_map(&opt.v, "v."));
    for (what, map) in [
        ("weight", &weights),
        ("EMA weight", &ema_host),
        ("optimizer state", &o),
    ] {
        if let Some((name, _)) = map
            .iter()
            .find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
        {
            bail!(
                "step {}: {what} {name} is not finite; the checkpoint is not written",
                state.step
            );
        }
    }
    let opt_b = to_safetensors(&o)?;
    let mut files = vec![
        ("model.safetensors", model_b),
        ("ema.safetensors", ema_b),
        ("optimizer.safetensors", opt_b),
    ];
    files.extend(extra);
    let mut state = state.clone();
    state.checksums = files
        .iter()
        .map(|(name, bytes)| (name.to_string(), crate::train::checkpoint::checksum(bytes)))
        .collect();
    files.push(("state.json", serde_json::to_vec_pretty(&state)?));
    write_checkpoint(run, state.step, &files, keep)
}

fn write_samples<M: Net<D>, const D: usize>(
    run: &Path,
    step: u64,
    model: &M,
    diffusion: &GaussianDiffusion,
    cfg: &TrainConfig,
    item_shape: &[usize],
    device: &Device,
) -> Result<PathBuf> {
    let n = cfg.sample_count.max(1);
    let steps = crate::sample::ddim::spaced_steps(
        diffusion.num_timesteps(),
        cfg.sample_steps,
        Spacing::Linspace,
    );
    let mut rng = Rng::new(cfg.seed ^ 0x5A3B_1E00);
    // A class-conditional model draws every class in turn.
    let labels = cfg
        .num_classes()
        .map(|k| crate::sample::guidance::labels_for("all", n, k))
        .transpose()?;
    let cond = labels
        .as_ref()
        .zip(cfg.num_classes())
        .map(|(l, k)| Conditioning {
            labels: l,
            classes: k,
            guidance: 0.0,
            rescale: 0.0,
            learned_variance: diffusion.variance.is_learned(),
            classifier: None,
        });
    // In batches of at most a training micro-batch, so a large grid needs no more memory than
    // a training step.
    let data = draw::<D, M, Ddim>(
        model,
        || Ddim::new(diffusion, steps.clone(), 0.0, X0Clip::Clip),
        n,
        cfg.batch_size / cfg.grad_accum,
        item_shape,
        cond.as_ref(),
        device,
        &mut rng,
        |_| {},
    )?;
    let mut shape = [n; D];
    shape[1..].copy_from_slice(item_shape);
    let path = run.join("samples").join(format!("step-{step:08}.png"));
    if D == 4 {
        let s = shape.to_vec();
        let s4 = [s[0], s[1], s[2], s[3]];
        crate::viz::grid::save_grid(&path, &data, s4, crate::viz::grid::square_cols(n))?;
    } else {
        crate::viz::grid::save_scatter(&path, &data, 512, 1.5)?;
    }
    Ok(path)
}

fn progress_bar(total: u64, pos: u64, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps | {msg} | {elapsed} elapsed, ETA {eta}",
        )
        .expect("template"),
    );
    b.set_position(pos);
    // Ticks while a step is still running (a GPU backend compiling its kernels).
    b.enable_steady_tick(std::time::Duration::from_millis(500));
    Some(b)
}

/// Opens the dataset of `cfg` (training split).
pub fn open_dataset(cfg: &TrainConfig) -> Result<Arc<dyn Dataset>> {
    let image = (cfg.preset != "mlp")
        .then(|| {
            cfg.unet_config()
                .ok()
                .map(|u| (u.in_channels, u.image_size))
        })
        .flatten();
    Ok(Arc::from(crate::data::open(
        &cfg.data,
        Split::Train,
        cfg.seed,
        image,
    )?))
}

/// Trains with the network the data calls for: the U-Net for images, the MLP for 2-D points.
pub fn train_auto(cfg: &TrainConfig, resume: bool, quiet: bool) -> Result<TrainSummary> {
    let ds = open_dataset(cfg)?;
    let mut cfg = cfg.clone();
    if cfg.class_cond {
        let names = ds.classes();
        if names.is_empty() {
            bail!(
                "--class-cond: --data {} has no labels (IDX needs its labels file, one label per \
                 image, beside the images; a folder needs one sub-directory per class; toy data: \
                 8-gaussians or two-moons)",
                cfg.data
            );
        }
        match &cfg.classes {
            None => cfg.classes = Some(names),
            Some(c) if *c != names => bail!(
                "--data {}: its classes {:?} are not the run's {:?}",
                cfg.data,
                names,
                c
            ),
            Some(_) => {}
        }
    }
    let cfg = &cfg;
    if cfg.preset == "mlp" || ds.item_shape().len() == 1 {
        if cfg.preset != "mlp" {
            bail!("--data {}: 2-D points need --preset mlp", cfg.data);
        }
        train::<Mlp, 2>(cfg, ds, resume, quiet)
    } else {
        train::<UNet, 4>(cfg, ds, resume, quiet)
    }
}

/// A trained model ready for inference: the run's configuration and the network with its EMA
/// (or raw) weights from a run or checkpoint directory.
pub struct Loaded<M> {
    /// The run's configuration.
    pub config: TrainConfig,
    /// The checkpoint directory used.
    pub checkpoint: PathBuf,
    /// The network.
    pub model: M,
    /// The chain samplers walk: the run's DDPM chain, or its VDM schedule discretized.
    pub diffusion: GaussianDiffusion,
    /// A VDM run's time and schedule.
    pub vdm: Option<crate::vdm::VdmProcess>,
}

/// The VDM process of a run (its learned schedule read from `ckpt`: the EMA unless `raw`), or
/// `None` for a DDPM run.
pub fn run_vdm(
    cfg: &TrainConfig,
    ckpt: &Path,
    raw: bool,
    device: &Device,
) -> Result<Option<crate::vdm::VdmProcess>> {
    let Some(time) = cfg.vdm_time()? else {
        return Ok(None);
    };
    let gamma: Box<dyn GammaSource> = match cfg.fixed_gamma()? {
        Some(g) => Box::new(g),
        None => Box::new(super::learned_schedule::load_for_inference(
            ckpt,
            raw,
            cfg.gamma_range(),
            device,
        )?),
    };
    Ok(Some(crate::vdm::VdmProcess { time, gamma }))
}

/// The noise schedule of a run or checkpoint directory without its network: a VDM run's γ
/// discretized over `steps` steps (its sampling chain's length when `None`), a DDPM run's own
/// chain. Also returns γ(0), γ(1) for VDM runs.
pub fn run_schedule(
    path: &Path,
    steps: Option<usize>,
) -> Result<(NoiseSchedule, Option<(f64, f64)>)> {
    let ckpt = resolve(path)?;
    let cfg = run_config(&ckpt)?;
    let device = crate::device::by_name("cpu")?;
    match run_vdm(&cfg, &ckpt, false, &device)? {
        Some(v) => {
            let n = steps.unwrap_or_else(|| vdm_chain_steps(&cfg, v.time));
            Ok((
                crate::vdm::time::chain(v.gamma.as_ref(), n)?,
                Some(v.gamma.ends()),
            ))
        }
        None => Ok((diffusion_from(&cfg)?.schedule, None)),
    }
}

/// The chain a run samples on (see [`Loaded::diffusion`]).
pub fn run_diffusion(
    cfg: &TrainConfig,
    vdm: Option<&crate::vdm::VdmProcess>,
) -> Result<GaussianDiffusion> {
    match vdm {
        Some(v) => vdm_diffusion(cfg, v.time, v.gamma.as_ref()),
        None => diffusion_from(cfg),
    }
}

/// The configuration of the run a checkpoint directory (`RUN/checkpoints/step-N`) belongs to:
/// its `config.toml`.
pub fn run_config(ckpt: &Path) -> Result<TrainConfig> {
    let run = ckpt
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let cfg_path = run.join("config.toml");
    let text =
        crate::files::read_text_capped(&cfg_path, crate::files::TEXT_MAX).with_context(|| {
            format!(
                "cannot read {} (the run's configuration)",
                cfg_path.display()
            )
        })?;
    // Every key has a default, so an emptied file would read as another run's configuration
    // (and the weights would then be blamed for not fitting it).
    let has_preset = text
        .parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("preset"));
    if !has_preset {
        bail!(
            "{}: not a run configuration (no `preset`: emptied or truncated?); restore it from a \
             copy of the run",
            cfg_path.display()
        );
    }
    TrainConfig::from_toml(&text, &cfg_path.display().to_string())
}

/// A `--checkpoint` as a local path: itself, or for a Hub repo id (`owner/name`, optionally
/// `@revision`) that is not a local path, its snapshot in the cache (`ddpm fetch` puts it there).
pub fn local_model(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let s = path.to_string_lossy();
    let (repo, revision) = s.split_once('@').unwrap_or((&s, "main"));
    if crate::hub::is_repo_id(repo) {
        return match crate::hub::cached_snapshot(repo, revision)? {
            Some(p) => Ok(p),
            None => bail!(
                "{s}: no such path, and the Hub repo {repo} (revision {revision}) is not in the \
                 cache {}; download it once with `ddpm fetch {repo} --revision {revision}`",
                crate::hub::cache_dir()?.display()
            ),
        };
    }
    Ok(path.to_path_buf())
}

/// The configuration of a run, a checkpoint directory, a diffusers model folder or a fetched
/// Hub repo.
pub fn config_of(path: &Path) -> Result<TrainConfig> {
    let path = &local_model(path)?;
    if crate::pretrained::layout(path).is_some() {
        return crate::pretrained::config_of(path);
    }
    run_config(&resolve(path)?)
}

/// Loads the network of a run or checkpoint directory (`no_ema`: the raw weights), or of a
/// diffusers model folder (its only weights).
pub fn load_for_inference<M: Net<D>, const D: usize>(
    path: &Path,
    no_ema: bool,
    device: &Device,
) -> Result<Loaded<M>> {
    let path = &local_model(path)?;
    if crate::pretrained::layout(path).is_some() {
        let imported = crate::pretrained::import(path)?;
        let config = imported.config;
        let model = M::build(&config, &item_shape_of(&config)?, device)?;
        let model = load_params(
            model,
            &imported.weights,
            &path.display().to_string(),
            device,
        )?;
        return Ok(Loaded {
            diffusion: diffusion_from(&config)?,
            config,
            checkpoint: path.to_path_buf(),
            model,
            vdm: None,
        });
    }
    let ckpt = resolve(path)?;
    let config = run_config(&ckpt)?;
    let item_shape = item_shape_of(&config)?;
    let model = M::build(&config, &item_shape, device)?;
    let file = ckpt.join(if no_ema {
        "model.safetensors"
    } else {
        "ema.safetensors"
    });
    let model = load_params(
        model,
        &read_safetensors(&file)?,
        &file.display().to_string(),
        device,
    )?;
    let vdm = run_vdm(&config, &ckpt, no_ema, device)?;
    let diffusion = run_diffusion(&config, vdm.as_ref()).with_context(|| {
        match config.fixed_gamma_if_vdm() {
            Ok(None) if vdm.is_some() => format!(
                "the learned schedule of {}",
                ckpt.join(super::learned_schedule::SCHEDULE_FILE).display()
            ),
            _ => format!("the chain of {}", ckpt.display()),
        }
    })?;
    // VDM runs sample a chain of their own length from their γ (`--time`), not `timesteps`.
    if vdm.is_none() {
        check_trained_chain(&ckpt, diffusion.num_timesteps())?;
    }
    Ok(Loaded {
        config,
        checkpoint: ckpt,
        model,
        diffusion,
        vdm,
    })
}

/// Refuses a DDPM run whose `config.toml` describes a chain of `now` steps when its checkpoint
/// was trained on another (an edited `timesteps`): the timestep sampler saved in `state.json`
/// covers the training chain's steps. A state that cannot be read is left to `--resume`.
fn check_trained_chain(ckpt: &Path, now: usize) -> Result<()> {
    let path = ckpt.join("state.json");
    let Ok(text) = crate::files::read_text_capped(&path, crate::files::TEXT_MAX) else {
        return Ok(());
    };
    let Ok(state) = serde_json::from_str::<TrainState>(&text) else {
        return Ok(());
    };
    let trained = state.t_sampler.num_timesteps();
    if now != trained {
        bail!(
            "{}: the configuration's chain has {now} steps, but {} was trained on {trained} \
             (an edited `timesteps`?); restore the value the run was trained with",
            ckpt.parent()
                .and_then(Path::parent)
                .map(|r| r.join("config.toml"))
                .unwrap_or_default()
                .display(),
            ckpt.display()
        );
    }
    Ok(())
}

/// The item shape a configuration's network takes.
pub fn item_shape_of(cfg: &TrainConfig) -> Result<Vec<usize>> {
    if cfg.preset == "mlp" {
        Ok(vec![cfg.mlp.clone().unwrap_or_default().dim])
    } else {
        let u = cfg.unet_config()?;
        Ok(vec![u.in_channels, u.image_size, u.image_size])
    }
}
