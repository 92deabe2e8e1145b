//! `ddpm eval fid-stats` and `ddpm eval fid`: FID with pytorch-fid's Inception-v3.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, CliResult};
use crate::data::{Dataset, Split};
use crate::eval::fid;
use crate::eval::frechet::{FeatureStats, frechet_distance};
use crate::eval::inception::{InceptionV3, open_weights};

const WEIGHTS_HELP: &str = "pytorch-fid's Inception weights: pt_inception-2015-12-05-6726825d.pth or its safetensors conversion (scripts/inception_to_safetensors.py) [default: downloaded once from pytorch-fid's release into the cache, checked by the hash in its name]";

/// Where pytorch-fid publishes its Inception weights (`DDPM_FID_WEIGHTS_URL` overrides, e.g. a
/// mirror).
const FID_WEIGHTS_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

#[derive(Args)]
#[command(
    after_help = "Example:\n  ddpm eval fid-stats --data idx:../shared/data/mnist --split test --inception pt_inception-2015-12-05-6726825d.pth --out mnist-test-fid.safetensors"
)]
pub struct FidStatsArgs {
    /// Images: a dataset (bundled, idx:DIR, cifar10:DIR) or a folder of PNG/JPEG (folder:DIR or DIR).
    #[arg(long)]
    data: String,
    /// Split of a dataset.
    #[arg(long, default_value = "train")]
    split: String,
    #[arg(long, help = WEIGHTS_HELP)]
    inception: Option<PathBuf>,
    /// Output statistics file (.safetensors with mu and sigma).
    #[arg(long)]
    out: PathBuf,
    /// Use at most N images.
    #[arg(long, value_parser = super::at_least_one)]
    limit: Option<usize>,
    /// Images per network batch.
    #[arg(long, default_value_t = 50, value_parser = super::at_least_one)]
    batch_size: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  ddpm eval fid --samples runs/mnist/samples-ddim50/images --reference mnist-test-fid.safetensors --inception pt_inception-2015-12-05-6726825d.pth"
)]
pub struct FidArgs {
    /// Generated images: a folder of PNG/JPEG of one size (folder:DIR or DIR), or a dataset.
    #[arg(long)]
    samples: String,
    /// Reference: statistics from `eval fid-stats` (.safetensors) or a dataset / folder.
    #[arg(long)]
    reference: String,
    /// Split of a reference dataset.
    #[arg(long, default_value = "train")]
    reference_split: String,
    #[arg(long, help = WEIGHTS_HELP)]
    inception: Option<PathBuf>,
    /// Use at most N images of each.
    #[arg(long, value_parser = super::at_least_one)]
    limit: Option<usize>,
    /// Images per network batch.
    #[arg(long, default_value_t = 50, value_parser = super::at_least_one)]
    batch_size: usize,
    /// Print {fid, n_samples, n_reference} as JSON.
    #[arg(long)]
    json: bool,
    /// Also the FID of each class: the samples' classes (a folder with one sub-directory per
    /// class, as `ddpm sample --class` writes) against the reference dataset's classes of the
    /// same names (statistics files have no classes).
    #[arg(long)]
    per_class: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// A dataset spec or an image folder (every image the same square size, nothing else in it).
fn open_images(spec: &str, split: &str, flag: &str) -> Result<Box<dyn Dataset>, CliError> {
    let usage = |e: anyhow::Error| CliError::Usage(format!("{flag} {spec}: {e:#}"));
    let dir = spec
        .strip_prefix("folder:")
        .or_else(|| Path::new(spec).is_dir().then_some(spec));
    if let Some(dir) = dir {
        let first = crate::data::folder::first_image(Path::new(dir))
            .map_err(usage)?
            .ok_or_else(|| CliError::Usage(format!("{flag} {spec}: holds no images")))?;
        let (w, h) = image::image_dimensions(&first)
            .map_err(|e| usage(anyhow::anyhow!("{}: {e}", first.display())))?;
        if w != h {
            return Err(CliError::Usage(format!(
                "{flag} {spec}: {} is {w}×{h}; images must be square",
                first.display()
            )));
        }
        crate::data::folder::check_samples_folder(Path::new(dir), w as usize).map_err(usage)?;
        return crate::data::open(
            &format!("folder:{dir}"),
            Split::Train,
            0,
            Some((3, w as usize)),
        )
        .map_err(usage);
    }
    let split: Split = split
        .parse()
        .map_err(|e: String| CliError::Usage(format!("{flag}-split: {e}")))?;
    crate::data::open(spec, split, 0, None).map_err(usage)
}

fn load_network(path: Option<&Path>) -> Result<InceptionV3, CliError> {
    let fetched;
    let path = match path {
        Some(p) => p,
        None => {
            let url = std::env::var("DDPM_FID_WEIGHTS_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| FID_WEIGHTS_URL.to_string());
            fetched = crate::hub::fetch_file(&url, |_, _| {}).map_err(|e| {
                CliError::Usage(format!(
                    "--inception not given and pytorch-fid's weights cannot be downloaded ({e:#}); \
                     download {url} by hand (or on a machine with network access) and pass \
                     --inception PATH, or copy it into the cache as {}",
                    crate::cache::cache_dir()
                        .map(|d| d.join("files").display().to_string())
                        .unwrap_or_default()
                ))
            })?;
            &fetched
        }
    };
    let device = super::device("cpu")?;
    let weights = open_weights(path).map_err(|e| CliError::Usage(format!("--inception: {e:#}")))?;
    InceptionV3::load(weights.as_ref(), &device)
        .map_err(|e| CliError::Usage(format!("--inception: {e:#}")))
}

fn statistics(
    net: &InceptionV3,
    data: &dyn Dataset,
    what: &str,
    limit: Option<usize>,
    batch: usize,
    quiet: bool,
) -> Result<FeatureStats, CliError> {
    Ok(features_and_statistics(net, data, what, limit, batch, quiet)?.1)
}

/// The Inception features of `data` (row-major) and their statistics.
fn features_and_statistics(
    net: &InceptionV3,
    data: &dyn Dataset,
    what: &str,
    limit: Option<usize>,
    batch: usize,
    quiet: bool,
) -> Result<(Vec<f64>, FeatureStats), CliError> {
    let n = limit.unwrap_or(data.len()).min(data.len());
    // Under mpirun each rank computes every N-th batch; rank 0 shows its own progress.
    let world = crate::dist::world();
    let batch = batch.max(1);
    let mine: usize = world
        .batches(n.div_ceil(batch))
        .map(|b| batch.min(n - b * batch))
        .sum();
    let bar = (!quiet && world.is_root()).then(|| super::progress(mine as u64, "images", false));
    let (features, n) = fid::dataset_features(net, data, limit, batch, |done| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    })
    .map_err(|e| CliError::Usage(format!("{what}: {e:#}")))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let stats =
        fid::stats_of(&features, n).map_err(|e| CliError::Usage(format!("{what}: {e:#}")))?;
    if let Some(w) = fid::rank_warning(what, &stats).filter(|_| world.is_root()) {
        eprintln!("{w}");
    }
    Ok((features, stats))
}

pub fn fid_stats(a: FidStatsArgs) -> CliResult {
    let data = open_images(&a.data, &a.split, "--data")?;
    let net = load_network(a.inception.as_deref())?;
    let stats = statistics(
        &net,
        data.as_ref(),
        "--data",
        a.limit,
        a.batch_size,
        a.quiet,
    )?;
    if !crate::dist::world().is_root() {
        return Ok(());
    }
    fid::save_stats(&stats, &a.out)?;
    println!(
        "FID statistics of {} images ({}) written to {}",
        stats.n,
        data.describe(),
        a.out.display()
    );
    Ok(())
}

pub fn fid(a: FidArgs) -> CliResult {
    let samples = open_images(&a.samples, "train", "--samples")?;
    let reference_data = if fid::is_stats_file(&a.reference) {
        if a.per_class {
            return Err(CliError::Usage(
                "--per-class needs a reference dataset with classes, not a statistics file".into(),
            ));
        }
        None
    } else {
        Some(open_images(
            &a.reference,
            &a.reference_split,
            "--reference",
        )?)
    };
    let net = load_network(a.inception.as_deref())?;
    let (fs, s) = features_and_statistics(
        &net,
        samples.as_ref(),
        "--samples",
        a.limit,
        a.batch_size,
        a.quiet,
    )?;
    // The samples' features are kept only for the per-class distances.
    let fs = if a.per_class { fs } else { Vec::new() };
    let (fr, r) = match &reference_data {
        None => (
            Vec::new(),
            fid::load_stats(Path::new(&a.reference))
                .map_err(|e| CliError::Usage(format!("--reference: {e:#}")))?,
        ),
        Some(d) => features_and_statistics(
            &net,
            d.as_ref(),
            "--reference",
            a.limit,
            a.batch_size,
            a.quiet,
        )?,
    };
    let d = frechet_distance(&s, &r).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let classes = match (&reference_data, a.per_class) {
        (Some(rd), true) => Some(super::per_class::per_class(
            (&fs, samples.as_ref()),
            (&fr, rd.as_ref()),
            crate::eval::inception::FEATURES,
        )?),
        _ => None,
    };
    if !crate::dist::world().is_root() {
        return Ok(());
    }
    if a.json {
        let mut j = serde_json::json!({"fid": d, "n_samples": s.n, "n_reference": r.n});
        if let Some(c) = &classes {
            j["per_class"] = serde_json::to_value(c).map_err(anyhow::Error::from)?;
        }
        println!("{j}");
    } else {
        println!("FID {d:.4} ({} samples vs {} reference images)", s.n, r.n);
        if let Some(c) = &classes {
            super::per_class::print_per_class("FID", c);
        }
    }
    Ok(())
}
