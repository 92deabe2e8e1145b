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
/// time; `on_batch(done)` reports progress in network evaluations. Batch b's noise comes from
/// its own stream (seed, b); under `mpirun` rank r evaluates batches r, r + N, … and the terms
/// are summed over the ranks, so the report is the same for any number of processes.
pub fn evaluate<M: Denoiser<4>>(
    diffusion: &GaussianDiffusion,
    model: &M,
    data: &dyn Dataset,
    opts: NllOptions,
    device: &Device,
    mut on_eval: impl FnMut(),
) -> anyhow::Result<NllReport> {
    let NllOptions { limit, batch, seed } = opts;
    let n = limit.unwrap_or(data.len()).min(data.len());
    let shape = data.item_shape();
    let item: usize = shape.iter().product();
    let n_t = diffusion.num_timesteps();
    let world = crate::dist::world();
    let batch = batch.max(1);
    // Per image: total, prior, decoder, mse; then the sums of every term by t.
    let mut per_image = vec![0.0f64; 4 * n];
    let mut by_t = vec![0.0; n_t];
    for b in world.batches(n.div_ceil(batch)) {
        let start = b * batch;
        let m = batch.min(n - start);
        let mut buf = vec![0.0f32; m * item];
        for i in 0..m {
            data.get(start + i, &mut buf[i * item..(i + 1) * item]);
        }
        let x0 = Tensor::<4>::from_data(
            TensorData::new(buf, [m, shape[0], shape[1], shape[2]]),
            device,
        );
        let mut rng = Rng::new(seed).fork(b as u64);
        let r = calc_bpd_loop(diffusion, model, x0, X0Clip::Clip, &mut rng, |_| on_eval());
        for i in 0..m {
            let k = start + i;
            per_image[k] = r.total_bpd[i];
            per_image[n + k] = r.prior_bpd[i];
            per_image[2 * n + k] = r.vb[i][0];
            per_image[3 * n + k] = r.mse[i].iter().sum::<f64>() / n_t as f64;
            for (acc, v) in by_t.iter_mut().zip(&r.vb[i]) {
                *acc += v;
            }
        }
    }
    world.sum_f64(&mut per_image)?;
    world.sum_f64(&mut by_t)?;
    let totals = &per_image[..n];
    let sum = |j: usize| per_image[j * n..(j + 1) * n].iter().sum::<f64>();
    let (prior, decoder, mse) = (sum(1), sum(2), sum(3));
    let nf = n as f64;
    let bpd = totals.iter().sum::<f64>() / nf;
    let var = if n > 1 {
        totals.iter().map(|x| (x - bpd).powi(2)).sum::<f64>() / (nf - 1.0)
    } else {
        0.0
    };
    Ok(NllReport {
        bpd,
        bpd_stderr: (var / nf).sqrt(),
        prior_bpd: prior / nf,
        decoder_bpd: decoder / nf,
        vb_bpd_by_t: by_t.into_iter().map(|v| v / nf).collect(),
        mse: mse / nf,
        n,
    })
}
