//! Training objectives: L_simple (Ho et al. eq. 14), the variational bound, the hybrid of
//! Improved DDPM, and per-timestep loss weightings.

use burn::tensor::Tensor;

use super::likelihood::vb_terms_bpd;
use super::{GaussianDiffusion, X0Clip, extract, mean_flat};

/// Which objective is minimized.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LossKind {
    /// L_simple: the mean squared error of the parameterization's target (Ho et al. eq. 14),
    /// weighted by a [`Weighting`].
    Simple,
    /// The variational bound T·L_t (bits/dim) of a uniformly drawn t: an unbiased estimate of
    /// Σ_t L_t (Nichol & Dhariwal 2021, §3.1).
    Vlb,
    /// L_hybrid = L_simple + λ·L_vlb (Nichol & Dhariwal 2021, eq. 16), with the mean's gradient
    /// stopped in the VLB term when the variance is learned so that L_vlb trains only Σ_θ.
    Hybrid {
        /// λ, 0.001 in the paper.
        lambda: f64,
    },
}

/// The per-timestep weight w_t applied to L_simple. Weightings defined on the ε-loss carry over
/// to x0 and v targets through [`super::Parameterization::eps_mse_factor`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Weighting {
    /// w_t = 1 (Ho et al.'s L_simple).
    None,
    /// The true VLB weight of the lecture, λ_t = β_t²/(2σ_t²·α_t·(1−ᾱ_t)) on the ε-loss (Ho et
    /// al. eq. 12), with σ_t² the fixed variance (β̃_t for learned variances); the weighted
    /// per-dimension loss is then L_{t−1} in nats (up to a constant).
    Vlb,
    /// Perception Prioritized weighting (Choi et al. 2022, eq. 8): λ_t/(k + SNR(t))^γ with λ_t = 1
    /// for the ε-loss.
    P2 {
        /// k, 1 in the paper.
        k: f64,
        /// γ, 0.5 or 1 in the paper.
        gamma: f64,
    },
    /// Min-SNR-γ (Hang et al. 2023): the x0-loss weight min(SNR(t), γ); on the ε-loss
    /// min(SNR, γ)/SNR.
    MinSnr {
        /// γ, 5 in the paper.
        gamma: f64,
    },
}

impl Weighting {
    /// The weight for each of the chain's timesteps, on the MSE of `diffusion`'s target.
    pub fn table(&self, diffusion: &GaussianDiffusion) -> Vec<f64> {
        let s = &diffusion.schedule;
        let param = diffusion.parameterization;
        (0..s.num_timesteps())
            .map(|t| {
                let c = param.eps_mse_factor(s, t);
                let snr = s.snr[t];
                match *self {
                    Self::None => 1.0,
                    Self::Vlb => {
                        let sigma2 = match diffusion.fixed_variance_table() {
                            Some((v, _)) => v[t],
                            None => s.posterior_log_variance_clipped[t].exp(),
                        };
                        let lambda = s.betas[t].powi(2)
                            / (2.0 * sigma2 * s.alphas[t] * (1.0 - s.alphas_cumprod[t]));
                        lambda * c
                    }
                    Self::P2 { k, gamma } => c / (k + snr).powf(gamma),
                    Self::MinSnr { gamma } => {
                        // On the ε-loss min(SNR, γ)/SNR, whose limit at SNR = 0 is 1.
                        let eps_w = if snr == 0.0 {
                            1.0
                        } else {
                            snr.min(gamma) / snr
                        };
                        eps_w * c
                    }
                }
            })
            .collect()
    }
}

/// Loss configuration for training.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    /// The objective.
    pub kind: LossKind,
    /// Weighting of the MSE term.
    pub weighting: Weighting,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::Simple,
            weighting: Weighting::None,
        }
    }
}

/// Per-sample training losses of one batch.
#[derive(Debug, Clone)]
pub struct TrainingLosses {
    /// The loss to minimize, per sample (`[B]`), before the t-sampler's importance weights.
    pub loss: Tensor<1>,
    /// The unweighted mean squared error of the target, per sample (absent for pure VLB).
    pub mse: Option<Tensor<1>>,
    /// The VLB term T·L_t in bits/dim, per sample (present for VLB and hybrid).
    pub vb: Option<Tensor<1>>,
}

impl GaussianDiffusion {
    /// The training losses of Algorithm 1 for a batch: x_t = q_sample(x0, t, ε) is formed here,
    /// `model_output` must be the network's output at (x_t, t). Call [`Self::q_sample`] first to
    /// obtain x_t, then pass the output here with the same `noise`.
    pub fn training_losses<const D: usize>(
        &self,
        config: &LossConfig,
        model_output: Tensor<D>,
        x_start: Tensor<D>,
        x_t: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> TrainingLosses {
        let n_t = self.num_timesteps() as f64;
        let vb_term = |out: Tensor<D>| {
            let (terms, _) = vb_terms_bpd(self, out, x_start.clone(), x_t.clone(), t, X0Clip::None);
            terms
        };
        match config.kind {
            LossKind::Vlb => {
                let vb = vb_term(model_output) * n_t;
                TrainingLosses {
                    loss: vb.clone(),
                    mse: None,
                    vb: Some(vb),
                }
            }
            LossKind::Simple | LossKind::Hybrid { .. } => {
                let (pred, var_values) = self.split_output(model_output);
                let target =
                    self.parameterization
                        .target(&self.schedule, x_start.clone(), noise, t);
                let mse = mean_flat((pred.clone() - target).powf_scalar(2.0));
                let w = config.weighting.table(self);
                let wt =
                    extract(&w, t, &mse.clone().reshape([t.len() as i64, 1])).reshape([t.len()]);
                let weighted = mse.clone() * wt;
                match config.kind {
                    LossKind::Hybrid { lambda } => {
                        // Stop the mean's gradient: the VLB term then trains only Σ_θ.
                        let frozen = match var_values {
                            Some(v) => Tensor::cat(vec![pred.detach(), v], 1),
                            None => pred,
                        };
                        let vb = vb_term(frozen) * n_t;
                        TrainingLosses {
                            loss: weighted + vb.clone() * lambda,
                            mse: Some(mse),
                            vb: Some(vb),
                        }
                    }
                    _ => TrainingLosses {
                        loss: weighted,
                        mse: Some(mse),
                        vb: None,
                    },
                }
            }
        }
    }
}
