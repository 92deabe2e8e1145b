//! Timestep features: sinusoidal or random Fourier.

use burn::tensor::{Tensor, TensorData};

use super::config::{TimeFeatures, UNetConfig};

/// A network's time features: their kind, the factor applied to t first, and the sinusoidal
/// variant (order and frequency shift).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeEmbedding {
    /// Sinusoidal or random Fourier.
    pub features: TimeFeatures,
    /// t is multiplied by this first.
    pub scale: f64,
    /// Sinusoidal: [cos, sin] instead of [sin, cos].
    pub flip_sin_to_cos: bool,
    /// Sinusoidal: f_i = 10000^(−i/(d/2 − freq_shift)).
    pub freq_shift: f64,
}

impl TimeEmbedding {
    /// How the network of `config` turns timesteps into features.
    pub fn of(config: &UNetConfig) -> Self {
        Self {
            features: config.time_features,
            scale: config.time_scale,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        }
    }
}

/// Features of the timesteps `t` (`[B]`), `dim` wide (`[B, dim]`), in `t`'s dtype (Ho et al.'s
/// sinusoidal order and frequencies).
pub fn time_features(t: Tensor<1>, dim: usize, kind: TimeFeatures) -> Tensor<2> {
    time_features_with(t, dim, kind, false, 1.0)
}

/// [`time_features`] with the sinusoidal variant: [cos, sin] when `flip`, and
/// f_i = exp(−i·ln(10000)/(d/2 − `shift`)) (Ho et al.: `shift` 1; diffusers: `freq_shift`).
pub fn time_features_with(
    t: Tensor<1>,
    dim: usize,
    kind: TimeFeatures,
    flip: bool,
    shift: f64,
) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f64> = match kind {
        TimeFeatures::Sinusoidal => {
            let step = (10000f64).ln() / (half as f64 - shift).max(1.0);
            (0..half).map(|i| (-(i as f64) * step).exp()).collect()
        }
        TimeFeatures::Fourier { scale, seed } => {
            let mut rng = crate::rng::streams::fourier_features(seed);
            (0..half)
                .map(|_| 2.0 * std::f64::consts::PI * scale * rng.normal())
                .collect()
        }
    };
    let b = t.dims()[0];
    let f = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), (&t.device(), t.dtype()));
    let args = t.reshape([b, 1]) * f;
    let emb = if flip && matches!(kind, TimeFeatures::Sinusoidal) {
        Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
    } else {
        Tensor::cat(vec![args.clone().sin(), args.cos()], 1)
    };
    if dim % 2 == 1 {
        let pad = emb.zeros_like().narrow(1, 0, 1);
        Tensor::cat(vec![emb, pad], 1)
    } else {
        emb
    }
}
