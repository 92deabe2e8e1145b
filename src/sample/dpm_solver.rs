//! DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
//! diffusion ODE in the data-prediction form, for ~20-step sampling.

use burn::tensor::Tensor;

use super::{Sampler, StepOutput, predict_x0};
use crate::diffusion::{GaussianDiffusion, X0Clip};
use crate::rng::NoiseSource;

/// DPM-Solver++(2M) over a list of steps, with λ_t = log(α_t/σ_t), α_t = √ᾱ_t,
/// σ_t = √(1−ᾱ_t). The final step lands on t = 0's x̂0 (denoised output).
pub struct DpmSolverPp2M {
    diffusion: GaussianDiffusion,
    steps: Vec<usize>,
    clip: X0Clip,
    /// The previous step's x̂0, flattened (any rank: it is reshaped like the next x_t).
    prev_x0: Option<Tensor<1>>,
    prev_h: f64,
}

impl DpmSolverPp2M {
    /// A solver visiting `steps` (ascending indices of `base`'s chain).
    pub fn new(base: &GaussianDiffusion, steps: Vec<usize>, clip: X0Clip) -> Self {
        Self {
            diffusion: base.clone(),
            steps,
            clip,
            prev_x0: None,
            prev_h: 0.0,
        }
    }

    fn lambda(&self, t: usize) -> (f64, f64, f64) {
        let ab = self.diffusion.schedule.alphas_cumprod[t];
        let (a, s) = (ab.sqrt(), (1.0 - ab).sqrt());
        (a, s, (a / s).ln())
    }

    fn step_generic<const D: usize>(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        prev: Option<Tensor<D>>,
    ) -> (StepOutput<D>, Tensor<D>) {
        let n = self.steps.len();
        let t = self.steps[n - 1 - i];
        let x0 = predict_x0(&self.diffusion, x_t.clone(), t, model_output, self.clip);
        if i + 1 == n {
            // Last visited step: return the denoised prediction.
            return (
                StepOutput {
                    prev_sample: x0.clone(),
                    pred_x0: x0.clone(),
                },
                x0,
            );
        }
        let (_, s_t, l_t) = self.lambda(t);
        let (a_s, s_s, l_s) = self.lambda(self.steps[n - 2 - i]);
        let h = l_s - l_t;
        // D = x̂0 (first order) or (1 + 1/(2r)) x̂0_t − 1/(2r) x̂0_prev with r = h_prev/h. The
        // update into the final visited step stays first order ("lower order final", as
        // diffusers does): its h is typically far larger than the previous one, and the
        // extrapolation weight 1/(2r) would blow up.
        let last_update = i + 2 == n;
        let d = match prev {
            Some(p) if self.prev_h > 0.0 && !last_update => {
                let r = self.prev_h / h;
                x0.clone() * (1.0 + 0.5 / r) - p * (0.5 / r)
            }
            _ => x0.clone(),
        };
        let prev_sample = x_t * (s_s / s_t) - d * (a_s * ((-h).exp() - 1.0));
        self.prev_h = h;
        (
            StepOutput {
                prev_sample,
                pred_x0: x0.clone(),
            },
            x0,
        )
    }
}

impl<const D: usize> Sampler<D> for DpmSolverPp2M {
    fn timesteps(&self) -> Vec<usize> {
        self.steps.iter().rev().copied().collect()
    }
    fn chain_at(&self, i: usize) -> (&GaussianDiffusion, usize) {
        (&self.diffusion, self.steps[self.steps.len() - 1 - i])
    }
    fn step(
        &mut self,
        i: usize,
        x_t: Tensor<D>,
        model_output: Tensor<D>,
        _rng: &mut dyn NoiseSource,
    ) -> StepOutput<D> {
        let prev = match self.prev_x0.take() {
            Some(p) if i > 0 => Some(p.reshape(x_t.dims())),
            _ => None,
        };
        let (o, x0) = self.step_generic(i, x_t, model_output, prev);
        self.prev_x0 = Some(x0.flatten(0, D - 1));
        o
    }
}
