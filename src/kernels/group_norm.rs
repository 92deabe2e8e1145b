//! GroupNorm with an optional SiLU after it, forward and backward in one pass over memory each,
//! on contiguous `[B, C, spatial…]` f32 buffers. Burn composes GroupNorm from eight tensor
//! operations and SiLU from three more; here one (batch, group) slice is one task.

use super::fast_math::{sigmoid, silu};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The shapes of one GroupNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormGeometry {
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Elements per channel (H·W).
    pub spatial: usize,
    /// Groups (dividing `channels`).
    pub groups: usize,
}

impl NormGeometry {
    fn group_len(&self) -> usize {
        self.channels / self.groups * self.spatial
    }
}

/// Mean and 1/√(var + ε) of each (image, group), in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct NormStats {
    /// Means, `[B·G]`.
    pub mean: Vec<f32>,
    /// Reciprocal standard deviations, `[B·G]`.
    pub rstd: Vec<f32>,
}

/// y = GroupNorm(x + s)·γ + β, then SiLU when `with_silu`, where the optional `shift` s holds one
/// value per (image, channel) (`[B·C]`, added to every pixel of that channel: a ResBlock's time
/// embedding). Returns y and the statistics the backward pass needs.
pub fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shift: Option<&[f32]>,
    g: &NormGeometry,
    epsilon: f64,
    with_silu: bool,
) -> (Vec<f32>, NormStats) {
    assert_eq!(
        x.len(),
        g.batch * g.channels * g.spatial,
        "group_norm: input length"
    );
    assert_eq!(gamma.len(), g.channels, "group_norm: gamma length");
    assert_eq!(beta.len(), g.channels, "group_norm: beta length");
    check_shift(shift, g);
    let n = g.group_len().max(1);
    let mut y = super::uninit(x.len());
    let stats: Vec<(f32, f32)> = y
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .enumerate()
        .map(|(idx, (ys, xs))| {
            let s = group_shift(shift, g, idx);
            normalize_group(ys, xs, gamma, beta, s, g, idx, epsilon, with_silu)
        })
        .collect();
    let (mean, rstd) = stats.into_iter().unzip();
    // SAFETY: the slices of all (image, group) pairs cover y, and normalize_group writes every
    // element of its slice.
    let y = unsafe { super::assume_init(y) };
    (y, NormStats { mean, rstd })
}

fn check_shift(shift: Option<&[f32]>, g: &NormGeometry) {
    if let Some(s) = shift {
        assert_eq!(s.len(), g.batch * g.channels, "group_norm: shift length");
    }
}

/// The shift of each channel of (image, group) slice `idx` (zeros without a shift).
fn group_shift<'a>(shift: Option<&'a [f32]>, g: &NormGeometry, idx: usize) -> &'a [f32] {
    const NONE: [f32; 0] = [];
    let cpg = g.channels / g.groups;
    shift.map_or(&NONE, |s| &s[idx * cpg..(idx + 1) * cpg])
}

with_avx512! {
    /// Forward pass of one (image, group) slice (`shift`: one value per channel of the group, or
    /// empty); returns the mean of x + shift and 1/σ.
    fn normalize_group(
        ys: &mut [MaybeUninit<f32>],
        xs: &[f32],
        gamma: &[f32],
        beta: &[f32],
        shift: &[f32],
        g: &NormGeometry,
        idx: usize,
        epsilon: f64,
        with_silu: bool,
    ) -> (f32, f32) {
        let n = xs.len();
        let cpg = g.channels / g.groups;
        let s_of = |ci: usize| shift.get(ci).copied().unwrap_or(0.0);
        // Plain loops (not iterator adapters) so that everything inlines into the AVX-512 copy
        // of this function: a `fold` left out of line is compiled for baseline SSE.
        let mut total = 0f64;
        for ci in 0..cpg {
            let xc = &xs[ci * g.spatial..(ci + 1) * g.spatial];
            total += super::lane_sum(xc, |v| v) + s_of(ci) as f64 * g.spatial as f64;
        }
        let mean = total / n as f64;
        let mut squares = 0f64;
        for ci in 0..cpg {
            let xc = &xs[ci * g.spatial..(ci + 1) * g.spatial];
            let m = (mean - s_of(ci) as f64) as f32;
            squares += super::lane_sum(xc, |v| (v - m) * (v - m));
        }
        let var = squares / n as f64;
        let rstd = 1.0 / (var + epsilon).sqrt();
        let c0 = (idx % g.groups) * cpg;
        for (ci, (yc, xc)) in ys
            .chunks_mut(g.spatial)
            .zip(xs.chunks(g.spatial))
            .enumerate()
        {
            let centre = mean - s_of(ci) as f64;
            let a = (rstd * gamma[c0 + ci] as f64) as f32;
            let b = (beta[c0 + ci] as f64 - centre * rstd * gamma[c0 + ci] as f64) as f32;
            if with_silu {
                affine_silu(yc, xc, a, b);
            } else {
                for (o, &v) in yc.iter_mut().zip(xc) {
                    o.write(v * a + b);
                }
            }
        }
        (mean as f32, rstd as f32)
    }
}

/// Gradients of [`forward`] with respect to x, γ and β.
#[derive(Debug, Clone, PartialEq)]
pub struct NormGrads {
    /// ∂L/∂x.
    pub dx: Vec<f32>,
    /// ∂L/∂γ.
    pub dgamma: Vec<f32>,
    /// ∂L/∂β.
    pub dbeta: Vec<f32>,
    /// ∂L/∂shift, `[B·C]` (empty without a shift).
    pub dshift: Vec<f32>,
}

/// The backward pass of [`forward`] given ∂L/∂y. With `add` (shaped like x: the gradient that
/// x's other consumers gave it), ∂L/∂x comes out with it added, in the same pass.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shift: Option<&[f32]>,
    stats: &NormStats,
    dy: &[f32],
    add: Option<&[f32]>,
    g: &NormGeometry,
    with_silu: bool,
) -> NormGrads {
    assert_eq!(x.len(), dy.len(), "group_norm backward: gradient length");
    assert!(
        add.is_none_or(|a| a.len() == x.len()),
        "group_norm backward: added gradient length"
    );
    assert_eq!(
        stats.mean.len(),
        g.batch * g.groups,
        "group_norm backward: statistics"
    );
    check_shift(shift, g);
    let n = g.group_len().max(1);
    let cpg = g.channels / g.groups;
    let mut dx = super::uninit(x.len());
    // Per (image, channel): Σ ∂L/∂ŷ·x̂, Σ ∂L/∂ŷ and Σ ∂L/∂x; the first two summed over images.
    let per_channel: Vec<Vec<[f32; 3]>> = dx
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(dy.par_chunks(n))
        .enumerate()
        .map(|(idx, ((dxs, xs), dys))| {
            let s = group_shift(shift, g, idx);
            let extra = add.map_or(&[][..], |a| &a[idx * n..(idx + 1) * n]);
            backward_group(
                dxs, xs, dys, extra, gamma, beta, s, stats, g, idx, with_silu,
            )
        })
        .collect();
    // SAFETY: the (image, group) slices tile dx, and backward_group writes all of its slice.
    let dx = unsafe { super::assume_init(dx) };
    let mut dgamma = vec![0f32; g.channels];
    let mut dbeta = vec![0f32; g.channels];
    let mut dshift = Vec::with_capacity(if shift.is_some() {
        x.len() / n * cpg
    } else {
        0
    });
    for (idx, sums) in per_channel.into_iter().enumerate() {
        let c0 = (idx % g.groups) * cpg;
        for (ci, [dg, db, ds]) in sums.into_iter().enumerate() {
            dgamma[c0 + ci] += dg;
            dbeta[c0 + ci] += db;
            if shift.is_some() {
                dshift.push(ds);
            }
        }
    }
    NormGrads {
        dx,
        dgamma,
        dbeta,
        dshift,
    }
}

with_avx512! {
    /// Backward pass of one (image, group) slice: writes ∂L/∂x (plus `extra`, when not empty)
    /// and returns (Σ ∂L/∂ŷ·x̂, Σ ∂L/∂ŷ, Σ ∂L/∂x) per channel of the group (the last is
    /// ∂L/∂shift, without `extra`).
    fn backward_group(
        dxs: &mut [MaybeUninit<f32>],
        xs: &[f32],
        dys: &[f32],
        extra: &[f32],
        gamma: &[f32],
        beta: &[f32],
        shift: &[f32],
        stats: &NormStats,
        g: &NormGeometry,
        idx: usize,
        with_silu: bool,
    ) -> Vec<[f32; 3]> {
        let n = xs.len();
        let cpg = g.channels / g.groups;
        let (mean, rstd) = (stats.mean[idx], stats.rstd[idx]);
        let c0 = (idx % g.groups) * cpg;
        let mut sums = Vec::with_capacity(cpg);
        let (mut sum_dxhat, mut sum_dxhat_xhat) = (0f64, 0f64);
        for (ci, ((dxc, xc), dyc)) in dxs
            .chunks_mut(g.spatial)
            .zip(xs.chunks(g.spatial))
            .zip(dys.chunks(g.spatial))
            .enumerate()
        {
            let (gm, bt) = (gamma[c0 + ci], beta[c0 + ci]);
            let centre = mean - shift.get(ci).copied().unwrap_or(0.0);
            let [dg, db, sd, sdx] = if with_silu {
                channel_backward::<true>(dxc, xc, dyc, centre, rstd, gm, bt)
            } else {
                channel_backward::<false>(dxc, xc, dyc, centre, rstd, gm, bt)
            };
            sums.push([dg, db, 0.0]);
            sum_dxhat += sd as f64;
            sum_dxhat_xhat += sdx as f64;
        }
        let m1 = (sum_dxhat / n as f64) as f32;
        let m2 = (sum_dxhat_xhat / n as f64) as f32;
        // SAFETY: the loop above wrote every element of every channel (the channels tile the
        // slice, and each channel's loop writes all of its elements).
        let dxs = unsafe { &mut *(dxs as *mut [MaybeUninit<f32>] as *mut [f32]) };
        for (ci, (dxc, xc)) in dxs
            .chunks_mut(g.spatial)
            .zip(xs.chunks(g.spatial))
            .enumerate()
        {
            let centre = mean - shift.get(ci).copied().unwrap_or(0.0);
            for (o, &xv) in dxc.iter_mut().zip(xc) {
                let xhat = (xv - centre) * rstd;
                *o = rstd * (*o - m1 - xhat * m2);
            }
            if !shift.is_empty() {
                sums[ci][2] = super::lane_sum(dxc, |v| v) as f32;
            }
            if !extra.is_empty() {
                let more = &extra[ci * g.spatial..(ci + 1) * g.spatial];
                dxc.iter_mut().zip(more).for_each(|(o, &v)| *o += v);
            }
        }
        sums
    }
}

/// ys = SiLU(xs·a + b), on AVX-512 lanes where the CPU has them.
#[inline(always)]
fn affine_silu(ys: &mut [MaybeUninit<f32>], xs: &[f32], a: f32, b: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::direct::available() {
        // SAFETY: AVX-512F is present.
        unsafe { lanes::affine_silu(ys, xs, a, b) };
        return;
    }
    for (o, &v) in ys.iter_mut().zip(xs) {
        o.write(silu(v * a + b));
    }
}

/// [`backward_channel`], on AVX-512 lanes where the CPU has them.
#[inline(always)]
fn channel_backward<const SILU: bool>(
    dxc: &mut [MaybeUninit<f32>],
    xc: &[f32],
    dyc: &[f32],
    mean: f32,
    rstd: f32,
    gm: f32,
    bt: f32,
) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if super::direct::available() {
        // SAFETY: AVX-512F is present.
        return unsafe { lanes::backward_channel::<SILU>(dxc, xc, dyc, mean, rstd, gm, bt) };
    }
    backward_channel::<SILU>(dxc, xc, dyc, mean, rstd, gm, bt)
}

/// The per-element loops written with AVX-512 intrinsics (FMA, the hardware reciprocal estimate
/// and `vscalefps` in the sigmoid, masked tails): the portable loops compile to separate
/// multiplies and adds.
#[cfg(target_arch = "x86_64")]
mod lanes {
    use super::super::direct::first_lanes as first;
    use super::super::fast_math::lanes::sigmoid;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// ys = SiLU(xs·a + b).
    ///
    /// # Safety
    /// AVX-512F must be present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn affine_silu(ys: &mut [MaybeUninit<f32>], xs: &[f32], a: f32, b: f32) {
        let n = xs.len().min(ys.len());
        let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        let mut i = 0;
        while i < n {
            let m = first(n - i);
            // SAFETY: lanes past n are masked off.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, xs.as_ptr().add(i));
                let pre = _mm512_fmadd_ps(x, va, vb);
                let y = _mm512_mul_ps(pre, sigmoid(pre));
                _mm512_mask_storeu_ps(ys.as_mut_ptr().add(i).cast::<f32>(), m, y);
            }
            i += 16;
        }
    }

    /// [`super::backward_channel`] on 16 lanes.
    ///
    /// # Safety
    /// AVX-512F must be present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward_channel<const SILU: bool>(
        dxc: &mut [MaybeUninit<f32>],
        xc: &[f32],
        dyc: &[f32],
        mean: f32,
        rstd: f32,
        gm: f32,
        bt: f32,
    ) -> [f32; 4] {
        let n = xc.len().min(dxc.len()).min(dyc.len());
        let (vm, vr, vg, vb) = (
            _mm512_set1_ps(mean),
            _mm512_set1_ps(rstd),
            _mm512_set1_ps(gm),
            _mm512_set1_ps(bt),
        );
        let one = _mm512_set1_ps(1.0);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < n {
            let m = first(n - i);
            // SAFETY: lanes past n are masked off (they load as 0 and add nothing).
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, xc.as_ptr().add(i));
                let mut d = _mm512_maskz_loadu_ps(m, dyc.as_ptr().add(i));
                let xhat = _mm512_mul_ps(_mm512_sub_ps(x, vm), vr);
                if SILU {
                    // d · σ(p) · (1 + p · (1 − σ(p))) with p the normalized pre-activation.
                    let pre = _mm512_fmadd_ps(xhat, vg, vb);
                    let s = sigmoid(pre);
                    let inner = _mm512_fmadd_ps(pre, _mm512_sub_ps(one, s), one);
                    d = _mm512_mul_ps(_mm512_mul_ps(d, s), inner);
                }
                let dxhat = _mm512_mul_ps(d, vg);
                acc[0] = _mm512_fmadd_ps(d, xhat, acc[0]);
                acc[1] = _mm512_add_ps(acc[1], d);
                acc[2] = _mm512_add_ps(acc[2], dxhat);
                acc[3] = _mm512_fmadd_ps(dxhat, xhat, acc[3]);
                _mm512_mask_storeu_ps(dxc.as_mut_ptr().add(i).cast::<f32>(), m, dxhat);
            }
            i += 16;
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }
}

/// Lanes of the manual vectorization: accumulating into `LANES` independent sums lets the
/// compiler use SIMD registers for reductions (a single f32 sum is a serial dependency chain).
const LANES: usize = 16;

/// One channel of the backward pass: writes ∂L/∂x̂ into every element of `dxc` and returns
/// (Σ ∂L/∂ŷ·x̂, Σ ∂L/∂ŷ, Σ ∂L/∂x̂, Σ ∂L/∂x̂·x̂), where ŷ is the normalized value before the
/// activation.
#[inline(always)]
fn backward_channel<const SILU: bool>(
    dxc: &mut [MaybeUninit<f32>],
    xc: &[f32],
    dyc: &[f32],
    mean: f32,
    rstd: f32,
    gm: f32,
    bt: f32,
) -> [f32; 4] {
    let step = |xv: f32, d: f32| -> (f32, f32, f32) {
        let xhat = (xv - mean) * rstd;
        let d = if SILU {
            let pre = xhat * gm + bt;
            let s = sigmoid(pre);
            d * s * (1.0 + pre * (1.0 - s))
        } else {
            d
        };
        (xhat, d, d * gm)
    };
    let mut acc = [[0f32; LANES]; 4];
    let n = xc.len() / LANES * LANES;
    for ((o, x), d) in dxc[..n]
        .chunks_exact_mut(LANES)
        .zip(xc[..n].chunks_exact(LANES))
        .zip(dyc[..n].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let (xhat, d, dxhat) = step(x[l], d[l]);
            acc[0][l] += d * xhat;
            acc[1][l] += d;
            acc[2][l] += dxhat;
            acc[3][l] += dxhat * xhat;
            o[l].write(dxhat);
        }
    }
    let mut out = acc.map(|a| a.iter().sum::<f32>());
    for ((o, &x), &d) in dxc[n..].iter_mut().zip(&xc[n..]).zip(&dyc[n..]) {
        let (xhat, d, dxhat) = step(x, d);
        out[0] += d * xhat;
        out[1] += d;
        out[2] += dxhat;
        out[3] += dxhat * xhat;
        o.write(dxhat);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64, scale: f64, shift: f64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n)
            .map(|_| (shift + scale * rng.normal()) as f32)
            .collect()
    }

    /// The definition in f64.
    fn reference(
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        g: &NormGeometry,
        eps: f64,
        act: bool,
    ) -> Vec<f64> {
        let n = g.group_len();
        let cpg = g.channels / g.groups;
        let mut y = vec![0f64; x.len()];
        for (idx, (ys, xs)) in y.chunks_mut(n).zip(x.chunks(n)).enumerate() {
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            for (i, (o, v)) in ys.iter_mut().zip(xs).enumerate() {
                let c = (idx % g.groups) * cpg + i / g.spatial;
                let pre = (v - mean) / (var + eps).sqrt() * gamma[c] + beta[c];
                *o = if act { pre / (1.0 + (-pre).exp()) } else { pre };
            }
        }
        y
    }

    const GEOMETRY: NormGeometry = NormGeometry {
        batch: 3,
        channels: 6,
        spatial: 5,
        groups: 2,
    };

    /// x + s with the shift broadcast over each channel's pixels.
    fn shifted(x: &[f64], shift: Option<&[f64]>, g: &NormGeometry) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, v)| v + shift.map_or(0.0, |s| s[i / g.spatial]))
            .collect()
    }

    #[test]
    fn forward_matches_the_definition() {
        let g = GEOMETRY;
        let x = values(g.batch * g.channels * g.spatial, 1, 2.0, 0.7);
        let gamma = values(g.channels, 2, 0.5, 1.0);
        let beta = values(g.channels, 3, 0.5, 0.0);
        let shift = values(g.batch * g.channels, 8, 1.0, 0.3);
        let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
        for act in [false, true] {
            for s in [None, Some(&shift[..])] {
                let (y, _) = forward(&x, &gamma, &beta, s, &g, 1e-5, act);
                let xs = shifted(&f(&x), s.map(f).as_deref(), &g);
                let want = reference(&xs, &f(&gamma), &f(&beta), &g, 1e-5, act);
                for (a, e) in y.iter().zip(&want) {
                    assert!(
                        (*a as f64 - e).abs() < 1e-5 * (1.0 + e.abs()),
                        "silu {act} shift {}: {a} vs {e}",
                        s.is_some()
                    );
                }
            }
        }
    }

    /// Against central differences of the f64 definition of ⟨dy, y⟩ (step 1e-4: truncation
    /// error ~1e-8 of the smooth functional, far under the 1e-3 tolerance).
    #[test]
    fn backward_matches_finite_differences() {
        let g = GEOMETRY;
        let x = values(g.batch * g.channels * g.spatial, 4, 1.5, -0.3);
        let gamma = values(g.channels, 5, 0.5, 1.0);
        let beta = values(g.channels, 6, 0.5, 0.0);
        let shift = values(g.batch * g.channels, 9, 1.0, -0.2);
        let dy = values(x.len(), 7, 1.0, 0.0);
        let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
        for act in [false, true] {
            for with_shift in [false, true] {
                let s = with_shift.then_some(&shift[..]);
                let (_, stats) = forward(&x, &gamma, &beta, s, &g, 1e-5, act);
                let grads = backward(&x, &gamma, &beta, s, &stats, &dy, None, &g, act);
                // Another consumer's gradient, added to ∂L/∂x only.
                let other = values(x.len(), 8, 1.0, 0.5);
                let summed = backward(&x, &gamma, &beta, s, &stats, &dy, Some(&other), &g, act);
                for ((a, b), o) in summed.dx.iter().zip(&grads.dx).zip(&other) {
                    assert!(
                        (a - (b + o)).abs() <= 1e-6 * (1.0 + a.abs()),
                        "{a} vs {b} + {o}"
                    );
                }
                assert_eq!(
                    (&summed.dgamma, &summed.dbeta, &summed.dshift),
                    (&grads.dgamma, &grads.dbeta, &grads.dshift)
                );
                let functional = |p: &[Vec<f64>; 4]| -> f64 {
                    let xs = shifted(&p[0], with_shift.then_some(&p[3][..]), &g);
                    reference(&xs, &p[1], &p[2], &g, 1e-5, act)
                        .iter()
                        .zip(&dy)
                        .map(|(y, d)| y * *d as f64)
                        .sum()
                };
                let base = [f(&x), f(&gamma), f(&beta), f(&shift)];
                let h = 1e-4;
                let diff = |which: usize, i: usize| -> f64 {
                    let (mut p, mut m) = (base.clone(), base.clone());
                    p[which][i] += h;
                    m[which][i] -= h;
                    (functional(&p) - functional(&m)) / (2.0 * h)
                };
                let mut outputs = vec![&grads.dx, &grads.dgamma, &grads.dbeta];
                if with_shift {
                    outputs.push(&grads.dshift);
                } else {
                    assert!(grads.dshift.is_empty());
                }
                for (which, got) in outputs.into_iter().enumerate() {
                    assert_eq!(got.len(), base[which].len());
                    for (i, &v) in got.iter().enumerate() {
                        let want = diff(which, i);
                        assert!(
                            (v as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "silu {act} shift {with_shift}, input {which}[{i}]: {v} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The portable per-channel loops (what a CPU without AVX-512 runs) agree with the AVX-512
    /// ones, tails included.
    #[test]
    fn portable_and_avx512_channel_loops_agree() {
        if !crate::kernels::direct::available() {
            return;
        }
        for n in [1usize, 15, 16, 17, 100] {
            let x = values(n, 11, 1.5, 0.2);
            let dy = values(n, 12, 1.0, 0.0);
            let (a, b) = (0.7f32, -0.3f32);
            let mut fast = vec![MaybeUninit::new(0f32); n];
            // SAFETY: AVX-512F checked above.
            unsafe { lanes::affine_silu(&mut fast, &x, a, b) };
            for (f, &v) in fast.iter().zip(&x) {
                // SAFETY: every element was written (or initialized above).
                let f = unsafe { f.assume_init() };
                assert!((f - silu(v * a + b)).abs() < 1e-6, "n {n}: {f}");
            }
            let zero = MaybeUninit::new(0f32);
            let (mut d1, mut d2) = (vec![zero; n], vec![zero; n]);
            let p = backward_channel::<true>(&mut d1, &x, &dy, 0.1, 1.3, a, b);
            // SAFETY: as above.
            let q = unsafe { lanes::backward_channel::<true>(&mut d2, &x, &dy, 0.1, 1.3, a, b) };
            // SAFETY: initialized above (and overwritten by both loops).
            let (d1, d2): (Vec<f32>, Vec<f32>) = unsafe {
                (
                    d1.iter().map(|v| v.assume_init()).collect(),
                    d2.iter().map(|v| v.assume_init()).collect(),
                )
            };
            for (u, v) in d1.iter().zip(&d2).chain(p.iter().zip(&q)) {
                assert!((u - v).abs() < 1e-5 * (1.0 + u.abs()), "n {n}: {u} vs {v}");
            }
        }
    }
}
