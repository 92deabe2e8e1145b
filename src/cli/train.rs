//! `ddpm train`: Algorithm 1 on a dataset, with checkpoints, logs and sample grids.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, CliResult};
use crate::config::{
    LossName, ObjectiveName, RunConfig, TimeChoice, TimestepSamplerName, WeightingName,
};
use crate::diffusion::{Parameterization, VarianceType};
use crate::model::precision::Precision;

#[derive(Args, Default)]
#[command(
    allow_negative_numbers = true,
    after_help = "With no flags: trains the `mnist` preset on the bundled 10,000 MNIST digits for a few minutes and writes runs/default/samples/*.png.\n\nExamples:\n  ddpm train\n  ddpm train --data idx:../shared/data/mnist --steps 2000 --batch-size 64 --out runs/mnist\n  ddpm train --out runs/mnist --steps 4000 --resume\n  ddpm train --config my.toml --lr 2e-4\n  ddpm train --data toy:swiss-roll --preset mlp --steps 3000 --batch-size 256"
)]
pub struct TrainArgs {
    /// A TOML file of configuration keys (the same names as these flags, with underscores).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    pub(super) resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub(super) quiet: bool,
    /// Dataset: bundled, idx:DIR, toy:swiss-roll|two-moons|8-gaussians|checkerboard.
    #[arg(long)]
    data: Option<String>,
    /// Network: mnist, cifar10, tiny, mlp.
    #[arg(long)]
    preset: Option<String>,
    /// Optimizer steps in total.
    #[arg(long)]
    steps: Option<u64>,
    /// Images per optimizer step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Linear learning-rate warm-up steps.
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Global gradient-norm clip (0 disables).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// AdamW β1.
    #[arg(long)]
    adam_beta1: Option<f64>,
    /// AdamW β2.
    #[arg(long)]
    adam_beta2: Option<f64>,
    /// AdamW ε.
    #[arg(long)]
    adam_eps: Option<f64>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// EMA decay.
    #[arg(long)]
    ema_decay: Option<f64>,
    /// EMA warm-up power (0: none).
    #[arg(long)]
    ema_warmup_power: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run directory.
    #[arg(long)]
    out: Option<String>,
    /// Log every N steps.
    #[arg(long)]
    log_every: Option<u64>,
    /// Sample grid every N steps (0: at the end only).
    #[arg(long)]
    sample_every: Option<u64>,
    /// Images in each sample grid.
    #[arg(long)]
    sample_count: Option<usize>,
    /// DDIM steps for sample grids.
    #[arg(long)]
    sample_steps: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Checkpoints kept.
    #[arg(long)]
    keep_checkpoints: Option<usize>,
    /// cpu, cuda, wgpu, or auto (the GPU when there is one).
    #[arg(long)]
    device: Option<String>,
    /// f32, or bf16: mixed precision (the network in bfloat16, f32 master weights; for GPUs).
    #[arg(long)]
    precision: Option<Precision>,
    #[command(flatten)]
    schedule: super::schedule::ScheduleFlags,
    /// eps, x0 or v.
    #[arg(long)]
    parameterization: Option<String>,
    /// fixed-small, fixed-large, learned, learned-range.
    #[arg(long)]
    variance: Option<String>,
    /// simple, vlb or hybrid.
    #[arg(long)]
    loss: Option<LossName>,
    /// λ of the hybrid loss.
    #[arg(long)]
    hybrid_lambda: Option<f64>,
    /// none, vlb, p2, min-snr.
    #[arg(long)]
    weighting: Option<WeightingName>,
    /// P2 k.
    #[arg(long)]
    p2_k: Option<f64>,
    /// P2 γ.
    #[arg(long)]
    p2_gamma: Option<f64>,
    /// Min-SNR γ.
    #[arg(long)]
    min_snr_gamma: Option<f64>,
    /// uniform or loss-second-moment.
    #[arg(long)]
    t_sampler: Option<TimestepSamplerName>,
    /// Random horizontal flips.
    #[arg(long)]
    hflip: bool,
    /// Dropout probability (overrides the preset's).
    #[arg(long)]
    dropout: Option<f64>,
    /// Class-conditional training on the dataset's labels (for --class and --guidance).
    #[arg(long)]
    class_cond: bool,
    /// continuous (VDM's L_∞), discrete:T (VDM's L_T) or discrete (the DDPM chain of
    /// --timesteps steps) [default: continuous for --schedule learned, else discrete].
    #[arg(long)]
    time: Option<TimeChoice>,
    /// VDM time: draw each batch's times independently instead of antithetically.
    #[arg(long)]
    no_antithetic_time: bool,
    /// Learning rate of a learned schedule [default: --lr].
    #[arg(long)]
    schedule_lr: Option<f64>,
    /// Probability of training a label as the null class (classifier-free guidance).
    #[arg(long)]
    cond_drop: Option<f64>,
    /// ddpm (the chain's --loss, or VDM's with --time) or edm (Karras et al. 2022: the
    /// preconditioned denoiser, ln σ ~ N(--p-mean, --p-std²)) [default: ddpm].
    #[arg(long)]
    objective: Option<ObjectiveName>,
    /// EDM: σ_d, the data's standard deviation [default: 0.5].
    #[arg(long)]
    sigma_data: Option<f64>,
    /// EDM: the mean of ln σ in training [default: -1.2].
    #[arg(long, allow_hyphen_values = true)]
    p_mean: Option<f64>,
    /// EDM: the standard deviation of ln σ in training [default: 1.2].
    #[arg(long)]
    p_std: Option<f64>,
    /// Post-hoc EMA (Karras et al. 2024): track power-function averages of these widths σ_rel
    /// (e.g. 0.05,0.10) and keep snapshots for `ddpm ema reconstruct`.
    #[arg(long, value_delimiter = ',')]
    posthoc_ema: Option<Vec<f64>>,
    /// Post-hoc EMA: a snapshot every N steps [default: --steps/256, at least 1].
    #[arg(long)]
    snapshot_every: Option<u64>,
}

/// `--objective` and EDM's own flags, which need an EDM run.
fn apply_edm_flags(args: &TrainArgs, c: &mut RunConfig) -> Result<(), CliError> {
    match args.objective {
        Some(ObjectiveName::Edm) => {
            c.edm.get_or_insert_default();
        }
        Some(ObjectiveName::Ddpm) => c.edm = None,
        None => {}
    }
    let given = [
        ("--sigma-data", args.sigma_data),
        ("--p-mean", args.p_mean),
        ("--p-std", args.p_std),
    ];
    let Some(e) = c.edm.as_mut() else {
        return match given.iter().find(|(_, v)| v.is_some()) {
            Some((flag, _)) => Err(CliError::Usage(format!(
                "{flag} is a setting of EDM training; add --objective edm"
            ))),
            None => Ok(()),
        };
    };
    e.sigma_data = args.sigma_data.unwrap_or(e.sigma_data);
    e.p_mean = args.p_mean.unwrap_or(e.p_mean);
    e.p_std = args.p_std.unwrap_or(e.p_std);
    Ok(())
}

/// `--posthoc-ema` and `--snapshot-every`.
fn apply_posthoc_flags(args: &TrainArgs, c: &mut RunConfig) -> Result<(), CliError> {
    if let Some(widths) = &args.posthoc_ema {
        let every = args
            .snapshot_every
            .or(c.posthoc_ema.as_ref().map(|p| p.snapshot_every))
            .unwrap_or((c.steps / 256).max(1));
        c.posthoc_ema = Some(crate::config::PosthocEmaConfig {
            sigma_rels: widths.clone(),
            snapshot_every: every,
        });
    } else if let Some(every) = args.snapshot_every {
        match c.posthoc_ema.as_mut() {
            Some(p) => p.snapshot_every = every,
            None => {
                return Err(CliError::Usage(
                    "--snapshot-every: snapshots are of post-hoc EMA averages; add \
                     --posthoc-ema 0.05,0.10"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

fn parse_kebab<T: serde::de::DeserializeOwned>(
    flag: &str,
    v: &str,
    expected: &str,
) -> Result<T, CliError> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| CliError::Usage(format!("{flag}: unknown value `{v}`; expected {expected}")))
}

/// The configuration: defaults, then the config file, then flags. On `--resume` without
/// `--config` the run's own `config.toml` takes the place of the defaults, so a flag given again
/// is compared with what the run was made with (the trainer applies what may change between
/// segments and refuses the rest). The run directory is always `--out`, never what a
/// `config.toml` says.
pub(super) fn resolve(args: &TrainArgs) -> Result<RunConfig, CliError> {
    let read = |p: &std::path::Path, what: &str| -> Result<RunConfig, CliError> {
        let text = crate::files::read_text_capped(p, crate::files::TEXT_MAX)
            .map_err(|e| CliError::Usage(format!("{what} {}: cannot read it: {e}", p.display())))?;
        RunConfig::from_toml(&text, &format!("{what} {}", p.display()))
            .map_err(|e| CliError::Usage(e.to_string()))
    };
    let file = args
        .config
        .as_deref()
        .map(|p| read(p, "--config"))
        .transpose()?;
    // The run directory: --out, else the --config file's `out`, else the default.
    let out = match (&args.out, &file) {
        (Some(o), _) => o.clone(),
        (None, Some(f)) => f.out.clone(),
        (None, None) => RunConfig::default().out,
    };
    let saved = PathBuf::from(&out).join("config.toml");
    let mut c = match file {
        Some(f) => f,
        None if args.resume && saved.is_file() => read(&saved, "--resume: the run's")?,
        None => RunConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = &args.$f { c.$f = v.clone().into(); } )* };
    }
    set!(
        data,
        preset,
        steps,
        batch_size,
        grad_accum,
        lr,
        warmup_steps,
        adam_beta1,
        adam_beta2,
        adam_eps,
        weight_decay,
        ema_decay,
        ema_warmup_power,
        seed,
        out,
        log_every,
        sample_every,
        sample_count,
        sample_steps,
        checkpoint_every,
        keep_checkpoints,
        device,
        precision,
        loss,
        hybrid_lambda,
        weighting,
        p2_k,
        p2_gamma,
        min_snr_gamma,
        t_sampler
    );
    if let Some(v) = args.grad_clip {
        // 0 disables clipping; anything else must be a positive number (checked below).
        c.grad_clip = (v != 0.0).then_some(v);
    }
    let f = &args.schedule;
    if let Some(v) = &f.schedule {
        c.schedule = v.clone();
    }
    if let Some(v) = f.timesteps {
        c.timesteps = v;
    }
    if f.beta_start.is_some() {
        c.beta_start = f.beta_start;
    }
    if f.beta_end.is_some() {
        c.beta_end = f.beta_end;
    }
    if args.dropout.is_some() {
        c.dropout = args.dropout;
    }
    if f.zero_terminal_snr {
        c.zero_terminal_snr = true;
    }
    if f.gamma_min.is_some() {
        c.gamma_min = f.gamma_min;
    }
    if f.gamma_max.is_some() {
        c.gamma_max = f.gamma_max;
    }
    if args.time.is_some() {
        c.time = args.time;
    }
    if args.no_antithetic_time {
        c.antithetic_time = false;
    }
    if args.schedule_lr.is_some() {
        c.schedule_lr = args.schedule_lr;
    }
    if args.hflip {
        c.hflip = true;
    }
    if args.class_cond {
        c.class_cond = true;
    }
    if let Some(p) = args.cond_drop {
        c.cond_drop = p;
    }
    apply_edm_flags(args, &mut c)?;
    apply_posthoc_flags(args, &mut c)?;
    if let Some(p) = &args.parameterization {
        c.parameterization =
            parse_kebab::<Parameterization>("--parameterization", p, "eps, x0 or v")?;
    }
    if let Some(v) = &args.variance {
        c.variance = parse_kebab::<VarianceType>(
            "--variance",
            v,
            "fixed-small, fixed-large, learned or learned-range",
        )?;
    }
    c.out = out;
    c.validate().map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(c)
}

pub fn run(args: TrainArgs) -> CliResult {
    let cfg = resolve(&args)?;
    let s = crate::train::train_auto(&cfg, args.resume, args.quiet)?;
    if !crate::dist::world().is_root() {
        return Ok(());
    }
    println!(
        "trained {} steps in {:.1} s ({:.1} img/s); run: {}{}",
        s.steps,
        s.wall_s,
        s.img_per_s,
        s.run.display(),
        s.grid
            .map(|g| format!("; samples: {}", g.display()))
            .unwrap_or_default()
    );
    Ok(())
}
