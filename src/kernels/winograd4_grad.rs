//! The weight gradient of a 3×3 stride-1 padding-1 convolution through the F(4×4, 3×3)
//! transform that [`super::winograd4`] runs forward: with U = G g Gᵀ, V = Bᵀ d B per 6×6 input
//! patch and y = Aᵀ (Σ_c U ⊙ V) A per 4×4 output tile, the gradient of the transformed kernel is
//! ∂U[ξ][c][co] = Σ_tiles V[ξ][c] · Z[ξ][co] with Z = A ∂y Aᵀ (the 4×4 output-gradient tile
//! spread onto the 6×6 grid), and ∂g = Gᵀ ∂U G: 36 multiply-adds per tile and channel pair
//! instead of the direct form's 144 for the same 16 outputs.
//!
//! Layout. As forward, everything is channels-last: V `[36][tile][cin]` from
//! [`winograd4::image_tiles`], Z `[36][tile][cout]` from ∂L/∂y made channels-last with zeros past
//! the image to whole tiles. The 36 sums over tiles run on the direct weight-gradient register
//! tile ([`direct::grad_block`]: V broadcast, stepping a tile's row of channels; Z in the lanes).

// The transforms index rows and columns of the same small tiles by their loop counters.
#![allow(clippy::needless_range_loop)]

use super::direct::{self, LANES};
use super::winograd::{WinoGeometry, spread};
use super::winograd4::{self, XI, tile_cols, tile_rows};
use std::arch::x86_64::*;

/// Bytes of one plane of V and Z together for a group of images, whose transforms are built
/// before their products: the products run plane by plane, each re-reading its V and Z plane
/// once per register tile of channels, so both should stay in the 48 KiB L1 cache (the sums are
/// loaded and stored once per group: not too few tiles either).
const GROUP_PLANE_BYTES: usize = 32 << 10;

thread_local! {
    /// Each thread's buffers (grown only): one image channels-last with its border, one image's
    /// ∂L/∂y channels-last to whole tiles, and V and Z of a group.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 4]> = std::cell::RefCell::default();
}

/// Adds ∂L/∂W of the convolution over the `g.batch` images of `x` (`[B, cin, h, w]`) with output
/// gradient `dy` (`[B, cout, h, w]`) to `dw` (`[cout, cin, 3, 3]`). Runs on the calling thread.
pub fn weight_grad(x: &[f32], dy: &[f32], g: &WinoGeometry, dw: &mut [f32]) {
    if !check_args(x, dy, g, dw) {
        return;
    }
    let plane = g.h * g.w;
    let (in_len, out_len) = (g.cin * plane, g.cout * plane);
    let (th, tw) = (tile_rows(g), tile_cols(g));
    let per_image = th * tw;
    let (cinp, ld) = (
        g.cin.next_multiple_of(LANES),
        g.cout.next_multiple_of(LANES),
    );
    let (cv, pairs) = direct::grad_shape(ld);
    let group_tiles = (GROUP_PLANE_BYTES / (4 * (cinp + ld))).max(16);
    let group = (group_tiles / per_image).clamp(1, g.batch);
    let (vstride, zstride) = (
        spread(group * per_image * cinp),
        spread(group * per_image * ld),
    );
    // ∂U as [36][rows][ld]: a row per input channel, padded to whole register tiles.
    let rows = g.cin.next_multiple_of(pairs);
    let mut acc = vec![0f32; XI * rows * ld];
    SCRATCH.with_borrow_mut(|[xt, dyp, v, z]| {
        super::grow(xt, winograd4::bordered_len(g));
        super::grow(dyp, 4 * th * 4 * tw * ld);
        super::grow(v, XI * vstride);
        super::grow(z, XI * zstride);
        let mut offsets = vec![0usize; pairs];
        for (xs, dys) in x.chunks(group * in_len).zip(dy.chunks(group * out_len)) {
            let tiles = (xs.len() / in_len) * per_image;
            for (i, (xb, dyb)) in xs.chunks(in_len).zip(dys.chunks(out_len)).enumerate() {
                let t0 = i * per_image;
                zero_past(dyp, g, 4 * th, 4 * tw, ld);
                // SAFETY: AVX-512F checked; xt holds bordered_len floats and V rows up to
                // t0 + per_image ≤ tiles; pixel (y, x) of ∂L/∂y goes to (y, x) of dyp, inside its
                // rows of ld floats, and every tile's 4×4 block lies inside dyp; Z rows t < tiles.
                unsafe {
                    winograd4::image_tiles(xb, g, xt, v, vstride, t0);
                    direct::to_channels_last(dyb, g.cout, g.h, g.w, 4 * tw, ld, dyp);
                    for ty in 0..th {
                        for tx in 0..tw {
                            z_tile(dyp, 4 * tw, ld, ty, tx, z, zstride, t0 + ty * tw + tx);
                        }
                    }
                }
            }
            for xi in 0..XI {
                let (vx, zx) = (v[xi * vstride..].as_ptr(), z[xi * zstride..].as_ptr());
                for c0 in (0..rows).step_by(pairs) {
                    // Padding rows past the last channel read channel 0 and are never used.
                    for (k, o) in offsets.iter_mut().enumerate() {
                        *o = if c0 + k < g.cin { c0 + k } else { 0 };
                    }
                    for v0 in (0..ld / LANES).step_by(cv) {
                        // SAFETY: V[ξ] holds rows t·cinp + c (t < tiles, c < cin), Z[ξ] rows t
                        // of ld ≥ (v0 + cv)·16 floats, ∂U[ξ] rows c0 .. c0 + pairs ≤ rows.
                        unsafe {
                            let sums = acc.as_mut_ptr().add((xi * rows + c0) * ld + v0 * LANES);
                            let zv = zx.add(v0 * LANES);
                            direct::grad_block(
                                true, cv, zv, ld, vx, cinp, &offsets, 1, tiles, tiles, sums,
                            );
                        }
                    }
                }
            }
        }
    });
    add_untransformed(&acc, rows, ld, g, dw);
}

/// out[j] = Σ_s u[s] G[s][j] for rows of values, G = [¼ 0 0; −⅙ −⅙ −⅙; −⅙ ⅙ −⅙;
/// 1/24 1/12 ⅙; 1/24 −1/12 ⅙; 0 0 1]; `out` holds the three result rows one after another.
fn times_g(u: [&[f32]; 6], out: &mut [f32]) {
    let n = u[0].len();
    let (o0, rest) = out.split_at_mut(n);
    let (o1, o2) = rest.split_at_mut(n);
    for k in 0..n {
        let (p12, m12) = (u[1][k] + u[2][k], u[2][k] - u[1][k]);
        let (p34, m34) = (u[3][k] + u[4][k], u[3][k] - u[4][k]);
        // Products by the reciprocals: a division per element cost 2% of a training step.
        const SIXTH: f32 = 1.0 / 6.0;
        const TWELFTH: f32 = 1.0 / 12.0;
        const TWENTY_FOURTH: f32 = 1.0 / 24.0;
        o0[k] = 0.25 * u[0][k] - p12 * SIXTH + p34 * TWENTY_FOURTH;
        o1[k] = m12 * SIXTH + m34 * TWELFTH;
        o2[k] = (p34 - p12) * SIXTH + u[5][k];
    }
}

/// Zeroes the pixels of a channels-last `rows` × `cols` image (`ld` floats each) outside its
/// top-left h × w.
fn zero_past(buf: &mut [f32], g: &WinoGeometry, rows: usize, cols: usize, ld: usize) {
    for y in 0..g.h {
        buf[(y * cols + g.w) * ld..(y + 1) * cols * ld].fill(0.0);
    }
    buf[g.h * cols * ld..rows * cols * ld].fill(0.0);
}

/// A applied to four vectors (Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1]).
#[target_feature(enable = "avx512f")]
fn a6(y: [__m512; 4]) -> [__m512; 6] {
    let (e, o) = (_mm512_add_ps(y[0], y[2]), _mm512_add_ps(y[1], y[3]));
    let e2 = _mm512_fmadd_ps(_mm512_set1_ps(4.0), y[2], y[0]);
    let o2 = _mm512_fmadd_ps(_mm512_set1_ps(8.0), y[3], _mm512_add_ps(y[1], y[1]));
    [
        y[0],
        _mm512_add_ps(e, o),
        _mm512_sub_ps(e, o),
        _mm512_add_ps(e2, o2),
        _mm512_sub_ps(e2, o2),
        y[3],
    ]
}

/// Z[ξ][t][co] = (A ∂Y Aᵀ)[ξ] for the 4×4 block (ty, tx) of a channels-last ∂L/∂y (`yw` pixels
/// per row, `ld` floats per pixel), every 16-channel block.
///
/// # Safety
/// AVX-512F; the block lies inside `dyp`; Z planes `zstride` apart hold row t of ld floats.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn z_tile(
    dyp: &[f32],
    yw: usize,
    ld: usize,
    ty: usize,
    tx: usize,
    z: &mut [f32],
    zstride: usize,
    t: usize,
) {
    assert!(dyp.len() >= ((4 * ty + 3) * yw + 4 * tx + 4) * ld);
    assert!(z.len() >= (XI - 1) * zstride + (t + 1) * ld);
    for co in (0..ld).step_by(LANES) {
        // SAFETY: asserted above.
        unsafe {
            let base = dyp.as_ptr().add((4 * ty * yw + 4 * tx) * ld + co);
            // Along each row of the block, then down the six columns.
            let rows: [[__m512; 6]; 4] = std::array::from_fn(|a| {
                a6(std::array::from_fn(|b| {
                    _mm512_loadu_ps(base.add((a * yw + b) * ld))
                }))
            });
            let out = z.as_mut_ptr().add(t * ld + co);
            for k in 0..6 {
                let col = a6(std::array::from_fn(|a| rows[a][k]));
                for (r, val) in col.into_iter().enumerate() {
                    _mm512_storeu_ps(out.add((r * 6 + k) * zstride), val);
                }
            }
        }
    }
}

/// ∂W += Gᵀ ∂U G for every (output, input) channel pair, from ∂U `[36][rows][ld]` (a row of
/// output channels per input channel) with [`times_g`] applying Gᵀ to six rows: along s, then
/// along r, over whole rows of output channels (they vectorize).
fn add_untransformed(acc: &[f32], rows: usize, ld: usize, g: &WinoGeometry, dw: &mut [f32]) {
    const N: usize = 6;
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

/// Asserts the shapes of a weight-gradient call (x `[B, cin, h, w]`, ∂L/∂y `[B, cout, h, w]`,
/// ∂L/∂W `[cout, cin, 3, 3]`) and AVX-512F; false when there is nothing to add.
fn check_args(x: &[f32], dy: &[f32], g: &WinoGeometry, dw: &[f32]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{ConvGeometry, tests::direct_grads};

    /// The F(4×4) weight gradient against the brute-force sums.
    #[test]
    fn weight_grads_match_the_definition() {
        if !direct::available() {
            return;
        }
        let geometries = [
            // Sides that are not multiples of 4, channels filling no vector.
            WinoGeometry {
                batch: 3,
                cin: 5,
                cout: 13,
                h: 7,
                w: 9,
            },
            // Whole vectors of channels (two and four per tile), several groups of images.
            WinoGeometry {
                batch: 9,
                cin: 30,
                cout: 32,
                h: 6,
                w: 6,
            },
            WinoGeometry {
                batch: 2,
                cin: 7,
                cout: 64,
                h: 11,
                w: 10,
            },
            // Rows wider than a vector of pixels, a single row.
            WinoGeometry {
                batch: 2,
                cin: 3,
                cout: 16,
                h: 6,
                w: 38,
            },
            WinoGeometry {
                batch: 2,
                cin: 3,
                cout: 16,
                h: 1,
                w: 38,
            },
        ];
        for (k, g) in geometries.into_iter().enumerate() {
            let conv = ConvGeometry {
                batch: g.batch,
                cin: g.cin,
                h: g.h,
                w: g.w,
                cout: g.cout,
                kh: 3,
                kw: 3,
                stride: [1, 1],
                pad: [1, 1],
            };
            let x = crate::rng::Rng::new(50 + k as u64).normal_f32(g.batch * g.cin * g.h * g.w);
            let dy = crate::rng::Rng::new(60 + k as u64).normal_f32(g.batch * g.cout * g.h * g.w);
            let [_, want, _] = direct_grads(&x, &vec![0.0; g.cout * g.cin * 9], &dy, &conv);
            // It accumulates onto what `dw` holds.
            let start = crate::rng::Rng::new(70 + k as u64).normal_f32(want.len());
            // Winograd rounding grows with the size of the terms summed (√ of their count).
            let scale = ((g.batch * g.h * g.w) as f64).sqrt();
            let mut got = start.clone();
            weight_grad(&x, &dy, &g, &mut got);
            for (i, e) in want.iter().enumerate() {
                let e = e + start[i] as f64;
                let tol = 2e-5 * scale * (1.0 + e.abs());
                assert!(
                    (got[i] as f64 - e).abs() < tol,
                    "{g:?} [{i}]: {} vs {e}",
                    got[i]
                );
            }
        }
    }
}
