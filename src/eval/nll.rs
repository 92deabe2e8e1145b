//! The full variational bound of a dataset under a model, in bits per dimension (Ho et al.
//! eq. 5; the definition of Improved DDPM's `calc_bpd_loop`).

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::data::Dataset;
use crate::diffusion::likelihood::{calc_bpd_loop, prior_bpd, to_vec, vb_terms_bpd};
use crate::diffusion::mean_flat;
use crate::diffusion::parameterization::eps_from_x0;
use crate::diffusion::{Denoiser, GaussianDiffusion, X0Clip};
use crate::rng::Rng;
use crate::vdm::VdmProcess;
use crate::vdm::bound::{Decoder, bound_terms};

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

impl NllReport {
    /// The first term that is NaN or infinite, by name, with its value (`None` when the bound is
    /// finite). The ε MSE is not a term of the bound (and is NaN where it does not apply).
    pub fn first_non_finite(&self) -> Option<(String, f64)> {
        let named = [
            ("total bound", self.bpd),
            ("standard error of the bound", self.bpd_stderr),
            ("prior term L_T", self.prior_bpd),
            ("decoder term L_0", self.decoder_bpd),
        ];
        named
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .chain(
                self.vb_bpd_by_t
                    .iter()
                    .enumerate()
                    .map(|(t, &v)| (format!("term at t = {t}"), v)),
            )
            .find(|(_, v)| !v.is_finite())
    }
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
    /// Draws of t per image for [`evaluate_sampled`]; for [`bound`], 0 asks for every term at
    /// every t.
    pub t_samples: usize,
}

/// `k` ranges [lo, hi) covering 1..T−1 whose bounds grow geometrically (T^{j/k}, rounded and
/// kept strictly increasing where possible; fewer ranges when T − 1 < k).
pub fn geometric_strata(n_t: usize, k: usize) -> Vec<(usize, usize)> {
    if n_t < 2 {
        return Vec::new();
    }
    let k = k.clamp(1, n_t - 1);
    let mut bounds = vec![1usize];
    for j in 1..k {
        let b = (n_t as f64).powf(j as f64 / k as f64).round() as usize;
        // Leave room for the ranges still to come.
        let b = b.max(bounds[j - 1] + 1).min(n_t - (k - j));
        bounds.push(b);
    }
    bounds.push(n_t);
    bounds.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Per-image values of one batch: total, prior and decoder bits/dim, ε MSE, and the terms by t
/// (empty when t was sampled).
struct BatchTerms {
    total: Vec<f64>,
    prior: Vec<f64>,
    decoder: Vec<f64>,
    mse: Vec<f64>,
    by_t: Vec<Vec<f64>>,
}

/// Runs `batch_terms(batch index, x0, rng)` over this rank's batches of the first `limit` items
/// and averages the per-image results of every rank (the same report for any number of
/// processes: batch b's noise comes from its own stream (seed, b)).
fn aggregate(
    data: &dyn Dataset,
    opts: NllOptions,
    n_t: usize,
    device: &Device,
    mut batch_terms: impl FnMut(Tensor<4>, &mut Rng) -> BatchTerms,
) -> anyhow::Result<NllReport> {
    let NllOptions {
        limit, batch, seed, ..
    } = opts;
    let n = limit.unwrap_or(data.len()).min(data.len());
    let shape = data.item_shape();
    let item: usize = shape.iter().product();
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
        let mut rng = crate::rng::streams::nll_batch(seed, b as u64);
        let r = batch_terms(x0, &mut rng);
        for i in 0..m {
            let k = start + i;
            per_image[k] = r.total[i];
            per_image[n + k] = r.prior[i];
            per_image[2 * n + k] = r.decoder[i];
            per_image[3 * n + k] = r.mse[i];
            if let Some(terms) = r.by_t.get(i) {
                for (acc, v) in by_t.iter_mut().zip(terms) {
                    *acc += v;
                }
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

/// The bound by the route that applies: every term at every t ([`evaluate`]) for a DDPM chain
/// with `opts.t_samples` = 0, else the unbiased estimate of [`evaluate_sampled`] from
/// `opts.t_samples` draws (at least one; the only route for a VDM model).
pub fn bound<M: Denoiser<4>>(
    diffusion: &GaussianDiffusion,
    vdm: Option<&VdmProcess>,
    model: &M,
    data: &dyn Dataset,
    opts: NllOptions,
    device: &Device,
    on_eval: impl FnMut(),
) -> anyhow::Result<NllReport> {
    if opts.t_samples == 0 && vdm.is_none() {
        return evaluate(diffusion, model, data, opts, device, on_eval);
    }
    let opts = NllOptions {
        t_samples: opts.t_samples.max(1),
        ..opts
    };
    evaluate_sampled(diffusion, vdm, model, data, opts, device, on_eval)
}

/// Evaluates the bound on the first `limit` items of `data` (all when `None`), `batch` at a
/// time, every term at every t; `on_eval()` reports each network evaluation of a batch. Under
/// `mpirun` rank r evaluates batches r, r + N, … and the terms are summed over the ranks.
pub fn evaluate<M: Denoiser<4>>(
    diffusion: &GaussianDiffusion,
    model: &M,
    data: &dyn Dataset,
    opts: NllOptions,
    device: &Device,
    mut on_eval: impl FnMut(),
) -> anyhow::Result<NllReport> {
    let n_t = diffusion.num_timesteps();
    aggregate(data, opts, n_t, device, |x0, rng| {
        let r = calc_bpd_loop(diffusion, model, x0, X0Clip::Clip, rng, |_| on_eval());
        BatchTerms {
            decoder: r.vb.iter().map(|v| v[0]).collect(),
            mse: r
                .mse
                .iter()
                .map(|m| m.iter().sum::<f64>() / n_t as f64)
                .collect(),
            total: r.total_bpd,
            prior: r.prior_bpd,
            by_t: r.vb,
        }
    })
}

/// An unbiased Monte-Carlo estimate of each image's bound from `t_samples` draws of t, much
/// cheaper than [`evaluate`]'s T evaluations per image (`opts.t_samples` draws). A DDPM chain: L_T and L_0 exactly, and
/// Σ_{t=1}^{T−1} L_t stratified: draw j takes t uniformly in the j-th of `t_samples`
/// geometrically growing ranges of 1..T−1 ([`geometric_strata`]) and counts L_t times the
/// range's length; its ε MSE is over those t. A VDM model (`vdm`): prior, decoder and diffusion loss (Kingma et al. eq. 11) each
/// averaged over `t_samples` draws of t and of the noises; its ε MSE is not computed (NaN). The
/// standard error includes the sampling of t.
pub fn evaluate_sampled<M: Denoiser<4>>(
    diffusion: &GaussianDiffusion,
    vdm: Option<&VdmProcess>,
    model: &M,
    data: &dyn Dataset,
    opts: NllOptions,
    device: &Device,
    mut on_eval: impl FnMut(),
) -> anyhow::Result<NllReport> {
    let k = opts.t_samples.max(1);
    let n_t = diffusion.num_timesteps();
    aggregate(data, opts, 0, device, |x0, rng| {
        let m = x0.dims()[0];
        let item: usize = x0.dims()[1..].iter().product();
        let mut out = BatchTerms {
            total: vec![0.0; m],
            prior: vec![0.0; m],
            decoder: vec![0.0; m],
            mse: vec![0.0; m],
            by_t: Vec::new(),
        };
        if let Some(v) = vdm {
            let per_nat = 1.0 / (item as f64 * std::f64::consts::LN_2);
            for _ in 0..k {
                let terms = bound_terms(
                    x0.clone(),
                    v.time,
                    v.gamma.as_ref(),
                    Decoder::Discretized,
                    rng,
                    |z, t| model.forward(z, t),
                );
                on_eval();
                for i in 0..m {
                    out.total[i] += terms.total(i) * per_nat / k as f64;
                    out.prior[i] += terms.prior[i] * per_nat / k as f64;
                    out.decoder[i] += terms.decoder[i] * per_nat / k as f64;
                }
            }
            out.mse = vec![f64::NAN; m];
            return out;
        }
        let numel = m * item;
        let mut term_at = |t: &[usize], rng: &mut Rng| {
            let noise =
                Tensor::<4>::from_data(TensorData::new(rng.normal_f32(numel), x0.dims()), device);
            let x_t = diffusion.q_sample(x0.clone(), t, noise.clone());
            let o = model.forward(x_t.clone(), diffusion.model_timesteps(t, &x_t));
            let (terms, x0_hat) =
                vb_terms_bpd(diffusion, o, x0.clone(), x_t.clone(), t, X0Clip::Clip);
            let eps_hat = eps_from_x0(&diffusion.schedule, x_t, t, x0_hat);
            on_eval();
            (
                to_vec(terms),
                to_vec(mean_flat((eps_hat - noise).powf_scalar(2.0))),
            )
        };
        let (l0, _) = term_at(&vec![0; m], rng);
        let prior = to_vec(prior_bpd(diffusion, x0.clone()));
        for i in 0..m {
            out.prior[i] = prior[i];
            out.decoder[i] = l0[i];
            out.total[i] = prior[i] + l0[i];
        }
        // Stratified: draw j takes its t uniformly in the j-th of k ranges of 1..T−1 and stands
        // for that range's sum (unbiased). The ranges grow geometrically — [1, T^{1/k}),
        // [T^{1/k}, T^{2/k}), … — because L_t falls by orders of magnitude over the first steps:
        // equal ranges would leave that fall inside one range, whose one draw then varies most.
        let strata = geometric_strata(n_t, k);
        let used = strata.len().max(1);
        for &(lo, hi) in &strata {
            let t: Vec<usize> = (0..m).map(|_| lo + rng.below(hi - lo)).collect();
            let (terms, mse) = term_at(&t, rng);
            for i in 0..m {
                out.total[i] += terms[i] * (hi - lo) as f64;
                out.mse[i] += mse[i] / used as f64;
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::geometric_strata;

    #[test]
    fn geometric_strata_cover_every_step_once() {
        for (n_t, k) in [(1000, 4), (1000, 1), (40, 20), (5, 10), (2, 3), (1000, 999)] {
            let s = geometric_strata(n_t, k);
            assert_eq!(s.len(), k.min(n_t - 1), "{n_t} {k}");
            assert_eq!(s[0].0, 1);
            assert_eq!(s.last().unwrap().1, n_t);
            for w in s.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
            assert!(s.iter().all(|(lo, hi)| hi > lo), "{s:?}");
        }
        assert_eq!(
            geometric_strata(1000, 4),
            vec![(1, 6), (6, 32), (32, 178), (178, 1000)]
        );
        assert!(geometric_strata(1, 4).is_empty());
    }
}
