//! The fidelity / diversity trade-off of classifier-free guidance: for each guidance weight w,
//! samples of every class from a class-conditional model, judged by a classifier trained on the
//! real data — its accuracy on the requested classes (fidelity), the Fréchet distance of its
//! features to the real data's and its Inception-style score (quality and diversity).

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::Serialize;

use super::classifier::{self, Classifier};
use super::frechet::{FeatureStats, frechet_distance};
use crate::data::memory::InMemory;
use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::rng::Rng;
use crate::sample::guidance::labels_for;
use crate::sample::{Conditioning, Ddim, Spacing, ddim::spaced_steps, draw};

/// The judgement of one guidance weight.
#[derive(Debug, Clone, Serialize)]
pub struct GuidanceRow {
    /// The guidance weight w.
    pub w: f64,
    /// The classifier's accuracy against the requested classes.
    pub accuracy: f64,
    /// Classifier Fréchet distance to the reference data.
    pub fd: f64,
    /// Classifier Inception-style score.
    pub inception_score: f64,
    /// Samples judged.
    pub n: usize,
}

/// What a sweep samples with.
pub struct SweepOptions<'a> {
    /// Guidance weights.
    pub weights: &'a [f64],
    /// Samples per class and weight.
    pub per_class: usize,
    /// DDIM steps (η = 0).
    pub steps: usize,
    /// Images per network batch.
    pub batch: usize,
    /// The same seed for every weight, so the weights are compared on the same noise.
    pub seed: u64,
}

/// Samples `per_class` images of each of the model's `classes` classes at every weight and
/// judges them with `judge` against `reference` (the judge's feature statistics of real data).
/// `progress(done, total)` counts sampled images.
#[allow(clippy::too_many_arguments)]
pub fn sweep<M: Denoiser<4>>(
    model: &M,
    diffusion: &GaussianDiffusion,
    classes: usize,
    item_shape: [usize; 3],
    judge: &Classifier,
    reference: &FeatureStats,
    o: &SweepOptions,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<GuidanceRow>> {
    if classes > classifier::CLASSES {
        bail!(
            "the model has {classes} classes, the classifier {}",
            classifier::CLASSES
        );
    }
    let n = o.per_class * classes;
    let labels = labels_for("all", n, classes)?;
    let total = n * o.weights.len();
    let mut rows = Vec::new();
    for (wi, &w) in o.weights.iter().enumerate() {
        let mut rng = Rng::new(o.seed);
        let steps = spaced_steps(diffusion.num_timesteps(), o.steps, Spacing::Linspace);
        let cond = Conditioning {
            labels: &labels,
            classes,
            guidance: w,
            rescale: 0.0,
            learned_variance: diffusion.variance.is_learned(),
        };
        let data = draw::<4, M, Ddim>(
            model,
            || Ddim::new(diffusion, steps.clone(), 0.0, X0Clip::Clip),
            n,
            o.batch,
            &item_shape,
            Some(&cond),
            device,
            &mut rng,
            |done| progress(wi * n + done, total),
        )?;
        let samples = InMemory::new(
            data,
            item_shape.to_vec(),
            labels.clone(),
            classes,
            "samples",
        );
        let as_u8: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
        let accuracy = classifier::accuracy(judge, &samples, &as_u8, 256, device);
        let (f, p, m) = classifier::features(judge, &samples, None, 256, device);
        let stats = FeatureStats::from_features(&f, m, classifier::FEATURES)?;
        rows.push(GuidanceRow {
            w,
            accuracy,
            fd: frechet_distance(&stats, reference)?,
            inception_score: classifier::inception_score(&p, m),
            n: m,
        });
    }
    Ok(rows)
}
