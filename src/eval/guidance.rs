//! The fidelity / diversity trade-off of guidance: for each classifier-free guidance weight w
//! (of a class-conditional model) and each classifier-guidance scale s (with a noise-aware
//! classifier, of a conditional or unconditional model), samples of every class judged by a
//! classifier trained on the real data — its accuracy on the requested classes (fidelity), the
//! Fréchet distance of its features to the real data's and its Inception-style score (quality
//! and diversity).

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::Serialize;

use super::frechet::{FeatureStats, frechet_distance};
use super::judge::{self, Judge};
use crate::data::memory::InMemory;
use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::model::NoisyClassifier;
use crate::sample::guidance::labels_for;
use crate::sample::{
    ClassifierGradient, ClassifierGuide, Conditioning, Ddim, Drawing, Spacing, ddim::spaced_steps,
};

/// The judgement of one guidance weight.
#[derive(Debug, Clone, Serialize)]
pub struct GuidanceRow {
    /// The classifier-free guidance weight w.
    pub w: f64,
    /// The classifier-guidance scale s (absent: no classifier guidance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier_scale: Option<f64>,
    /// The classifier's accuracy against the requested classes.
    pub accuracy: f64,
    /// The judging classifier's Fréchet distance to the reference data.
    pub fd: f64,
    /// The judging classifier's Inception-style score.
    pub inception_score: f64,
    /// Samples judged.
    pub n: usize,
}

/// What a sweep samples with.
pub struct SweepOptions<'a> {
    /// Classifier-free guidance weights (all 0 for an unconditional model).
    pub weights: &'a [f64],
    /// Classifier-guidance scales, with the noise-aware classifier that guides (sampling with
    /// every weight at every scale).
    pub classifier: Option<(&'a NoisyClassifier, &'a [f64])>,
    /// Samples per class and weight.
    pub per_class: usize,
    /// DDIM steps (η = 0).
    pub steps: usize,
    /// Images per network batch.
    pub batch: usize,
    /// The same seed for every weight, so the weights are compared on the same noise.
    pub seed: u64,
}

/// Samples `per_class` images of each of `classes` classes (the model's, or the guiding
/// classifier's for an unconditional model) at every weight and scale and judges them with `judge` against `reference` (the judge's feature statistics of real data).
/// `progress(done, total)` counts sampled images.
#[allow(clippy::too_many_arguments)]
pub fn sweep<M: Denoiser<4>>(
    model: &M,
    diffusion: &GaussianDiffusion,
    classes: usize,
    item_shape: [usize; 3],
    judge: &Judge,
    reference: &FeatureStats,
    o: &SweepOptions,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<GuidanceRow>> {
    if classes > judge::CLASSES {
        bail!(
            "the model has {classes} classes, the classifier {}",
            judge::CLASSES
        );
    }
    let n = o.per_class * classes;
    let labels = labels_for("all", n, classes)?;
    let scales: Vec<Option<f64>> = match o.classifier {
        Some((_, s)) => s.iter().map(|&v| Some(v)).collect(),
        None => vec![None],
    };
    let total = n * o.weights.len() * scales.len();
    let mut rows = Vec::new();
    let mut k = 0;
    for &w in o.weights {
        for &scale in &scales {
            let mut rng = crate::rng::streams::guided_samples(o.seed);
            let steps = spaced_steps(diffusion.num_timesteps(), o.steps, Spacing::Linspace);
            let guide = o
                .classifier
                .zip(scale)
                .map(|((c, _), s)| ClassifierGuide::new(c, s));
            let cond = Conditioning {
                labels: &labels,
                classes,
                guidance: w,
                rescale: 0.0,
                learned_variance: diffusion.variance.is_learned(),
                classifier: guide.as_ref().map(|g| g as &dyn ClassifierGradient<4>),
            };
            let drawing = Drawing {
                model,
                item_shape: &item_shape,
                cond: Some(&cond),
                device,
            };
            let data = drawing.all(
                || Ddim::new(diffusion, steps.clone(), 0.0, X0Clip::Clip),
                (n, o.batch),
                &mut rng,
                |done| progress(k * n + done, total),
            )?;
            k += 1;
            let samples = InMemory::new(
                data,
                item_shape.to_vec(),
                labels.clone(),
                classes,
                "samples",
            );
            let as_u8: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
            let accuracy = judge::accuracy(judge, &samples, &as_u8, 256, device);
            let (f, p, m) = judge::features(judge, &samples, None, 256, device);
            let stats = FeatureStats::from_features(&f, m, judge::FEATURES)?;
            rows.push(GuidanceRow {
                w,
                classifier_scale: scale,
                accuracy,
                fd: frechet_distance(&stats, reference)?,
                inception_score: judge::inception_score(&p, m),
                n: m,
            });
        }
    }
    Ok(rows)
}
