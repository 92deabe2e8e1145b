//! Opening a run for training: the checks that must pass before anything is written (the
//! processes agree, the configuration of a resumed run, memory), the lock, leftovers of
//! interrupted writes, the network with its optimizer and average (new, or restored from the
//! newest complete checkpoint), the data stream and the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::learner::Learner;
use super::objective::Objective;
use super::progress::Progress;
use super::resume::{check_state, check_state_tensors, compare_configs, split_moments};
use super::trainer::{TrainOptions, Trainer, weights_checksum};
use crate::config::RunConfig;
use crate::data::Dataset;
use crate::data::loader::{BatchStream, Loader};
use crate::dist::World;
use crate::error::{ErrorKind, Refused};
use crate::files::{remove_stale, write_atomic};
use crate::model::precision::Precision;
use crate::optim::adamw::AdamW;
use crate::optim::ema::Ema;
use crate::optim::power_ema::PowerEma;
use crate::run::checkpoints::{list_checkpoints, newest_complete};
use crate::run::config_path;
use crate::run::net::Net;
use crate::run::state::TrainState;
use crate::store::params::{from_host_map, load_params, visit_params};
use crate::store::tensors::read_safetensors;

impl<'a, M: Net<D>, const D: usize> Trainer<'a, M, D> {
    /// Opens (or, with `resume`, continues) the run `cfg` describes on `dataset`.
    pub(super) fn open(
        cfg: &'a RunConfig,
        dataset: Arc<dyn Dataset>,
        options: TrainOptions<'a>,
    ) -> Result<Self> {
        let TrainOptions {
            resume,
            quiet,
            on_log,
        } = options;
        cfg.validate()?;
        let world = crate::dist::world();
        let root = world.is_root();
        let quiet = quiet || !root;
        let micro = cfg.batch_size / cfg.grad_accum;
        check_world(cfg, &world, micro)?;
        let run = PathBuf::from(&cfg.out);
        check_resumed_config(cfg, &run, resume, quiet)?;
        // One process per run: a second one would prune the first one's checkpoints.
        let lock = if root && run.is_dir() {
            Some(crate::files::lock_dir(&run)?)
        } else {
            None
        };
        let device = crate::device::by_name(&cfg.device)?.autodiff();
        let precision = cfg.precision;
        let device_name = crate::device::resolve_name(&cfg.device)?;
        if precision != Precision::F32 && device_name == "cpu" && !quiet {
            eprintln!(
                "note: --precision {} on the CPU runs burn's generic bf16 operations, far slower \
                 than f32 with this crate's kernels; it is meant for GPUs",
                cfg.precision
            );
        }
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
        let mut learner = Learner::new(
            M::build(cfg, &item_shape, &device)?,
            AdamW::new(cfg.adamw()),
            Ema::new(cfg.ema_config()),
            precision,
        );
        track_power_averages(cfg, &mut learner, &run, quiet)?;
        // After the network: a learned schedule's initial weights are the generator's next draws.
        let mut objective = Objective::new(cfg, &device)?;
        let n_t = objective.chain().num_timesteps();
        let mut state = TrainState::start(cfg, n_t);
        if root {
            remove_leftovers(&run, quiet)?;
        }
        if resume {
            let (data_len, obj) = (dataset.len(), &mut objective);
            let inner = device.clone().inner();
            state = resume_from_newest(&run, &mut learner, obj, data_len, cfg, &inner, quiet)?;
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
            world.agree(
                "the weights to start from",
                weights_checksum(learner.model()),
            )?;
        }
        check_memory::<M, D>(cfg, device_name, learner.model(), &item_shape, &world)?;
        if root {
            std::fs::create_dir_all(&run)
                .with_context(|| format!("cannot create the run directory {}", run.display()))?;
        }
        let lock = match lock {
            Some(l) => Some(l),
            None if root => Some(crate::files::lock_dir(&run)?),
            None => None,
        };
        let pending_config = if root {
            write_config(cfg, &run, resume)?
        } else {
            None
        };
        let loader = Loader::spawn(BatchStream::new(
            dataset.clone(),
            micro,
            cfg.seed,
            cfg.hflip,
            state.data,
        ));
        if device_name != "cpu" && !quiet {
            let cache = crate::device::kernel_cache::effective()
                .map(|l| l.to_string())
                .unwrap_or_else(|e| e.to_string());
            eprintln!(
                "note: the first steps on {device_name} compile (and autotune) the GPU kernels, a \
                 one-time cost that can take minutes; the progress bar shows the time spent. \
                 Kernel cache: {cache} (later runs reuse it; `ddpm kernels warmup` fills it ahead)"
            );
        }
        let on_log = on_log.filter(|_| root);
        let progress = Progress::open(&run, root, cfg.steps, state.step, quiet, on_log)?;
        let (lo, hi) = world.share(micro);
        Ok(Self {
            cfg,
            world,
            root,
            device,
            last_ckpt: newest_complete(&run)?,
            run,
            objective,
            learner,
            first_step: state.step,
            state,
            loader,
            item_shape,
            micro,
            rows: lo..hi,
            progress,
            pending_config,
            grid: None,
            _lock: lock,
        })
    }
}

/// The post-hoc EMA averages `cfg` asks for, in `learner`; unless `quiet`, how many snapshots
/// they will keep in `run` and about how much disk that takes.
fn track_power_averages<M: Net<D>, const D: usize>(
    cfg: &RunConfig,
    learner: &mut Learner<M>,
    run: &Path,
    quiet: bool,
) -> Result<()> {
    let Some(p) = &cfg.posthoc_ema else {
        return Ok(());
    };
    learner.power = p
        .sigma_rels
        .iter()
        .map(|&s| PowerEma::new(s))
        .collect::<Result<_>>()?;
    if !quiet {
        let mut values = 0;
        visit_params(learner.model(), |_, t, _, _| values += t.dims()[0]);
        let snapshots = cfg.steps.div_ceil(p.snapshot_every);
        let bytes = values as f64 * 4.0 * p.sigma_rels.len() as f64 * snapshots as f64;
        let size = if bytes >= 1e9 {
            format!("{:.1} GB", bytes / 1e9)
        } else {
            format!("{:.1} MB", bytes / 1e6)
        };
        eprintln!(
            "post-hoc EMA: {} averages, a snapshot every {} steps: {snapshots} snapshots, about \
             {size} in {}",
            p.sigma_rels.len(),
            p.snapshot_every,
            run.join("posthoc").display()
        );
    }
    Ok(())
}

/// The state of `run`'s newest complete checkpoint, with the learner and objective restored
/// from it.
fn resume_from_newest<M: Net<D>, const D: usize>(
    run: &Path,
    learner: &mut Learner<M>,
    objective: &mut Objective,
    data_len: usize,
    cfg: &RunConfig,
    inner: &burn::tensor::Device,
    quiet: bool,
) -> Result<TrainState> {
    let ckpt = newest_complete(run)?.with_context(|| {
        format!(
            "--resume: no complete checkpoint to resume in {}",
            run.display()
        )
    })?;
    let n_t = objective.chain().num_timesteps();
    let state = restore(&ckpt, learner, objective, n_t, data_len, cfg, inner)?;
    if !quiet {
        eprintln!("resuming {} at step {}", ckpt.display(), state.step);
    }
    Ok(state)
}

/// Refuses a batch that does not split over the processes, and processes that read different
/// configurations (the same command line can read different files on different machines).
fn check_world(cfg: &RunConfig, world: &World, micro: usize) -> Result<()> {
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
    if world.is_distributed() {
        let hash = crate::dist::fnv1a(cfg.to_toml()?.as_bytes());
        world.agree("the configuration", hash)?;
    }
    Ok(())
}

/// A resumed run keeps what defines it; what may change between segments is reported.
fn check_resumed_config(cfg: &RunConfig, run: &Path, resume: bool, quiet: bool) -> Result<()> {
    let path = config_path(run);
    if resume && !path.is_file() && run.join("checkpoints").is_dir() {
        bail!(
            "--resume: {} is missing, so nothing says how the run was made; pass its \
             configuration with --config FILE (the one it was started with)",
            path.display()
        );
    }
    if resume && path.is_file() {
        let text = crate::files::read_text_capped(&path, crate::files::TEXT_MAX)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let saved = RunConfig::from_toml(&text, &path.display().to_string())?;
        for change in compare_configs(&saved, cfg)? {
            if !quiet {
                eprintln!("resume: {change}");
            }
        }
    }
    Ok(())
}

/// Removes leftovers of interrupted writes (temporary checkpoint directories, half-written
/// files, checkpoints moved aside for deletion) by processes that are gone.
fn remove_leftovers(run: &Path, quiet: bool) -> Result<()> {
    let run_files: [(PathBuf, &[&str]); 2] = [
        (run.to_path_buf(), &["config.toml"]),
        (run.join("checkpoints"), &["step-", "latest"]),
    ];
    for (dir, targets) in run_files {
        let removed = remove_stale(&dir, targets)?;
        if !removed.is_empty() && !quiet {
            eprintln!(
                "removed {} leftover(s) of an interrupted write in {}",
                removed.len(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Restores the weights, their average, the optimizer's moments and a learned schedule from
/// the checkpoint `ckpt`, checking each against the network; returns its training state.
fn restore<M: Net<D>, const D: usize>(
    ckpt: &Path,
    learner: &mut Learner<M>,
    objective: &mut Objective,
    n_t: usize,
    data_len: usize,
    cfg: &RunConfig,
    inner: &burn::tensor::Device,
) -> Result<TrainState> {
    let model_file = ckpt.join("model.safetensors");
    let weights = read_safetensors(&model_file)?;
    let name = model_file.display().to_string();
    learner.map_model(|m| load_params(m, &weights, &name, inner))?;
    let mut shapes = BTreeMap::new();
    visit_params(learner.model(), |name, _, shape, _| {
        shapes.insert(name.to_string(), shape);
    });
    let ema_file = ckpt.join("ema.safetensors");
    let ema_t = read_safetensors(&ema_file)?;
    check_state_tensors(&ema_t, &shapes, &ema_file.display().to_string())?;
    learner.ema.params = from_host_map(&ema_t, "", inner);
    for p in &mut learner.power {
        let file = ckpt.join(p.file_name());
        let t = read_safetensors(&file)?;
        check_state_tensors(&t, &shapes, &file.display().to_string())?;
        p.params = from_host_map(&t, "", inner);
    }
    let opt_file = ckpt.join("optimizer.safetensors");
    let opt_name = opt_file.display().to_string();
    let (m, v) = split_moments(read_safetensors(&opt_file)?, &opt_name)?;
    check_state_tensors(&m, &shapes, &format!("{opt_name} (first moments)"))?;
    check_state_tensors(&v, &shapes, &format!("{opt_name} (second moments)"))?;
    if let Some((name, _)) = v.iter().find(|(_, t)| t.data.iter().any(|x| *x < 0.0)) {
        bail!("{opt_name}: second moment v.{name} holds negative values; the file is damaged");
    }
    learner.opt.m = from_host_map(&m, "", inner);
    learner.opt.v = from_host_map(&v, "", inner);
    let st_path = ckpt.join("state.json");
    let text = crate::files::read_text_capped(&st_path, crate::files::TEXT_MAX)
        .with_context(|| format!("cannot read {}", st_path.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid training state", st_path.display()))?;
    check_state(&state, ckpt, n_t, data_len, cfg.batch_size, &st_path)?;
    learner.opt.step = state.adam_step;
    learner.ema.updates = state.ema_updates;
    for p in &mut learner.power {
        p.updates = state.ema_updates;
    }
    if let Some(l) = objective.learned_mut() {
        l.load(ckpt, state.adam_step, state.ema_updates)?;
    }
    Ok(state)
}

/// Writes a new run's configuration now; returns a resumed run's changed one (a new --lr, say)
/// to write once this segment has saved a checkpoint, so a segment that fails leaves the run
/// as it was.
fn write_config(cfg: &RunConfig, run: &Path, resume: bool) -> Result<Option<String>> {
    let path = config_path(run);
    let toml = cfg.to_toml()?;
    if std::fs::read_to_string(&path).ok().as_deref() == Some(toml.as_str()) {
        return Ok(None);
    }
    if resume {
        return Ok(Some(toml));
    }
    write_atomic(&path, toml.as_bytes())?;
    Ok(None)
}

/// Refuses a configuration whose training step would not fit in this machine's memory (CPU
/// only), with the estimate, before anything large is allocated.
fn check_memory<M: Net<D>, const D: usize>(
    cfg: &RunConfig,
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
        let message = format!(
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
        return Err(Refused::error(ErrorKind::OutOfMemory, message));
    }
    Ok(())
}
