//! 3×3 stride-1 padding-1 convolutions by Winograd's F(4×4, 3×3) (Lavin & Gray 2016) on AVX-512,
//! with the channels in the vector lanes: each 4×4 block of outputs is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A
//! of the 6×6 input patch d around it, 36 multiplications per input channel instead of 144 (F(2×2,
//! 3×3) in [`super::winograd`] needs 64 for the same 16 outputs).
//!
//! Layout. Each image is first made channels-last with a zero border (`[h + 2][w + 2][cin]`,
//! rounded up to whole tiles), so that a tile's 36 input vectors are plain loads of 16 channels
//! at a pixel and the transforms need no shuffles, whatever the image width: on the small images
//! of a diffusion U-Net (7 to 32 pixels) a tile row has too few tiles to fill the lanes. V is
//! `[36][tile][cin]`, the products M `[36][tile][cout]`, the kernel U `[36][cin][cout]`; the 36
//! products M\[ξ\] = V\[ξ\]·U\[ξ\] run on the weight-gradient register tile of
//! `direct::grad_block` (V broadcast, U in the lanes). The output transform writes a
//! channels-last image, transposed back to planes (adding the residual) by 16 × 16 register
//! transposes.
//!
//! The input gradient is the same convolution of ∂L/∂y with the kernel transposed and flipped
//! ([`transform_weights`] with `flip`).

// The transforms index rows and columns of the same small tiles by their loop counters; that
// reads better (and unrolls the same) as index loops.
#![allow(clippy::needless_range_loop)]

use super::direct::{self, LANES, NR, available, first_lanes, transpose16};
use super::winograd::{WinoGeometry, spread};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Positions of the 6×6 transformed tile.
pub(super) const XI: usize = 36;
/// Tiles per task at least (when the batch allows): the kernel's 36 planes are read once per
/// task.
const TASK_TILES: usize = 96;

pub(super) fn tile_rows(g: &WinoGeometry) -> usize {
    g.h.div_ceil(4)
}

pub(super) fn tile_cols(g: &WinoGeometry) -> usize {
    g.w.div_ceil(4)
}

/// Whether these kernels run on this CPU and cover `g`: ≥ 8 channels in and out, images of at
/// least 6×6, at least one image per thread (tasks are groups of images), and one image's V or
/// M within 64 MiB of per-thread scratch.
pub fn applies(g: &WinoGeometry) -> bool {
    const SCRATCH_BYTES: usize = 64 << 20;
    let tiles = tile_rows(g) * tile_cols(g);
    available()
        && g.cin >= NR
        && g.cout >= NR
        && g.h >= 6
        && g.w >= 6
        && g.batch >= rayon::current_num_threads()
        && XI * tiles * g.cin.max(g.cout).next_multiple_of(LANES) * 4 <= SCRATCH_BYTES
}

/// U = G g Gᵀ for every (output, input) channel pair of a `[cout, cin, 3, 3]` kernel, packed
/// `[36][ins][outs rounded up to 16]` (zero past the last output channel). With `flip` it
/// transforms the kernel of the input-gradient convolution: outputs = the original inputs,
/// inputs = the original outputs, taps reversed. This runs for every convolution call, forward
/// and backward: 16 output channels at a time in the vector lanes, input channels over the pool.
pub fn transform_weights(weight: &[f32], cout: usize, cin: usize, flip: bool) -> Vec<f32> {
    assert!(available(), "winograd convolution needs AVX-512F");
    assert_eq!(weight.len(), cout * cin * 9, "winograd: kernel length");
    assert!(
        weight.len() < i32::MAX as usize,
        "winograd: kernel too large"
    );
    let (outs, ins) = if flip { (cin, cout) } else { (cout, cin) };
    let ld = outs.next_multiple_of(LANES);
    // Each input channel's 36 rows, then scattered into the planes.
    let rows: Vec<Vec<f32>> = (0..ins)
        .into_par_iter()
        .map(|c| {
            let mut r = vec![0f32; XI * ld];
            // SAFETY: AVX-512F checked; every gathered index is a tap of output channel o <
            // outs (masked) of input channel c < ins of the kernel (length asserted).
            unsafe { transform_channel(weight, cin, c, outs, flip, &mut r) };
            r
        })
        .collect();
    let mut u = vec![0f32; XI * ins * ld];
    u.par_chunks_mut(ld).enumerate().for_each(|(k, dst)| {
        let (xi, c) = (k / ins, k % ins);
        dst.copy_from_slice(&rows[c][xi * ld..(xi + 1) * ld]);
    });
    u
}

/// G (points 0, ±1, ±2, ∞) applied to three vectors.
#[target_feature(enable = "avx512f")]
fn g6(a: __m512, b: __m512, c: __m512) -> [__m512; 6] {
    let s = |x: f32| _mm512_set1_ps(x);
    let ac = _mm512_add_ps(a, c);
    let q = _mm512_fmadd_ps(s(1.0 / 24.0), a, _mm512_mul_ps(s(1.0 / 6.0), c));
    let b12 = _mm512_mul_ps(s(1.0 / 12.0), b);
    [
        _mm512_mul_ps(s(0.25), a),
        _mm512_mul_ps(s(-1.0 / 6.0), _mm512_add_ps(ac, b)),
        _mm512_mul_ps(s(-1.0 / 6.0), _mm512_sub_ps(ac, b)),
        _mm512_add_ps(q, b12),
        _mm512_sub_ps(q, b12),
        c,
    ]
}

/// `out[ξ][o] = (G g_{o,c} Gᵀ)[ξ]` for every output channel o < outs of input channel `c`.
///
/// # Safety
/// AVX-512F; `weight` is the `[cout, cin, 3, 3]` kernel, `c` < ins, `out` holds 36 rows of
/// outs.next_multiple_of(16).
#[target_feature(enable = "avx512f")]
unsafe fn transform_channel(
    weight: &[f32],
    cin: usize,
    c: usize,
    outs: usize,
    flip: bool,
    out: &mut [f32],
) {
    let ld = outs.next_multiple_of(LANES);
    assert!(out.len() >= XI * ld);
    // Tap k of output channel o: weight[(o·cin + c)·9 + k], or flipped weight[(c·cin + o)·9 + 8 − k].
    let stride = if flip { 9 } else { cin * 9 } as i32;
    let lanes: [i32; LANES] = std::array::from_fn(|l| l as i32 * stride);
    // SAFETY: reading 16 i32.
    let index = unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) };
    for o0 in (0..outs).step_by(LANES) {
        let mask = first_lanes(outs - o0);
        let tap = |k: usize| {
            let at = if flip {
                (c * cin + o0) * 9 + 8 - k
            } else {
                (o0 * cin + c) * 9 + k
            };
            // SAFETY: lanes l < outs − o0 read tap k of channel o0 + l (the caller's contract);
            // masked-off lanes are not read.
            unsafe {
                _mm512_mask_i32gather_ps::<4>(
                    _mm512_setzero_ps(),
                    mask,
                    index,
                    weight.as_ptr().add(at).cast(),
                )
            }
        };
        let g: [__m512; 9] = std::array::from_fn(tap);
        // G g: down the kernel's columns j.
        let cols: [[__m512; 6]; 3] = std::array::from_fn(|j| g6(g[j], g[3 + j], g[6 + j]));
        for r in 0..6 {
            let row = g6(cols[0][r], cols[1][r], cols[2][r]);
            for (s, val) in row.into_iter().enumerate() {
                // SAFETY: row r·6 + s of out has ld ≥ o0 + 16 floats (asserted).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add((r * 6 + s) * ld + o0), val) };
            }
        }
    }
}

/// y = conv3×3(x) + bias (+ residual) with the kernel already transformed by
/// [`transform_weights`]; `x` is `[B, cin, h, w]`, the result `[B, cout, h, w]`.
pub fn conv(
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: &WinoGeometry,
) -> Vec<f32> {
    assert!(available(), "winograd convolution needs AVX-512F");
    let plane = g.h * g.w;
    let (in_len, out_len) = (g.cin * plane, g.cout * plane);
    let ld = g.cout.next_multiple_of(LANES);
    assert_eq!(x.len(), g.batch * in_len, "winograd: input length");
    assert_eq!(u.len(), XI * g.cin * ld, "winograd: kernel length");
    assert!(
        bias.is_none_or(|b| b.len() == g.cout),
        "winograd: bias length"
    );
    assert!(
        residual.is_none_or(|r| r.len() == g.batch * out_len),
        "winograd: residual length"
    );
    if g.batch * out_len == 0 {
        return Vec::new();
    }
    let mut bias_row = vec![0f32; ld];
    if let Some(b) = bias {
        bias_row[..g.cout].copy_from_slice(b);
    }
    let per_image = tile_rows(g) * tile_cols(g);
    let by_tasks = g.batch.div_ceil(2 * rayon::current_num_threads()).max(1);
    let group = TASK_TILES.div_ceil(per_image).min(by_tasks).max(1);
    let mut y = super::uninit(g.batch * out_len);
    let residual_parts: Vec<Option<&[f32]>> = match residual {
        Some(r) => r.chunks(group * out_len).map(Some).collect(),
        None => vec![None; g.batch.div_ceil(group)],
    };
    y.par_chunks_mut(group * out_len)
        .zip(x.par_chunks(group * in_len))
        .zip(residual_parts)
        .for_each(|((ys, xs), res)| {
            SCRATCH.with_borrow_mut(|s| {
                let images = xs.len() / in_len;
                // SAFETY: AVX-512F checked; the buffers are sized inside for these shapes.
                unsafe { task(xs, u, &bias_row, res, ys, images, g, s) };
            })
        });
    // SAFETY: the output transpose writes every pixel of every channel of every image.
    unsafe { super::assume_init(y) }
}

thread_local! {
    /// Each thread's buffers, kept across calls (grown only; every element read is written
    /// first, or is a border that [`image_tiles`] zeroes).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

#[derive(Default)]
struct Scratch {
    /// One image channels-last with its zero border.
    xt: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    /// One image's output channels-last, whole tiles.
    yt: Vec<f32>,
}

/// One task: `images` images of `xs` into `ys`.
///
/// # Safety
/// AVX-512F; the slices hold `images` images of the shapes of `g`, `u` the transformed kernel.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    xs: &[f32],
    u: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    ys: &mut [MaybeUninit<f32>],
    images: usize,
    g: &WinoGeometry,
    s: &mut Scratch,
) {
    let (th, tw) = (tile_rows(g), tile_cols(g));
    let plane = g.h * g.w;
    let (in_len, out_len) = (g.cin * plane, g.cout * plane);
    let (cinp, ld) = (
        g.cin.next_multiple_of(LANES),
        g.cout.next_multiple_of(LANES),
    );
    let (cv, p) = direct::grad_shape(ld);
    let per_image = th * tw;
    let tiles = images * per_image;
    // Whole register tiles of p tiles, then half tiles for the rest.
    let tiles_p = tiles.next_multiple_of(p / 2);
    let (vstride, mstride) = (spread(tiles_p * cinp), spread(tiles_p * ld));
    super::grow(&mut s.xt, bordered_len(g));
    super::grow(&mut s.v, XI * vstride);
    super::grow(&mut s.m, XI * mstride);
    // A vector of slack: the output transpose loads whole vectors of pixels.
    super::grow(&mut s.yt, (4 * th * 4 * tw + LANES) * ld);
    for (i, xb) in xs.chunks(in_len).enumerate() {
        // SAFETY: xt and v sized above; tiles i·per_image .. (i + 1)·per_image ≤ tiles_p.
        unsafe { image_tiles(xb, g, &mut s.xt, &mut s.v, vstride, i * per_image) };
    }
    // Rows past the last tile (the register tile's padding) read tile 0 and are never used.
    let mut offsets = vec![0usize; p];
    for xi in 0..XI {
        let (ux, vx) = (u[xi * g.cin * ld..].as_ptr(), s.v[xi * vstride..].as_ptr());
        let mx = s.m[xi * mstride..].as_mut_ptr();
        let mut p0 = 0;
        while p0 < tiles_p {
            let n = if p0 + p <= tiles_p { p } else { p / 2 };
            let offsets = &mut offsets[..n];
            for (k, o) in offsets.iter_mut().enumerate() {
                *o = if p0 + k < tiles { (p0 + k) * cinp } else { 0 };
            }
            for v0 in (0..ld / LANES).step_by(cv) {
                // SAFETY: V rows t·cinp + c (c < cin), U rows c of ld ≥ (v0 + cv)·16 floats,
                // and M rows p0 .. p0 + n ≤ tiles_p of ld floats exist.
                unsafe {
                    let up = ux.add(v0 * LANES);
                    let mp = mx.add(p0 * ld + v0 * LANES);
                    direct::grad_block(false, cv, up, ld, vx, 1, offsets, 1, g.cin, g.cin, mp);
                }
            }
            p0 += n;
        }
    }
    for (i, yb) in ys.chunks_mut(out_len).enumerate() {
        for ty in 0..th {
            for tx in 0..tw {
                let t = i * per_image + ty * tw + tx;
                // SAFETY: row t of every M plane has ld floats; the 4×4 block from (4ty, 4tx)
                // lies inside yt's 4th × 4tw rows.
                unsafe { output_tile(&s.m, mstride, t, ld, bias, &mut s.yt, 4 * tw, ty, tx) };
            }
        }
        let res = residual.map(|r| &r[i * out_len..(i + 1) * out_len]);
        // SAFETY: yt holds 4th × 4tw pixels (+ a vector) of ld floats; yb one image's planes.
        unsafe { transpose_out(&s.yt, 4 * tw, ld, g, res, yb) };
    }
}

/// Floats of one image channels-last with its zero border, as [`image_tiles`] lays it out.
pub(super) fn bordered_len(g: &WinoGeometry) -> usize {
    (4 * tile_rows(g) + 2) * (4 * tile_cols(g) + 2) * g.cin.next_multiple_of(LANES)
}

/// V[ξ][t0 + tile][c] = (Bᵀ d B)[ξ] for every tile of one image `xb` (`[cin, h, w]`), through
/// `xt`: the image channels-last (`cin` rounded up to 16 floats per pixel) inside a zero border
/// one pixel wide on the top and left and up to whole tiles on the bottom and right.
///
/// # Safety
/// AVX-512F; `xt` holds [`bordered_len`] floats, the V planes `vstride` apart hold rows up to
/// t0 + tiles of cin.next_multiple_of(16) floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn image_tiles(
    xb: &[f32],
    g: &WinoGeometry,
    xt: &mut [f32],
    v: &mut [f32],
    vstride: usize,
    t0: usize,
) {
    let (th, tw) = (tile_rows(g), tile_cols(g));
    let (xw, cinp) = (4 * tw + 2, g.cin.next_multiple_of(LANES));
    assert!(xb.len() == g.cin * g.h * g.w && xt.len() >= bordered_len(g));
    // The border: row 0, the first and last columns of the image rows, the rows below.
    let row = xw * cinp;
    xt[..row].fill(0.0);
    for y in 1..=g.h {
        let r = &mut xt[y * row..(y + 1) * row];
        r[..cinp].fill(0.0);
        r[(g.w + 1) * cinp..].fill(0.0);
    }
    xt[(g.h + 1) * row..(4 * th + 2) * row].fill(0.0);
    // SAFETY: pixel (y, x) of the image goes to (y + 1, x + 1) of xt, inside its rows of cinp ≥
    // cin.next_multiple_of(16) floats; every tile's 6×6 patch lies inside xt; the V rows are the
    // caller's contract.
    unsafe {
        direct::to_channels_last(xb, g.cin, g.h, g.w, xw, cinp, &mut xt[row + cinp..]);
        for ty in 0..th {
            for tx in 0..tw {
                input_tile(xt, xw, cinp, ty, tx, v, vstride, t0 + ty * tw + tx);
            }
        }
    }
}

/// Bᵀ applied to six vectors (Bᵀ for the points 0, ±1, ±2, ∞).
#[target_feature(enable = "avx512f")]
fn bt(d: [__m512; 6]) -> [__m512; 6] {
    let (two, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    let a = _mm512_fnmadd_ps(four, d[2], d[4]); // d4 − 4 d2
    let b = _mm512_fnmadd_ps(four, d[1], d[3]); // d3 − 4 d1
    let c = _mm512_sub_ps(d[4], d[2]);
    let e = _mm512_mul_ps(two, _mm512_sub_ps(d[3], d[1]));
    [
        _mm512_fmadd_ps(four, d[0], _mm512_fnmadd_ps(five, d[2], d[4])),
        _mm512_add_ps(a, b),
        _mm512_sub_ps(a, b),
        _mm512_add_ps(c, e),
        _mm512_sub_ps(c, e),
        _mm512_fmadd_ps(four, d[1], _mm512_fnmadd_ps(five, d[3], d[5])),
    ]
}

/// Aᵀ applied to six vectors: [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1].
#[target_feature(enable = "avx512f")]
fn at(m: [__m512; 6]) -> [__m512; 4] {
    let s1 = _mm512_add_ps(m[1], m[2]);
    let s2 = _mm512_sub_ps(m[1], m[2]);
    let s3 = _mm512_add_ps(m[3], m[4]);
    let s4 = _mm512_sub_ps(m[3], m[4]);
    [
        _mm512_add_ps(_mm512_add_ps(m[0], s1), s3),
        _mm512_fmadd_ps(_mm512_set1_ps(2.0), s4, s2),
        _mm512_fmadd_ps(_mm512_set1_ps(4.0), s3, s1),
        _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), s4, s2), m[5]),
    ]
}

/// V[ξ][t][c] = (Bᵀ d B)[ξ] for tile (ty, tx), every 16-channel block c.
///
/// # Safety
/// AVX-512F; pixels (4ty + i, 4tx + j), i, j < 6, of the `xw`-wide channels-last image exist;
/// V planes `vstride` apart hold row t of cinp floats.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_tile(
    xt: &[f32],
    xw: usize,
    cinp: usize,
    ty: usize,
    tx: usize,
    v: &mut [f32],
    vstride: usize,
    t: usize,
) {
    assert!(xt.len() >= ((4 * ty + 5) * xw + 4 * tx + 6) * cinp);
    assert!(v.len() >= (XI - 1) * vstride + (t + 1) * cinp);
    for c0 in (0..cinp).step_by(LANES) {
        // SAFETY: asserted above.
        unsafe {
            let base = xt.as_ptr().add(((4 * ty) * xw + 4 * tx) * cinp + c0);
            // Along each patch row, then down the columns.
            let rows: [[__m512; 6]; 6] = std::array::from_fn(|i| {
                bt(std::array::from_fn(|j| {
                    _mm512_loadu_ps(base.add((i * xw + j) * cinp))
                }))
            });
            let out = v.as_mut_ptr().add(t * cinp + c0);
            for k in 0..6 {
                let col = bt(std::array::from_fn(|i| rows[i][k]));
                for (r, val) in col.into_iter().enumerate() {
                    _mm512_storeu_ps(out.add((r * 6 + k) * vstride), val);
                }
            }
        }
    }
}

/// yt[(4ty + a)·yw + 4tx + b][co] = (Aᵀ M A)[a][b] + bias for tile t, every 16-channel block.
///
/// # Safety
/// AVX-512F; M planes `mstride` apart hold row t of ld floats; pixels of the 4×4 block lie inside
/// yt's rows of `yw` pixels of ld floats.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_tile(
    m: &[f32],
    mstride: usize,
    t: usize,
    ld: usize,
    bias: &[f32],
    yt: &mut [f32],
    yw: usize,
    ty: usize,
    tx: usize,
) {
    assert!(m.len() >= (XI - 1) * mstride + (t + 1) * ld && bias.len() >= ld);
    assert!(yt.len() >= ((4 * ty + 3) * yw + 4 * tx + 4) * ld);
    for co in (0..ld).step_by(LANES) {
        // SAFETY: asserted above.
        unsafe {
            let mp = m.as_ptr().add(t * ld + co);
            let mv = |xi: usize| _mm512_loadu_ps(mp.add(xi * mstride));
            // Down the columns (4 rows of 6), then along each row.
            let cols: [[__m512; 4]; 6] =
                std::array::from_fn(|j| at(std::array::from_fn(|i| mv(i * 6 + j))));
            let b = _mm512_loadu_ps(bias.as_ptr().add(co));
            for a in 0..4 {
                let row = at(std::array::from_fn(|j| cols[j][a]));
                let out = yt.as_mut_ptr().add(((4 * ty + a) * yw + 4 * tx) * ld + co);
                for (k, val) in row.into_iter().enumerate() {
                    _mm512_storeu_ps(out.add(k * ld), _mm512_add_ps(val, b));
                }
            }
        }
    }
}

/// y[co][py][px] = yt[py·yw + px][co] (+ residual) for one image, by 16 × 16 register transposes.
///
/// # Safety
/// AVX-512F; yt holds h rows of `yw` ≥ w pixels of ld floats and a vector's pixels of slack.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_out(
    yt: &[f32],
    yw: usize,
    ld: usize,
    g: &WinoGeometry,
    residual: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
) {
    let plane = g.h * g.w;
    assert!(y.len() == g.cout * plane && residual.is_none_or(|r| r.len() == y.len()));
    assert!(yt.len() >= ((g.h - 1) * yw + g.w + LANES) * ld);
    for py in 0..g.h {
        for x0 in (0..g.w).step_by(LANES) {
            let nx = LANES.min(g.w - x0);
            let keep = first_lanes(nx);
            for co0 in (0..g.cout).step_by(LANES) {
                // SAFETY: pixels py·yw + x0 + k (k < 16) lie inside yt (slack asserted); the
                // stores and residual loads cover nx pixels of row py of planes co < cout.
                unsafe {
                    let src = yt.as_ptr().add((py * yw + x0) * ld + co0);
                    let rows: [__m512; LANES] =
                        std::array::from_fn(|k| _mm512_loadu_ps(src.add(k * ld)));
                    let cols = transpose16(rows);
                    for (r, &val) in cols.iter().enumerate().take(g.cout - co0) {
                        let at = (co0 + r) * plane + py * g.w + x0;
                        let val = match residual {
                            Some(res) => _mm512_add_ps(
                                val,
                                _mm512_maskz_loadu_ps(keep, res.as_ptr().add(at)),
                            ),
                            None => val,
                        };
                        _mm512_mask_storeu_ps(y.as_mut_ptr().add(at).cast(), keep, val);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).normal_f32(n)
    }

    /// The convolution by its definition in f64 (the convolution tests' reference).
    fn reference(x: &[f32], w: &[f32], b: &[f32], g: &WinoGeometry) -> Vec<f64> {
        let conv = crate::kernels::conv::ConvGeometry {
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
        crate::kernels::conv::tests::direct(x, w, b, &conv)
    }

    #[test]
    fn conv_matches_the_definition() {
        if !available() {
            return;
        }
        let shapes = [
            // Sides that are not multiples of 4, channels filling no vector.
            WinoGeometry {
                batch: 3,
                cin: 8,
                cout: 13,
                h: 7,
                w: 7,
            },
            WinoGeometry {
                batch: 2,
                cin: 21,
                cout: 32,
                h: 6,
                w: 10,
            },
            // Wide rows, many channels, several tasks' worth of images.
            WinoGeometry {
                batch: 5,
                cin: 70,
                cout: 64,
                h: 9,
                w: 38,
            },
            WinoGeometry {
                batch: 9,
                cin: 16,
                cout: 8,
                h: 14,
                w: 14,
            },
            // 9 tiles per task with 4 vectors of output channels: a whole register tile of 6
            // tiles, then a half one (the first shapes end on halves of 12 and 24).
            WinoGeometry {
                batch: 2,
                cin: 8,
                cout: 64,
                h: 10,
                w: 10,
            },
        ];
        for (i, g) in shapes.into_iter().enumerate() {
            let x = values(g.batch * g.cin * g.h * g.w, 10 + i as u64);
            let w = values(g.cout * g.cin * 9, 20 + i as u64);
            let b = values(g.cout, 30 + i as u64);
            let r = values(g.batch * g.cout * g.h * g.w, 40 + i as u64);
            let want = reference(&x, &w, &b, &g);
            let u = transform_weights(&w, g.cout, g.cin, false);
            let got = conv(&x, &u, Some(&b), None, &g);
            let with_res = conv(&x, &u, Some(&b), Some(&r), &g);
            // F(4×4, 3×3) loses a few more bits than the direct sum (its transforms scale by up
            // to 8 and 1/24): relative to the size of the terms summed.
            let scale = (9.0 * g.cin as f64).sqrt();
            for (k, e) in want.iter().enumerate() {
                let tol = 2e-5 * scale * (1.0 + e.abs());
                assert!(
                    (got[k] as f64 - e).abs() < tol,
                    "{g:?} [{k}]: {} vs {e}",
                    got[k]
                );
                let e2 = e + r[k] as f64;
                assert!(
                    (with_res[k] as f64 - e2).abs() < tol,
                    "{g:?} residual [{k}]"
                );
            }
        }
    }

    /// With `flip` the kernel is that of the input gradient: ⟨conv(x), dy⟩ = ⟨x, conv_flip(dy)⟩.
    #[test]
    fn flipped_kernel_is_the_adjoint() {
        if !available() {
            return;
        }
        let g = WinoGeometry {
            batch: 2,
            cin: 10,
            cout: 24,
            h: 9,
            w: 6,
        };
        let x = values(g.batch * g.cin * g.h * g.w, 1);
        let w = values(g.cout * g.cin * 9, 2);
        let dy = values(g.batch * g.cout * g.h * g.w, 3);
        let y = conv(
            &x,
            &transform_weights(&w, g.cout, g.cin, false),
            None,
            None,
            &g,
        );
        let back = WinoGeometry {
            cin: g.cout,
            cout: g.cin,
            ..g
        };
        let dx = conv(
            &dy,
            &transform_weights(&w, g.cout, g.cin, true),
            None,
            None,
            &back,
        );
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!(
            (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
            "{lhs} vs {rhs}"
        );
    }
}
