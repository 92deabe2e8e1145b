//! The training loop, Ho et al.'s Algorithm 1:
//!
//! ```text
//! repeat
//!   x_0 ~ q(x_0), t ~ Uniform({1, …, T}), ε ~ N(0, I)
//!   take a gradient step on ∇_θ ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²
//! until converged
//! ```
//!
//! [`train`] is that loop; each line is a method of `Trainer` below, and opening the run
//! (configuration, lock, resume, data, network) is in `open.rs`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};

use super::learner::{Grads, Learner, Share, accumulate};
use super::micro_batch::{MicroBatch, class_rows};
use super::objective::Objective;
use super::progress::{OnLog, Progress};
use crate::config::RunConfig;
use crate::data::Dataset;
use crate::data::loader::Loader;
use crate::diffusion::edm::Preconditioned;
use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::dist::World;
use crate::error::{ErrorKind, Refused};
use crate::files::write_atomic;
use crate::model::{Mlp, UNet};
use crate::optim::adamw::learning_rate;
use crate::optim::ema::ema_model;
use crate::rng::streams;
use crate::run::checkpoints;
use crate::run::net::Net;
use crate::run::schedule_file::SCHEDULE_FILE;
use crate::run::state::TrainState;
use crate::sample::{Conditioning, Ddim, Drawing, Spacing};

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

/// How a training call runs.
#[derive(Default)]
pub struct TrainOptions<'a> {
    /// Continue the run in `cfg.out` from its newest complete checkpoint.
    pub resume: bool,
    /// No progress bar or notes on stderr.
    pub quiet: bool,
    /// Called with every line written to `log.jsonl` (every `log_every` steps and at the end).
    pub on_log: Option<OnLog<'a>>,
}

/// Runs (or resumes) training as `cfg` says with network `M`.
pub fn train<M: Net<D>, const D: usize>(
    cfg: &RunConfig,
    dataset: Arc<dyn Dataset>,
    options: TrainOptions,
) -> Result<TrainSummary> {
    let mut t = Trainer::<M, D>::open(cfg, dataset, options)?;
    while t.state.step < cfg.steps {
        let step = t.state.step + 1;
        let (mut grads, mut schedule_grads) = (Grads::new(), Grads::new());
        for k in 0..cfg.grad_accum as u64 {
            // x_0 ~ q(x_0), t ~ the timestep sampler (uniform by default), ε ~ N(0, I).
            let batch = t.draw_micro_batch(step, k);
            // ∇_θ of the loss of ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t), this micro-batch's share.
            let out = t.learner.micro_step(&t.objective, &batch, t.share());
            accumulate(&mut grads, out.grads);
            accumulate(&mut schedule_grads, out.schedule_grads.unwrap_or_default());
            t.record_losses(step, &batch, out.losses)?;
        }
        // The gradient step (clipped AdamW), the EMA, a learned schedule's own step.
        let update = t.apply_update(step, grads, schedule_grads)?;
        t.log(step, update)?;
        t.checkpoint_and_sample(step)?;
    }
    Ok(t.finish())
}

/// A run being trained: the state [`train`]'s loop works on.
pub(super) struct Trainer<'a, M, const D: usize> {
    pub(super) cfg: &'a RunConfig,
    pub(super) world: World,
    /// Rank 0 writes the run's files and reports progress; the other ranks only compute.
    pub(super) root: bool,
    /// The training device (with autodiff).
    pub(super) device: burn::tensor::Device,
    pub(super) run: PathBuf,
    pub(super) objective: Objective,
    pub(super) learner: Learner<M>,
    pub(super) state: TrainState,
    pub(super) loader: Loader,
    pub(super) item_shape: Vec<usize>,
    /// Examples per micro-batch (all ranks').
    pub(super) micro: usize,
    /// This rank's rows of every micro-batch.
    pub(super) rows: Range<usize>,
    pub(super) progress: Progress<'a>,
    /// The newest checkpoint: checkpoints are only ever written with finite weights.
    pub(super) last_ckpt: Option<PathBuf>,
    /// A resumed run's changed configuration, written with its first checkpoint.
    pub(super) pending_config: Option<String>,
    pub(super) grid: Option<PathBuf>,
    pub(super) first_step: u64,
    pub(super) _lock: Option<std::fs::File>,
}

impl<M: Net<D>, const D: usize> Trainer<'_, M, D> {
    /// How each micro-batch's loss is scaled.
    fn share(&self) -> Share {
        Share {
            accum: self.cfg.grad_accum,
            micro: self.micro,
            distributed: self.world.is_distributed(),
        }
    }

    /// Draws micro-batch `k` of `step`: the data, the times, the noise and the class rows, each
    /// from its own stream, so seeds and resumed runs give the same draws.
    fn draw_micro_batch(&mut self, step: u64, k: u64) -> MicroBatch<D> {
        let cfg = self.cfg;
        // Dropout draws from the backend generator.
        let rank = self.world.rank as u64;
        self.device.seed(streams::dropout(cfg.seed, step, k, rank));
        let batch = self.loader.next_batch();
        self.state.data = batch.next;
        let times = self.objective.draw_times(
            self.micro,
            cfg.antithetic_time,
            &mut self.state.rng_t,
            &self.state.t_sampler,
        );
        let cond = cfg.num_classes().map(|classes| {
            let mut rng = streams::class_drop(cfg.seed, step, k);
            class_rows(
                &batch.labels,
                classes,
                cfg.cond_drop,
                &mut rng,
                &self.device,
            )
        });
        MicroBatch::new(
            batch,
            times,
            &mut self.state.rng_noise,
            self.rows.clone(),
            cond,
            &self.device,
        )
    }

    /// Gathers every rank's losses of a micro-batch (the timestep sampler learns from them
    /// all), stops on a non-finite one, and records them.
    fn record_losses(&mut self, step: u64, batch: &MicroBatch<D>, mine: Vec<f64>) -> Result<()> {
        let per_sample = if self.world.is_distributed() {
            let mut all = vec![0.0f64; self.micro];
            all[self.rows.clone()].copy_from_slice(&mine);
            self.world.sum_f64(&mut all)?;
            all
        } else {
            mine
        };
        if per_sample.iter().any(|l| !l.is_finite()) {
            return Err(Refused::error(
                ErrorKind::Diverged,
                format!(
                    "non-finite loss at step {step}; stopping without saving. The last finite \
                     checkpoint is {}",
                    last_finite(&self.last_ckpt)
                ),
            ));
        }
        let steps = &batch.times.steps;
        if self.objective.uses_timestep_sampler() {
            self.state.t_sampler.update(steps, &per_sample);
        }
        let n_t = self.objective.chain().num_timesteps();
        let count = self.micro * self.cfg.grad_accum;
        self.progress.record(steps, &per_sample, n_t, count);
        Ok(())
    }

    /// Sums the gradients over the ranks (before clipping, so the clip sees the global norm),
    /// updates the network, its EMA and a learned schedule. Returns the gradient norm and the
    /// learning rate.
    fn apply_update(
        &mut self,
        step: u64,
        mut grads: Grads,
        mut schedule: Grads,
    ) -> Result<(f64, f64)> {
        let cfg = self.cfg;
        let secs = crate::dist::sum_gradients(&self.world, &mut grads)?;
        self.progress.add_allreduce(secs);
        let lr = learning_rate(cfg.lr, cfg.warmup_steps, step);
        let grad_norm = self.learner.update(grads, lr, cfg.grad_clip).map_err(|e| {
            let message = format!(
                "{}; stopping without saving. The last finite checkpoint is {}",
                e.at_step(step),
                last_finite(&self.last_ckpt)
            );
            Refused::error(ErrorKind::Diverged, message)
        })?;
        if let Some(l) = self.objective.learned_mut() {
            crate::dist::sum_gradients(&self.world, &mut schedule)?;
            let lr_s = learning_rate(cfg.schedule_lr.unwrap_or(cfg.lr), cfg.warmup_steps, step);
            l.step(&schedule, lr_s);
        }
        self.state.step = step;
        self.state.adam_step = self.learner.opt.step;
        self.state.ema_updates = self.learner.ema.updates;
        Ok((grad_norm, lr))
    }

    /// The progress bar, and a line of `log.jsonl` every `log_every` steps.
    fn log(&mut self, step: u64, update: (f64, f64)) -> Result<()> {
        let cfg = self.cfg;
        let log_now = step.is_multiple_of(cfg.log_every.max(1)) || step == cfg.steps;
        let distributed = self.world.is_distributed();
        self.progress
            .end_step(step, cfg.batch_size, update, log_now, distributed)
    }

    /// A checkpoint every `checkpoint_every` steps and a sample grid every `sample_every`, both
    /// at the end.
    fn checkpoint_and_sample(&mut self, step: u64) -> Result<()> {
        let cfg = self.cfg;
        let at_end = step == cfg.steps;
        let checkpoint_now =
            cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) || at_end;
        if checkpoint_now && self.world.is_distributed() {
            // The replicas must hold the same weights: a cheap checksum per checkpoint.
            let sum = weights_checksum(self.learner.model());
            self.world
                .agree("the weights (the replicas diverged)", sum)?;
        }
        // The post-hoc EMA averages, serialized once for the snapshot and the checkpoint; the
        // snapshot first, so that a checkpoint at this step never lacks it (a resume would not
        // write it again).
        let snapshot_every = cfg.posthoc_ema.as_ref().map_or(0, |p| p.snapshot_every);
        let snapshot_now = snapshot_every > 0 && (step.is_multiple_of(snapshot_every) || at_end);
        let power = if self.root && (checkpoint_now || snapshot_now) {
            power_ema_files(&self.learner)?
        } else {
            Vec::new()
        };
        if self.root && snapshot_now {
            crate::files::write_dir_atomic(&crate::run::posthoc_dir(&self.run, step), &power)?;
        }
        if self.root && checkpoint_now {
            let mut extra = match self.objective.learned() {
                Some(l) => vec![(SCHEDULE_FILE.to_string(), l.to_bytes()?)],
                None => Vec::new(),
            };
            extra.extend(power);
            let l = &self.learner;
            let dir = checkpoints::save(
                &self.run,
                l.model(),
                &l.ema,
                &l.opt,
                &self.state,
                extra,
                cfg.keep_checkpoints,
            )?;
            self.last_ckpt = Some(dir);
            if let Some(t) = self.pending_config.take() {
                write_atomic(&crate::run::config_path(&self.run), t.as_bytes())?;
            }
        }
        if self.root && (cfg.sample_every > 0 && step.is_multiple_of(cfg.sample_every) || at_end) {
            let inner = self.device.clone().inner();
            let ema = ema_model(self.learner.model(), &self.learner.ema, &self.device);
            let ema = Preconditioned {
                net: &ema,
                precond: self.objective.precond(),
            };
            let chain = self.objective.sampling_chain(cfg)?;
            let path = self.run.join("samples").join(format!("step-{step:08}.png"));
            write_samples::<D>(&path, &ema, chain, cfg, &self.item_shape, &inner)?;
            self.grid = Some(path);
        }
        Ok(())
    }

    /// Ends the bar and reports.
    fn finish(self) -> TrainSummary {
        self.progress.finish();
        let wall = self.progress.elapsed_s();
        let done = self.state.step - self.first_step;
        TrainSummary {
            run: self.run,
            steps: self.state.step,
            last_loss: self.progress.last_loss,
            img_per_s: (done as usize * self.cfg.batch_size) as f64 / wall.max(1e-9),
            wall_s: wall,
            grid: self.grid,
        }
    }
}

/// Each tracked power-function average as a file (its name, its safetensors bytes in the
/// weights' shapes).
fn power_ema_files<M: burn::module::Module>(l: &Learner<M>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut shapes = std::collections::BTreeMap::new();
    if !l.power.is_empty() {
        crate::store::params::visit_params(l.model(), |name, _, shape, _| {
            shapes.insert(name.to_string(), shape);
        });
    }
    l.power
        .iter()
        .map(|p| {
            let host = checkpoints::averaged_host(&shapes, &p.params);
            Ok((p.file_name(), crate::store::tensors::to_safetensors(&host)?))
        })
        .collect()
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

/// The bits of every weight, hashed: equal on replicas that stayed identical.
pub(super) fn weights_checksum<M: burn::module::Module>(model: &M) -> u64 {
    let mut bytes = Vec::new();
    for (name, p) in crate::store::params::named_params(model) {
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

/// Writes a grid (or for 2-D points a scatter) of `cfg.sample_count` DDIM samples of `model`
/// to `path`.
fn write_samples<const D: usize>(
    path: &Path,
    model: &impl Denoiser<D>,
    diffusion: &GaussianDiffusion,
    cfg: &RunConfig,
    item_shape: &[usize],
    device: &burn::tensor::Device,
) -> Result<()> {
    let n = cfg.sample_count.max(1);
    let steps = crate::sample::ddim::spaced_steps(
        diffusion.num_timesteps(),
        cfg.sample_steps,
        Spacing::Linspace,
    );
    let mut rng = streams::training_grid(cfg.seed);
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
    let drawing = Drawing {
        model,
        item_shape,
        cond: cond.as_ref(),
        device,
    };
    let data = drawing.all(
        || Ddim::new(diffusion, steps.clone(), 0.0, X0Clip::Clip),
        (n, cfg.batch_size / cfg.grad_accum),
        &mut rng,
        |_| {},
    )?;
    let mut shape = [n; D];
    shape[1..].copy_from_slice(item_shape);
    if D == 4 {
        let s = shape.to_vec();
        let s4 = [s[0], s[1], s[2], s[3]];
        crate::viz::grid::save_grid(path, &data, s4, crate::viz::grid::square_cols(n))?;
    } else {
        crate::viz::grid::save_scatter(path, &data, 512, 1.5)?;
    }
    Ok(())
}

/// Trains on `cfg.data` with the network the data calls for: the U-Net for images, the MLP for
/// 2-D points. `resume`: continue the run in `cfg.out`; `quiet`: no progress bar.
pub fn train_auto(cfg: &RunConfig, resume: bool, quiet: bool) -> crate::Result<TrainSummary> {
    let options = TrainOptions {
        resume,
        quiet,
        on_log: None,
    };
    train_with(cfg, crate::run::open_dataset(cfg)?, options)
}

/// As [`train_auto`], on `ds` instead of `cfg.data` (a dataset of the caller's, say an
/// [`crate::data::memory::InMemory`] one); `cfg.data` then only names it in messages.
pub fn train_dataset(
    cfg: &RunConfig,
    ds: Arc<dyn Dataset>,
    resume: bool,
    quiet: bool,
) -> crate::Result<TrainSummary> {
    let options = TrainOptions {
        resume,
        quiet,
        on_log: None,
    };
    train_with(cfg, ds, options)
}

/// As [`train_dataset`], with `options` (a function that sees each log line, say).
///
/// ```
/// use std::sync::Arc;
/// use ddpm::train::{TrainOptions, train_with};
/// use ddpm::{InMemory, RunConfig};
///
/// let points = (0..256).map(|i| if i % 2 == 0 { 0.5 } else { -0.5 }).collect();
/// let data = InMemory::try_new(points, vec![2], Vec::new(), 0, "two points")?;
/// let dir = tempfile::tempdir()?;
/// let config = RunConfig {
///     preset: "mlp".into(), steps: 30, batch_size: 32, log_every: 10, sample_count: 16,
///     out: dir.path().join("run").display().to_string(), ..RunConfig::default()
/// };
/// let mut losses = Vec::new();
/// let options = TrainOptions {
///     quiet: true,
///     on_log: Some(Box::new(|r| losses.push((r.step, r.loss)))),
///     ..TrainOptions::default()
/// };
/// train_with(&config, Arc::new(data), options)?;
/// assert_eq!(losses.iter().map(|l| l.0).collect::<Vec<_>>(), [10, 20, 30]);
/// assert!(losses.iter().all(|l| l.1.is_finite()));
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn train_with(
    cfg: &RunConfig,
    ds: Arc<dyn Dataset>,
    options: TrainOptions,
) -> crate::Result<TrainSummary> {
    Ok(train_on(cfg, ds, options)?)
}

fn train_on(cfg: &RunConfig, ds: Arc<dyn Dataset>, options: TrainOptions) -> Result<TrainSummary> {
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
        train::<Mlp, 2>(cfg, ds, options)
    } else {
        train::<UNet, 4>(cfg, ds, options)
    }
}
