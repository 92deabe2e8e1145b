//! 3×3 stride-1 convolutions with padding 1 by Winograd's minimal filtering F(2×2, 3×3) on
//! AVX-512 (Lavin & Gray 2016). The convolutions themselves now run on [`super::winograd4`]'s
//! F(4×4, 3×3) where it applies; this transform serves the weight gradient
//! ([`super::winograd_grad`]) and shapes F(4×4) does not cover. Each 2×2 block of outputs is
//! Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of the 4×4 input patch d around it: 16 multiplications per input channel instead of 36. Over a batch the
//! 16 element-wise products become 16 matrix products U[ξ]·V[ξ] (output channels × input
//! channels times input channels × tiles), which run on the same register-blocked micro-kernel
//! shape as the direct convolution: 2.25× fewer multiply-adds, at the cost of the two
//! transforms.
//!
//! Layout. A task takes a group of images; their tiles t (image, tile row, tile column) are
//! numbered consecutively and fill the vector lanes. V is `[16][cin][tiles]`, the products M
//! `[16][cout][tiles]` (the 16 planes of each [`spread`] apart), the transformed kernel U
//! `[16][cout/8][cin][8]`. The transforms are
//! separable and vectorized along a tile row: even and odd image columns are split with two
//! permutes, so 16 tiles of a row are transformed at once.
//!
//! The input gradient of such a convolution is the same convolution of ∂L/∂y with the kernel
//! transposed and flipped ([`transform_weights`] with `flip`); its weight gradient goes through
//! the same transform in [`super::winograd_grad`].

// The micro-kernels index accumulators, loads and weights by the same small loop counters; that
// reads better (and unrolls the same) as index loops.
#![allow(clippy::needless_range_loop)]

use super::direct::{LANES, NR, available, first_lanes};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Positions of the 4×4 transformed tile.
pub(super) const XI: usize = 16;
/// Vectors of tiles per GEMM micro-tile.
const MR: usize = 3;
/// Input channels ahead that [`gemm_tile`] prefetches V.
const PREFETCH: usize = 4;

/// The shapes of one Winograd convolution (3×3, stride 1, padding 1: output size = input size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinoGeometry {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Height (input and output).
    pub h: usize,
    /// Width (input and output).
    pub w: usize,
}

impl WinoGeometry {
    pub(super) fn tile_rows(&self) -> usize {
        self.h.div_ceil(2)
    }

    pub(super) fn tile_cols(&self) -> usize {
        self.w.div_ceil(2)
    }

    pub(super) fn tiles_per_image(&self) -> usize {
        self.tile_rows() * self.tile_cols()
    }

    /// Images per task: enough tiles for several micro-tiles, yet at least two tasks per thread
    /// when the batch allows.
    fn group(&self) -> usize {
        let by_tiles = 144usize.div_ceil(self.tiles_per_image().max(1));
        let by_tasks = self.batch.div_ceil(2 * rayon::current_num_threads()).max(1);
        by_tiles.min(by_tasks).max(1)
    }
}

/// The distance between the 16 planes of V (or M) for `n` floats per plane: rounded up so that
/// consecutive planes start one cache line apart modulo 4 KiB. The transforms touch all 16
/// planes at the same offset at once; with plane sizes that are multiples of 2 KiB (32 input
/// channels × 208 tiles is 26 KiB) those 16 streams fell into two sets of the L1 cache.
pub(super) fn spread(n: usize) -> usize {
    const LINE: usize = 16;
    const PAGE: usize = 1024;
    let n = n.next_multiple_of(LINE);
    let lines = (n % PAGE) / LINE;
    n + (PAGE / LINE + 1 - lines) % (PAGE / LINE) * LINE
}

/// Whether the Winograd kernels run on this CPU and are worth it for `g`: ≥ 8 channels in and
/// out, images of at least 10×10 (on smaller ones the 2×2 tiles fill few vector lanes per tile
/// row and the transforms cost more than the saved multiplications: measured slower at 7×7), at
/// least one image per thread (the tasks are groups of images; the direct kernels also split an
/// image's output channels over the threads, which keeps a small batch on every core), and one
/// image's V or M within 64 MiB (each thread keeps both for a whole image; a 256×256 image of
/// 128 channels would need 134 MB).
pub fn applies(g: &WinoGeometry) -> bool {
    const SCRATCH_BYTES: usize = 64 << 20;
    available()
        && g.cin >= NR
        && g.cout >= NR
        && g.h >= 10
        && g.w >= 10
        && g.batch >= rayon::current_num_threads()
        && XI * g.tiles_per_image() * g.cin.max(g.cout) * 4 <= SCRATCH_BYTES
}

/// U = G g Gᵀ for every (output, input) channel pair of a `[cout, cin, 3, 3]` kernel, packed
/// `[16][outs/8][ins][8]` (zero past the last output channel). With `flip` it transforms the
/// kernel of the input-gradient convolution: outputs = the original inputs, inputs = the
/// original outputs, taps reversed.
pub fn transform_weights(weight: &[f32], cout: usize, cin: usize, flip: bool) -> Vec<f32> {
    assert_eq!(weight.len(), cout * cin * 9, "winograd: kernel length");
    let (outs, ins) = if flip { (cin, cout) } else { (cout, cin) };
    let blocks = outs.div_ceil(NR);
    // The 16 values of every (output, input) pair, pairs spread over the pool (this runs for
    // every convolution call, forward and backward).
    let pairs: Vec<[f32; XI]> = (0..outs * ins)
        .into_par_iter()
        .with_min_len(256)
        .map(|pair| {
            let (o, c) = (pair / ins, pair % ins);
            let g = |i: usize, j: usize| -> f64 {
                if flip {
                    weight[(c * cin + o) * 9 + (2 - i) * 3 + (2 - j)] as f64
                } else {
                    weight[(o * cin + c) * 9 + i * 3 + j] as f64
                }
            };
            // G g (4×3), then (G g) Gᵀ (4×4); G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
            let gg: [[f64; 3]; 4] = std::array::from_fn(|r| {
                std::array::from_fn(|j| match r {
                    0 => g(0, j),
                    1 => 0.5 * (g(0, j) + g(1, j) + g(2, j)),
                    2 => 0.5 * (g(0, j) - g(1, j) + g(2, j)),
                    _ => g(2, j),
                })
            });
            let mut u = [0f32; XI];
            for (r, row) in gg.iter().enumerate() {
                let t = [
                    row[0],
                    0.5 * (row[0] + row[1] + row[2]),
                    0.5 * (row[0] - row[1] + row[2]),
                    row[2],
                ];
                for (s, &v) in t.iter().enumerate() {
                    u[r * 4 + s] = v as f32;
                }
            }
            u
        })
        .collect();
    // Packed [16][blocks][ins][8]: one (ξ, block) run per task.
    let mut u = vec![0f32; XI * blocks * ins * NR];
    u.par_chunks_mut((ins * NR).max(1))
        .enumerate()
        .for_each(|(k, run)| {
            let (xi, b) = (k / blocks, k % blocks);
            for (c, lanes) in run.chunks_exact_mut(NR).enumerate() {
                for (r, v) in lanes.iter_mut().enumerate() {
                    let o = b * NR + r;
                    if o < outs {
                        *v = pairs[o * ins + c][xi];
                    }
                }
            }
        });
    u
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
    let blocks = g.cout.div_ceil(NR);
    assert_eq!(x.len(), g.batch * in_len, "winograd: input length");
    assert_eq!(u.len(), XI * blocks * g.cin * NR, "winograd: kernel length");
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
    let mut y = super::uninit(g.batch * out_len);
    let group = g.group();
    let residual_parts: Vec<Option<&[f32]>> = match residual {
        Some(r) => r.chunks(group * out_len).map(Some).collect(),
        None => vec![None; g.batch.div_ceil(group)],
    };
    y.par_chunks_mut(group * out_len)
        .zip(x.par_chunks(group * in_len))
        .zip(residual_parts)
        .for_each(|((ys, xs), res)| {
            SCRATCH.with_borrow_mut(|scratch| {
                let images = xs.len() / in_len;
                let tiles = images * g.tiles_per_image();
                let tp = tiles.next_multiple_of(LANES);
                scratch.prepare(g, tp);
                let Scratch { v, m } = scratch;
                for (i, xb) in xs.chunks(in_len).enumerate() {
                    let t0 = i * g.tiles_per_image();
                    // SAFETY: AVX-512F checked; buffers sized by `prepare` for `tp` tiles.
                    unsafe { input_transform(xb, g, v, t0, tp) };
                }
                // SAFETY: as above; u holds `blocks` blocks of cin × NR per ξ (asserted).
                unsafe { products(v, u, m, g, tp) };
                for (i, yb) in ys.chunks_mut(out_len).enumerate() {
                    let rb = res.map(|r| &r[i * out_len..(i + 1) * out_len]);
                    let t0 = i * g.tiles_per_image();
                    // SAFETY: as above; yb and rb hold one image's cout planes.
                    unsafe { output_transform(m, g, t0, tp, bias, rb, yb) };
                }
            })
        });
    // SAFETY: output_transform writes every pixel of every channel of every image.
    unsafe { super::assume_init(y) }
}

thread_local! {
    /// Each thread's buffers, kept across calls: allocating and zero-filling V and M (hundreds of
    /// kilobytes) per task cost as much as a transform. The tasks never call back into the pool,
    /// so a thread holds one borrow at a time.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// A task's buffers.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

impl Scratch {
    /// Sizes the buffers for `tp` tiles (growing only: contents are overwritten before use, and
    /// lanes past the last tile are computed and never read; they only need to be floats).
    fn prepare(&mut self, g: &WinoGeometry, tp: usize) {
        let grow = |b: &mut Vec<f32>, n: usize| {
            if b.len() < n {
                b.resize(n, 0.0);
            }
        };
        grow(&mut self.v, XI * spread(g.cin * tp));
        grow(&mut self.m, XI * spread(g.cout * tp));
    }
}

/// Indices that pick the even (first) and odd (second) elements of two concatenated vectors.
#[target_feature(enable = "avx512f")]
fn deinterleave() -> (__m512i, __m512i) {
    let even: [i32; 16] = std::array::from_fn(|l| 2 * l as i32);
    let odd: [i32; 16] = std::array::from_fn(|l| 2 * l as i32 + 1);
    // SAFETY: reading 16 i32 from arrays of 16.
    unsafe {
        (
            _mm512_loadu_si512(even.as_ptr().cast()),
            _mm512_loadu_si512(odd.as_ptr().cast()),
        )
    }
}

/// Indices that interleave two vectors: lanes 0..8 of each (`lo`), lanes 8..16 (`hi`).
#[target_feature(enable = "avx512f")]
fn interleave() -> (__m512i, __m512i) {
    let lo: [i32; 16] = std::array::from_fn(|l| (l / 2 + if l % 2 == 1 { 16 } else { 0 }) as i32);
    let hi: [i32; 16] =
        std::array::from_fn(|l| (8 + l / 2 + if l % 2 == 1 { 16 } else { 0 }) as i32);
    // SAFETY: reading 16 i32 from arrays of 16.
    unsafe {
        (
            _mm512_loadu_si512(lo.as_ptr().cast()),
            _mm512_loadu_si512(hi.as_ptr().cast()),
        )
    }
}

/// Bit k set where column `start + k` of a row of `w` lies inside it.
fn column_mask(start: isize, w: usize) -> __mmask16 {
    let mut m = 0u16;
    for k in 0..LANES as isize {
        let col = start + k;
        if col >= 0 && (col as usize) < w {
            m |= 1 << k;
        }
    }
    m
}

/// V[ξ][c][t0 + tile] = (Bᵀ d B)[ξ] for every channel and tile of one image.
///
/// The 4×4 patch of tile (ty, tx) covers image rows 2ty − 1 .. 2ty + 2 and columns 2tx − 1 ..
/// 2tx + 2; the zero padding around the image comes from masked loads (lanes outside a row are
/// neither read nor faulted on), not from a padded copy: a copy's masked stores, read back at
/// once by the row transform, stalled on store forwarding.
///
/// # Safety
/// AVX-512F; `v` holds `16 · cin · tp` floats with t0 + tiles ≤ tp.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_transform(
    x: &[f32],
    g: &WinoGeometry,
    v: &mut [f32],
    t0: usize,
    tp: usize,
) {
    let (th, tw, w) = (g.tile_rows(), g.tile_cols(), g.w);
    let (even, odd) = deinterleave();
    let plane = g.h * g.w;
    let xstride = spread(g.cin * tp);
    assert!(v.len() >= XI * xstride && x.len() >= g.cin * plane);
    let mut tx0 = 0;
    while tx0 < tw {
        let store = first_lanes(tw - tx0);
        // Column 2·tx0 − 1 + k of each of the four loads of a row: k from 0, 16, 2, 18.
        let first = 2 * tx0 as isize - 1;
        let offsets = [0isize, LANES as isize, 2, LANES as isize + 2];
        let masks = offsets.map(|o| column_mask(first + o, w));
        for c in 0..g.cin {
            // SAFETY: every load is masked to the columns inside its image row (a row of
            // channel c of x) and skipped for rows outside the image; masked-off lanes are not
            // accessed, so their (possibly out-of-bounds) addresses are never dereferenced. The
            // stores cover lanes < tw − tx0 of tiles t0 + ty·tw + tx0 < tp of channel c.
            unsafe {
                let xc = x.as_ptr().add(c * plane);
                // Row pass: (d B) of image row r − 1 (r: padded row) for the 16 tiles from tx0.
                let row = |r: usize| -> [__m512; 4] {
                    if r == 0 || r > g.h {
                        return [_mm512_setzero_ps(); 4];
                    }
                    let q = xc.wrapping_add((r - 1) * w).wrapping_offset(first);
                    let ld =
                        |k: usize| _mm512_maskz_loadu_ps(masks[k], q.wrapping_offset(offsets[k]));
                    let (a, b, a2, b2) = (ld(0), ld(1), ld(2), ld(3));
                    let d0 = _mm512_permutex2var_ps(a, even, b);
                    let d1 = _mm512_permutex2var_ps(a, odd, b);
                    let d2 = _mm512_permutex2var_ps(a2, even, b2);
                    let d3 = _mm512_permutex2var_ps(a2, odd, b2);
                    [
                        _mm512_sub_ps(d0, d2),
                        _mm512_add_ps(d1, d2),
                        _mm512_sub_ps(d2, d1),
                        _mm512_sub_ps(d1, d3),
                    ]
                };
                let vc = v.as_mut_ptr().add(c * tp + t0);
                // Tile row ty uses padded rows 2ty .. 2ty + 3: the last two are the next tile
                // row's first two, so each row pass runs once.
                let (mut u0, mut u1) = (row(0), row(1));
                for ty in 0..th {
                    let (u2, u3) = (row(2 * ty + 2), row(2 * ty + 3));
                    // Column pass and store: V[(i, j)] = (Bᵀ u)[i][j].
                    let out = vc.add(ty * tw + tx0);
                    for j in 0..4 {
                        let col = [
                            _mm512_sub_ps(u0[j], u2[j]),
                            _mm512_add_ps(u1[j], u2[j]),
                            _mm512_sub_ps(u2[j], u1[j]),
                            _mm512_sub_ps(u1[j], u3[j]),
                        ];
                        for (i, &val) in col.iter().enumerate() {
                            _mm512_mask_storeu_ps(out.add((i * 4 + j) * xstride), store, val);
                        }
                    }
                    (u0, u1) = (u2, u3);
                }
            }
        }
        tx0 += LANES;
    }
}

/// M[ξ] = U[ξ] · V[ξ] for the 16 positions: output channels in blocks of 8 × 3 vectors of tiles,
/// summing over the input channels.
///
/// # Safety
/// AVX-512F; `v` is `[16][cin][tp]`, `u` `[16][blocks][cin][8]`, `m` `[16][cout][tp]`, tp a
/// multiple of 16.
#[target_feature(enable = "avx512f")]
unsafe fn products(v: &[f32], u: &[f32], m: &mut [f32], g: &WinoGeometry, tp: usize) {
    let blocks = g.cout.div_ceil(NR);
    let vectors = tp / LANES;
    for xi in 0..XI {
        let vx = v[xi * spread(g.cin * tp)..].as_ptr();
        let ux = u[xi * blocks * g.cin * NR..].as_ptr();
        let mx = m[xi * spread(g.cout * tp)..].as_mut_ptr();
        let mut v0 = 0;
        while v0 < vectors {
            let left = vectors - v0;
            let n = if left == 4 { 2 } else { MR.min(left) };
            for b in 0..blocks {
                let rows = NR.min(g.cout - b * NR);
                // SAFETY: vectors v0..v0 + n of every channel lie inside V[ξ]; block b of U[ξ]
                // holds cin × 8 floats; rows b·8 .. b·8 + rows of M[ξ] exist.
                unsafe {
                    let (vp, up) = (vx.add(v0 * LANES), ux.add(b * g.cin * NR));
                    let mp = mx.add(b * NR * tp + v0 * LANES);
                    match n {
                        3 => gemm_tile::<3>(vp, tp, g.cin, up, mp, tp, rows),
                        2 => gemm_tile::<2>(vp, tp, g.cin, up, mp, tp, rows),
                        _ => gemm_tile::<1>(vp, tp, g.cin, up, mp, tp, rows),
                    }
                }
            }
            v0 += n;
        }
    }
}

/// `M` vectors of tiles × 8 output channels: out[r][v] = Σ_c u[c][r] · v[c][v].
///
/// # Safety
/// AVX-512F; `v + c·vs + 0..M·16` readable for c < cin, `u` for cin·8 floats, and
/// `out + r·os + 0..M·16` writable for r < rows.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_tile<const M: usize>(
    v: *const f32,
    vs: usize,
    cin: usize,
    u: *const f32,
    out: *mut f32,
    os: usize,
    rows: usize,
) {
    // SAFETY: bounds are the caller's contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NR]; M];
        for c in 0..cin {
            let vc = v.add(c * vs);
            // V's rows are a plane of tiles apart, a stride the hardware prefetchers pick up
            // late (measured: +10% on the products of one image in L2).
            for k in 0..M {
                _mm_prefetch::<_MM_HINT_T0>(vc.wrapping_add(PREFETCH * vs + k * LANES).cast());
            }
            let mut xv = [_mm512_setzero_ps(); M];
            for (k, xv) in xv.iter_mut().enumerate() {
                *xv = _mm512_loadu_ps(vc.add(k * LANES));
            }
            let uc = u.add(c * NR);
            for r in 0..NR {
                let b = _mm512_set1_ps(*uc.add(r));
                for k in 0..M {
                    acc[k][r] = _mm512_fmadd_ps(xv[k], b, acc[k][r]);
                }
            }
        }
        for r in 0..rows {
            for k in 0..M {
                _mm512_storeu_ps(out.add(r * os + k * LANES), acc[k][r]);
            }
        }
    }
}

/// y[co] = Aᵀ M A + bias (+ residual) for every output channel and tile of one image.
///
/// # Safety
/// AVX-512F; `m` is `[16][cout][tp]` with t0 + tiles ≤ tp; `y` (and `residual`) hold cout
/// planes of h × w.
#[target_feature(enable = "avx512f")]
unsafe fn output_transform(
    m: &[f32],
    g: &WinoGeometry,
    t0: usize,
    tp: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
) {
    let (th, tw) = (g.tile_rows(), g.tile_cols());
    let plane = g.h * g.w;
    let (lo_idx, hi_idx) = interleave();
    let xstride = spread(g.cout * tp);
    for co in 0..g.cout {
        let b = _mm512_set1_ps(bias.map_or(0.0, |b| b[co]));
        // SAFETY: loads cover lanes < tw − tx0 of tiles inside [t0, tp); stores and residual
        // loads cover columns < w of rows < h of plane co.
        unsafe {
            let mrow = m.as_ptr().add(co * tp);
            let yp = y.as_mut_ptr().cast::<f32>().add(co * plane);
            let rp = residual.map(|r| r.as_ptr().add(co * plane));
            for ty in 0..th {
                let mut tx0 = 0;
                while tx0 < tw {
                    let mask = first_lanes(tw - tx0);
                    let t = t0 + ty * tw + tx0;
                    let mv: [__m512; XI] = std::array::from_fn(|xi| {
                        _mm512_maskz_loadu_ps(mask, mrow.add(xi * xstride + t))
                    });
                    // Aᵀ = [1 1 1 0; 0 1 −1 −1], along i then along j.
                    let s: [[__m512; 4]; 2] = std::array::from_fn(|a| {
                        std::array::from_fn(|j| {
                            let (m0, m1, m2, m3) = (mv[j], mv[4 + j], mv[8 + j], mv[12 + j]);
                            if a == 0 {
                                _mm512_add_ps(_mm512_add_ps(m0, m1), m2)
                            } else {
                                _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3)
                            }
                        })
                    });
                    let cols = (g.w - 2 * tx0).min(2 * LANES);
                    for (a, sa) in s.iter().enumerate() {
                        let oy = 2 * ty + a;
                        if oy >= g.h {
                            break;
                        }
                        let y0 = _mm512_add_ps(_mm512_add_ps(sa[0], sa[1]), sa[2]);
                        let y1 = _mm512_sub_ps(_mm512_sub_ps(sa[1], sa[2]), sa[3]);
                        let halves = [
                            _mm512_permutex2var_ps(y0, lo_idx, y1),
                            _mm512_permutex2var_ps(y0, hi_idx, y1),
                        ];
                        for (h, &val) in halves.iter().enumerate() {
                            let n = cols.saturating_sub(h * LANES).min(LANES);
                            if n == 0 {
                                break;
                            }
                            let keep = first_lanes(n);
                            let at = oy * g.w + 2 * tx0 + h * LANES;
                            let mut out = _mm512_add_ps(val, b);
                            if let Some(rp) = rp {
                                out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(keep, rp.add(at)));
                            }
                            _mm512_mask_storeu_ps(yp.add(at), keep, out);
                        }
                    }
                    tx0 += LANES;
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
    fn planes_are_spread_one_line_apart_modulo_a_page() {
        for n in [1usize, 16, 1000, 1024, 6656, 26624, 40000] {
            let d = spread(n);
            assert!(d >= n && d - n < 1024 + 16, "{n} → {d}");
            assert_eq!(d % 16, 0);
            assert_eq!((d % 1024) / 16, 1, "{n} → {d}");
        }
    }

    #[test]
    fn conv_matches_the_definition_on_odd_even_and_wide_images() {
        if !available() {
            return;
        }
        for (i, g) in [
            WinoGeometry {
                batch: 3,
                cin: 8,
                cout: 8,
                h: 7,
                w: 7,
            },
            WinoGeometry {
                batch: 2,
                cin: 9,
                cout: 13,
                h: 6,
                w: 10,
            },
            // Tile rows wider than a vector (w = 38: 19 tiles) and a tall odd image.
            WinoGeometry {
                batch: 1,
                cin: 8,
                cout: 17,
                h: 5,
                w: 38,
            },
            WinoGeometry {
                batch: 5,
                cin: 16,
                cout: 8,
                h: 1,
                w: 3,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let x = values(g.batch * g.cin * g.h * g.w, 10 + i as u64);
            let w = values(g.cout * g.cin * 9, 20 + i as u64);
            let b = values(g.cout, 30 + i as u64);
            let r = values(g.batch * g.cout * g.h * g.w, 40 + i as u64);
            let want = reference(&x, &w, &b, &g);
            let u = transform_weights(&w, g.cout, g.cin, false);
            let got = conv(&x, &u, Some(&b), None, &g);
            let with_res = conv(&x, &u, Some(&b), Some(&r), &g);
            for (k, e) in want.iter().enumerate() {
                let tol = 1e-4 * (1.0 + e.abs());
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
            cout: 12,
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
