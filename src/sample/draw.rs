//! Drawing many samples in batches, optionally of given classes with guidance, onto the host.

use anyhow::Result;
use burn::tensor::Device;

use super::{ClassGuided, ClassifierGradient, Sampler, sample_loop, sample_loop_guided};
use crate::diffusion::Denoiser;
use crate::rng::NoiseSource;

/// The classes to draw, and how strongly to guide toward them: by the class-conditional model's
/// own classes (classifier-free guidance), by a classifier's gradient, or both.
pub struct Conditioning<'a, const D: usize> {
    /// One class per item to draw.
    pub labels: &'a [usize],
    /// The class count (the model's, when it is class-conditional; else the classifier's).
    pub classes: usize,
    /// Classifier-free guidance weight (0: plain conditional sampling).
    pub guidance: f64,
    /// Guidance rescale φ (0: none).
    pub rescale: f64,
    /// The model's second half of output channels is a variance (left unguided).
    pub learned_variance: bool,
    /// Classifier guidance: s·∇ log p(y | x_t) (the scale inside).
    pub classifier: Option<&'a dyn ClassifierGradient<D>>,
}

/// Draws `n` items of `item_shape` in batches of at most `batch`, each batch with a fresh
/// sampler from `new_sampler` and its noise from `rng`; returns them row-major on the host.
/// `on_batch(done)` follows the progress.
#[allow(clippy::too_many_arguments)]
pub fn draw<const D: usize, M: Denoiser<D>, S: Sampler<D>>(
    model: &M,
    mut new_sampler: impl FnMut() -> S,
    n: usize,
    batch: usize,
    item_shape: &[usize],
    cond: Option<&Conditioning<D>>,
    device: &Device,
    rng: &mut dyn NoiseSource,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<f32>> {
    let mut data = Vec::with_capacity(n * item_shape.iter().product::<usize>());
    let mut shape = [0usize; D];
    shape[1..].copy_from_slice(item_shape);
    let mut done = 0;
    while done < n {
        shape[0] = batch.max(1).min(n - done);
        let mut sampler = new_sampler();
        let x = match cond {
            Some(c) => {
                let labels = &c.labels[done..done + shape[0]];
                let guide = c.classifier.map(|g| (g, labels));
                if model.num_classes().is_some() {
                    let guided = ClassGuided::new(
                        model,
                        c.classes,
                        labels,
                        c.guidance,
                        c.rescale,
                        c.learned_variance,
                        device,
                    )?;
                    sample_loop_guided(
                        &guided,
                        &mut sampler,
                        shape,
                        guide,
                        device,
                        rng,
                        |_, _, _, _| {},
                    )
                } else {
                    if c.guidance != 0.0 {
                        anyhow::bail!(
                            "classifier-free guidance needs a class-conditional model (train with --class-cond)"
                        );
                    }
                    sample_loop_guided(
                        model,
                        &mut sampler,
                        shape,
                        guide,
                        device,
                        rng,
                        |_, _, _, _| {},
                    )
                }
            }
            None => sample_loop(model, &mut sampler, shape, device, rng, |_, _, _, _| {}),
        };
        data.extend(
            x.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
        done += shape[0];
        on_batch(done);
    }
    Ok(data)
}
