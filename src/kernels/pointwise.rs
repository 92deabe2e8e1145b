//! 1×1 convolutions (stride 1, no padding) straight on the NCHW planes. For one image a 1×1
//! convolution is Y[cout × HW] = W[cout × cin] · X[cin × HW] whose right operand is the image as
//! it lies: a [`Product`] that starts from the bias and adds the residual as it stores; ∂L/∂x is
//! the product with Wᵀ. ∂L/∂W (a sum of dot products along the pixels) stays one GEMM per
//! image.
//!
//! Through the `gemm` crate the forward pass cost a zero-filled output, a packed copy of every
//! image and a separate pass for the bias (and another for the residual).

use super::conv::{ConvGeometry, ConvGrads, backward_tasks};
use super::direct::available;
use super::matmul::matmul;
use super::product::Product;
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether these kernels take `g`: a 1×1 kernel, stride 1, no padding, on a CPU with AVX-512F
/// (elsewhere the GEMM route of [`super::conv`] is as good).
pub fn applies(g: &ConvGeometry) -> bool {
    available() && g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad == [0, 0]
}

/// Images per task: two tasks per thread.
fn chunk(g: &ConvGeometry) -> usize {
    g.batch.div_ceil(2 * rayon::current_num_threads()).max(1)
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
                product.run(xb, res, yb);
            }
        });
    // SAFETY: `Product::run` writes every element of each image's output planes.
    unsafe { super::assume_init(y) }
}

/// The backward pass of [`forward`]: ∂L/∂x (when `input_grad`), ∂L/∂W and ∂L/∂b. The slices'
/// lengths are [`super::conv::backward_with`]'s to check (it does, before coming here).
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
                transposed.run(dyb, None, dxb);
            }
        }
    });
    // SAFETY: with an input gradient every image of dx went through `transposed.run`, which
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
