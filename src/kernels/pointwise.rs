//! 1×1 convolutions (stride 1, no padding) on AVX-512, straight on the NCHW planes. For one
//! image a 1×1 convolution is the matrix product Y[cout × HW] = W[cout × cin] · X[cin × HW]
//! whose right operand is the image as it lies, so there is nothing to pack: a register tile of
//! [`ROWS`] output channels × up to [`VECS`] vectors of 16 pixels broadcasts the weights and
//! loads the pixels (masked at the end of a plane), starts from the bias and adds the residual
//! as it stores. ∂L/∂x is the same product with Wᵀ; ∂L/∂W is a tile of 4 output × 6 input
//! channels accumulating along the pixels of a group of images that stays in L2, reduced across
//! the lanes once per group.
//!
//! Through the `gemm` crate the same layers cost a zero-filled output, a packed copy of every
//! image and a separate pass for the bias (and another for the residual).

// The tiles index accumulators and loads by the same small loop counters; that reads better
// (and unrolls the same) as index loops.
#![allow(clippy::needless_range_loop)]

use super::conv::{ConvGeometry, ConvGrads, backward_tasks};
use super::direct::{LANES, available, first_lanes};
use super::matmul::matmul;
use gemm::Parallelism;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Output rows (channels) per register tile of the products.
const ROWS: usize = 4;
/// Vectors of 16 pixels per register tile of the products, at most.
const VECS: usize = 6;

/// Whether these kernels take `g`: a 1×1 kernel, stride 1, no padding, on a CPU with AVX-512F.
pub fn applies(g: &ConvGeometry) -> bool {
    available() && g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad == [0, 0]
}

/// Images per task: two tasks per thread.
fn chunk(g: &ConvGeometry) -> usize {
    g.batch.div_ceil(2 * rayon::current_num_threads()).max(1)
}

/// One product: `rows` output planes = `init` + A · (`k` input planes) (+ `add`), where
/// A[r][j] = `a[r·ars + j·acs]` (W for the convolution, Wᵀ for its input gradient).
struct Product<'a> {
    a: &'a [f32],
    ars: usize,
    acs: usize,
    rows: usize,
    k: usize,
    plane: usize,
    init: Option<&'a [f32]>,
}

impl Product<'_> {
    /// `out` (`rows` planes) = the product of the `k` planes of `src`, plus `add` (shaped like
    /// `out`) when given.
    ///
    /// # Safety
    /// AVX-512F must be present.
    #[target_feature(enable = "avx512f")]
    unsafe fn image(&self, src: &[f32], add: Option<&[f32]>, out: &mut [MaybeUninit<f32>]) {
        let plane = self.plane;
        assert!(src.len() >= self.k * plane && out.len() >= self.rows * plane);
        assert!(add.is_none_or(|a| a.len() >= self.rows * plane));
        assert!(
            self.rows == 0
                || self.a.len() > (self.rows - 1) * self.ars + (self.k.max(1) - 1) * self.acs
        );
        assert!(self.init.is_none_or(|b| b.len() >= self.rows));
        let vectors = plane.div_ceil(LANES);
        for v0 in (0..vectors).step_by(VECS) {
            let nv = VECS.min(vectors - v0);
            let masks: [__mmask16; VECS] =
                std::array::from_fn(|v| first_lanes(plane.saturating_sub((v0 + v) * LANES)));
            let q0 = v0 * LANES;
            for r0 in (0..self.rows).step_by(ROWS) {
                let tile = Tile {
                    rows: ROWS.min(self.rows - r0),
                    r0,
                    q0,
                    masks: &masks,
                };
                // SAFETY: asserted above: planes r0 .. r0 + rows of out (and add), the k planes of
                // src and the rows of A exist; lanes past the plane are masked off.
                unsafe {
                    match nv {
                        1 => self.tile::<1>(&tile, src, add, out),
                        2 => self.tile::<2>(&tile, src, add, out),
                        3 => self.tile::<3>(&tile, src, add, out),
                        4 => self.tile::<4>(&tile, src, add, out),
                        5 => self.tile::<5>(&tile, src, add, out),
                        _ => self.tile::<VECS>(&tile, src, add, out),
                    }
                }
            }
        }
    }

    /// Rows `r0 .. r0 + rows` × `V` vectors from pixel `q0` (rows past the end repeat the last
    /// one and are not stored).
    ///
    /// # Safety
    /// AVX-512F; as [`Self::image`], for this tile.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const V: usize>(
        &self,
        t: &Tile,
        src: &[f32],
        add: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let plane = self.plane;
        let row = |r: usize| t.r0 + r.min(t.rows - 1);
        // SAFETY: the caller's contract (every row index is clamped to the tile's rows).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
            if let Some(b) = self.init {
                for r in 0..ROWS {
                    acc[r] = [_mm512_set1_ps(*b.as_ptr().add(row(r))); V];
                }
            }
            let a: [*const f32; ROWS] =
                std::array::from_fn(|r| self.a.as_ptr().add(row(r) * self.ars));
            let mut s = src.as_ptr().add(t.q0);
            for j in 0..self.k {
                let x: [__m512; V] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(t.masks[v], s.add(v * LANES)));
                for r in 0..ROWS {
                    let w = _mm512_set1_ps(*a[r].add(j * self.acs));
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(w, x[v], acc[r][v]);
                    }
                }
                s = s.add(plane);
            }
            for r in 0..ROWS {
                if r >= t.rows {
                    break;
                }
                let at = (t.r0 + r) * plane + t.q0;
                for v in 0..V {
                    let mut val = acc[r][v];
                    if let Some(add) = add {
                        let extra =
                            _mm512_maskz_loadu_ps(t.masks[v], add.as_ptr().add(at + v * LANES));
                        val = _mm512_add_ps(val, extra);
                    }
                    _mm512_mask_storeu_ps(
                        out.as_mut_ptr().add(at + v * LANES).cast(),
                        t.masks[v],
                        val,
                    );
                }
            }
        }
    }
}

/// Where one register tile of a [`Product`] lies.
struct Tile<'a> {
    rows: usize,
    r0: usize,
    q0: usize,
    masks: &'a [__mmask16; VECS],
}

/// y = conv1×1(x) + bias (+ residual), `[B, cout, h, w]`.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    g: &ConvGeometry,
) -> Vec<f32> {
    assert!(applies(g), "pointwise convolution does not cover {g:?}");
    let plane = g.h * g.w;
    let (in_len, out_len) = (g.cin * plane, g.cout * plane);
    assert_eq!(x.len(), g.batch * in_len, "conv2d: input length");
    assert_eq!(weight.len(), g.cout * g.cin, "conv2d: weight length");
    assert_eq!(bias.len(), g.cout, "conv2d: bias length");
    assert!(
        residual.is_none_or(|r| r.len() == g.batch * out_len),
        "conv2d: residual length"
    );
    let mut y = super::uninit(g.batch * out_len);
    if y.is_empty() {
        return Vec::new();
    }
    let product = Product {
        a: weight,
        ars: g.cin,
        acs: 1,
        rows: g.cout,
        k: g.cin,
        plane,
        init: Some(bias),
    };
    let images = chunk(g);
    y.par_chunks_mut(images * out_len)
        .zip(x.par_chunks(images * in_len.max(1)))
        .enumerate()
        .for_each(|(i, (ys, xs))| {
            for (b, yb) in ys.chunks_mut(out_len).enumerate() {
                let n = i * images + b;
                let xb = &xs[b * in_len..(b + 1) * in_len];
                let res = residual.map(|r| &r[n * out_len..(n + 1) * out_len]);
                // SAFETY: AVX-512F (applies); the slices have the product's shapes.
                unsafe { product.image(xb, res, yb) };
            }
        });
    // SAFETY: every tile stores all of its rows' pixels (masks cover each plane exactly) and the
    // tiles cover every row and pixel of every image.
    unsafe { super::assume_init(y) }
}

/// The backward pass of [`forward`]: ∂L/∂x (when `input_grad`), ∂L/∂W and ∂L/∂b.
pub fn backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    input_grad: bool,
) -> ConvGrads {
    assert!(applies(g), "pointwise convolution does not cover {g:?}");
    let plane = g.h * g.w;
    let (in_len, out_len) = (g.cin * plane, g.cout * plane);
    assert_eq!(x.len(), g.batch * in_len, "conv2d backward: input length");
    assert_eq!(
        weight.len(),
        g.cout * g.cin,
        "conv2d backward: weight length"
    );
    assert_eq!(
        dy.len(),
        g.batch * out_len,
        "conv2d backward: gradient length"
    );
    let transposed = Product {
        a: weight,
        ars: 1,
        acs: g.cin,
        rows: g.cin,
        k: g.cout,
        plane,
        init: None,
    };
    let mut dx = super::uninit(if input_grad { g.batch * in_len } else { 0 });
    let (dweight, dbias) = backward_tasks(x, dy, &mut dx, g, chunk(g), |dxs, xs, dys, dw| {
        let mut dx_images = dxs.map(|d| d.chunks_mut(in_len));
        for (xb, dyb) in xs.chunks(in_len).zip(dys.chunks(out_len)) {
            // dW += ∂L/∂Y · Xᵀ
            matmul(
                [g.cout, g.cin, plane],
                dw,
                [g.cin, 1],
                true,
                dyb,
                [plane, 1],
                xb,
                [1, plane],
                Parallelism::None,
            );
            if let Some(dxb) = dx_images.as_mut().and_then(|it| it.next()) {
                // SAFETY: AVX-512F (applies); dyb is one image of cout planes, dxb of cin.
                unsafe { transposed.image(dyb, None, dxb) };
            }
        }
    });
    // SAFETY: with an input gradient every image of dx went through `transposed.image`, which
    // writes all of it; without one dx is empty.
    let dx = unsafe { super::assume_init(dx) };
    ConvGrads { dx, dweight, dbias }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::tests::{direct, direct_grads};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).normal_f32(n)
    }

    fn shapes() -> Vec<ConvGeometry> {
        let g = |batch, cin, cout, h, w| ConvGeometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh: 1,
            kw: 1,
            stride: [1, 1],
            pad: [0, 0],
        };
        vec![
            // Planes of a partial vector, a whole number of vectors, more than one block of
            // VECS vectors with a masked tail; channel counts that fill no tile.
            g(3, 5, 7, 3, 3),
            g(2, 16, 8, 4, 8),
            g(5, 13, 10, 10, 11),
            g(4, 64, 32, 14, 14),
            // More images than one weight-gradient group.
            g(7, 96, 64, 28, 28),
        ]
    }

    fn assert_close(got: &[f32], want: &[f64], terms: usize, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let tol = 1e-5 * (terms as f64).sqrt();
        for (k, (&a, &b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a as f64 - b).abs() <= tol * (1.0 + b.abs()),
                "{what} [{k}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        if !available() {
            return;
        }
        for (i, g) in shapes().into_iter().enumerate() {
            let s = 10 * i as u64;
            let x = values(g.batch * g.cin * g.h * g.w, s + 1);
            let w = values(g.cout * g.cin, s + 2);
            let b = values(g.cout, s + 3);
            let r = values(g.batch * g.cout * g.h * g.w, s + 4);
            let want = direct(&x, &w, &b, &g);
            assert_close(
                &forward(&x, &w, &b, None, &g),
                &want,
                g.cin,
                &format!("{g:?}"),
            );
            let with_res: Vec<f64> = want.iter().zip(&r).map(|(a, &b)| a + b as f64).collect();
            let got = forward(&x, &w, &b, Some(&r), &g);
            assert_close(&got, &with_res, g.cin, &format!("{g:?} residual"));
        }
    }

    #[test]
    fn backward_matches_brute_force_sums() {
        if !available() {
            return;
        }
        for (i, g) in shapes().into_iter().enumerate() {
            let s = 10 * i as u64;
            let x = values(g.batch * g.cin * g.h * g.w, s + 5);
            let w = values(g.cout * g.cin, s + 6);
            let dy = values(g.batch * g.cout * g.h * g.w, s + 7);
            let [dx, dw, db] = direct_grads(&x, &w, &dy, &g);
            let got = backward(&x, &w, &dy, &g, true);
            let what = format!("{g:?}");
            assert_close(&got.dx, &dx, g.cout, &format!("{what} dx"));
            let pixels = g.batch * g.h * g.w;
            assert_close(&got.dweight, &dw, pixels, &format!("{what} dw"));
            assert_close(&got.dbias, &db, pixels, &format!("{what} db"));
            assert!(backward(&x, &w, &dy, &g, false).dx.is_empty());
        }
    }
}
