//! The weight gradient of a 3×3 stride-1 padding-1 convolution through Winograd's F(2×2, 3×3)
//! (the input transform of [`super::winograd`]): with U = G g Gᵀ, V = Bᵀ d B per input tile and
//! y = Aᵀ (Σ_c U ⊙ V) A per output tile, the gradient of the transformed kernel is
//! ∂U[ξ][co][c] = Σ_tiles Z[ξ][co] · V[ξ][c] with Z = A ∂y Aᵀ (the 2×2 output-gradient tile
//! spread back onto the 4×4 grid), and ∂g = Gᵀ ∂U G. Sixteen long inner products per
//! (output, input) channel pair instead of the direct form's 36 per 2×2 outputs: 2.25× fewer
//! multiply-adds, on the same register tile as the direct weight gradient
//! ([`direct::grad_block`]). Tested with the F(4×4) weight gradient in
//! [`super::winograd4_grad`].
//!
//! Layout. V is [`winograd::input_transform`]'s `[16][cin][tiles]` (tiles of a group of images
//! numbered consecutively); ∂L/∂y is first made channels-last ([`direct::to_channels_last`]), so that
//! Z is `[16][tile][cout]` with channels along the vector lanes and its transform needs no
//! shuffles. The broadcast operand is V (one tile of one channel), the vector operand Z.

use super::direct::{self, LANES};
use super::winograd::{self, WinoGeometry, XI, spread};
use std::arch::x86_64::*;

/// Tiles per V/Z group: enough for long inner loops (the register tile's sums are loaded and
/// stored once per group).
const GROUP_TILES: usize = 192;

thread_local! {
    /// Each thread's V, Z and channels-last ∂L/∂y, kept across calls (grown only).
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = std::cell::RefCell::default();
}

/// Adds ∂L/∂W of the convolution over the `g.batch` images of `x` (`[B, cin, h, w]`) with output
/// gradient `dy` (`[B, cout, h, w]`) to `dw` (`[cout, cin, 3, 3]`). Runs on the calling thread.
pub fn weight_grad(x: &[f32], dy: &[f32], g: &WinoGeometry, dw: &mut [f32]) {
    if !check_args(x, dy, g, dw) {
        return;
    }
    let plane = g.h * g.w;
    let (in_len, out_len) = (g.cin * plane, g.cout * plane);
    let ld = g.cout.next_multiple_of(LANES);
    let (cv, pairs) = direct::grad_shape(ld);
    let per_image = g.tiles_per_image();
    let group = GROUP_TILES.div_ceil(per_image).min(g.batch);
    let tp = (group * per_image).next_multiple_of(LANES);
    // One pair per input channel (its row of V[ξ]), padded to whole register tiles with row 0.
    let mut offsets: Vec<usize> = (0..g.cin).map(|c| c * tp).collect();
    offsets.resize(g.cin.next_multiple_of(pairs), 0);
    let rows = offsets.len();
    // ∂U as [16][rows][ld] sums over all images of the call.
    let mut acc = vec![0f32; XI * rows * ld];
    let vstride = spread(g.cin * tp);
    SCRATCH.with_borrow_mut(|[v, z, dyt]| {
        super::grow(v, XI * vstride);
        super::grow(z, group * per_image * ld);
        super::grow(dyt, group * plane * ld);
        for (xs, dys) in x.chunks(group * in_len).zip(dy.chunks(group * out_len)) {
            let tiles = (xs.len() / in_len) * per_image;
            for (i, (xb, dyb)) in xs.chunks(in_len).zip(dys.chunks(out_len)).enumerate() {
                let t0 = i * per_image;
                // SAFETY: AVX-512F checked; v holds 16 planes of cin × tp (t0 + per_image ≤ tp),
                // dyt h·w rows of ld ≥ cout per image of the group.
                unsafe {
                    winograd::input_transform(xb, g, v, t0, tp);
                    let dyt_image = &mut dyt[i * plane * ld..(i + 1) * plane * ld];
                    direct::to_channels_last(dyb, g.cout, g.h, g.w, g.w, ld, dyt_image);
                }
            }
            let images = xs.len() / in_len;
            for xi in 0..XI {
                // SAFETY: AVX-512F checked; dyt holds `images` images of h·w rows of ld, z
                // tiles rows of ld.
                unsafe { z_plane(&dyt[..images * plane * ld], g, ld, xi, z) };
                let (vx, zx) = (v[xi * vstride..].as_ptr(), z.as_ptr());
                for p0 in (0..rows).step_by(pairs) {
                    for v0 in (0..ld / LANES).step_by(cv) {
                        // SAFETY: rows c·tp + q (q < tiles ≤ tp) of V[ξ], rows q < tiles of Z[ξ]
                        // with ld ≥ (v0 + cv)·16 columns, and rows p0..p0 + pairs of ∂U[ξ] exist.
                        unsafe {
                            let sums = acc.as_mut_ptr().add((xi * rows + p0) * ld + v0 * LANES);
                            let offs = &offsets[p0..p0 + pairs];
                            let zv = zx.add(v0 * LANES);
                            direct::grad_block(
                                true, cv, zv, ld, vx, 1, offs, 1, tiles, tiles, sums,
                            );
                        }
                    }
                }
            }
        }
    });
    add_untransformed::<4>(&acc, rows, ld, g, times_g, dw);
}

/// ∂W += Gᵀ ∂U G for every (output, input) channel pair, from ∂U `[N·N][rows][ld]` (a row of
/// output channels per input channel) with `times_g` applying Gᵀ to N rows: along s, then along
/// r, over whole rows of output channels (they vectorize).
pub(super) fn add_untransformed<const N: usize>(
    acc: &[f32],
    rows: usize,
    ld: usize,
    g: &WinoGeometry,
    times_g: fn([&[f32]; N], &mut [f32]),
    dw: &mut [f32],
) {
    let (mut ug, mut col) = (vec![0f32; 3 * N * ld], vec![0f32; 3 * ld]);
    let mut gug = vec![0f32; 9 * ld];
    for c in 0..g.cin {
        let row = |xi: usize| &acc[(xi * rows + c) * ld..][..ld];
        // ug[r][j] = Σ_s ∂U[r][s] G[s][j].
        for (r, out) in ug.chunks_exact_mut(3 * ld).enumerate() {
            times_g(std::array::from_fn(|s| row(N * r + s)), out);
        }
        // gug[i][j] = Σ_r G[r][i] ug[r][j]: the same map down the columns j.
        for j in 0..3 {
            times_g(
                std::array::from_fn(|r| &ug[(3 * r + j) * ld..][..ld]),
                &mut col,
            );
            for i in 0..3 {
                gug[(3 * i + j) * ld..][..ld].copy_from_slice(&col[i * ld..][..ld]);
            }
        }
        for co in 0..g.cout {
            let out = &mut dw[(co * g.cin + c) * 9..][..9];
            for (k, o) in out.iter_mut().enumerate() {
                *o += gug[k * ld + co];
            }
        }
    }
}

/// out[j] = Σ_s u[s] G[s][j] for rows of values, G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]; `out` holds
/// the three result rows one after another.
fn times_g(u: [&[f32]; 4], out: &mut [f32]) {
    let n = u[0].len();
    let (o0, rest) = out.split_at_mut(n);
    let (o1, o2) = rest.split_at_mut(n);
    for k in 0..n {
        let (a, b, c, d) = (u[0][k], u[1][k], u[2][k], u[3][k]);
        o0[k] = a + 0.5 * (b + c);
        o1[k] = 0.5 * (b - c);
        o2[k] = 0.5 * (b + c) + d;
    }
}

/// Asserts the shapes of a weight-gradient call (x `[B, cin, h, w]`, ∂L/∂y `[B, cout, h, w]`,
/// ∂L/∂W `[cout, cin, 3, 3]`) and AVX-512F; false when there is nothing to add.
pub(super) fn check_args(x: &[f32], dy: &[f32], g: &WinoGeometry, dw: &[f32]) -> bool {
    assert!(
        direct::available(),
        "winograd weight gradient needs AVX-512F"
    );
    let plane = g.h * g.w;
    assert_eq!(
        x.len(),
        g.batch * g.cin * plane,
        "winograd weight gradient: input length"
    );
    assert_eq!(
        dy.len(),
        g.batch * g.cout * plane,
        "winograd weight gradient: ∂L/∂y length"
    );
    assert_eq!(
        dw.len(),
        g.cout * g.cin * 9,
        "winograd weight gradient: kernel length"
    );
    g.batch > 0 && plane > 0
}

/// Z[ξ][tile][co] = (A ∂Y Aᵀ)[ξ] for one position ξ and every tile of the images in `dyt`
/// (each ∂L/∂y channels last, `[(y·w + x)·ld + co]`, tiles numbered image by image); output
/// positions past an image's last row or column count as 0. One plane at a time, just before its
/// products, so that it is written to and read from the L1 cache (all 16 planes at once went
/// through L2 and cost as much as the products).
///
/// # Safety
/// AVX-512F; `dyt` holds whole images of h·w rows of `ld` (a multiple of 16) floats, `z` a row of
/// `ld` per tile of them.
#[target_feature(enable = "avx512f")]
unsafe fn z_plane(dyt: &[f32], g: &WinoGeometry, ld: usize, xi: usize, z: &mut [f32]) {
    // Row r of A (Aᵀ = [1 1 1 0; 0 1 −1 −1]): the weights of a tile's two rows (columns).
    const A: [[f32; 2]; 4] = [[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, -1.0]];
    let (th, tw) = (g.tile_rows(), g.tile_cols());
    let plane = g.h * g.w;
    let images = dyt.len() / (plane * ld);
    assert!(dyt.len() == images * plane * ld && z.len() >= images * th * tw * ld);
    let (ai, aj) = (A[xi / 4], A[xi % 4]);
    // The (row, column, weight) terms of this position: one, two or four pixels of the tile.
    let mut terms = [(0usize, 0usize, 0f32); 4];
    let mut n = 0;
    for (a, &wa) in ai.iter().enumerate() {
        for (b, &wb) in aj.iter().enumerate() {
            if wa * wb != 0.0 {
                terms[n] = (a, b, wa * wb);
                n += 1;
            }
        }
    }
    let terms = &terms[..n];
    // Plane offsets and weights of the terms from a tile's first pixel.
    let offs: [(usize, __m512); 4] = std::array::from_fn(|k| {
        let (a, b, wgt) = terms.get(k).copied().unwrap_or((0, 0, 0.0));
        ((a * g.w + b) * ld, _mm512_set1_ps(wgt))
    });
    // Tiles whose four pixels all lie inside the image.
    let (full_rows, full_cols) = (g.h / 2, g.w / 2);
    for image in 0..images {
        let dy = &dyt[image * plane * ld..(image + 1) * plane * ld];
        for ty in 0..th {
            let t = (image * th + ty) * tw;
            let out = z[t * ld..(t + tw) * ld].as_mut_ptr();
            let full = if ty < full_rows { full_cols } else { 0 };
            let base = dy[2 * ty * g.w * ld..].as_ptr();
            // SAFETY: tiles tx < full lie inside the image, so every offset addresses a pixel
            // row of ld floats of dy; rows t .. t + tw of z exist (asserted).
            unsafe {
                match n {
                    1 => z_run::<1>(base, &offs, ld, full, out),
                    2 => z_run::<2>(base, &offs, ld, full, out),
                    _ => z_run::<4>(base, &offs, ld, full, out),
                }
            }
            // A tile on the last row or column of an odd-sized image: its pixels outside count
            // as 0.
            for tx in full..tw {
                let (r, c) = (2 * ty, 2 * tx);
                for co in (0..ld).step_by(LANES) {
                    let mut sum = _mm512_setzero_ps();
                    for &(a, b, wgt) in terms {
                        if r + a < g.h && c + b < g.w {
                            let at = ((r + a) * g.w + c + b) * ld + co;
                            // SAFETY: a pixel inside the image, co + 16 ≤ ld.
                            let y = unsafe { _mm512_loadu_ps(dy[at..].as_ptr()) };
                            sum = _mm512_fmadd_ps(y, _mm512_set1_ps(wgt), sum);
                        }
                    }
                    // SAFETY: row t + tx of z (asserted).
                    unsafe { _mm512_storeu_ps(out.add(tx * ld + co), sum) };
                }
            }
        }
    }
}

/// out[tx][co] = Σ_k w_k · base[offset_k + 2·tx·ld + co] for `count` tiles of a tile row.
///
/// # Safety
/// AVX-512F; every address read and `out + tx·ld + co` for tx < count, co < ld are in bounds.
#[target_feature(enable = "avx512f")]
unsafe fn z_run<const N: usize>(
    base: *const f32,
    offs: &[(usize, __m512); 4],
    ld: usize,
    count: usize,
    out: *mut f32,
) {
    for co in (0..ld).step_by(LANES) {
        for tx in 0..count {
            // SAFETY: the caller's contract.
            unsafe {
                let p = base.add(2 * tx * ld + co);
                let mut sum = _mm512_mul_ps(_mm512_loadu_ps(p.add(offs[0].0)), offs[0].1);
                for &(off, wgt) in &offs[1..N] {
                    sum = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(off)), wgt, sum);
                }
                _mm512_storeu_ps(out.add(tx * ld + co), sum);
            }
        }
    }
}
