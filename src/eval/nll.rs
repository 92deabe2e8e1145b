//! The full variational bound of a dataset under a model, in bits per dimension (Ho et al.
//! eq. 5; the definition of Improved DDPM's `calc_bpd_loop`).

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::data::Dataset;
use crate::diffusion::likelihood::calc_bpd_loop;
use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::rng::Rng;

/// Averages of the bound's terms over the evaluated images.
#[derive(Debug, Clone, Serialize)]
pub struct NllReport {
    /// Mean total bits/dim (L_T + Σ L_{t−1} + L_0).
    pub bpd: f64,
    /// Standard error of `bpd` over images.
    pub bpd_stderr: f64,
    /// Mean L_T.
    pub prior_bpd: f64,
    /// Mean L_0 (the discretized decoder).
    pub decoder_bpd: f64,
    /// Mean term at each t (index 0 is L_0).
    pub vb_bpd_by_t: Vec<f64>,
    /// Mean squared error of ε̂ over all t.
    pub mse: f64,
    /// Images evaluated.
    pub n: usize,
}

/// Which images to evaluate and how.
#[derive(Debug, Clone, Copy)]
pub struct NllOptions {
    /// Evaluate only the first N items (all when `None`).
    pub limit: Option<usize>,
    /// Images per network batch.
    pub batch: usize,
    /// Seed of the noise.
    pub seed: u64,
}

/// Evaluates the bound on the first `limit` items of `data` (all when `None`), `batch` at a
/// time; `on_batch(done)` reports progress in network evaluations.
pub fn evaluate<M: Denoiser<4>>(
    diffusion: &GaussianDiffusion,
    model: &M,
    data: &dyn Dataset,
    opts: NllOptions,
    device: &Device,
    mut on_eval: impl FnMut(),
) -> NllReport {
    let NllOptions { limit, batch, seed } = opts;
    let n = limit.unwrap_or(data.len()).min(data.len());
    let shape = data.item_shape();
    let item: usize = shape.iter().product();
    let n_t = diffusion.num_timesteps();
    let mut rng = Rng::new(seed);
    let mut totals = Vec::with_capacity(n);
    let (mut prior, mut decoder, mut mse) = (0.0, 0.0, 0.0);
    let mut by_t = vec![0.0; n_t];
    let mut start = 0;
    while start < n {
        let b = batch.max(1).min(n - start);
        let mut buf = vec![0.0f32; b * item];
        for i in 0..b {
            data.get(start + i, &mut buf[i * item..(i + 1) * item]);
        }
        let x0 = Tensor::<4>::from_data(
            TensorData::new(buf, [b, shape[0], shape[1], shape[2]]),
            device,
        );
        let r = calc_bpd_loop(diffusion, model, x0, X0Clip::Clip, &mut rng, |_| on_eval());
        for i in 0..b {
            totals.push(r.total_bpd[i]);
            prior += r.prior_bpd[i];
            decoder += r.vb[i][0];
            for (acc, v) in by_t.iter_mut().zip(&r.vb[i]) {
                *acc += v;
            }
            mse += r.mse[i].iter().sum::<f64>() / n_t as f64;
        }
        start += b;
    }
    let nf = n as f64;
    let bpd = totals.iter().sum::<f64>() / nf;
    let var = if n > 1 {
        totals.iter().map(|x| (x - bpd).powi(2)).sum::<f64>() / (nf - 1.0)
    } else {
        0.0
    };
    NllReport {
        bpd,
        bpd_stderr: (var / nf).sqrt(),
        prior_bpd: prior / nf,
        decoder_bpd: decoder / nf,
        vb_bpd_by_t: by_t.into_iter().map(|v| v / nf).collect(),
        mse: mse / nf,
        n,
    }
}
