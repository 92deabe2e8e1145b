//! The Fréchet distance between Gaussians fitted to two feature sets (Dowson & Landau 1982;
//! Heusel et al. 2017 for FID):
//! d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1^{½} Σ2 Σ1^{½})^{½}).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Mean and covariance of a feature set.
#[derive(Debug, Clone)]
pub struct FeatureStats {
    /// Mean, d.
    pub mean: DVector<f64>,
    /// Covariance (unbiased, divided by n − 1), d × d.
    pub cov: DMatrix<f64>,
    /// Number of feature vectors.
    pub n: usize,
}

impl FeatureStats {
    /// Statistics of `n` feature vectors of dimension `d`, row-major in `features`.
    pub fn from_features(features: &[f64], n: usize, d: usize) -> Result<Self> {
        if features.len() != n * d {
            bail!("features: expected {n}×{d} values, got {}", features.len());
        }
        if n < 2 {
            bail!("at least 2 feature vectors are needed for a covariance, got {n}");
        }
        let x = DMatrix::from_row_slice(n, d, features);
        let mean = x.row_mean().transpose();
        let mut centered = x;
        for mut row in centered.row_iter_mut() {
            row -= mean.transpose();
        }
        let cov = centered.transpose() * &centered / (n as f64 - 1.0);
        Ok(Self { mean, cov, n })
    }

    /// Whether the covariance estimate is full rank (needs more samples than dimensions).
    pub fn well_determined(&self) -> bool {
        self.n > self.mean.len()
    }
}

/// The Fréchet distance of one class: samples of class `class` against the reference images
/// of the class of the same name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassDistance {
    /// The class name.
    pub class: String,
    /// The squared Fréchet distance.
    pub fd: f64,
    /// Samples of the class.
    pub n_samples: usize,
    /// Reference images of the class.
    pub n_reference: usize,
}

/// Feature statistics of each class: the rows of `features` (`names.len()` × `d`) grouped by
/// their class name.
pub fn class_stats(
    features: &[f64],
    names: &[String],
    d: usize,
) -> Result<BTreeMap<String, FeatureStats>> {
    if features.len() != names.len() * d {
        bail!(
            "features: expected {}×{d} values, got {}",
            names.len(),
            features.len()
        );
    }
    let mut rows: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        rows.entry(name.clone())
            .or_default()
            .extend_from_slice(&features[i * d..(i + 1) * d]);
    }
    rows.into_iter()
        .map(|(name, f)| {
            let n = f.len() / d;
            let stats = FeatureStats::from_features(&f, n, d)
                .map_err(|e| anyhow::anyhow!("class `{name}`: {n} image(s): {e}"))?;
            Ok((name, stats))
        })
        .collect()
}

/// For every class of `samples`, the Fréchet distance to the reference class of the same name;
/// a sample class the reference lacks is an error naming it.
pub fn per_class_distances(
    samples: &BTreeMap<String, FeatureStats>,
    reference: &BTreeMap<String, FeatureStats>,
) -> Result<Vec<ClassDistance>> {
    samples
        .iter()
        .map(|(name, s)| {
            let Some(r) = reference.get(name) else {
                bail!(
                    "the samples have class `{name}`, the reference only {:?}",
                    reference.keys().collect::<Vec<_>>()
                );
            };
            Ok(ClassDistance {
                class: name.clone(),
                fd: frechet_distance(s, r)?,
                n_samples: s.n,
                n_reference: r.n,
            })
        })
        .collect()
}

/// Square root of a symmetric positive semi-definite matrix through its eigendecomposition,
/// with eigenvalues below zero (rounding) set to zero.
pub fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let sym = (m + m.transpose()) * 0.5;
    let e = SymmetricEigen::new(sym);
    let s = e.eigenvalues.map(|v| v.max(0.0).sqrt());
    &e.eigenvectors * DMatrix::from_diagonal(&s) * e.eigenvectors.transpose()
}

/// The squared Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2).
///
/// ```
/// use ddpm::eval::frechet::{FeatureStats, frechet_distance};
///
/// // Two 2-D feature sets: the second is the first shifted by (3, 4).
/// let a = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
/// let b: Vec<f64> = a.chunks(2).flat_map(|p| [p[0] + 3.0, p[1] + 4.0]).collect();
/// let (sa, sb) = (FeatureStats::from_features(&a, 4, 2)?, FeatureStats::from_features(&b, 4, 2)?);
/// // Same covariance: the distance is ‖μ1 − μ2‖² = 25.
/// assert!((frechet_distance(&sa, &sb)? - 25.0).abs() < 1e-9);
/// assert!(frechet_distance(&sa, &sa)?.abs() < 1e-9);
/// # Ok::<(), anyhow::Error>(())
/// ```
///
/// The trace term is computed as
/// Σ √λ_i of the eigenvalues of the symmetric PSD matrix Σ1^{½} Σ2 Σ1^{½}, which is stable for
/// near-singular covariances (no inverse is taken; negative rounding is clamped).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.mean.len() != b.mean.len() {
        bail!(
            "feature dimensions differ: {} vs {}",
            a.mean.len(),
            b.mean.len()
        );
    }
    let diff = &a.mean - &b.mean;
    let s1 = sqrt_psd(&a.cov);
    let m = &s1 * &b.cov * &s1;
    let m = (&m + m.transpose()) * 0.5;
    let tr_sqrt: f64 = SymmetricEigen::new(m)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    Ok(diff.dot(&diff) + a.cov.trace() + b.cov.trace() - 2.0 * tr_sqrt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn stats(mean: Vec<f64>, cov: DMatrix<f64>) -> FeatureStats {
        FeatureStats {
            mean: DVector::from_vec(mean),
            cov,
            n: 1000,
        }
    }

    #[test]
    fn diagonal_covariances_match_the_closed_form() {
        let a = stats(
            vec![0.0, 1.0, 2.0],
            DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 4.0, 0.25])),
        );
        let b = stats(
            vec![1.0, 1.0, 0.0],
            DMatrix::from_diagonal(&DVector::from_vec(vec![9.0, 1.0, 0.0])),
        );
        // Σ(μ1−μ2)² + Σ(σ1−σ2)²
        let want = (1.0 + 0.0 + 4.0) + (4.0 + 1.0 + 0.25);
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-9);
    }

    #[test]
    fn identical_sets_give_zero_and_scaled_covariances_the_closed_form() {
        let mut rng = Rng::new(1);
        let (n, d) = (500, 20);
        let mut f = vec![0.0; n * d];
        rng.fill_normal(&mut f);
        // Correlate the features.
        for r in 0..n {
            for c in 1..d {
                f[r * d + c] += 0.5 * f[r * d + c - 1];
            }
        }
        let a = FeatureStats::from_features(&f, n, d).unwrap();
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
        // Σ2 = c·Σ1 commutes with Σ1: d² = (1 + c − 2√c)·Tr Σ1.
        let c = 2.25;
        let b = stats(a.mean.iter().copied().collect(), &a.cov * c);
        let want = (1.0 + c - 2.0 * c.sqrt()) * a.cov.trace();
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-8 * want.max(1.0));
    }

    #[test]
    fn near_singular_covariances_stay_finite() {
        // Fewer samples than dimensions: rank-deficient covariances.
        let mut rng = Rng::new(2);
        let (n, d) = (10, 40);
        let mut f = vec![0.0; n * d];
        rng.fill_normal(&mut f);
        let a = FeatureStats::from_features(&f, n, d).unwrap();
        assert!(!a.well_determined());
        rng.fill_normal(&mut f);
        let b = FeatureStats::from_features(&f, n, d).unwrap();
        let fd = frechet_distance(&a, &b).unwrap();
        assert!(fd.is_finite() && fd > 0.0, "{fd}");
        assert!(FeatureStats::from_features(&f[..d], 1, d).is_err());
    }

    /// Against pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm) on fixed random
    /// features (tests/fixtures/make_frechet_fixture.py), including a rank-deficient pair.
    #[test]
    fn matches_pytorch_fid_and_scipy() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/frechet.json");
        let f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for case in f["cases"].as_array().unwrap() {
            let (n, d) = (
                case["n"].as_u64().unwrap() as usize,
                case["d"].as_u64().unwrap() as usize,
            );
            let set = |k: &str| -> FeatureStats {
                let v: Vec<f64> = case[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                FeatureStats::from_features(&v, n, d).unwrap()
            };
            let got = frechet_distance(&set("a"), &set("b")).unwrap();
            let want = case["fid"].as_f64().unwrap();
            // scipy's sqrtm (Schur route) and the eigen route agree to rounding; in the
            // rank-deficient case pytorch-fid may add 1e-6·I, which moves the result by ~1e-5.
            assert!((got - want).abs() < 1e-4 * want, "n = {n}: {got} vs {want}");
        }
    }

    #[test]
    fn per_class_distances_pair_classes_by_name() {
        // Class "a": the same points in both sets (distance 0); class "b": shifted by 3 in
        // each of 2 dimensions (distance 18); rows of the classes interleaved.
        let pts = [[0.0, 1.0], [2.0, -1.0], [1.0, 0.5], [-1.0, 2.0]];
        let mut fs = Vec::new();
        let mut fr = Vec::new();
        let (mut ns, mut nr) = (Vec::new(), Vec::new());
        for p in pts {
            for (class, shift) in [("a", 0.0), ("b", 3.0)] {
                fs.extend([p[0] + shift, p[1] + shift]);
                ns.push(class.to_string());
                fr.extend(p);
                nr.push(class.to_string());
            }
        }
        let s = class_stats(&fs, &ns, 2).unwrap();
        let r = class_stats(&fr, &nr, 2).unwrap();
        let rows = per_class_distances(&s, &r).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].class.as_str(), rows[0].n_samples), ("a", 4));
        assert!(rows[0].fd.abs() < 1e-9, "{}", rows[0].fd);
        assert!((rows[1].fd - 18.0).abs() < 1e-9, "{}", rows[1].fd);
        // A class the reference lacks is named; a class of one image cannot have a covariance.
        let only_a = class_stats(&fr[..2], &nr[..1], 2);
        assert!(only_a.unwrap_err().to_string().contains("class `a`"));
        let ra = class_stats(&fr[..4], &["a".to_string(), "a".to_string()], 2).unwrap();
        let e = per_class_distances(&s, &ra).unwrap_err().to_string();
        assert!(e.contains("class `b`"), "{e}");
    }
}
