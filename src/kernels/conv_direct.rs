//! Stride-1 convolutions over a batch through the AVX-512 micro-kernels of [`super::direct`]:
//! forward (optionally adding a residual), and backward (input gradient as a flipped forward
//! convolution of the padded ∂L/∂y, weight gradient accumulated per task image by image, the
//! tasks' sums added at the end).

use super::conv::{ConvGeometry, ConvGrads, backward_tasks};
use super::direct::{self, NR, Plan};
use super::winograd::WinoGeometry;
use super::{winograd4, winograd4_grad};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Whether [`forward`] covers `g` on this CPU (and is worth it: not for 1×1 kernels, which are
/// plain GEMMs, nor for fewer output channels than a micro-tile holds).
pub fn applies(g: &ConvGeometry) -> bool {
    direct::available()
        && g.stride == [1, 1]
        && g.kh * g.kw > 1
        && g.pad[0] < g.kh
        && g.pad[1] < g.kw
        && g.out_h() > 0
        && g.out_w() > 0
        && g.cout >= NR
}

/// Whether [`backward`] covers `g`: as [`applies`], and enough input channels for the input
/// gradient's micro-tiles.
pub fn applies_backward(g: &ConvGeometry) -> bool {
    applies(g) && g.cin >= NR
}

/// A padded layout: its row width, its plane stride and the taps' plane offsets.
struct Layout {
    wp: usize,
    ps: usize,
    offsets: Vec<usize>,
}

impl Layout {
    fn of_input(g: &ConvGeometry) -> Self {
        let (hp, wp) = (g.h + 2 * g.pad[0], g.w + 2 * g.pad[1]);
        Self::new(hp, wp, g)
    }

    /// ∂L/∂y padded by `k − 1 − pad`: the input of the input-gradient convolution. Its rows are as
    /// wide as the padded input's (stride 1).
    fn of_output_grad(g: &ConvGeometry) -> Self {
        let a = [g.kh - 1 - g.pad[0], g.kw - 1 - g.pad[1]];
        Self::new(g.out_h() + 2 * a[0], g.out_w() + 2 * a[1], g)
    }

    fn new(hp: usize, wp: usize, g: &ConvGeometry) -> Self {
        let offsets = (0..g.kh)
            .flat_map(|i| (0..g.kw).map(move |j| i * wp + j))
            .collect();
        Self {
            wp,
            ps: direct::plane_stride(hp, wp),
            offsets,
        }
    }
}

/// Whether `g` is a 3×3 convolution with stride 1 and padding 1 (output size = input size), the
/// only kind the Winograd kernels compute.
fn same_3x3(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.pad == [1, 1]
}

/// Whether the F(4×4, 3×3) kernels cover `g`.
fn winograd4_covers(g: &ConvGeometry) -> bool {
    same_3x3(g) && winograd4::applies(&winograd_geometry(g))
}

fn winograd_geometry(g: &ConvGeometry) -> WinoGeometry {
    WinoGeometry {
        batch: g.batch,
        cin: g.cin,
        cout: g.cout,
        h: g.h,
        w: g.w,
    }
}

/// y = conv(x, weight) + bias (see [`super::conv::forward`]).
/// With `residual` (shaped like y) it is added to the output as it is stored. With `wino`,
/// convolutions that [`winograd4`] covers go there.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    g: &ConvGeometry,
    wino: bool,
) -> Vec<f32> {
    assert!(applies(g), "direct convolution does not cover {g:?}");
    if wino && winograd4_covers(g) {
        let u = winograd4::transform_weights(weight, g.cout, g.cin, false);
        return winograd4::conv(x, &u, Some(bias), residual, &winograd_geometry(g));
    }
    let lay = Layout::of_input(g);
    let (oh, ow) = (g.out_h(), g.out_w());
    let plan = Plan {
        cin: g.cin,
        ps: lay.ps,
        offsets: &lay.offsets,
        wp: lay.wp,
        oh,
        ow,
    };
    let packed = direct::pack_weights(weight, g.cout, g.cin, g.kh * g.kw, false);
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * oh * ow);
    if g.batch * out_len == 0 {
        return Vec::new();
    }
    let mut y = super::uninit(g.batch * out_len);
    // Kernel blocks per task: all of them, unless there are fewer images than threads.
    let blocks = g.cout.div_ceil(NR);
    let splits = rayon::current_num_threads()
        .div_ceil(g.batch)
        .clamp(1, blocks);
    let per = blocks.div_ceil(splits);
    let plane = oh * ow;
    let image = |i: usize, xb: &[f32], yb: &mut [MaybeUninit<f32>], xpad: &mut Vec<f32>| {
        xpad.resize(g.cin * lay.ps, 0.0);
        direct::pad_planes(xb, g.h, g.w, g.pad, xpad, lay.ps);
        let run = |first: usize, yrows: &mut [MaybeUninit<f32>]| {
            let last = (first + per).min(blocks);
            let b = &bias[first * NR..];
            let at = i * out_len + first * NR * plane;
            let res = residual.map(|r| &r[at..at + yrows.len()]);
            direct::conv_image(xpad, &packed, first..last, &plan, Some(b), res, yrows);
        };
        if splits == 1 {
            run(0, yb);
        } else {
            yb.par_chunks_mut(per * NR * oh * ow)
                .enumerate()
                .for_each(|(k, rows)| run(k * per, rows));
        }
    };
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(in_len))
        .enumerate()
        .for_each_init(Vec::new, |xpad, (i, (yb, xb))| image(i, xb, yb, xpad));
    // SAFETY: every image's rows were split among the kernel-block groups and conv_image writes
    // every element of the rows it is given.
    unsafe { super::assume_init(y) }
}

/// The backward pass of [`forward`] (see [`super::conv::backward`]); with `wino`, a convolution
/// that [`winograd4`] covers gets its input gradient there and its weight gradient from
/// [`winograd4_grad`].
pub fn backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    input_grad: bool,
    wino: bool,
) -> ConvGrads {
    assert!(
        applies_backward(g),
        "direct convolution does not cover {g:?}"
    );
    if wino && winograd4_covers(g) {
        // ∂L/∂x = the F(4×4) convolution of ∂L/∂y with the flipped kernel (3×3, padding 1; the
        // transposed shape has the same sizes, batch and channel counts, so it is covered too).
        let dx = if input_grad {
            let back = WinoGeometry {
                cin: g.cout,
                cout: g.cin,
                ..winograd_geometry(g)
            };
            let u = winograd4::transform_weights(weight, g.cout, g.cin, true);
            winograd4::conv(dy, &u, None, None, &back)
        } else {
            Vec::new()
        };
        // ∂L/∂W by F(4×4) too (an F(2×2) weight gradient for layers of over 64 input channels,
        // kept until 2026-11-29, was level with it at 128→64 and 96→64 and 8% slower at 96→32
        // in `ddpm bench --profile` on `mnist`; from 7×7 to 28×28 F(4×4) was 5–20% faster than
        // the direct tiles).
        // Four tasks per thread (a thread slowed down by the shared host hands work over), but
        // at least 128 tiles per task: each task zeroes, fills and untransforms its own ∂U (36
        // planes of cin × cout), which on 7×7 images (4 tiles each) cost more than the tasks'
        // balance gained (7×7 backward passes 10% faster with one task per thread).
        let threads = rayon::current_num_threads();
        let wg = winograd_geometry(g);
        let tiles = winograd4::tile_rows(&wg) * winograd4::tile_cols(&wg);
        let chunk = g
            .batch
            .div_ceil(4 * threads)
            .max(128usize.div_ceil(tiles))
            .min(g.batch.div_ceil(threads))
            .max(1);
        let in_len = g.cin * g.h * g.w;
        let mut no_dx: [f32; 0] = [];
        let (dweight, dbias) = backward_tasks(x, dy, &mut no_dx, g, chunk, |_, xs, dys, dw| {
            let part = WinoGeometry {
                batch: xs.len() / in_len,
                ..winograd_geometry(g)
            };
            winograd4_grad::weight_grad(xs, dys, &part, dw);
        });
        return ConvGrads { dx, dweight, dbias };
    }
    let (oh, ow) = (g.out_h(), g.out_w());
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * oh * ow);
    let taps = g.kh * g.kw;
    let lx = Layout::of_input(g);
    let ld = Layout::of_output_grad(g);
    debug_assert_eq!(lx.wp, ld.wp);
    // The input gradient: a convolution of padded ∂L/∂y with `cout` input channels.
    let flipped = direct::pack_weights(weight, g.cout, g.cin, taps, true);
    let dx_plan = Plan {
        cin: g.cout,
        ps: ld.ps,
        offsets: &ld.offsets,
        wp: ld.wp,
        oh: g.h,
        ow: g.w,
    };
    let dx_blocks = g.cin.div_ceil(NR);
    // Four tasks per thread, so that a thread slowed down (a shared host) hands work over;
    // each task keeps its own ∂L/∂W sums, added up at the end.
    let chunk = g.batch.div_ceil(4 * rayon::current_num_threads()).max(1);
    let mut dx = super::uninit(if input_grad { g.batch * in_len } else { 0 });
    let (dweight, dbias) = backward_tasks(x, dy, &mut dx, g, chunk, |dxs, xs, dys, dw| {
        let mut xpad = vec![0f32; g.cin * lx.ps];
        let mut dypad = vec![0f32; if dxs.is_some() { g.cout * ld.ps } else { 0 }];
        let a = [g.kh - 1 - g.pad[0], g.kw - 1 - g.pad[1]];
        let mut grad = direct::WeightGrad::new(g.cout, g.cin, &lx.offsets, lx.ps);
        let mut dx_images = dxs.map(|d| d.chunks_mut(in_len));
        for (xb, dyb) in xs.chunks(in_len).zip(dys.chunks(out_len)) {
            direct::pad_planes(xb, g.h, g.w, g.pad, &mut xpad, lx.ps);
            grad.add_image(&xpad, dyb, oh, ow, lx.wp);
            if let Some(dxb) = dx_images.as_mut().and_then(|it| it.next()) {
                direct::pad_planes(dyb, oh, ow, a, &mut dypad, ld.ps);
                direct::conv_image(&dypad, &flipped, 0..dx_blocks, &dx_plan, None, None, dxb);
            }
        }
        grad.add_to(dw);
    });
    // SAFETY: with an input gradient, each task wrote every image of its part through
    // conv_image, which writes every element; without one, `dx` is empty.
    let dx = unsafe { super::assume_init(dx) };
    ConvGrads { dx, dweight, dbias }
}
