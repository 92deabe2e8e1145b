//! A run's configuration: every key of its `config.toml`, each with a command-line flag of the
//! same name. Training writes it; sampling, evaluation, import and export read it.

use serde::{Deserialize, Serialize};

use crate::diffusion::losses::{LossConfig, LossKind, Weighting};
use crate::diffusion::{Parameterization, VarianceType};
use crate::error::{ErrorKind, Refused};
use crate::model::precision::Precision;
use crate::model::{MlpConfig, UNetConfig};
use crate::optim::adamw::AdamWConfig;
use crate::optim::ema::EmaConfig;
use crate::sample::SamplerDefaults;

pub mod diffusion;
pub mod edm;
pub mod names;
pub mod posthoc;

pub use edm::EdmConfig;
pub use names::{LossName, ObjectiveName, TimeChoice, TimestepSamplerName, WeightingName};
pub use posthoc::PosthocEmaConfig;

/// The most images a training sample grid may hold.
pub const MAX_SAMPLE_COUNT: usize = 1024;

/// Everything that defines a run; its `config.toml` holds it resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Dataset: `bundled`, `idx:DIR`, `toy:NAME`.
    pub data: String,
    /// Network preset: `mnist`, `cifar10`, `tiny`, or `mlp` (2-D data).
    pub preset: String,
    /// Optimizer steps.
    pub steps: u64,
    /// Images per optimizer step (split into `grad_accum` micro-batches).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each update.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (none when absent or 0).
    pub grad_clip: Option<f64>,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// EMA decay.
    pub ema_decay: f64,
    /// EMA warm-up power (0 disables the warm-up).
    pub ema_warmup_power: f64,
    /// Seed of everything.
    pub seed: u64,
    /// Run directory.
    pub out: String,
    /// Log to `log.jsonl` every N steps.
    pub log_every: u64,
    /// Write a sample grid every N steps (0: only at the end).
    pub sample_every: u64,
    /// Images in the sample grid.
    pub sample_count: usize,
    /// Steps of the sampler used for grids (DDIM, η = 0).
    pub sample_steps: usize,
    /// Checkpoint every N steps (and at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// `cpu`, `cuda`, `wgpu` or `auto`.
    pub device: String,
    /// The network's arithmetic: `f32`, or `bf16` (mixed precision: f32 master weights).
    pub precision: Precision,
    /// Noise schedule: linear, quadratic, sigmoid, cosine, constant, vdm-linear (VDM's linear-in-γ), file:PATH.
    pub schedule: String,
    /// T.
    pub timesteps: usize,
    /// `continuous` (VDM's L_∞), `discrete:T` (VDM's L_T) or `discrete` (the DDPM chain of
    /// `timesteps` steps with `loss`); absent: continuous for `schedule = "learned"`, else
    /// discrete.
    pub time: Option<TimeChoice>,
    /// γ(0) = −log SNR at t = 0 of `vdm-linear`, of `cosine` in VDM time and of a learned
    /// schedule's start (−13.3 when absent).
    pub gamma_min: Option<f64>,
    /// γ(1) of the same schedules (5 when absent).
    pub gamma_max: Option<f64>,
    /// VDM time: draw a batch's t as one uniform shifted by i/B (low discrepancy).
    pub antithetic_time: bool,
    /// Learning rate of a learned schedule (`lr` when absent).
    pub schedule_lr: Option<f64>,
    /// β_1 override.
    pub beta_start: Option<f64>,
    /// β_T override.
    pub beta_end: Option<f64>,
    /// Rescale to zero terminal SNR.
    pub zero_terminal_snr: bool,
    /// What the network predicts.
    pub parameterization: Parameterization,
    /// Reverse variance.
    pub variance: VarianceType,
    /// Objective: simple, vlb, hybrid.
    pub loss: LossName,
    /// λ of the hybrid loss.
    pub hybrid_lambda: f64,
    /// Weighting: none, vlb, p2, min-snr.
    pub weighting: WeightingName,
    /// P2 k.
    pub p2_k: f64,
    /// P2 γ.
    pub p2_gamma: f64,
    /// Min-SNR γ.
    pub min_snr_gamma: f64,
    /// Timestep sampler: uniform or loss-second-moment.
    pub t_sampler: TimestepSamplerName,
    /// Random horizontal flips of images.
    pub hflip: bool,
    /// Dropout override (the preset's otherwise).
    pub dropout: Option<f64>,
    /// Train a class-conditional network (the dataset's labels; classifier-free guidance).
    pub class_cond: bool,
    /// Probability that a training label is replaced by the null class (Ho & Salimans 2022),
    /// so the same network also learns the unconditional model.
    pub cond_drop: f64,
    /// The class names, in label order (filled from the dataset when a class-conditional run
    /// starts, then kept: a folder dataset's sub-directory names, digits for MNIST).
    pub classes: Option<Vec<String>>,
    /// β_1..β_T given as numbers (an imported diffusers scheduler's `trained_betas`; `schedule`
    /// is then `custom`).
    pub trained_betas: Option<Vec<f64>>,
    /// How `ddpm sample` samples this model when its flags do not say (an imported diffusers
    /// scheduler's spacing, offset and clipping).
    pub sampler_defaults: Option<SamplerDefaults>,
    /// The U-Net (filled from `preset` unless given).
    pub model: Option<UNetConfig>,
    /// The MLP (for `preset = "mlp"`).
    pub mlp: Option<MlpConfig>,
    /// EDM training (Karras et al. 2022) instead of the DDPM chain's losses: the preconditioned
    /// denoiser, σ drawn log-normally, and the chain it samples on (absent: a DDPM or VDM run).
    pub edm: Option<EdmConfig>,
    /// Post-hoc EMA: power-function averages tracked alongside the EMA, with snapshots that
    /// `ddpm ema reconstruct` combines into any other average after training (absent: none).
    pub posthoc_ema: Option<PosthocEmaConfig>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            data: "bundled".into(),
            preset: "mnist".into(),
            steps: 300,
            batch_size: 32,
            grad_accum: 1,
            lr: 1e-3,
            warmup_steps: 20,
            grad_clip: Some(1.0),
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            ema_decay: 0.9999,
            ema_warmup_power: 2.0 / 3.0,
            seed: 0,
            out: "runs/default".into(),
            log_every: 10,
            sample_every: 0,
            sample_count: 36,
            sample_steps: 25,
            checkpoint_every: 50,
            keep_checkpoints: 3,
            device: "cpu".into(),
            precision: Precision::F32,
            schedule: "linear".into(),
            timesteps: 1000,
            time: None,
            gamma_min: None,
            gamma_max: None,
            antithetic_time: true,
            schedule_lr: None,
            beta_start: None,
            beta_end: None,
            zero_terminal_snr: false,
            parameterization: Parameterization::Eps,
            variance: VarianceType::FixedLarge,
            loss: LossName::Simple,
            hybrid_lambda: 0.001,
            weighting: WeightingName::None,
            p2_k: 1.0,
            p2_gamma: 1.0,
            min_snr_gamma: 5.0,
            t_sampler: TimestepSamplerName::Uniform,
            hflip: false,
            dropout: None,
            class_cond: false,
            cond_drop: 0.1,
            classes: None,
            trained_betas: None,
            sampler_defaults: None,
            model: None,
            mlp: None,
            edm: None,
            posthoc_ema: None,
        }
    }
}

impl RunConfig {
    /// Reads a TOML file; unknown keys are an error naming the key. Absent keys take their
    /// defaults.
    ///
    /// ```
    /// use ddpm::RunConfig;
    /// use ddpm::config::LossName;
    ///
    /// let c = RunConfig::from_toml("preset = \"tiny\"\nloss = \"hybrid\"\nsteps = 10", "my.toml")?;
    /// assert_eq!((c.preset.as_str(), c.loss, c.steps), ("tiny", LossName::Hybrid, 10));
    /// assert_eq!(c.batch_size, RunConfig::default().batch_size);
    /// let e = RunConfig::from_toml("los = \"hybrid\"", "my.toml").unwrap_err().to_string();
    /// assert!(e.contains("my.toml") && e.contains("los"), "{e}");
    /// let e = RunConfig::from_toml("loss = \"l1\"", "my.toml").unwrap_err().to_string();
    /// assert!(e.contains("--loss") && e.contains("simple, vlb or hybrid"), "{e}");
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn from_toml(text: &str, source: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| {
            Refused::error(
                ErrorKind::Config,
                format!("{source}: {}", e.message().trim()),
            )
        })
    }

    /// The resolved configuration as TOML (fails only for values TOML cannot hold, which
    /// [`Self::validate`] refuses first).
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| anyhow::anyhow!("the configuration cannot be written as TOML: {e}"))
    }

    /// The loss configuration named by `loss` and `weighting`.
    pub fn loss_config(&self) -> anyhow::Result<LossConfig> {
        let kind = match self.loss {
            LossName::Simple => LossKind::Simple,
            LossName::Vlb => LossKind::Vlb,
            LossName::Hybrid => LossKind::Hybrid {
                lambda: self.hybrid_lambda,
            },
        };
        let weighting = match self.weighting {
            WeightingName::None => Weighting::None,
            WeightingName::Vlb => Weighting::Vlb,
            WeightingName::P2 => Weighting::P2 {
                k: self.p2_k,
                gamma: self.p2_gamma,
            },
            WeightingName::MinSnr => Weighting::MinSnr {
                gamma: self.min_snr_gamma,
            },
        };
        if matches!(kind, LossKind::Simple) && self.variance.is_learned() {
            anyhow::bail!(
                "--loss simple cannot train a learned variance; use --loss hybrid or vlb"
            );
        }
        Ok(LossConfig { kind, weighting })
    }

    /// The U-Net configuration: `model` if given, else the preset, with overrides applied.
    pub fn unet_config(&self) -> anyhow::Result<UNetConfig> {
        let mut c = match &self.model {
            Some(m) => m.clone(),
            None => {
                UNetConfig::preset(&self.preset).map_err(|e| anyhow::anyhow!("--preset: {e}"))?
            }
        };
        c.learn_sigma = self.variance.is_learned();
        if let Some(p) = self.dropout {
            c.dropout = p;
        }
        c.num_classes = self.num_classes();
        Ok(c)
    }

    /// The network's AdamW settings.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
        }
    }

    /// The network's weight average.
    pub fn ema_config(&self) -> EmaConfig {
        EmaConfig {
            decay: self.ema_decay,
            warmup_power: (self.ema_warmup_power > 0.0).then_some(self.ema_warmup_power),
        }
    }

    /// The shape of one item the network takes: `[channels, size, size]`, or `[dim]` for the
    /// MLP's points.
    pub fn item_shape(&self) -> anyhow::Result<Vec<usize>> {
        if self.preset == "mlp" {
            Ok(vec![self.mlp.clone().unwrap_or_default().dim])
        } else {
            let u = self.unet_config()?;
            Ok(vec![u.in_channels, u.image_size, u.image_size])
        }
    }

    /// The VDM time of the run, or `None` for a DDPM chain.
    pub fn vdm_time(&self) -> anyhow::Result<Option<crate::vdm::Time>> {
        match self.time {
            Some(t) => Ok(t.vdm()),
            None if self.schedule == "learned" => Ok(Some(crate::vdm::Time::Continuous)),
            None => Ok(None),
        }
    }

    /// (γ_min, γ_max) with their defaults.
    pub fn gamma_range(&self) -> (f64, f64) {
        (
            self.gamma_min.unwrap_or(crate::schedule::VDM_GAMMA_MIN),
            self.gamma_max.unwrap_or(crate::schedule::VDM_GAMMA_MAX),
        )
    }

    /// The fixed γ of a VDM run (`None` for a learned schedule).
    pub fn fixed_gamma(&self) -> anyhow::Result<Option<crate::vdm::FixedGamma>> {
        use crate::vdm::FixedGamma;
        let (gamma_min, gamma_max) = self.gamma_range();
        Ok(match self.schedule.as_str() {
            "learned" => None,
            "vdm-linear" => Some(FixedGamma::Linear {
                gamma_min,
                gamma_max,
            }),
            "cosine" => Some(FixedGamma::Cosine {
                gamma_min,
                gamma_max,
            }),
            other => anyhow::bail!(
                "--schedule {other}: VDM time (--time {}) takes vdm-linear, cosine or learned \
                 (a schedule with a finite log-SNR at t = 0 and 1, set by --gamma-min/--gamma-max); \
                 `{other}` trains with --time discrete",
                self.time
                    .map_or("continuous".to_string(), |t| t.to_string())
            ),
        })
    }

    /// The fixed γ of a VDM run; `None` for a learned schedule or a DDPM run.
    pub fn fixed_gamma_if_vdm(&self) -> anyhow::Result<Option<crate::vdm::FixedGamma>> {
        match self.vdm_time()? {
            Some(_) => self.fixed_gamma(),
            None => Ok(None),
        }
    }

    /// Checks a VDM run's keys: the VDM losses train ε-prediction with a fixed reverse
    /// variance, uniformly in time, with their own weighting.
    fn validate_vdm(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        let (lo, hi) = self.gamma_range();
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            bail!("--gamma-min {lo} must be below --gamma-max {hi} (both finite)");
        }
        if let Some(lr) = self.schedule_lr
            && !(lr > 0.0 && lr.is_finite())
        {
            bail!("--schedule-lr must be a positive finite number, got {lr}");
        }
        let Some(time) = self.vdm_time()? else {
            if self.schedule == "learned" {
                bail!(
                    "--schedule learned: a learned schedule is a VDM schedule; use --time \
                     continuous or --time discrete:T"
                );
            }
            if self.schedule_lr.is_some() {
                bail!("--schedule-lr: only a learned schedule (--schedule learned) has one");
            }
            return Ok(());
        };
        self.fixed_gamma()?;
        if self.schedule != "learned" && self.schedule_lr.is_some() {
            bail!("--schedule-lr: only a learned schedule (--schedule learned) has one");
        }
        let what = format!(
            "--time {}",
            self.time
                .map_or("continuous".to_string(), |t| t.to_string())
        );
        if self.parameterization != Parameterization::Eps {
            bail!("{what} trains ε-prediction (VDM's loss); drop --parameterization");
        }
        self.refuse_chain_keys(
            &what,
            &[],
            "the VDM loss weights ‖ε − ε̂‖² by the schedule itself (γ'(t), or the SNR ratio of \
             consecutive steps)",
        )?;
        if let crate::vdm::Time::Discrete(t) = time
            && t > i64::MAX as usize
        {
            bail!("--time discrete:{t}: T is too large");
        }
        Ok(())
    }

    /// Refuses the DDPM chain's keys (a learned variance, a loss other than L_simple, a
    /// weighting, a timestep sampler, β overrides, zero terminal SNR, and `more`) for an
    /// objective (`what`) that has its own, `why`.
    fn refuse_chain_keys(
        &self,
        what: &str,
        more: &[(&str, bool)],
        why: &str,
    ) -> anyhow::Result<()> {
        if self.variance.is_learned() {
            anyhow::bail!(
                "{what}: the reverse variance is the posterior's (fixed-small or fixed-large)"
            );
        }
        let keys = [
            ("--loss", self.loss != LossName::Simple),
            ("--weighting", self.weighting != WeightingName::None),
            (
                "--t-sampler",
                self.t_sampler != TimestepSamplerName::Uniform,
            ),
            ("--beta-start", self.beta_start.is_some()),
            ("--beta-end", self.beta_end.is_some()),
            ("--zero-terminal-snr", self.zero_terminal_snr),
        ];
        match keys.iter().chain(more).find(|(_, set)| *set) {
            Some((flag, _)) => anyhow::bail!("{flag} does not apply to {what}: {why}"),
            None => Ok(()),
        }
    }

    /// The number of classes of a class-conditional run whose classes are known.
    pub fn num_classes(&self) -> Option<usize> {
        if self.class_cond {
            self.classes.as_ref().map(Vec::len)
        } else {
            None
        }
    }

    /// Checks the values that no type can check; every error names the flag (or key).
    pub fn validate(&self) -> anyhow::Result<()> {
        self.check()
            .map_err(|e| Refused::error(ErrorKind::Config, format!("{e:#}")))
    }

    fn check(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        // TOML integers are signed 64-bit: larger counts could not be saved in config.toml.
        fit_toml(&[
            ("--steps", self.steps),
            ("--warmup-steps", self.warmup_steps),
            ("--seed", self.seed),
            ("--log-every", self.log_every),
            ("--sample-every", self.sample_every),
            ("--checkpoint-every", self.checkpoint_every),
            ("--batch-size", self.batch_size as u64),
            ("--grad-accum", self.grad_accum as u64),
            ("--sample-count", self.sample_count as u64),
            ("--sample-steps", self.sample_steps as u64),
            ("--keep-checkpoints", self.keep_checkpoints as u64),
            ("--timesteps", self.timesteps as u64),
        ])?;
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        // 1250× the 800k steps of Ho et al.'s CIFAR-10 run: beyond is a typing error.
        const MAX_STEPS: u64 = 1_000_000_000;
        if self.steps > MAX_STEPS {
            bail!("--steps must be at most {MAX_STEPS}, got {}", self.steps);
        }
        let t_max = crate::schedule::MAX_TIMESTEPS;
        if !(1..=t_max).contains(&self.timesteps) {
            bail!(
                "--timesteps: T must be at most {t_max}, got {}",
                self.timesteps
            );
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.grad_accum == 0 || !self.batch_size.is_multiple_of(self.grad_accum) {
            bail!(
                "--grad-accum {} must divide --batch-size {}",
                self.grad_accum,
                self.batch_size
            );
        }
        if self.log_every == 0 {
            bail!("--log-every must be at least 1");
        }
        if !(1..=MAX_SAMPLE_COUNT).contains(&self.sample_count) {
            bail!(
                "--sample-count must be in 1..={MAX_SAMPLE_COUNT} (the images of one grid), got {}; \
                 `ddpm sample --n N` makes any number of images",
                self.sample_count
            );
        }
        if self.sample_steps == 0 {
            bail!("--sample-steps must be at least 1");
        }
        let positive = |flag: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "{flag} must be a positive finite number, got {v}"
                ))
            }
        };
        let non_negative = |flag: &str, v: f64| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "{flag} must be a finite number ≥ 0, got {v}"
                ))
            }
        };
        let unit = |flag: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{flag} must be in [0, 1), got {v}"))
            }
        };
        positive("--lr", self.lr)?;
        if let Some(c) = self.grad_clip {
            positive("--grad-clip", c)?;
        }
        unit("--adam-beta1", self.adam_beta1)?;
        unit("--adam-beta2", self.adam_beta2)?;
        positive("--adam-eps", self.adam_eps)?;
        non_negative("--weight-decay", self.weight_decay)?;
        unit("--ema-decay", self.ema_decay)?;
        non_negative("--ema-warmup-power", self.ema_warmup_power)?;
        non_negative("--hybrid-lambda", self.hybrid_lambda)?;
        positive("--p2-k", self.p2_k)?;
        non_negative("--p2-gamma", self.p2_gamma)?;
        // 1/(k + SNR)^γ must stay a usable f32 weight over SNRs up to ~1e5: larger values make
        // every weight underflow to 0 (a run that reports steps and learns nothing).
        if self.p2_k > 1e6 || self.p2_gamma > 4.0 {
            bail!(
                "--p2-k must be at most 1e6 and --p2-gamma at most 4 (the weights 1/(k + SNR)^γ \
                 underflow beyond), got --p2-k {} --p2-gamma {}",
                self.p2_k,
                self.p2_gamma
            );
        }
        positive("--min-snr-gamma", self.min_snr_gamma)?;
        if let Some(p) = self.dropout {
            unit("--dropout", p)?;
        }
        if !(0.0..=1.0).contains(&self.cond_drop) {
            bail!("--cond-drop must be in [0, 1], got {}", self.cond_drop);
        }
        if let Some(c) = &self.classes
            && !(1..=100_000).contains(&c.len())
        {
            bail!(
                "classes: a class-conditional model needs 1 to 100000 classes, got {}",
                c.len()
            );
        }
        for (flag, b) in [
            ("--beta-start", self.beta_start),
            ("--beta-end", self.beta_end),
        ] {
            if let Some(b) = b
                && !(b > 0.0 && b < 1.0)
            {
                bail!("{flag} must be in (0, 1), got {b}");
            }
        }
        crate::device::resolve_name(&self.device)?;
        self.loss_config()?;
        self.validate_vdm()?;
        self.validate_edm()?;
        if let Some(p) = &self.posthoc_ema {
            p.validate()?;
        }
        Ok(())
    }
}

/// Refuses a count (named by its flag) that a TOML file could not store: TOML integers are
/// signed 64-bit.
pub(crate) fn fit_toml(counts: &[(&str, u64)]) -> anyhow::Result<()> {
    let max = i64::MAX as u64;
    match counts.iter().find(|(_, v)| *v > max) {
        Some((flag, v)) => anyhow::bail!("{flag} must be at most {max}, got {v}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Configurations written by `ddpm train` when these choices were plain strings
    /// (`tests/fixtures/config/make.sh`) load into the named types and are written back byte for
    /// byte, so existing run directories keep their `config.toml`.
    #[test]
    fn configurations_written_before_the_named_types_load_and_write_back_unchanged() {
        let ddpm = include_str!("../../tests/fixtures/config/ddpm-hybrid-p2.toml");
        let c = RunConfig::from_toml(ddpm, "ddpm-hybrid-p2.toml").unwrap();
        assert_eq!(c.loss, LossName::Hybrid);
        assert_eq!(c.weighting, WeightingName::P2);
        assert_eq!(c.t_sampler, TimestepSamplerName::LossSecondMoment);
        assert_eq!(c.precision, Precision::F32);
        assert_eq!(c.time, Some(TimeChoice::Chain));
        assert_eq!(c.vdm_time().unwrap(), None);
        assert_eq!(c.to_toml().unwrap(), ddpm);
        let vdm = include_str!("../../tests/fixtures/config/vdm-discrete.toml");
        let c = RunConfig::from_toml(vdm, "vdm-discrete.toml").unwrap();
        assert_eq!(c.vdm_time().unwrap(), Some(crate::vdm::Time::Discrete(10)));
        assert_eq!(c.to_toml().unwrap(), vdm);
    }

    #[test]
    fn an_unknown_name_in_a_file_names_the_file_and_the_flag() {
        let text = include_str!("../../tests/fixtures/config/ddpm-hybrid-p2.toml")
            .replace("loss = \"hybrid\"", "loss = \"l1\"");
        let e = RunConfig::from_toml(&text, "run/config.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("run/config.toml") && e.contains("--loss") && e.contains("`l1`"),
            "{e}"
        );
    }
}
