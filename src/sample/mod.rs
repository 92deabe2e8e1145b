//! Generating samples: the reverse chain, one step per call, so that any sampler works with any
//! denoiser (as diffusers' schedulers do).

pub mod ancestral;
pub mod choice;
pub mod classifier_guidance;
pub mod ddim;
pub mod dpm_solver;
pub mod draw;
pub mod edm;
pub mod guidance;
pub mod noise_file;

use burn::tensor::{Device, Tensor, TensorData};

use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::rng::NoiseSource;

pub use ancestral::Ancestral;
pub use choice::{AnySampler, SamplerDefaults, SamplerSpec};
pub use classifier_guidance::{ClassifierGradient, ClassifierGuide, NoisyLogits};
pub use ddim::{Ddim, Spacing};
pub use dpm_solver::DpmSolverPp2M;
pub use draw::{Conditioning, DrawError, Drawing, ImageNoise};
pub use guidance::ClassGuided;

/// The result of one reverse step.
#[derive(Debug, Clone)]
pub struct StepOutput<const D: usize> {
    /// x_{t−1} (or the next visited step's sample).
    pub prev_sample: Tensor<D>,
    /// The prediction of x0 made at this step.
    pub pred_x0: Tensor<D>,
}

/// A reverse-process sampler over a fixed list of visited steps.
pub trait Sampler<const D: usize> {
    /// The steps visited, noisiest first, as 0-based indices of the base (training) chain; the
    /// network is called with these.
    fn timesteps(&self) -> Vec<usize>;

    /// Maps x_t at the `i`-th visited step and the network's output there to the next sample.
    /// `rng` supplies the step's noise where the sampler is stochastic.
    fn step(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D>;

    /// The chain the `i`-th visited step belongs to and its index there (what classifier
    /// guidance reads ᾱ_t and the parameterization from).
    fn chain_at(&self, i: usize) -> (&GaussianDiffusion, usize);

    /// [`Self::step`] guided by `grad` = s·∇ log p(y | x_t). By default the noise prediction is
    /// corrected, ε̂ − √(1−ᾱ_t)·`grad` (Dhariwal & Nichol's Algorithm 2, for deterministic
    /// samplers); ancestral samplers shift the mean instead.
    fn step_guided(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        grad: Tensor<D>,
        rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        let (chain, t) = self.chain_at(i);
        let out = classifier_guidance::eps_corrected(chain, t, model_output, grad);
        self.step(i, x_t, out, rng)
    }
}

/// Standard normal noise of `shape` from the host generator (so a seed gives the same images on
/// every backend with the same dtype).
pub fn host_normal<const D: usize>(
    shape: [usize; D],
    rng: &mut dyn NoiseSource,
    device: &Device,
) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::<D>::from_data(TensorData::new(rng.normal_f32(n), shape), device)
}

/// Runs a sampler from x_T ~ N(0, I) to x_0. `on_step(i, x_t, pred_x0)` sees every step (for
/// progress bars and the denoising chain).
pub fn sample_loop<const D: usize, M: Denoiser<D>, S: Sampler<D>>(
    model: &M,
    sampler: &mut S,
    shape: [usize; D],
    device: &Device,
    rng: &mut dyn NoiseSource,
    on_step: impl FnMut(usize, usize, &Tensor<D>, &Tensor<D>),
) -> Tensor<D> {
    sample_loop_guided(model, sampler, shape, None, device, rng, on_step)
}

/// [`sample_loop`] with classifier guidance toward `guide`'s classes (one per batch item) when
/// given: the classifier sees x_t and the same network timesteps as the model.
pub fn sample_loop_guided<const D: usize, M: Denoiser<D>, S: Sampler<D>>(
    model: &M,
    sampler: &mut S,
    shape: [usize; D],
    guide: Option<(&dyn ClassifierGradient<D>, &[usize])>,
    device: &Device,
    rng: &mut dyn NoiseSource,
    mut on_step: impl FnMut(usize, usize, &Tensor<D>, &Tensor<D>),
) -> Tensor<D> {
    let mut x = host_normal(shape, rng, device);
    let steps = sampler.timesteps();
    for (i, &t) in steps.iter().enumerate() {
        let time = sampler.chain_at(i).0.schedule.network_time(t);
        let tt = Tensor::<1>::from_data(
            TensorData::new(vec![time as f32; shape[0]], [shape[0]]),
            device,
        );
        let out = model.forward(x.clone(), tt.clone());
        let o = match guide {
            Some((g, labels)) => {
                let grad = g.gradient(x.clone(), tt, labels);
                sampler.step_guided(i, x, out, grad, rng)
            }
            None => sampler.step(i, x, out, rng),
        };
        on_step(i, t, &o.prev_sample, &o.pred_x0);
        x = o.prev_sample;
    }
    x
}

/// The network's prediction of x0 at chain step `t` (the same for the whole batch), read
/// through the diffusion's parameterization (variance channels dropped) and post-processed by
/// `clip`.
pub fn predict_x0<const D: usize>(
    diffusion: &GaussianDiffusion,
    x_t: Tensor<D>,
    t: usize,
    model_output: Tensor<D>,
    clip: X0Clip,
) -> Tensor<D> {
    let tv = vec![t; x_t.dims()[0]];
    let (out, _) = diffusion.split_output(model_output);
    let x0 = diffusion
        .parameterization
        .to_x0(&diffusion.schedule, x_t, &tv, out);
    crate::diffusion::apply_clip(x0, clip)
}

/// A diffusion respaced to `kept` steps (0-based, sorted), keeping the base chain's
/// parameterization and variance type.
pub fn respaced(base: &GaussianDiffusion, kept: &[usize]) -> GaussianDiffusion {
    let schedule = base
        .schedule
        .respace(kept)
        .expect("kept steps inside the chain");
    GaussianDiffusion::new(schedule, base.parameterization, base.variance)
}

/// Options shared by the samplers.
#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    /// Post-processing of x̂0.
    pub clip: X0Clip,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self { clip: X0Clip::Clip }
    }
}

#[cfg(test)]
mod tests;
