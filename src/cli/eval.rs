//! `ddpm eval`: likelihood in bits/dim, classifier Fréchet distance (FID lives in `fid.rs`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::ImagePipeline;
use crate::data::Split;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// The variational bound (every L_t, L_0, L_T) in bits/dim, averaged over images.
    Nll(NllArgs),
    /// Train the judging classifier: the small CNN whose features `eval fd` and `eval guidance`
    /// compare (MNIST-like labelled data). `classifier-train` is accepted too.
    #[command(name = "judge-train", alias = "classifier-train")]
    JudgeTrain(JudgeTrainArgs),
    /// Fréchet distance on the classifier's features, and a classifier Inception Score.
    Fd(FdArgs),
    /// Cache the Inception (pytorch-fid) feature statistics of a dataset or image folder.
    FidStats(super::fid::FidStatsArgs),
    /// FID of generated images against a dataset or cached statistics (pytorch-fid's Inception).
    Fid(super::fid::FidArgs),
    /// The guidance trade-off: accuracy, classifier FD and IS of a model's samples for each
    /// classifier-free guidance weight and classifier-guidance scale.
    Guidance(GuidanceArgs),
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm eval guidance --checkpoint runs/mnist-cond --judge mnist-judge.safetensors --reference idx:../shared/data/mnist --guidance 0,0.5,1,2,4 --plot tradeoff.png\n  ddpm eval guidance --checkpoint runs/mnist --guide-classifier runs/mnist-noisy-clf --classifier-scale 0,1,2,4 --judge mnist-judge.safetensors --reference idx:../shared/data/mnist"
)]
pub struct GuidanceArgs {
    /// A run or one of its checkpoints: class-conditional (trained with --class-cond), or any
    /// model with --guide-classifier.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The judging classifier, from `eval judge-train` on the real data (`--classifier` is
    /// accepted too).
    #[arg(long, alias = "classifier")]
    judge: PathBuf,
    /// The real images the samples are compared with (a dataset).
    #[arg(long, default_value = "bundled")]
    reference: String,
    /// Split of the reference dataset.
    #[arg(long, default_value = "train")]
    reference_split: String,
    /// Use at most N reference images.
    #[arg(long, value_parser = super::at_least_one)]
    reference_limit: Option<usize>,
    /// Classifier-free guidance weights, comma-separated (default 0,0.5,1,2,4; 0 with
    /// --guide-classifier).
    #[arg(long)]
    guidance: Option<String>,
    /// A noise-aware classifier from `ddpm train-classifier`: also guide by its gradient, at
    /// each --classifier-scale (the model may then be unconditional).
    #[arg(long)]
    guide_classifier: Option<PathBuf>,
    /// Classifier-guidance scales, comma-separated (with --guide-classifier).
    #[arg(long, default_value = "0,1,2,4")]
    classifier_scale: String,
    /// Samples per class and weight.
    #[arg(long, default_value_t = 100, value_parser = super::at_least_one)]
    per_class: usize,
    /// DDIM steps (η = 0).
    #[arg(long, default_value_t = 25, value_parser = super::at_least_one)]
    steps: usize,
    /// Images per network batch.
    #[arg(long, default_value_t = 64, value_parser = super::at_least_one)]
    batch_size: usize,
    /// Seed (the same noise for every weight).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Also draw the trade-off to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// One JSON line per weight instead of a table.
    #[arg(long)]
    json: bool,
    /// cpu, cuda, wgpu, or auto (the GPU when there is one).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  ddpm eval judge-train --data idx:../shared/data/mnist --epochs 1 --out mnist-judge.safetensors"
)]
pub struct JudgeTrainArgs {
    /// Labelled images: bundled or idx:DIR.
    #[arg(long, default_value = "bundled")]
    data: String,
    /// Epochs.
    #[arg(long, default_value_t = 1, value_parser = super::count_up_to::<100_000>)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128, value_parser = super::at_least_one)]
    batch_size: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file (safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
#[command(
    after_help = "Features are the classifier's 128-d penultimate layer: the distance is comparable only between\nruns that use the same classifier file, and it is not FID (no Inception network).\n\nExample:\n  ddpm eval fd --judge mnist-judge.safetensors --samples folder:samples/images --reference idx:../shared/data/mnist --reference-split test"
)]
pub struct FdArgs {
    /// The judging classifier, from `eval judge-train` (`--classifier` is accepted too).
    #[arg(long, alias = "classifier")]
    judge: PathBuf,
    /// The images to judge: folder:DIR (generated PNGs, all of the classifier's size) or a dataset.
    #[arg(long)]
    samples: String,
    /// The reference images: a dataset (bundled, idx:DIR, …).
    #[arg(long)]
    reference: String,
    /// Split of a dataset given to --samples.
    #[arg(long, default_value = "train")]
    samples_split: String,
    /// Split of the reference dataset.
    #[arg(long, default_value = "train")]
    reference_split: String,
    /// Use at most N images of each.
    #[arg(long, value_parser = super::at_least_one)]
    limit: Option<usize>,
    /// Print {fd, inception_score, n_samples, n_reference} as JSON.
    #[arg(long)]
    json: bool,
    /// Also the distance of each class: the samples' classes (a folder with one sub-directory
    /// per class, as `ddpm sample --class` writes) against the reference's classes of the same
    /// names.
    #[arg(long)]
    per_class: bool,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm eval nll --checkpoint runs/mnist --data idx:../shared/data/mnist --split test --limit 100\n  ddpm eval nll --checkpoint runs/default --data bundled --limit 16 --json"
)]
pub struct NllArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset: bundled or idx:DIR.
    #[arg(long, default_value = "bundled")]
    data: String,
    /// train or test.
    #[arg(long, default_value = "train")]
    split: String,
    /// Evaluate only the first N images.
    #[arg(long, value_parser = super::at_least_one)]
    limit: Option<usize>,
    /// Images per network batch.
    #[arg(long, default_value_t = 32, value_parser = super::at_least_one)]
    batch_size: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Estimate each image's bound from K draws of t, one in each of K geometric ranges (unbiased,
    /// K + 1 network evaluations per image) instead of all T terms; VDM runs are always
    /// estimated so [default for VDM: 1]. At most 100000 (and, for a DDPM chain, T − 1).
    #[arg(long, value_parser = super::count_up_to::<{ crate::schedule::MAX_TIMESTEPS }>)]
    t_samples: Option<usize>,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Print {bpd, bpd_stderr, prior_bpd, decoder_bpd, vb_bpd_by_t, mse, n} as JSON.
    #[arg(long)]
    json: bool,
    /// cpu, cuda, wgpu, or auto (the GPU when there is one).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(cmd: EvalCommand) -> CliResult {
    match cmd {
        EvalCommand::Nll(a) => nll(a),
        EvalCommand::JudgeTrain(a) => judge_train(a),
        EvalCommand::Fd(a) => fd(a),
        EvalCommand::FidStats(a) => super::fid::fid_stats(a),
        EvalCommand::Fid(a) => super::fid::fid(a),
        EvalCommand::Guidance(a) => guidance(a),
    }
}

fn judge_train(a: JudgeTrainArgs) -> CliResult {
    use crate::eval::judge;
    let device = super::device("cpu")?;
    let data = crate::data::open(&a.data, Split::Train, a.seed, None)
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let labels = crate::data::open_labels(&a.data, Split::Train)
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    if data.item_shape().len() != 3 {
        return Err(CliError::Usage(format!(
            "--data {}: the classifier takes images",
            a.data
        )));
    }
    let steps = data
        .len()
        .div_ceil(a.batch_size.max(1))
        .saturating_mul(a.epochs);
    let bar = super::progress(steps as u64, "steps", true);
    let model = judge::train(
        data.as_ref(),
        &labels,
        a.epochs,
        a.batch_size.max(1),
        a.seed,
        &device,
        |_, l| {
            bar.inc(1);
            bar.set_message(format!("loss {l:.3}"));
        },
    )?;
    bar.finish();
    judge::save(&model, &data.item_shape(), &a.out)?;
    let test = crate::data::open(&a.data, Split::Test, 0, None)
        .ok()
        .zip(crate::data::open_labels(&a.data, Split::Test).ok());
    match test {
        Some((t, l)) => println!(
            "wrote {}; test accuracy {:.4}",
            a.out.display(),
            judge::accuracy(&model, t.as_ref(), &l, 256, &device)
        ),
        None => println!(
            "wrote {}; training accuracy {:.4}",
            a.out.display(),
            judge::accuracy(&model, data.as_ref(), &labels, 256, &device)
        ),
    }
    Ok(())
}

/// A dataset (or a folder of generated images, which must all be of the classifier's size) for a
/// classifier taking items of `shape`; `flag` names it in errors.
fn open_judged(
    spec: &str,
    split: &str,
    flag: &str,
    shape: &[usize],
) -> Result<Box<dyn crate::data::Dataset>, CliError> {
    let split: Split = split
        .parse()
        .map_err(|e: String| CliError::Usage(format!("{flag}-split: {e}")))?;
    if let Some(dir) = spec.strip_prefix("folder:") {
        crate::data::folder::check_samples_folder(std::path::Path::new(dir), shape[1])
            .map_err(|e| CliError::Usage(format!("{flag}: {e:#}")))?;
    }
    let d = crate::data::open(spec, split, 0, Some((shape[0], shape[1])))
        .map_err(|e| CliError::Usage(format!("{flag}: {e:#}")))?;
    if d.item_shape() != shape {
        return Err(CliError::Usage(format!(
            "{flag} {spec}: items are {:?}, the classifier takes {shape:?}",
            d.item_shape()
        )));
    }
    Ok(d)
}

fn fd(a: FdArgs) -> CliResult {
    use crate::eval::frechet::{FeatureStats, frechet_distance};
    use crate::eval::judge;
    let device = super::device("cpu")?;
    let (model, shape) =
        judge::load(&a.judge, &device).map_err(|e| CliError::Usage(format!("--judge: {e:#}")))?;
    let samples = open_judged(&a.samples, &a.samples_split, "--samples", &shape)?;
    let reference = open_judged(&a.reference, &a.reference_split, "--reference", &shape)?;
    let (fs, ps, ns) = judge::features(&model, samples.as_ref(), a.limit, 256, &device);
    let (fr, _, nr) = judge::features(&model, reference.as_ref(), a.limit, 256, &device);
    for (name, n) in [("--samples", ns), ("--reference", nr)] {
        if n < 2 {
            return Err(CliError::Usage(format!(
                "{name}: {n} image(s); a covariance needs at least 2 (and more than {} for a full-rank one)",
                judge::FEATURES
            )));
        }
        if n <= judge::FEATURES {
            eprintln!(
                "warning: {name} has {n} images, not more than the {} feature dimensions: the covariance is rank-deficient and the distance is biased; use more images",
                judge::FEATURES
            );
        }
    }
    let s = FeatureStats::from_features(&fs, ns, judge::FEATURES)?;
    let r = FeatureStats::from_features(&fr, nr, judge::FEATURES)?;
    let d = frechet_distance(&s, &r)?;
    let is = judge::inception_score(&ps, ns);
    let classes = if a.per_class {
        Some(super::per_class::per_class(
            (&fs, samples.as_ref()),
            (&fr, reference.as_ref()),
            judge::FEATURES,
        )?)
    } else {
        None
    };
    if a.json {
        let mut j =
            serde_json::json!({"fd": d, "inception_score": is, "n_samples": ns, "n_reference": nr});
        if let Some(c) = &classes {
            j["per_class"] = serde_json::to_value(c).map_err(anyhow::Error::from)?;
        }
        println!("{j}");
    } else {
        println!(
            "classifier FD {d:.4} ({ns} samples vs {nr} reference images); classifier IS {is:.3}"
        );
        if let Some(c) = &classes {
            super::per_class::print_per_class("classifier FD", c);
        }
    }
    Ok(())
}

fn nll(a: NllArgs) -> CliResult {
    let split: Split = a
        .split
        .parse()
        .map_err(|e: String| CliError::Usage(format!("--split: {e}")))?;
    let device = super::device(&a.device)?;
    let pipeline = ImagePipeline::load_on(&a.checkpoint, &device, a.no_ema)
        .map_err(|e| CliError::Usage(format!("--checkpoint: {e}")))?;
    let u = pipeline.config().unet_config()?;
    let data = crate::data::open(&a.data, split, 0, Some((u.in_channels, u.image_size)))
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let want = vec![u.in_channels, u.image_size, u.image_size];
    if data.item_shape() != want {
        return Err(CliError::Usage(format!(
            "--data {}: items are {:?}, the model takes {:?}",
            a.data,
            data.item_shape(),
            want
        )));
    }
    let diffusion = pipeline.diffusion();
    let vdm = pipeline.is_vdm();
    let n = a.limit.unwrap_or(data.len()).min(data.len());
    let world = crate::dist::world();
    let batches = n.div_ceil(a.batch_size.max(1));
    let mine = world.batches(batches).count();
    let t_samples = match (vdm, a.t_samples) {
        (true, k) => Some(k.unwrap_or(1)),
        (false, k) => k,
    };
    // The draws that run: a DDPM chain has at most T − 1 ranges to draw from.
    let draws = t_samples.map(|k| match vdm {
        true => k,
        false => crate::eval::nll::geometric_strata(diffusion.num_timesteps(), k)
            .len()
            .max(1),
    });
    let per_batch = match (vdm, draws) {
        (true, Some(k)) => k,
        (false, Some(k)) => k + 1,
        (_, None) => diffusion.num_timesteps(),
    };
    let total = (mine * per_batch) as u64;
    let bar = (!a.quiet && world.is_root()).then(|| super::progress(total, "evaluations", false));
    let opts = crate::eval::nll::NllOptions {
        limit: a.limit,
        batch: a.batch_size,
        seed: a.seed,
        t_samples: t_samples.unwrap_or(0),
    };
    let tick = || {
        if let Some(b) = &bar {
            b.inc(1);
        }
    };
    let r = match pipeline.bits_per_dim_with(data.as_ref(), opts, tick) {
        Ok(r) => r,
        Err(e) if e.kind() == crate::ErrorKind::NonFinite => {
            return Err(CliError::Failure(anyhow::anyhow!(
                "eval nll of {}: {e}",
                a.checkpoint.display()
            )));
        }
        Err(e) => return Err(CliError::Failure(e.into_anyhow())),
    };
    if let Some(b) = bar {
        b.finish();
    }
    if !crate::dist::world().is_root() {
        return Ok(());
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(anyhow::Error::from)?
        );
    } else {
        let how = match draws {
            Some(k) => format!("; {k} t-sample(s) per image"),
            None => String::new(),
        };
        let (decoder, rest) = if vdm {
            ("decoder", "diffusion loss")
        } else {
            ("decoder L_0", "Σ L_t")
        };
        let mse = if r.mse.is_nan() {
            String::new()
        } else {
            format!("; ε MSE {:.4}", r.mse)
        };
        println!(
            "{:.4} ± {:.4} bits/dim over {} images (prior {:.2e}, {decoder} {:.4}, {rest} {:.4}{mse}{how})",
            r.bpd,
            r.bpd_stderr,
            r.n,
            r.prior_bpd,
            r.decoder_bpd,
            r.bpd - r.prior_bpd - r.decoder_bpd,
        );
    }
    Ok(())
}

fn guidance(a: GuidanceArgs) -> CliResult {
    use crate::eval::frechet::FeatureStats;
    use crate::eval::judge;
    let device = super::device(&a.device)?;
    let pipeline = ImagePipeline::load_on(&a.checkpoint, &device, a.no_ema)
        .map_err(|e| CliError::Usage(format!("--checkpoint: {e}")))?;
    let diffusion = pipeline.diffusion().clone();
    let guide = match &a.guide_classifier {
        Some(p) => Some(super::sample::load_guide(
            p,
            pipeline.config(),
            &super::sample::guided_chain(pipeline.config())?,
            &device,
        )?),
        None => None,
    };
    let default_w = if guide.is_some() { "0" } else { "0,0.5,1,2,4" };
    let weights = super::guidance_list("--guidance", a.guidance.as_deref().unwrap_or(default_w))?;
    let scales = super::guidance_list("--classifier-scale", &a.classifier_scale)?;
    let classes = match (pipeline.model().num_classes(), &guide) {
        (Some(k), _) => k,
        (None, Some(g)) if weights.iter().all(|&w| w == 0.0) => g.config.classes.len(),
        (None, Some(_)) => {
            return Err(CliError::Usage(
                "--guidance: classifier-free guidance needs a class-conditional model; with an \
                 unconditional one use --guidance 0 and --classifier-scale"
                    .into(),
            ));
        }
        (None, None) => {
            return Err(CliError::Usage(
                "--checkpoint: this model was trained without classes (train with --class-cond, \
                 or guide it with --guide-classifier)"
                    .into(),
            ));
        }
    };
    let u = pipeline.config().unet_config()?;
    let item_shape = [u.in_channels, u.image_size, u.image_size];
    // The samples of one weight are held together: refuse what cannot fit.
    let need = (a.per_class as f64)
        * classes as f64
        * item_shape.iter().product::<usize>() as f64
        * 4.0
        * 2.0;
    if let Some((need_gib, avail_gib)) = crate::heap::shortfall_gib(need) {
        return Err(CliError::Usage(format!(
            "--per-class {}: {classes} classes of samples need about {need_gib:.1} GiB, more than \
             the {avail_gib:.1} GiB available",
            a.per_class
        )));
    }
    let (judge, shape) =
        judge::load(&a.judge, &device).map_err(|e| CliError::Usage(format!("--judge: {e:#}")))?;
    if shape != item_shape {
        return Err(CliError::Usage(format!(
            "--judge takes {shape:?} images, the model makes {item_shape:?}"
        )));
    }
    let reference = open_judged(&a.reference, &a.reference_split, "--reference", &shape)?;
    let (fr, _, nr) = judge::features(&judge, reference.as_ref(), a.reference_limit, 256, &device);
    if nr < 2 {
        return Err(CliError::Usage(format!(
            "--reference: {nr} image(s); a covariance needs at least 2"
        )));
    }
    let reference = FeatureStats::from_features(&fr, nr, judge::FEATURES)?;
    let settings = weights.len() * if guide.is_some() { scales.len() } else { 1 };
    let total = (a.per_class * classes * settings) as u64;
    let bar = (!a.quiet).then(|| super::progress(total, "images", false));
    let opts = crate::eval::guidance::SweepOptions {
        weights: &weights,
        classifier: guide.as_ref().map(|g| (&g.model, scales.as_slice())),
        per_class: a.per_class,
        steps: a.steps,
        batch: a.batch_size,
        seed: a.seed,
    };
    let rows = crate::eval::guidance::sweep(
        &pipeline.denoiser(),
        &diffusion,
        classes,
        item_shape,
        &judge,
        &reference,
        &opts,
        &device,
        |done, _| {
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish();
    }
    let bad = rows.iter().find(|r| {
        ![r.accuracy, r.fd, r.inception_score]
            .iter()
            .all(|v| v.is_finite())
    });
    if let Some(r) = bad {
        let scale = r
            .classifier_scale
            .map_or(String::new(), |s| format!(", classifier scale {s}"));
        return Err(CliError::Failure(anyhow::anyhow!(
            "eval guidance: at w = {}{scale} the samples' statistics are not finite (accuracy {}, \
             classifier FD {}, IS {}): the samples were NaN — the guidance is too strong or the \
             weights of {} are diverged",
            r.w,
            r.accuracy,
            r.fd,
            r.inception_score,
            a.checkpoint.display()
        )));
    }
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).map_err(anyhow::Error::from)?);
        }
    } else {
        println!(
            "{} samples per setting ({} per class), DDIM-{}, against {nr} reference images",
            a.per_class * classes,
            a.per_class,
            a.steps
        );
        println!("| w | classifier scale | accuracy | classifier FD | classifier IS |");
        println!("|---|---|---|---|---|");
        for r in &rows {
            let s = r
                .classifier_scale
                .map_or("–".to_string(), |s| s.to_string());
            println!(
                "| {} | {s} | {:.4} | {:.3} | {:.3} |",
                r.w, r.accuracy, r.fd, r.inception_score
            );
        }
    }
    if let Some(p) = &a.plot {
        crate::viz::plot::guidance_tradeoff(p, &rows)?;
    }
    Ok(())
}
