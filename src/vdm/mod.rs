//! Variational Diffusion Models (Kingma et al. 2021): diffusion in continuous time with the
//! schedule written as γ(t) = −log SNR(t) — fixed in closed form, or learned by a monotone
//! network — and the losses that weight ‖ε − ε̂‖² by γ'(t) (continuous time) or by the SNR
//! ratio of consecutive steps (discrete time).

pub mod bound;
pub mod gamma;
pub mod learned;
pub mod loss;
pub mod time;
pub mod vlb;

pub use gamma::{FixedGamma, alpha_sq, discrete_weight, sample_times, sigma_sq};
pub use learned::LearnedGamma;
pub use time::{GammaSource, LossTimes, Time, VdmProcess};
