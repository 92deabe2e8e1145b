//! Drawing many samples in batches onto the host: of given classes with guidance (the
//! class-conditional model's own, a classifier's gradient, or both), with one noise stream for
//! the whole drawing or one per image, on one process or split over several.

use anyhow::Result;
use burn::tensor::{Device, Tensor};

use super::noise_file::NoiseFile;
use super::{ClassGuided, ClassifierGradient, Sampler, sample_loop_guided};
use crate::diffusion::Denoiser;
use crate::dist::World;
use crate::rng::{ItemRngs, NoiseSource};

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

/// Why a drawing stopped.
#[derive(Debug)]
pub enum DrawError {
    /// The request cannot be drawn (guidance without classes, a noise file too short); the
    /// message names the setting.
    Refused(String),
    /// Images `first..first + n` came out NaN or infinite.
    NonFinite {
        /// The batch's first image.
        first: usize,
        /// Its images.
        n: usize,
    },
    /// Anything else (a collective across processes, the caller's writing).
    Failed(anyhow::Error),
}

impl std::fmt::Display for DrawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) => f.write_str(m),
            Self::NonFinite { first, n } => write!(
                f,
                "sampling gave non-finite values (NaN or ±∞) for images {first}..{}",
                first + n
            ),
            Self::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for DrawError {}

impl From<anyhow::Error> for DrawError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

/// Where each image's noise (its x_T and every stochastic step's) comes from when every image
/// has its own.
pub enum ImageNoise<'a> {
    /// Image i's own stream ([`crate::rng::streams::sample_item`]): the same images whatever
    /// the batch size or the number of processes.
    Seeded(u64),
    /// A file holding every image's noise.
    File(&'a NoiseFile),
}

/// What every batch of a drawing shares: the model, the shape of one item, the classes and
/// guidance, the device.
pub struct Drawing<'a, const D: usize, M> {
    /// The network.
    pub model: &'a M,
    /// The shape of one item.
    pub item_shape: &'a [usize],
    /// The classes of the images to draw (all of them) and the guidance toward them.
    pub cond: Option<&'a Conditioning<'a, D>>,
    /// Where the network runs.
    pub device: &'a Device,
}

impl<const D: usize, M: Denoiser<D>> Drawing<'_, D, M> {
    /// Images `first..first + n` in one batch with `sampler`, their noise from `rng`;
    /// `on_step(i, t, x_t, x̂0)` sees every step.
    pub fn batch<S: Sampler<D>>(
        &self,
        sampler: &mut S,
        (first, n): (usize, usize),
        rng: &mut dyn NoiseSource,
        on_step: impl FnMut(usize, usize, &Tensor<D>, &Tensor<D>),
    ) -> Result<Vec<f32>, DrawError> {
        let (model, device) = (self.model, self.device);
        let mut shape = [0usize; D];
        shape[0] = n;
        shape[1..].copy_from_slice(self.item_shape);
        let x = match self.cond {
            Some(c) => {
                let labels = &c.labels[first..first + n];
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
                    )
                    .map_err(|e| DrawError::Refused(format!("{e:#}")))?;
                    sample_loop_guided(&guided, sampler, shape, guide, device, rng, on_step)
                } else {
                    if c.guidance != 0.0 {
                        return Err(DrawError::Refused(
                            "classifier-free guidance needs a class-conditional model (train \
                             with --class-cond)"
                                .into(),
                        ));
                    }
                    sample_loop_guided(model, sampler, shape, guide, device, rng, on_step)
                }
            }
            None => sample_loop_guided(model, sampler, shape, None, device, rng, on_step),
        };
        Ok(x.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?)
    }

    /// `n` images in batches of at most `batch`, each batch with a fresh sampler from
    /// `new_sampler` and its noise from the one stream `rng`, row-major on the host;
    /// `on_batch(done)` follows the progress.
    pub fn all<S: Sampler<D>>(
        &self,
        mut new_sampler: impl FnMut() -> S,
        (n, batch): (usize, usize),
        rng: &mut dyn NoiseSource,
        mut on_batch: impl FnMut(usize),
    ) -> Result<Vec<f32>, DrawError> {
        let mut data = Vec::with_capacity(n * self.item_shape.iter().product::<usize>());
        let mut done = 0;
        while done < n {
            let m = batch.max(1).min(n - done);
            let x = self.batch(&mut new_sampler(), (done, m), rng, |_, _, _, _| {})?;
            data.extend(x);
            done += m;
            on_batch(done);
        }
        Ok(data)
    }

    /// `n` images in batches of at most `batch`, every image with its own `noise`, refusing
    /// non-finite ones. With several processes the batches go in rounds of one per rank (rank
    /// r draws batches r, r + N, …) and each round's images are summed into every rank's copy
    /// (each image is non-zero on one rank only); `write(first, values)` takes each round's
    /// images on every rank before the next round starts, so memory holds one round.
    /// `on_step(first, i, t, x_t, x̂0)` sees every step of this rank's batches.
    pub fn in_rounds<S: Sampler<D>>(
        &self,
        mut new_sampler: impl FnMut() -> Result<S, DrawError>,
        (n, batch): (usize, usize),
        noise: &ImageNoise,
        world: &World,
        mut on_step: impl FnMut(usize, usize, usize, &Tensor<D>, &Tensor<D>),
        mut write: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<(), DrawError> {
        let item: usize = self.item_shape.iter().product();
        let bs = batch.max(1);
        let n_batches = n.div_ceil(bs);
        for round in (0..n_batches).step_by(world.size.max(1)) {
            let round_first = round * bs;
            let round_n = (bs * world.size.max(1)).min(n - round_first);
            let mut values = vec![0.0f32; round_n * item];
            let b = round + world.rank;
            if b < n_batches {
                let (first, m) = (b * bs, bs.min(n - b * bs));
                let step =
                    |i: usize, t: usize, x: &Tensor<D>, x0: &Tensor<D>| on_step(first, i, t, x, x0);
                let mut sampler = new_sampler()?;
                let x = match noise {
                    ImageNoise::Seeded(seed) => {
                        let mut rng = ItemRngs::for_items(*seed, first, m);
                        self.batch(&mut sampler, (first, m), &mut rng, step)?
                    }
                    ImageNoise::File(file) => {
                        let mut rng = file.for_items(first, m);
                        let x = self.batch(&mut sampler, (first, m), &mut rng, step)?;
                        rng.check()
                            .map_err(|e| DrawError::Refused(format!("{e:#}")))?;
                        x
                    }
                };
                if x.iter().any(|v| !v.is_finite()) {
                    return Err(DrawError::NonFinite { first, n: m });
                }
                let at = (first - round_first) * item;
                values[at..at + m * item].copy_from_slice(&x);
            }
            world.sum_f32(&mut values)?;
            write(round_first, &values)?;
        }
        Ok(())
    }
}
