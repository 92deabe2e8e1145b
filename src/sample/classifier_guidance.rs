//! Classifier guidance (Dhariwal & Nichol 2021, §4): sampling toward class y with the gradient
//! g = s·∇_x log p_φ(y | x_t) of a classifier of noisy inputs. Ancestral samplers add Σ·g to
//! the step's mean (their Algorithm 1); the deterministic ones (DDIM, DPM-Solver++) correct the
//! noise prediction, ε̂' = ε̂ − √(1−ᾱ_t)·g (their Algorithm 2), read back into whatever the
//! network predicts. With s = 1 and an exact classifier both follow the score of p(x_t | y).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};

use crate::diffusion::GaussianDiffusion;
use crate::model::{NoisyClassifier, one_hot};

/// s·∇_x log p(y | x_t): the gradient classifier guidance follows.
pub trait ClassifierGradient<const D: usize> {
    /// For every item i of `x_t` (at network timesteps `t`), s·∇ log p(`labels[i]` | x_t\[i\], t\[i\]).
    fn gradient(&self, x_t: Tensor<D>, t: Tensor<1>, labels: &[usize]) -> Tensor<D>;
    /// The classes the classifier tells apart.
    fn classes(&self) -> usize;
}

/// A differentiable classifier of noisy inputs: class logits of x_t at network timesteps t.
pub trait NoisyLogits<const D: usize> {
    /// Logits `[B, classes]`.
    fn logits(&self, x_t: Tensor<D>, t: Tensor<1>) -> Tensor<2>;
    /// The number of classes.
    fn classes(&self) -> usize;
}

impl NoisyLogits<4> for NoisyClassifier {
    fn logits(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<2> {
        NoisyClassifier::logits(self, x_t, t)
    }
    fn classes(&self) -> usize {
        NoisyClassifier::classes(self)
    }
}

impl<const D: usize, C: NoisyLogits<D>> NoisyLogits<D> for &C {
    fn logits(&self, x_t: Tensor<D>, t: Tensor<1>) -> Tensor<2> {
        (*self).logits(x_t, t)
    }
    fn classes(&self) -> usize {
        (*self).classes()
    }
}

/// Guidance by a differentiable classifier at scale s: the gradient of log softmax at the
/// requested class, by automatic differentiation through the classifier.
pub struct ClassifierGuide<C> {
    classifier: C,
    scale: f64,
}

impl<C> ClassifierGuide<C> {
    /// `classifier` (its parameters on an autodiff device, or free of parameters) at scale
    /// `scale`.
    pub fn new(classifier: C, scale: f64) -> Self {
        Self { classifier, scale }
    }
}

impl<const D: usize, C: NoisyLogits<D>> ClassifierGradient<D> for ClassifierGuide<C> {
    fn gradient(&self, x_t: Tensor<D>, t: Tensor<1>, labels: &[usize]) -> Tensor<D> {
        let device: Device = x_t.device();
        let x = x_t.inner().autodiff().require_grad();
        let logp = log_softmax(self.classifier.logits(x.clone(), t.inner().autodiff()), 1);
        let pick = one_hot(labels, self.classifier.classes(), &device).autodiff();
        let grads = (logp * pick).sum().backward();
        let g = x
            .grad(&grads)
            .expect("the input requires its gradient")
            .inner();
        g * self.scale
    }
    fn classes(&self) -> usize {
        self.classifier.classes()
    }
}

/// The network output `model_output` at x_t (chain index `t` of `chain`) with the noise it
/// implies corrected by −√(1−ᾱ_t)·`grad`; a learned variance's channels are left as they are.
pub fn eps_corrected<const D: usize>(
    chain: &GaussianDiffusion,
    t: usize,
    model_output: Tensor<D>,
    grad: Tensor<D>,
) -> Tensor<D> {
    let s = &chain.schedule;
    // At ᾱ_t = 0 (a zero-terminal-SNR chain's last step) x_t is pure noise, ε = x_t exactly:
    // nothing to correct, and the x0 and v outputs would need an infinite correction.
    if s.alphas_cumprod[t] <= 0.0 {
        return model_output;
    }
    let k = -(1.0 - s.alphas_cumprod[t]).sqrt() * chain.parameterization.output_per_eps(s, t);
    match chain.split_output(model_output) {
        (out, None) => out + grad * k,
        (out, Some(var)) => Tensor::cat(vec![out + grad * k, var], 1),
    }
}
