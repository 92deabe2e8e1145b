//! Sampling from code: load a trained model (a run, one of its checkpoints, a diffusers folder or
//! a fetched Hub repo id) and draw images or points from it in a few lines.
//!
//! ```no_run
//! use ddpm::{ImagePipeline, SampleOptions};
//!
//! let pipeline = ImagePipeline::load("runs/mnist")?;
//! let samples = pipeline.sample(&SampleOptions::ddim(16, 50))?;
//! samples.save_pngs("samples/")?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};

use crate::config::RunConfig;
use crate::data::Dataset;
use crate::data::memory::InMemory;
use crate::diffusion::edm::Preconditioned;
use crate::diffusion::{GaussianDiffusion, X0Clip};
use crate::error::{ErrorKind, Refused};
use crate::eval::nll::{NllOptions, NllReport};
use crate::model::{Mlp, UNet};
use crate::run::load::{Loaded, load_for_inference};
use crate::run::net::Net;
use crate::sample::noise_file::NoiseFile;
use crate::sample::{
    AnySampler, ClassifierGradient, Conditioning, DrawError, Drawing, ImageNoise, SamplerSpec,
};

/// A trained network with its chain, ready to sample.
pub struct Pipeline<M, const D: usize> {
    loaded: Loaded<M>,
    device: Device,
}

/// A pipeline for images (the U-Net).
pub type ImagePipeline = Pipeline<UNet, 4>;

/// A pipeline for 2-D points (the MLP).
pub type PointPipeline = Pipeline<Mlp, 2>;

/// What to sample.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// How many samples.
    pub n: usize,
    /// The sampler and its steps.
    pub sampler: SamplerSpec,
    /// The seed: sample i always comes from the stream (seed, i), whatever `batch_size`.
    pub seed: u64,
    /// Samples per network call.
    pub batch_size: usize,
    /// A class-conditional model's class for each sample (`None`: unconditional).
    pub classes: Option<Vec<usize>>,
    /// Classifier-free guidance weight w (0: plain conditional sampling).
    pub guidance: f64,
    /// Guidance rescale φ (Lin et al. 2024, eq. 16; 0: none).
    pub guidance_rescale: f64,
    /// x̂0 post-processing (clipping to [−1, 1] by default, as the images were).
    pub clip: X0Clip,
}

impl SampleOptions {
    /// `n` samples with DDIM (η = 0) in `steps` steps, seed 0, batches of up to 64.
    pub fn ddim(n: usize, steps: usize) -> Self {
        Self::with_sampler(n, "ddim", steps)
    }

    /// `n` samples with Ho et al.'s ancestral sampler (Algorithm 2) on a chain respaced to
    /// `steps` steps.
    pub fn ancestral(n: usize, steps: usize) -> Self {
        Self::with_sampler(n, "ddpm", steps)
    }

    /// `n` samples with DPM-Solver++(2M) in `steps` steps.
    pub fn dpm_solver(n: usize, steps: usize) -> Self {
        Self::with_sampler(n, "dpmpp2m", steps)
    }

    fn with_sampler(n: usize, name: &str, steps: usize) -> Self {
        Self {
            n,
            sampler: SamplerSpec {
                name: name.into(),
                steps,
                eta: 0.0,
                spacing: None,
                respace: None,
                edm: Default::default(),
            },
            seed: 0,
            batch_size: 64,
            classes: None,
            guidance: 0.0,
            guidance_rescale: 0.0,
            clip: X0Clip::Clip,
        }
    }

    /// The same options with `seed`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The same options for a class-conditional model: sample i of class `classes[i % len]`,
    /// with classifier-free guidance weight `guidance`.
    ///
    /// ```
    /// let options = ddpm::SampleOptions::dpm_solver(5, 20).classes(&[3, 7], 2.0).seed(9);
    /// assert_eq!(options.classes, Some(vec![3, 7, 3, 7, 3]));
    /// assert_eq!((options.guidance, options.seed, options.sampler.steps), (2.0, 9, 20));
    /// ```
    pub fn classes(mut self, classes: &[usize], guidance: f64) -> Self {
        self.classes = Some((0..self.n).map(|i| classes[i % classes.len()]).collect());
        self.guidance = guidance;
        self
    }
}

/// Samples on the host: `shape[0]` of them, row-major, images in [−1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// The values.
    pub values: Vec<f32>,
    /// `[n, channels, height, width]` for images, `[n, 2]` for points.
    pub shape: Vec<usize>,
}

impl Samples {
    /// How many samples.
    pub fn len(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image `i` as 8-bit pixels (gray or RGB, rows of `width`), [−1, 1] mapped to 0..=255.
    pub fn image(&self, i: usize) -> Result<image::DynamicImage> {
        let [_, c, h, w] = self.image_shape()?;
        if i >= self.len() {
            bail!("image {i}: there are {} samples", self.len());
        }
        let pixels = crate::viz::grid::image_pixels(&self.values, [self.len(), c, h, w], i);
        let (w, h) = (w as u32, h as u32);
        Ok(match c {
            1 => image::DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w, h, pixels).context("pixels")?,
            ),
            _ => image::DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(w, h, pixels).context("pixels")?,
            ),
        })
    }

    /// Writes image i to `dir/NNNNNN.png` for every i (creating `dir`).
    pub fn save_pngs(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let [n, c, h, w] = self.image_shape()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for i in 0..n {
            let pixels = crate::viz::grid::image_pixels(&self.values, [n, c, h, w], i);
            let png = crate::viz::grid::encode_png(w, h, c, &pixels)?;
            crate::files::write_atomic(&dir.join(format!("{i:06}.png")), &png)?;
        }
        Ok(())
    }

    /// The samples as a dataset (each value rounded to the 8-bit grid an image file would
    /// hold), to evaluate or to train on.
    ///
    /// ```
    /// use ddpm::{Dataset, Samples};
    ///
    /// let samples = Samples { values: vec![-1.0, 0.1, 0.5, 1.0], shape: vec![1, 1, 2, 2] };
    /// let data = samples.to_dataset()?;
    /// let mut pixels = [0.0f32; 4];
    /// data.get(0, &mut pixels);
    /// // 0.1 → 140/127.5 − 1 and 0.5 → 191/127.5 − 1: the values a PNG would give back.
    /// assert_eq!(pixels, [-1.0, 140.0 / 127.5 - 1.0, 191.0 / 127.5 - 1.0, 1.0]);
    /// assert_eq!(samples.image(0)?.width(), 2);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn to_dataset(&self) -> Result<InMemory> {
        let item_shape = self.shape[1..].to_vec();
        let values = match self.shape.len() {
            4 => self
                .values
                .iter()
                .map(|&v| crate::viz::grid::to_u8(v) as f32 / 127.5 - 1.0)
                .collect(),
            _ => self.values.clone(),
        };
        InMemory::try_new(values, item_shape, Vec::new(), 0, "samples")
    }

    fn image_shape(&self) -> Result<[usize; 4]> {
        match self.shape[..] {
            [n, c, h, w] if c == 1 || c == 3 => Ok([n, c, h, w]),
            _ => bail!(
                "samples of shape {:?} are not gray or RGB images",
                self.shape
            ),
        }
    }
}

impl<M: Net<D>, const D: usize> Pipeline<M, D> {
    /// Loads a run directory (its newest complete checkpoint), a checkpoint directory, a
    /// diffusers model folder or a Hub repo id fetched before (`ddpm fetch`), with its averaged
    /// (EMA) weights, on the CPU.
    pub fn load(path: impl AsRef<Path>) -> crate::Result<Self> {
        Self::load_on(path, &crate::device::by_name("cpu")?, false)
    }

    /// As [`Self::load`], on `device`; `raw` takes the trained weights instead of their average.
    pub fn load_on(path: impl AsRef<Path>, device: &Device, raw: bool) -> crate::Result<Self> {
        let loaded = load_for_inference::<M, D>(path.as_ref(), raw, device)?;
        Ok(Self {
            loaded,
            device: device.clone(),
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &RunConfig {
        &self.loaded.config
    }

    /// The network.
    pub fn model(&self) -> &M {
        &self.loaded.model
    }

    /// Whether the model is a VDM run's (its bound is prior + decoder + diffusion loss, taken
    /// from draws of t).
    pub fn is_vdm(&self) -> bool {
        self.loaded.vdm.is_some()
    }

    /// The chain the samplers walk.
    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.loaded.diffusion
    }

    /// Draws `options.n` samples. Non-finite samples are an error of kind
    /// [`crate::ErrorKind::NonFinite`].
    pub fn sample(&self, options: &SampleOptions) -> crate::Result<Samples> {
        Ok(self.draw(options)?)
    }

    /// The model as the chain's denoiser (for an EDM run, the network inside its
    /// preconditioning).
    pub fn denoiser(&self) -> Preconditioned<'_, M> {
        self.loaded.denoiser()
    }

    fn draw(&self, options: &SampleOptions) -> Result<Samples> {
        let item_shape = self.config().item_shape()?;
        let item: usize = item_shape.iter().product();
        // All of them are held at once: at most 2³¹ values (8 GiB).
        let total = options.n.checked_mul(item).filter(|&v| v <= 1 << 31);
        let Some(total) = total else {
            return Err(Refused::error(
                ErrorKind::Config,
                format!(
                    "{} samples of {item} values are too many to hold at once (at most 2³¹ \
                     values); draw them in parts (another seed each) or write them as they come \
                     with `draw_rounds`",
                    options.n
                ),
            ));
        };
        let mut values = vec![0.0f32; total];
        let write = |first: usize, round: &[f32]| {
            values[first * item..first * item + round.len()].copy_from_slice(round);
            Ok(())
        };
        self.draw_rounds(options, &DrawExtras::default(), |_, _, _, _, _| {}, write)
            .map_err(|e| match e {
                DrawError::NonFinite { .. } => Refused::error(ErrorKind::NonFinite, e.to_string()),
                DrawError::Refused(m) => Refused::error(ErrorKind::Config, m),
                DrawError::Failed(e) => e,
            })?;
        let mut shape = vec![options.n];
        shape.extend(item_shape);
        Ok(Samples { values, shape })
    }

    /// Draws `options.n` samples with `extras`, in rounds of one batch per process (MPI):
    /// `write(first, values)` takes each round's samples on every process as they come, and
    /// `on_step(first, i, t, x_t, x̂0)` sees every step of this process's batches. Sample i's
    /// noise is its own stream (`options.seed`, i), or the file's.
    pub fn draw_rounds(
        &self,
        options: &SampleOptions,
        extras: &DrawExtras<'_, D>,
        on_step: impl FnMut(usize, usize, usize, &Tensor<D>, &Tensor<D>),
        write: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<(), DrawError> {
        let cfg = &self.loaded.config;
        let item_shape = cfg.item_shape()?;
        let (model, diffusion) = (&self.loaded.denoiser(), &self.loaded.diffusion);
        let defaults = cfg.sampler_defaults.as_ref();
        let refuse = |m: String| Err(DrawError::Refused(m));
        // The classes to draw: the model's, or for an unconditional model a guide's.
        let known = cfg.num_classes().or(extras.guide.map(|g| g.classes()));
        let classes = match (&options.classes, known) {
            (Some(l), Some(k)) => {
                if let Some(bad) = l.iter().find(|&&c| c >= k) {
                    return refuse(format!("class {bad}: the model has classes 0..={}", k - 1));
                }
                if l.len() != options.n {
                    return refuse(format!("{} classes for {} samples", l.len(), options.n));
                }
                Some((l.as_slice(), k))
            }
            (Some(_), None) => {
                return refuse("classes: this model was trained without classes".into());
            }
            (None, _) => None,
        };
        let cond = classes.map(|(labels, classes)| Conditioning {
            labels,
            classes,
            guidance: options.guidance,
            rescale: options.guidance_rescale,
            learned_variance: diffusion.variance.is_learned(),
            classifier: extras.guide,
        });
        let drawing = Drawing {
            model,
            item_shape: &item_shape,
            cond: cond.as_ref(),
            device: &self.device,
        };
        let new_sampler = || -> Result<AnySampler, DrawError> {
            let mut s = AnySampler::build(&options.sampler, diffusion, options.clip, defaults)
                .map_err(|e| DrawError::Refused(e.0))?;
            if let (AnySampler::Ancestral(s), Some(v)) = (&mut s, &extras.variance) {
                s.set_variance(v.clone());
            }
            Ok(s)
        };
        let noise = match extras.noise_file {
            Some(f) => ImageNoise::File(f),
            None => ImageNoise::Seeded(options.seed),
        };
        drawing.in_rounds(
            new_sampler,
            (options.n, options.batch_size),
            &noise,
            &crate::dist::world(),
            on_step,
            write,
        )
    }
}

/// What a drawing may add to [`SampleOptions`]: classifier guidance, another variance for the
/// ancestral sampler, the noise from a file (`ddpm sample` offers all three).
pub struct DrawExtras<'a, const D: usize> {
    /// Classifier guidance: a noise-aware classifier's gradient ∇ log p(y | x_t), its scale
    /// inside (`ddpm train-classifier`); its classes serve an unconditional model.
    pub guide: Option<&'a dyn ClassifierGradient<D>>,
    /// The ancestral sampler's σ² at each of its steps instead of the chain's fixed ones (e.g.
    /// Analytic-DPM's, `diffusion::analytic`).
    pub variance: Option<Vec<f64>>,
    /// x_T and every step's noise from a file instead of each sample's seeded stream.
    pub noise_file: Option<&'a NoiseFile>,
}

impl<const D: usize> Default for DrawExtras<'_, D> {
    fn default() -> Self {
        Self {
            guide: None,
            variance: None,
            noise_file: None,
        }
    }
}

impl<M: Net<4>> Pipeline<M, 4> {
    /// The variational bound of `data`'s images in bits/dim (Ho et al. eq. 5): with
    /// `options.t_samples` = 0 every term at every t, else an unbiased estimate from that many
    /// draws of t per image (the only way for a VDM model).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ddpm::{ImagePipeline, InMemory, NllOptions, RunConfig, SampleOptions};
    ///
    /// // 16 images 8×8 of a vertical bar, and the tiny U-Net trained on them for 3 steps.
    /// let bars: Vec<f32> = (0..16 * 64).map(|i| if (i % 8) == (i / 64) % 8 { 1.0 } else { -1.0 }).collect();
    /// let data = InMemory::try_new(bars, vec![1, 8, 8], Vec::new(), 0, "bars")?;
    /// let dir = tempfile::tempdir()?;
    /// let config = RunConfig {
    ///     preset: "tiny".into(), steps: 3, batch_size: 8, sample_count: 4,
    ///     out: dir.path().join("run").display().to_string(), ..RunConfig::default()
    /// };
    /// let run = ddpm::train_dataset(&config, Arc::new(data), false, true)?;
    /// let pipeline = ImagePipeline::load(&run.run)?;
    /// let samples = pipeline.sample(&SampleOptions::ddim(4, 5))?;
    /// let options = NllOptions { limit: None, batch: 4, seed: 0, t_samples: 2 };
    /// let report = pipeline.bits_per_dim(&samples.to_dataset()?, options)?;
    /// assert_eq!(report.n, 4);
    /// assert!(report.bpd.is_finite() && report.bpd > 0.0);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn bits_per_dim(
        &self,
        data: &dyn Dataset,
        options: NllOptions,
    ) -> crate::Result<NllReport> {
        Ok(self.bound(data, options, || {})?)
    }

    /// As [`Self::bits_per_dim`], calling `on_call` after each batch's network evaluation
    /// (to follow the progress).
    pub fn bits_per_dim_with(
        &self,
        data: &dyn Dataset,
        options: NllOptions,
        on_call: impl FnMut(),
    ) -> crate::Result<NllReport> {
        Ok(self.bound(data, options, on_call)?)
    }

    fn bound(
        &self,
        data: &dyn Dataset,
        options: NllOptions,
        on_call: impl FnMut(),
    ) -> Result<NllReport> {
        let want = self.config().item_shape()?;
        if data.item_shape() != want {
            bail!(
                "{}: items are {:?}, the model takes {want:?}",
                data.describe(),
                data.item_shape()
            );
        }
        let (model, diffusion) = (&self.loaded.denoiser(), &self.loaded.diffusion);
        let vdm = self.loaded.vdm.as_ref();
        let report =
            crate::eval::nll::bound(diffusion, vdm, model, data, options, &self.device, on_call)?;
        if let Some((term, v)) = report.first_non_finite() {
            return Err(Refused::error(
                ErrorKind::NonFinite,
                format!(
                    "the {term} is {v}, not a number of bits: the network gives non-finite \
                     outputs on these images (diverged or damaged weights?)"
                ),
            ));
        }
        Ok(report)
    }
}
