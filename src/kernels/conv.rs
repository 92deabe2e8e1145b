//! 2-D convolution (one group, no dilation) on contiguous NCHW f32 buffers, images spread over
//! the thread pool. Stride-1 convolutions go to the direct AVX-512 kernels (`conv_direct.rs`)
//! where they apply; the GEMM route here covers the rest: 1×1 (the image
//! is the operand), stride 1 elsewhere (one GEMM per kernel tap from the padded image), strided
//! (im2col, recomputed in the backward pass rather than kept: it would be 9× the input).

use super::matmul::matmul;
use gemm::Parallelism;
use rayon::prelude::*;

/// The shapes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (rows, columns).
    pub stride: [usize; 2],
    /// Zero padding on each side (rows, columns).
    pub pad: [usize; 2],
}

impl ConvGeometry {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad[0] - self.kh) / self.stride[0] + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad[1] - self.kw) / self.stride[1] + 1
    }

    fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn patch(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// A 1×1 convolution with stride 1 and no padding needs no im2col: the image is the matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0, 0]
    }

    /// Images per task so that every thread gets work.
    fn chunk(&self) -> usize {
        self.batch.div_ceil(rayon::current_num_threads()).max(1)
    }

    /// A GEMM may use the pool itself only when the images alone cannot keep it busy.
    fn gemm_parallelism(&self) -> Parallelism {
        if self.batch >= rayon::current_num_threads() {
            Parallelism::None
        } else {
            Parallelism::Rayon(0)
        }
    }
}

/// The valid output columns `[lo, hi)` of a stride-1 row at kernel column `j`: those whose input
/// column `ox + j - pad` lies inside `[0, w)`.
fn valid_columns(g: &ConvGeometry, j: usize, ow: usize) -> (usize, usize) {
    let hi = (g.w + g.pad[1]).saturating_sub(j).min(ow);
    let lo = g.pad[1].saturating_sub(j).min(hi);
    (lo, hi)
}

/// The im2col matrix of one image: row (c, i, j), column (oy, ox) holds x[c, oy·s + i − p, ox·s + j − p]
/// (zero outside the image).
#[inline(never)]
fn im2col(x: &[f32], g: &ConvGeometry, col: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let p = oh * ow;
    for c in 0..g.cin {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * p..][..p];
                for oy in 0..oh {
                    let out = &mut row[oy * ow..(oy + 1) * ow];
                    let iy = (oy * g.stride[0] + i).wrapping_sub(g.pad[0]);
                    if iy >= g.h {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    if g.stride[1] == 1 {
                        let (lo, hi) = valid_columns(g, j, ow);
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        if lo < hi {
                            out[lo..hi].copy_from_slice(&src[lo + j - g.pad[1]..hi + j - g.pad[1]]);
                        }
                    } else {
                        for (ox, o) in out.iter_mut().enumerate() {
                            let ix = (ox * g.stride[1] + j).wrapping_sub(g.pad[1]);
                            *o = if ix < g.w { src[ix] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each entry of `col` back onto the input pixel it was read from.
/// `dx` must start at zero.
#[inline(never)]
fn col2im(col: &[f32], g: &ConvGeometry, dx: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let p = oh * ow;
    for c in 0..g.cin {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * p..][..p];
                for oy in 0..oh {
                    let src = &row[oy * ow..(oy + 1) * ow];
                    let iy = (oy * g.stride[0] + i).wrapping_sub(g.pad[0]);
                    if iy >= g.h {
                        continue;
                    }
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    if g.stride[1] == 1 {
                        let (lo, hi) = valid_columns(g, j, ow);
                        if lo < hi {
                            let d = &mut dst[lo + j - g.pad[1]..hi + j - g.pad[1]];
                            for (d, s) in d.iter_mut().zip(&src[lo..hi]) {
                                *d += s;
                            }
                        }
                    } else {
                        for (ox, s) in src.iter().enumerate() {
                            let ix = (ox * g.stride[1] + j).wrapping_sub(g.pad[1]);
                            if ix < g.w {
                                dst[ix] += s;
                            }
                        }
                    }
                }
            }
        }
    }
}

with_avx512! {
    /// The wide output grid `[cout][wide]` of one padded image `operand` (see
    /// [`Method::Shifted`]): per tap, output and input channel, one multiply-add along the grid.
    fn thin_forward(operand: &[f32], weight: &[f32], g: &ConvGeometry, wide: &mut [f32]) -> () {
        let (q, (hp, wp)) = (g.wide(), g.padded());
        wide[..g.cout * q].fill(0.0);
        for (co, out) in wide.chunks_mut(q).take(g.cout).enumerate() {
            for c in 0..g.cin {
                let plane = &operand[c * hp * wp..(c + 1) * hp * wp];
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let w = weight[((co * g.cin + c) * g.kh + i) * g.kw + j];
                        let src = &plane[i * wp + j..][..q];
                        out.iter_mut().zip(src).for_each(|(o, &v)| *o += w * v);
                    }
                }
            }
        }
    }
}

with_avx512! {
    /// ∂L/∂W (added to `dw`) and, with `dxpad`, the padded ∂L/∂x (added) of one image for a
    /// [`ConvGeometry::thin`] convolution, from its padded image and ∂L/∂y on the wide grid
    /// (zero in the extra columns): a dot product and a multiply-add along the grid per tap,
    /// output and input channel.
    fn thin_backward(
        operand: &[f32],
        dy_wide: &[f32],
        weight: &[f32],
        g: &ConvGeometry,
        dw: &mut [f32],
        dxpad: Option<&mut [f32]>,
    ) -> () {
        let (q, (hp, wp)) = (g.wide(), g.padded());
        let mut dxpad = dxpad;
        for (co, d) in dy_wide.chunks(q).take(g.cout).enumerate() {
            for c in 0..g.cin {
                let at = c * hp * wp;
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let k = ((co * g.cin + c) * g.kh + i) * g.kw + j;
                        let off = at + i * wp + j;
                        let src = &operand[off..off + q];
                        dw[k] += dot(d, src);
                        if let Some(dx) = dxpad.as_deref_mut() {
                            let w = weight[k];
                            dx[off..off + q].iter_mut().zip(d).for_each(|(o, &v)| *o += w * v);
                        }
                    }
                }
            }
        }
    }
}

/// Σ a·b in 16 independent partial sums (one serial chain would wait on every addition).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const WIDE: usize = 16;
    let mut acc = [0f32; WIDE];
    let (ca, cb) = (a.chunks_exact(WIDE), b.chunks_exact(WIDE));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..WIDE {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// How one image is convolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// 1×1, stride 1, no padding: the image is the GEMM operand.
    Pointwise,
    /// Stride 1: one GEMM per kernel tap straight from the zero-padded image. On a grid as wide
    /// as the padded image, output position q = oy·wp + ox reads pixel q + i·wp + j of the padded
    /// plane for tap (i, j), so each tap's operand is the padded image itself at an offset: no
    /// im2col matrix is built. The `kw − 1` extra columns per row are computed and dropped.
    Shifted,
    /// Anything else (strides): im2col.
    Im2col,
}

impl ConvGeometry {
    fn method(&self) -> Method {
        if self.pointwise() {
            Method::Pointwise
        } else if self.stride == [1, 1] {
            Method::Shifted
        } else {
            Method::Im2col
        }
    }

    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad[0], self.w + 2 * self.pad[1])
    }

    /// Columns of the wide output grid of [`Method::Shifted`].
    fn wide(&self) -> usize {
        (self.out_h() - 1) * self.padded().1 + self.out_w()
    }

    /// Fewer output channels than a GEMM micro-tile holds (the U-Net's last layer): the
    /// [`Method::Shifted`] products would be GEMMs of one or three rows, which run at a few
    /// percent of the machine's speed; [`thin_forward`] and [`thin_backward`] take them.
    fn thin(&self) -> bool {
        self.cout < 8
    }

    /// Scratch floats one task needs: (operand, second buffer).
    fn scratch(&self) -> (usize, usize) {
        let (hp, wp) = self.padded();
        match self.method() {
            Method::Pointwise => (0, 0),
            Method::Shifted => (self.cin * hp * wp, self.cout * self.wide()),
            Method::Im2col => (
                self.patch() * self.out_pixels(),
                self.patch() * self.out_pixels(),
            ),
        }
    }
}

/// The GEMM operand of [`Method::Pointwise`] (the image itself) or [`Method::Im2col`] (its
/// im2col matrix, built in `col`).
fn patches<'a>(x: &'a [f32], g: &ConvGeometry, col: &'a mut [f32]) -> &'a [f32] {
    if g.method() == Method::Pointwise {
        x
    } else {
        im2col(x, g, col);
        col
    }
}

/// Copies one image into the interior of its zero-padded planes (the border stays as it is: zero).
fn pad_into(x: &[f32], g: &ConvGeometry, xpad: &mut [f32]) {
    let (hp, wp) = g.padded();
    for c in 0..g.cin {
        for y in 0..g.h {
            let src = &x[(c * g.h + y) * g.w..][..g.w];
            xpad[c * hp * wp + (y + g.pad[0]) * wp + g.pad[1]..][..g.w].copy_from_slice(src);
        }
    }
}

/// Which kernels a convolution may use; each route falls back to the simpler ones where it does
/// not apply (or the CPU lacks AVX-512).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// im2col / per-tap GEMMs only.
    Gemm,
    /// The AVX-512 kernels for stride 1: 1×1 as products on the planes, larger kernels by the
    /// direct tiles; GEMMs elsewhere.
    Direct,
    /// Winograd F(4×4, 3×3) for 3×3 stride-1 padding-1 convolutions (forward and both
    /// gradients), else as [`Route::Direct`]: the default.
    Winograd,
}

/// Whether the AVX-512 direct kernels take `g` (when `allowed`), for the forward or the backward
/// pass.
fn use_direct(g: &ConvGeometry, allowed: bool, backward: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use super::conv_direct::{applies, applies_backward};
        allowed
            && if backward {
                applies_backward(g)
            } else {
                applies(g)
            }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, allowed, backward);
        false
    }
}

/// y = conv(x, weight) + bias. `x`: `[B, cin, h, w]`, `weight`: `[cout, cin, kh, kw]`, `bias`:
/// `[cout]`; returns `[B, cout, out_h, out_w]`. Stride-1 convolutions (not 1×1, ≥ 8 output
/// channels) run the AVX-512 Winograd or direct kernels where the CPU has them (see [`Route`]),
/// the rest GEMMs.
pub fn forward(x: &[f32], weight: &[f32], bias: &[f32], g: &ConvGeometry) -> Vec<f32> {
    forward_with(x, weight, bias, g, Route::Winograd)
}

/// y = conv(x, weight) + bias + residual (`residual` shaped like y): a ResBlock's skip
/// connection, added by the direct kernels as they store (elsewhere after the convolution).
pub fn forward_residual(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    residual: &[f32],
    g: &ConvGeometry,
) -> Vec<f32> {
    forward_residual_with(x, weight, bias, residual, g, Route::Winograd)
}

/// [`forward_residual`] through `route`.
pub fn forward_residual_with(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    residual: &[f32],
    g: &ConvGeometry,
    route: Route,
) -> Vec<f32> {
    assert_eq!(
        residual.len(),
        g.batch * g.cout * g.out_pixels(),
        "conv2d: residual length"
    );
    #[cfg(target_arch = "x86_64")]
    if route != Route::Gemm && super::pointwise::applies(g) {
        return super::pointwise::forward(x, weight, bias, Some(residual), g);
    }
    #[cfg(target_arch = "x86_64")]
    if use_direct(g, route != Route::Gemm, false) {
        assert_eq!(x.len(), g.batch * g.cin * g.h * g.w, "conv2d: input length");
        assert_eq!(weight.len(), g.cout * g.patch(), "conv2d: weight length");
        assert_eq!(bias.len(), g.cout, "conv2d: bias length");
        let wino = route == Route::Winograd;
        return super::conv_direct::forward(x, weight, bias, Some(residual), g, wino);
    }
    let mut y = forward_with(x, weight, bias, g, route);
    super::add_assign(&mut y, residual);
    y
}

/// [`forward`] through `route`.
pub fn forward_with(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &ConvGeometry,
    route: Route,
) -> Vec<f32> {
    let (p, k) = (g.out_pixels(), g.patch());
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * p);
    assert_eq!(x.len(), g.batch * in_len, "conv2d: input length");
    assert_eq!(weight.len(), g.cout * k, "conv2d: weight length");
    assert_eq!(bias.len(), g.cout, "conv2d: bias length");
    #[cfg(target_arch = "x86_64")]
    if route != Route::Gemm && super::pointwise::applies(g) {
        return super::pointwise::forward(x, weight, bias, None, g);
    }
    #[cfg(target_arch = "x86_64")]
    if use_direct(g, route != Route::Gemm, false) {
        let wino = route == Route::Winograd;
        return super::conv_direct::forward(x, weight, bias, None, g, wino);
    }
    let mut y = super::zeroed(g.batch * out_len);
    if y.is_empty() {
        return y;
    }
    let chunk = g.chunk();
    let par = g.gemm_parallelism();
    let (ow, q, (hp, wp)) = (g.out_w(), g.wide(), g.padded());
    y.par_chunks_mut(chunk * out_len)
        .zip(x.par_chunks(chunk * in_len))
        .for_each(|(ys, xs)| {
            let (s1, s2) = g.scratch();
            let (mut operand, mut wide) = (vec![0f32; s1], vec![0f32; s2]);
            for (yb, xb) in ys.chunks_mut(out_len).zip(xs.chunks(in_len)) {
                match g.method() {
                    Method::Pointwise | Method::Im2col => {
                        let patches = patches(xb, g, &mut operand);
                        matmul(
                            [g.cout, p, k],
                            yb,
                            [p, 1],
                            false,
                            weight,
                            [k, 1],
                            patches,
                            [p, 1],
                            par,
                        );
                    }
                    Method::Shifted => {
                        pad_into(xb, g, &mut operand);
                        if g.thin() {
                            thin_forward(&operand, weight, g, &mut wide);
                        } else {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    matmul(
                                        [g.cout, q, g.cin],
                                        &mut wide,
                                        [q, 1],
                                        i + j > 0,
                                        &weight[i * g.kw + j..],
                                        [k, g.kh * g.kw],
                                        &operand[i * wp + j..],
                                        [hp * wp, 1],
                                        par,
                                    );
                                }
                            }
                        }
                        for (co, out) in yb.chunks_mut(p).enumerate() {
                            for (oy, row) in out.chunks_mut(ow).enumerate() {
                                row.copy_from_slice(&wide[co * q + oy * wp..][..ow]);
                            }
                        }
                    }
                }
                for (row, b) in yb.chunks_mut(p).zip(bias) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        });
    y
}

/// Gradients of a convolution with respect to its input, weight and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvGrads {
    /// ∂L/∂x, shaped like x (empty when it was not asked for).
    pub dx: Vec<f32>,
    /// ∂L/∂weight, shaped like the weight.
    pub dweight: Vec<f32>,
    /// ∂L/∂bias.
    pub dbias: Vec<f32>,
}

/// Scratch buffers of one backward task.
struct BackwardScratch {
    operand: Vec<f32>,
    second: Vec<f32>,
    dxpad: Vec<f32>,
}

/// One image of the backward pass: adds its ∂L/∂W to `dw`, writes ∂L/∂x into `dxb` when given.
#[allow(clippy::too_many_arguments)]
fn backward_image(
    xb: &[f32],
    dyb: &[f32],
    weight: &[f32],
    g: &ConvGeometry,
    dxb: Option<&mut [f32]>,
    dw: &mut [f32],
    s: &mut BackwardScratch,
    par: Parallelism,
) {
    let (p, k) = (g.out_pixels(), g.patch());
    let (ow, q, (hp, wp)) = (g.out_w(), g.wide(), g.padded());
    match g.method() {
        Method::Pointwise | Method::Im2col => {
            // dW += dY · patchesᵀ
            let patches = patches(xb, g, &mut s.operand);
            matmul(
                [g.cout, k, p],
                dw,
                [k, 1],
                true,
                dyb,
                [p, 1],
                patches,
                [1, p],
                par,
            );
            // d(patches) = Wᵀ · dY: for 1×1 the patches are the image, else back onto the pixels.
            let Some(dxb) = dxb else { return };
            let dpatches = if g.method() == Method::Pointwise {
                &mut *dxb
            } else {
                &mut s.second
            };
            matmul(
                [k, p, g.cout],
                dpatches,
                [p, 1],
                false,
                weight,
                [1, k],
                dyb,
                [p, 1],
                par,
            );
            if g.method() == Method::Im2col {
                dxb.fill(0.0);
                col2im(&s.second, g, dxb);
            }
        }
        Method::Shifted => {
            pad_into(xb, g, &mut s.operand);
            // ∂L/∂y on the wide grid; the dropped columns stay zero (never written).
            let dy_wide = &mut s.second;
            for (co, src) in dyb.chunks(p).enumerate() {
                for (oy, row) in src.chunks(ow).enumerate() {
                    dy_wide[co * q + oy * wp..][..ow].copy_from_slice(row);
                }
            }
            s.dxpad.fill(0.0);
            if g.thin() {
                let dxpad = dxb.is_some().then_some(&mut s.dxpad[..]);
                thin_backward(&s.operand, dy_wide, weight, g, dw, dxpad);
            } else {
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let (tap, off) = (i * g.kw + j, i * wp + j);
                        // dW[:, :, i, j] += dY_wide · shifted(x)ᵀ
                        matmul(
                            [g.cout, g.cin, q],
                            &mut dw[tap..],
                            [k, g.kh * g.kw],
                            true,
                            dy_wide,
                            [q, 1],
                            &s.operand[off..],
                            [1, hp * wp],
                            par,
                        );
                        // shifted(dx) += W[:, :, i, j]ᵀ · dY_wide
                        if dxb.is_none() {
                            continue;
                        }
                        matmul(
                            [g.cin, q, g.cout],
                            &mut s.dxpad[off..],
                            [hp * wp, 1],
                            true,
                            &weight[tap..],
                            [g.kh * g.kw, k],
                            dy_wide,
                            [q, 1],
                            par,
                        );
                    }
                }
            }
            let Some(dxb) = dxb else { return };
            for c in 0..g.cin {
                for y in 0..g.h {
                    dxb[(c * g.h + y) * g.w..][..g.w].copy_from_slice(
                        &s.dxpad[c * hp * wp + (y + g.pad[0]) * wp + g.pad[1]..][..g.w],
                    );
                }
            }
        }
    }
}

/// The backward pass of [`forward`] given ∂L/∂y (`dy`, `[B, cout, out_h, out_w]`); ∂L/∂x only
/// when `input_grad` (else `dx` is empty).
pub fn backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    input_grad: bool,
) -> ConvGrads {
    backward_with(x, weight, dy, g, Route::Winograd, input_grad)
}

/// The task structure both backward routes share: images in groups of `chunk`, one task per
/// group in parallel. Each task gets its part of `dx` (`None` when `dx` is empty: no input
/// gradient), its images of x and of ∂L/∂y, and a zeroed ∂L/∂W to add its images into; ∂L/∂b is
/// summed here. Returns ∂L/∂W and ∂L/∂b summed over the tasks.
pub(super) fn backward_tasks<T: Send>(
    x: &[f32],
    dy: &[f32],
    dx: &mut [T],
    g: &ConvGeometry,
    chunk: usize,
    task: impl Fn(Option<&mut [T]>, &[f32], &[f32], &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let (p, k) = (g.out_pixels(), g.patch());
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * p);
    let chunk = chunk.max(1);
    let dx_parts: Vec<Option<&mut [T]>> = if dx.is_empty() {
        (0..g.batch.div_ceil(chunk)).map(|_| None).collect()
    } else {
        dx.chunks_mut(chunk * in_len).map(Some).collect()
    };
    let zeros = || (vec![0f32; g.cout * k], vec![0f32; g.cout]);
    // The tasks' sums are added pairwise as they finish (on the pool, not on the caller's thread
    // after all of them).
    dx_parts
        .into_par_iter()
        .zip(x.par_chunks((chunk * in_len).max(1)))
        .zip(dy.par_chunks((chunk * out_len).max(1)))
        .map(|((dxs, xs), dys)| {
            let (mut dw, mut db) = zeros();
            task(dxs, xs, dys, &mut dw);
            for dyb in dys.chunks(out_len.max(1)) {
                for (d, row) in db.iter_mut().zip(dyb.chunks(p.max(1))) {
                    *d += super::lane_sum(row, |v| v) as f32;
                }
            }
            (dw, db)
        })
        .reduce(zeros, |(mut dw, mut db), (w2, b2)| {
            dw.iter_mut().zip(w2).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
            (dw, db)
        })
}

/// [`backward`] through `route`.
pub fn backward_with(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    route: Route,
    input_grad: bool,
) -> ConvGrads {
    let (p, k) = (g.out_pixels(), g.patch());
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * p);
    assert_eq!(x.len(), g.batch * in_len, "conv2d backward: input length");
    assert_eq!(weight.len(), g.cout * k, "conv2d backward: weight length");
    assert_eq!(
        dy.len(),
        g.batch * out_len,
        "conv2d backward: gradient length"
    );
    #[cfg(target_arch = "x86_64")]
    if route != Route::Gemm && super::pointwise::applies(g) {
        return super::pointwise::backward(x, weight, dy, g, input_grad);
    }
    #[cfg(target_arch = "x86_64")]
    if use_direct(g, route != Route::Gemm, true) {
        let wino = route == Route::Winograd;
        return super::conv_direct::backward(x, weight, dy, g, input_grad, wino);
    }
    let mut dx = super::zeroed(if input_grad { g.batch * in_len } else { 0 });
    let par = g.gemm_parallelism();
    let (dweight, dbias) = backward_tasks(x, dy, &mut dx, g, g.chunk(), |dxs, xs, dys, dw| {
        let (s1, s2) = g.scratch();
        let (hp, wp) = g.padded();
        let mut scratch = BackwardScratch {
            operand: vec![0f32; s1],
            second: vec![0f32; s2],
            dxpad: if g.method() == Method::Shifted {
                vec![0f32; g.cin * hp * wp]
            } else {
                Vec::new()
            },
        };
        let mut dx_images = dxs.map(|d| d.chunks_mut(in_len));
        for (xb, dyb) in xs.chunks(in_len).zip(dys.chunks(out_len)) {
            let dxb = dx_images.as_mut().and_then(|it| it.next());
            backward_image(xb, dyb, weight, g, dxb, dw, &mut scratch, par);
        }
    });
    ConvGrads { dx, dweight, dbias }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The definition, one output at a time, in f64.
    pub(in crate::kernels) fn direct(
        x: &[f32],
        wt: &[f32],
        b: &[f32],
        g: &ConvGeometry,
    ) -> Vec<f64> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut y = vec![0f64; g.batch * g.cout * oh * ow];
        for n in 0..g.batch {
            for co in 0..g.cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = b[co] as f64;
                        for c in 0..g.cin {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (oy * g.stride[0] + i) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + j) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x
                                        [((n * g.cin + c) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = wt[((co * g.cin + c) * g.kh + i) * g.kw + j];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((n * g.cout + co) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    fn geometries() -> Vec<ConvGeometry> {
        let g = |batch, cin, h, w, cout, k, s, p| ConvGeometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh: k,
            kw: k,
            stride: [s, s],
            pad: [p, p],
        };
        vec![
            g(3, 2, 7, 5, 4, 3, 1, 1),
            g(2, 3, 8, 6, 2, 3, 2, 1),
            g(1, 4, 5, 5, 3, 1, 1, 0),
            g(5, 2, 4, 4, 3, 3, 1, 0),
            g(2, 1, 3, 3, 2, 3, 1, 2),
            g(2, 2, 7, 9, 3, 3, 2, 0),
        ]
    }

    /// Shapes that exercise every tile of the direct kernels: input channels past one block of
    /// 64, output channels that fill no whole block (13, 33) or whole blocks of 32 and 64, wide
    /// grids ending in partial tiles, a 5×5 kernel, no padding.
    fn large_geometries() -> Vec<ConvGeometry> {
        let g = |batch, cin, h, w, cout, k, p| ConvGeometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh: k,
            kw: k,
            stride: [1, 1],
            pad: [p, p],
        };
        vec![
            g(2, 70, 9, 11, 13, 3, 1),
            g(3, 5, 20, 6, 33, 3, 1),
            g(2, 9, 6, 6, 64, 3, 0),
            g(3, 3, 7, 8, 32, 5, 2),
            g(1, 2, 5, 4, 3, 3, 2),
            // Winograd (an image per thread): odd sizes, a row wider than a vector, more than 64
            // input channels.
            g(5, 8, 11, 13, 8, 3, 1),
            g(4, 16, 13, 36, 24, 3, 1),
            g(2, 72, 10, 12, 16, 3, 1),
        ]
    }

    const ROUTES: [Route; 3] = [Route::Gemm, Route::Direct, Route::Winograd];

    /// The tolerance of `route` for sums of `terms` products of unit-size values: F(4×4, 3×3)
    /// Winograd loses a few more bits than a direct sum (its transforms scale by up to 8 and
    /// 1/24), an error that grows with the size of the terms summed, not of the result.
    fn tolerance(route: Route, terms: usize) -> f64 {
        match route {
            Route::Winograd => 1e-4f64.max(2e-5 * (terms as f64).sqrt()),
            _ => 1e-4,
        }
    }

    fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, e)) in got.iter().zip(want).enumerate() {
            assert!(
                (*a as f64 - e).abs() < tol * (1.0 + e.abs()),
                "{what}[{i}]: {a} vs {e}"
            );
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        for g in geometries().into_iter().chain(large_geometries()) {
            let x = values(g.batch * g.cin * g.h * g.w, 1);
            let wt = values(g.cout * g.cin * g.kh * g.kw, 2);
            let b = values(g.cout, 3);
            let want = direct(&x, &wt, &b, &g);
            for route in ROUTES {
                let got = forward_with(&x, &wt, &b, &g, route);
                let tol = tolerance(route, g.cin * g.kh * g.kw);
                assert_close(&got, &want, tol, &format!("{g:?} {route:?}"));
            }
        }
    }

    #[test]
    fn the_residual_is_added_to_the_output() {
        for g in geometries().into_iter().chain(large_geometries()) {
            let x = values(g.batch * g.cin * g.h * g.w, 11);
            let wt = values(g.cout * g.cin * g.kh * g.kw, 12);
            let b = values(g.cout, 13);
            let r = values(g.batch * g.cout * g.out_h() * g.out_w(), 14);
            let want: Vec<f64> = direct(&x, &wt, &b, &g)
                .iter()
                .zip(&r)
                .map(|(y, r)| y + *r as f64)
                .collect();
            for route in ROUTES {
                let got = forward_residual_with(&x, &wt, &b, &r, &g, route);
                let tol = tolerance(route, g.cin * g.kh * g.kw);
                assert_close(&got, &want, tol, &format!("{g:?} residual, {route:?}"));
            }
        }
    }

    /// ∂L/∂x, ∂L/∂W, ∂L/∂b of ⟨dy, conv(x)⟩ by brute-force sums in f64.
    pub(in crate::kernels) fn direct_grads(
        x: &[f32],
        wt: &[f32],
        dy: &[f32],
        g: &ConvGeometry,
    ) -> [Vec<f64>; 3] {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; wt.len()];
        let mut db = vec![0f64; g.cout];
        for n in 0..g.batch {
            for co in 0..g.cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let d = dy[((n * g.cout + co) * oh + oy) * ow + ox] as f64;
                        db[co] += d;
                        for c in 0..g.cin {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (oy * g.stride[0] + i).wrapping_sub(g.pad[0]);
                                    let ix = (ox * g.stride[1] + j).wrapping_sub(g.pad[1]);
                                    if iy >= g.h || ix >= g.w {
                                        continue;
                                    }
                                    let xi = ((n * g.cin + c) * g.h + iy) * g.w + ix;
                                    let wi = ((co * g.cin + c) * g.kh + i) * g.kw + j;
                                    dx[xi] += wt[wi] as f64 * d;
                                    dw[wi] += x[xi] as f64 * d;
                                }
                            }
                        }
                    }
                }
            }
        }
        [dx, dw, db]
    }

    #[test]
    fn backward_matches_brute_force_sums() {
        for g in geometries().into_iter().chain(large_geometries()) {
            let x = values(g.batch * g.cin * g.h * g.w, 8);
            let wt = values(g.cout * g.cin * g.kh * g.kw, 9);
            let dy = values(g.batch * g.cout * g.out_h() * g.out_w(), 10);
            let [dx, dw, db] = direct_grads(&x, &wt, &dy, &g);
            for route in ROUTES {
                let got = backward_with(&x, &wt, &dy, &g, route, true);
                let no_dx = backward_with(&x, &wt, &dy, &g, route, false);
                assert!(no_dx.dx.is_empty(), "{g:?}: dx not asked for");
                assert_eq!(no_dx.dweight, got.dweight, "{g:?}: dw without dx");
                assert_eq!(no_dx.dbias, got.dbias, "{g:?}: db without dx");
                let what = format!("{g:?} {route:?}");
                let tol = tolerance(route, g.cout * g.kh * g.kw);
                assert_close(&got.dx, &dx, tol, &format!("{what} dx"));
                let tol = tolerance(route, g.batch * g.out_h() * g.out_w());
                assert_close(&got.dweight, &dw, tol, &format!("{what} dw"));
                assert_close(&got.dbias, &db, 1e-4, &format!("{what} db"));
            }
        }
    }

    /// ⟨dy, conv(x)⟩ is linear in x, weight and bias, so each gradient is the functional's
    /// coefficient: checked against the definition by perturbing single entries (exact in f64
    /// up to rounding because the functional is linear).
    #[test]
    fn backward_gives_the_gradients_of_the_definition() {
        for g in geometries() {
            let x = values(g.batch * g.cin * g.h * g.w, 4);
            let wt = values(g.cout * g.cin * g.kh * g.kw, 5);
            let b = values(g.cout, 6);
            let dy = values(g.batch * g.cout * g.out_h() * g.out_w(), 7);
            let grads = backward_with(&x, &wt, &dy, &g, Route::Gemm, true);
            let functional = |x: &[f32], wt: &[f32], b: &[f32]| -> f64 {
                direct(x, wt, b, &g)
                    .iter()
                    .zip(&dy)
                    .map(|(y, d)| y * *d as f64)
                    .sum()
            };
            let base = functional(&x, &wt, &b);
            let check = |got: f32, plus: f64, what: &str| {
                let want = plus - base;
                assert!(
                    (got as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "{g:?} {what}: {got} vs {want}"
                );
            };
            let inputs = [x.clone(), wt.clone(), b.clone()];
            let outputs = [&grads.dx, &grads.dweight, &grads.dbias];
            for (which, (got, what)) in outputs.into_iter().zip(["dx", "dw", "db"]).enumerate() {
                for (i, &v) in got.iter().enumerate() {
                    let mut p = inputs.clone();
                    p[which][i] += 1.0;
                    check(v, functional(&p[0], &p[1], &p[2]), what);
                }
            }
        }
    }
}
