//! Timestep features: sinusoidal or random Fourier.

use burn::tensor::{Tensor, TensorData};

use super::config::TimeFeatures;
use crate::rng::Rng;

/// Features of the timesteps `t` (`[B]`), `dim` wide (`[B, dim]`), in `t`'s dtype.
pub fn time_features(t: Tensor<1>, dim: usize, kind: TimeFeatures) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f64> = match kind {
        TimeFeatures::Sinusoidal => {
            // Ho et al.'s get_timestep_embedding: f_i = exp(−i·ln(10000)/(half − 1)).
            let step = (10000f64).ln() / (half.max(2) - 1) as f64;
            (0..half).map(|i| (-(i as f64) * step).exp()).collect()
        }
        TimeFeatures::Fourier { scale, seed } => {
            let mut rng = Rng::new(seed);
            (0..half)
                .map(|_| 2.0 * std::f64::consts::PI * scale * rng.normal())
                .collect()
        }
    };
    let b = t.dims()[0];
    let f = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), (&t.device(), t.dtype()));
    let args = t.reshape([b, 1]) * f;
    let emb = Tensor::cat(vec![args.clone().sin(), args.cos()], 1);
    if dim % 2 == 1 {
        let pad = emb.zeros_like().narrow(1, 0, 1);
        Tensor::cat(vec![emb, pad], 1)
    } else {
        emb
    }
}
