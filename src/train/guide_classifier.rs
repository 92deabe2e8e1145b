//! Training the noise-aware classifier of classifier guidance: p_φ(y | x_t, t) learned with
//! cross-entropy on x_t ~ q(x_t | x_0) at uniformly drawn t, under the same noise schedule as
//! the diffusion model it will guide (Dhariwal & Nichol 2021, §4). The result is a directory:
//! `classifier.toml` (everything needed to rebuild it, and its accuracy by noise level) and
//! `classifier.safetensors` (the weights).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::diffusion::noise_schedule;
use crate::data::loader::{BatchStream, Position};
use crate::data::{Dataset, Split};
use crate::diffusion::{GaussianDiffusion, Parameterization, VarianceType};
use crate::files::write_atomic;
use crate::model::{NoisyClassifier, UNetConfig, one_hot};
use crate::optim::adamw::{AdamW, AdamWConfig, clip_factor, learning_rate};
use crate::rng::Rng;
use crate::schedule::NoiseSchedule;
use crate::store::params::named_grads;
use crate::store::params::{host_params, load_params};
use crate::store::tensors::{read_safetensors, to_safetensors};

/// The weights' file name inside a classifier directory.
pub const WEIGHTS: &str = "classifier.safetensors";
/// The configuration's file name inside a classifier directory.
pub const CONFIG: &str = "classifier.toml";

/// How a noise-aware classifier was trained, and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// The training data (a dataset specification with labels).
    pub data: String,
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: none).
    pub grad_clip: f64,
    /// Seed of the weights, the batches, t and the noise.
    pub seed: u64,
    /// Noise schedule (as `ddpm train --schedule`).
    pub schedule: String,
    /// Diffusion steps T.
    pub timesteps: usize,
    /// β_1 of a linear schedule (None: the schedule's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_start: Option<f64>,
    /// β_T of a linear schedule (None: the schedule's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_end: Option<f64>,
    /// Rescaled to zero terminal SNR.
    pub zero_terminal_snr: bool,
    /// γ(0) of `vdm-linear` (None: −13.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma_min: Option<f64>,
    /// γ(1) of `vdm-linear` (None: 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma_max: Option<f64>,
    /// The class names, in label order.
    pub classes: Vec<String>,
    /// The encoder (a U-Net configuration; its output keys are unused).
    pub net: UNetConfig,
    /// Accuracy on held-out data by timestep, once trained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accuracy: Vec<NoiseAccuracy>,
}

/// The accuracy of the classifier on held-out images noised to one timestep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseAccuracy {
    /// The timestep (0-based).
    pub t: usize,
    /// Fraction classified right.
    pub accuracy: f64,
    /// Images judged.
    pub n: usize,
}

impl ClassifierConfig {
    /// The noise schedule the classifier was trained under.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        noise_schedule(
            &self.schedule,
            self.timesteps,
            self.beta_start,
            self.beta_end,
            (self.gamma_min, self.gamma_max),
            self.zero_terminal_snr,
        )
    }

    /// Checks every number a user could have set.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 {
            bail!("--steps and --batch-size must be at least 1");
        }
        // classifier.toml stores them: refused before training rather than when the trained
        // classifier is saved.
        crate::config::fit_toml(&[
            ("--seed", self.seed),
            ("--steps", self.steps),
            ("--warmup-steps", self.warmup_steps),
            ("--timesteps", self.timesteps as u64),
            ("--batch-size", self.batch_size as u64),
        ])?;
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive finite number, got {}", self.lr);
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!(
                "--weight-decay must be a finite number ≥ 0, got {}",
                self.weight_decay
            );
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            bail!(
                "--grad-clip must be a finite number ≥ 0, got {}",
                self.grad_clip
            );
        }
        if self.classes.len() < 2 {
            bail!(
                "a classifier needs at least 2 classes, the data has {}",
                self.classes.len()
            );
        }
        self.net
            .validate()
            .map_err(|e| anyhow::anyhow!("the classifier's network: {e}"))?;
        Ok(())
    }
}

/// A trained noise-aware classifier with its configuration.
pub struct LoadedClassifier {
    /// How it was trained.
    pub config: ClassifierConfig,
    /// The network.
    pub model: NoisyClassifier,
    /// The directory it was read from.
    pub dir: PathBuf,
}

/// The directory of a classifier given as the directory or a file inside it.
fn classifier_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// Reads a classifier written by [`train_classifier`] from its directory (or a file in it).
pub fn load_classifier(path: &Path, device: &Device) -> Result<LoadedClassifier> {
    let dir = classifier_dir(path);
    let cfg_path = dir.join(CONFIG);
    let text =
        crate::files::read_text_capped(&cfg_path, crate::files::TEXT_MAX).with_context(|| {
            format!(
                "cannot read {} (a classifier directory from `ddpm train-classifier` holds it)",
                cfg_path.display()
            )
        })?;
    let config: ClassifierConfig = toml::from_str(&text)
        .with_context(|| format!("{}: not a classifier configuration", cfg_path.display()))?;
    config
        .validate()
        .with_context(|| format!("{}", cfg_path.display()))?;
    let model = NoisyClassifier::new(&config.net, config.classes.len(), device)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg_path.display()))?;
    let file = dir.join(WEIGHTS);
    let model = load_params(
        model,
        &read_safetensors(&file)?,
        &file.display().to_string(),
        device,
    )?;
    Ok(LoadedClassifier { config, model, dir })
}

/// One batch of `n` noised images: (x_t, t, labels) with x_t ~ q(x_t | x_0) at t ~ U{0..T−1}.
fn noised(
    diffusion: &GaussianDiffusion,
    stream: &mut BatchStream,
    rng: &mut Rng,
    device: &Device,
) -> (Tensor<4>, Vec<usize>, Vec<usize>) {
    let b = stream.next_batch();
    let shape = [b.shape[0], b.shape[1], b.shape[2], b.shape[3]];
    let x0 = Tensor::<4>::from_data(TensorData::new(b.data, shape), device);
    let t: Vec<usize> = (0..shape[0])
        .map(|_| rng.below(diffusion.num_timesteps()))
        .collect();
    let noise = Tensor::<4>::from_data(
        TensorData::new(rng.normal_f32(x0.shape().num_elements()), shape),
        device,
    );
    (diffusion.q_sample(x0, &t, noise), t, b.labels)
}

/// How many rows of `logits` have their largest value at the row's label.
fn correct(logits: Tensor<2>, labels: &[usize]) -> Result<usize> {
    let pred: Vec<i64> = logits
        .inner()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(labels
        .iter()
        .zip(&pred)
        .filter(|(l, p)| **l as i64 == **p)
        .count())
}

/// Progress of training: (step, mean loss, batch accuracy) every `log_every` steps.
pub type OnLog<'a> = &'a mut dyn FnMut(u64, f64, f64);

/// Trains a classifier as `cfg` describes on `data` (labelled, of the network's image shape)
/// and, when `held_out` is given, measures its accuracy there at five noise levels. Writes the
/// classifier into `out` (which must not hold one already).
pub fn train_classifier(
    cfg: &ClassifierConfig,
    data: Arc<dyn Dataset>,
    held_out: Option<&dyn Dataset>,
    out: &Path,
    device: &Device,
    log_every: u64,
    on_log: OnLog,
) -> Result<ClassifierConfig> {
    cfg.validate()?;
    if out.join(WEIGHTS).exists() {
        bail!(
            "--out {}: a classifier is already there; choose another directory",
            out.display()
        );
    }
    if data.classes() != cfg.classes {
        bail!(
            "--data {}: its classes {:?} are not {:?}",
            cfg.data,
            data.classes(),
            cfg.classes
        );
    }
    let want = [cfg.net.in_channels, cfg.net.image_size, cfg.net.image_size];
    if data.item_shape() != want {
        bail!(
            "--data {}: items of shape {:?}, the classifier takes {want:?}",
            cfg.data,
            data.item_shape()
        );
    }
    // The encoder keeps about half of a U-Net's activations per image (the way down only).
    let per_item = cfg.net.activation_values() as f64 * 4.0 * 0.5;
    if let Some((need, avail)) = crate::heap::shortfall_gib(per_item * cfg.batch_size as f64) {
        bail!(
            "--batch-size {}: a step needs about {need:.1} GiB, this machine has {avail:.1} GiB \
             available; use a smaller --batch-size",
            cfg.batch_size
        );
    }
    let diffusion = GaussianDiffusion::new(
        cfg.noise_schedule()?,
        Parameterization::Eps,
        VarianceType::FixedSmall,
    );
    let dev = device.clone().autodiff();
    dev.seed(cfg.seed);
    let mut model = NoisyClassifier::new(&cfg.net, cfg.classes.len(), &dev)
        .map_err(|e| anyhow::anyhow!("the classifier's network: {e}"))?;
    let mut opt = AdamW::new(AdamWConfig {
        weight_decay: cfg.weight_decay,
        ..AdamWConfig::default()
    });
    let mut stream = BatchStream::new(data, cfg.batch_size, cfg.seed, false, Position::default());
    let mut rng = crate::rng::streams::guidance_classifier(cfg.seed);
    let k = cfg.classes.len();
    let (mut loss_sum, mut right, mut seen, mut since) = (0.0, 0usize, 0usize, 0u64);
    for step in 1..=cfg.steps {
        let (x, t, labels) = noised(&diffusion, &mut stream, &mut rng, &dev);
        let model_t = diffusion.model_timesteps(&t, &x);
        let logits = model.logits(x, model_t);
        right += correct(logits.clone(), &labels)?;
        seen += labels.len();
        let y = one_hot(&labels, k, &dev);
        let loss = (log_softmax(logits, 1) * y).sum().neg() / labels.len() as f64;
        let value = loss.clone().into_scalar::<f64>();
        if !value.is_finite() {
            bail!("the classifier's loss became {value} at step {step}; try a lower --lr");
        }
        loss_sum += value;
        since += 1;
        let grads: BTreeMap<String, Tensor<1>> = named_grads(&model, &loss.backward());
        let clip = (cfg.grad_clip > 0.0).then_some(cfg.grad_clip);
        let (scale, _) = clip_factor(&grads, clip);
        model = opt.step(
            model,
            &grads,
            learning_rate(cfg.lr, cfg.warmup_steps, step),
            scale,
        );
        if step % log_every.max(1) == 0 || step == cfg.steps {
            on_log(
                step,
                loss_sum / since as f64,
                right as f64 / seen.max(1) as f64,
            );
            (loss_sum, right, seen, since) = (0.0, 0, 0, 0);
        }
    }
    let model = model.valid();
    let mut done = cfg.clone();
    if let Some(h) = held_out {
        done.accuracy = noisy_accuracy(&model, &diffusion, h, cfg.seed, device)?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomic(&out.join(WEIGHTS), &to_safetensors(&host_params(&model))?)?;
    write_atomic(&out.join(CONFIG), toml::to_string(&done)?.as_bytes())?;
    Ok(done)
}

/// Accuracy on up to 1,000 images of `data` noised to t = 0, T/4, T/2, 3T/4 and T−1 (the same
/// images and noise at every t).
pub fn noisy_accuracy(
    model: &NoisyClassifier,
    diffusion: &GaussianDiffusion,
    data: &dyn Dataset,
    seed: u64,
    device: &Device,
) -> Result<Vec<NoiseAccuracy>> {
    let n = data.len().min(1000);
    let shape = data.item_shape();
    let item: usize = shape.iter().product();
    let big_t = diffusion.num_timesteps();
    let mut rows = Vec::new();
    for t in [0, big_t / 4, big_t / 2, 3 * big_t / 4, big_t - 1] {
        let mut rng = crate::rng::streams::classifier_accuracy(seed);
        let mut right = 0;
        for start in (0..n).step_by(250) {
            let m = (n - start).min(250);
            let mut buf = vec![0.0f32; m * item];
            let mut labels = Vec::with_capacity(m);
            for i in 0..m {
                data.get(start + i, &mut buf[i * item..(i + 1) * item]);
                labels.push(
                    data.label(start + i)
                        .context("held-out data without labels")?,
                );
            }
            let dims = [m, shape[0], shape[1], shape[2]];
            let x0 = Tensor::<4>::from_data(TensorData::new(buf, dims), device);
            let noise =
                Tensor::<4>::from_data(TensorData::new(rng.normal_f32(m * item), dims), device);
            let ts = vec![t; m];
            let x = diffusion.q_sample(x0, &ts, noise);
            let model_t = diffusion.model_timesteps(&ts, &x);
            right += correct(model.logits(x, model_t), &labels)?;
        }
        rows.push(NoiseAccuracy {
            t,
            accuracy: right as f64 / n.max(1) as f64,
            n,
        });
    }
    Ok(rows)
}

/// The held-out split of a dataset specification, where it has one with labels.
pub fn held_out(spec: &str, seed: u64, image: (usize, usize)) -> Option<Box<dyn Dataset>> {
    crate::data::open(spec, Split::Test, seed, Some(image))
        .ok()
        .filter(|d| !d.classes().is_empty() && !d.is_empty())
}

/// Checks that a classifier can guide a model sampled on `diffusion`: trained under the same
/// noise schedule (ᾱ_t equal at every t: the classifier and the model see the same x_t at the
/// same network timestep), and, when the model is class-conditional with `model_classes`
/// names, over the same classes in the same order.
pub fn check_guides(
    cfg: &ClassifierConfig,
    diffusion: &GaussianDiffusion,
    model_classes: Option<&[String]>,
) -> Result<()> {
    let mine = cfg.noise_schedule()?;
    let theirs = &diffusion.schedule.alphas_cumprod;
    let same = mine.alphas_cumprod.len() == theirs.len()
        && mine
            .alphas_cumprod
            .iter()
            .zip(theirs)
            .all(|(a, b)| (a - b).abs() <= 1e-12 * a.abs().max(1e-300).max(b.abs()));
    if !same {
        bail!(
            "the classifier was trained under --schedule {} with {} steps, which is not the \
             model's schedule ({} steps); train it with --like RUN",
            cfg.schedule,
            cfg.timesteps,
            theirs.len()
        );
    }
    if let Some(names) = model_classes
        && names != cfg.classes.as_slice()
    {
        bail!(
            "the classifier's classes {:?} are not the model's {:?}",
            cfg.classes,
            names
        );
    }
    Ok(())
}
