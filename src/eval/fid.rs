//! FID as pytorch-fid computes it: Inception-v3 pool_3 features of images in [0, 1]
//! (grayscale replicated to RGB, bilinear resize to 299), their mean and covariance, and the
//! Fréchet distance between two such Gaussians. Reference statistics are cached in a
//! safetensors file holding `mu` (f64, `[2048]`) and `sigma` (f64, `[2048, 2048]`), the names
//! pytorch-fid's `.npz` files use.

use super::frechet::FeatureStats;
use super::inception::{FEATURES, InceptionV3};
use crate::data::Dataset;
use crate::files::write_atomic;
use crate::store::tensors::float_values;
use anyhow::{Context, Result, bail};
use nalgebra::{DMatrix, DVector};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// The Fréchet Inception distance (Heusel et al. 2017) between the first `limit` images of
/// `samples` and of `reference` (all when `None`): the Fréchet distance of the Gaussians fitted
/// to `net`'s pool features, `batch` images per network call. With fewer images than the 2,048
/// features the covariances are singular and the value is only comparable between equally
/// sized sets.
pub fn fid_between(
    net: &InceptionV3,
    samples: &dyn Dataset,
    reference: &dyn Dataset,
    limit: Option<usize>,
    batch: usize,
) -> Result<f64> {
    let (fs, ns) = dataset_features(net, samples, limit, batch, |_| {})?;
    let (fr, nr) = dataset_features(net, reference, limit, batch, |_| {})?;
    super::frechet::frechet_distance(&stats_of(&fs, ns)?, &stats_of(&fr, nr)?)
}

/// Inception features of the first `limit` items of `data` (all when `None`), `batch` images
/// per network call; returns the features row-major and their count. `progress` is called
/// with the number of images done after each batch. Under `mpirun` rank r computes batches r,
/// r + N, … and every rank gets all the features.
pub fn dataset_features(
    net: &InceptionV3,
    data: &dyn Dataset,
    limit: Option<usize>,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<(Vec<f64>, usize)> {
    let shape = data.item_shape();
    let [c, h, w] = shape[..] else {
        bail!(
            "{}: items are {shape:?}; FID needs images [channels, height, width]",
            data.describe()
        );
    };
    if c != 1 && c != 3 {
        bail!(
            "{}: {c} channels; FID takes grayscale (1) or RGB (3) images",
            data.describe()
        );
    }
    let n = limit.unwrap_or(data.len()).min(data.len());
    let batch = batch.max(1);
    let world = crate::dist::world();
    let mut features = vec![0.0f64; n * FEATURES];
    let mut item = vec![0f32; c * h * w];
    let mut done = 0;
    for b in world.batches(n.div_ceil(batch)) {
        let start = b * batch;
        let m = batch.min(n - start);
        let mut rgb = Vec::with_capacity(m * 3 * h * w);
        for i in start..start + m {
            data.get(i, &mut item);
            // Datasets hold [-1, 1]; pytorch-fid reads images as [0, 1].
            let unit: Vec<f32> = item.iter().map(|v| (v + 1.0) * 0.5).collect();
            if c == 1 {
                for _ in 0..3 {
                    rgb.extend_from_slice(&unit);
                }
            } else {
                rgb.extend_from_slice(&unit);
            }
        }
        let f = net.features(&rgb, m, h, w);
        for (dst, &v) in features[start * FEATURES..(start + m) * FEATURES]
            .iter_mut()
            .zip(f.iter())
        {
            *dst = v as f64;
        }
        done += m;
        progress(done);
    }
    world.sum_f64(&mut features)?;
    Ok((features, n))
}

/// Statistics of `n` feature vectors, refusing fewer than two.
pub fn stats_of(features: &[f64], n: usize) -> Result<FeatureStats> {
    if n < 2 {
        bail!(
            "{n} image(s): a covariance needs at least 2 (and more than {FEATURES} for a full-rank one; FID is usually computed on 10,000 or 50,000)"
        );
    }
    FeatureStats::from_features(features, n, FEATURES)
}

/// A warning to print when the covariance is rank-deficient, `None` when it is not.
pub fn rank_warning(what: &str, stats: &FeatureStats) -> Option<String> {
    (!stats.well_determined()).then(|| {
        format!(
            "warning: {what} has {} images, not more than the {} feature dimensions: its covariance is rank-deficient and FID is biased upwards; use at least {} (papers use 10,000 or 50,000)",
            stats.n,
            stats.mean.len(),
            stats.mean.len() + 1
        )
    })
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `stats` to `path` (atomically).
pub fn save_stats(stats: &FeatureStats, path: &Path) -> Result<()> {
    let d = stats.mean.len();
    let mu = f64_bytes(stats.mean.as_slice());
    // Row-major; the covariance is symmetric, so column-major storage reads the same.
    let sigma = f64_bytes(stats.cov.as_slice());
    let views = vec![
        ("mu".to_string(), TensorView::new(Dtype::F64, vec![d], &mu)?),
        (
            "sigma".to_string(),
            TensorView::new(Dtype::F64, vec![d, d], &sigma)?,
        ),
    ];
    let meta = HashMap::from([
        ("format".to_string(), "ddpm-fid-stats".to_string()),
        ("n".to_string(), stats.n.to_string()),
    ]);
    write_atomic(path, &safetensors::tensor::serialize(views, Some(meta))?)
}

/// Reads statistics written by [`save_stats`] (or any safetensors file with f64/f32 `mu`,
/// `sigma`).
pub fn load_stats(path: &Path) -> Result<FeatureStats> {
    let bytes = crate::files::read_capped(path, crate::files::BINARY_MAX)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
        let t = st.tensor(name).with_context(|| {
            format!(
                "{}: no tensor {name}; FID statistics hold mu and sigma",
                path.display()
            )
        })?;
        let v = float_values(t.dtype(), t.data()).with_context(|| {
            format!(
                "{}: {name} is {:?}, expected F64",
                path.display(),
                t.dtype()
            )
        })?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: {name} holds a non-finite value at index {i}; the statistics are damaged",
                path.display()
            );
        }
        Ok((t.shape().to_vec(), v))
    };
    let (ms, mu) = read("mu")?;
    let (ss, sigma) = read("sigma")?;
    let d = mu.len();
    if ms != [d] || ss != [d, d] {
        bail!(
            "{}: mu is {ms:?} and sigma {ss:?}; expected [d] and [d, d]",
            path.display()
        );
    }
    let n = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("n"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(FeatureStats {
        mean: DVector::from_vec(mu),
        cov: DMatrix::from_row_slice(d, d, &sigma),
        n,
    })
}

/// Whether `path` looks like a statistics file rather than a dataset spec.
pub fn is_stats_file(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".safetensors") && Path::new(path).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_survive_a_round_trip_and_bad_files_are_refused() {
        let mut rng = crate::rng::Rng::new(3);
        let (n, d) = (40, 5);
        let mut f = vec![0.0; n * d];
        rng.fill_normal(&mut f);
        let s = FeatureStats::from_features(&f, n, d).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ref.safetensors");
        save_stats(&s, &p).unwrap();
        let back = load_stats(&p).unwrap();
        assert_eq!(back.mean, s.mean);
        assert_eq!(back.cov, s.cov);
        assert_eq!(back.n, n);
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"nonsense").unwrap();
        assert!(format!("{:#}", load_stats(&junk).unwrap_err()).contains("not a safetensors file"));
        assert!(
            stats_of(&f[..d], 1)
                .unwrap_err()
                .to_string()
                .contains("at least 2")
        );
        assert!(rank_warning("--samples", &s).is_none());
        let few = FeatureStats::from_features(&f[..3 * d], 3, d).unwrap();
        assert!(
            rank_warning("--samples", &few)
                .unwrap()
                .contains("rank-deficient")
        );
    }
}
