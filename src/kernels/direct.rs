//! Direct stride-1 convolution on AVX-512: register-blocked micro-kernels that read the
//! zero-padded image where it lies, with no im2col matrix and no GEMM packing.
//!
//! Layout. Each channel of an image is a zero-padded plane of `hp × wp` floats followed by zero
//! slack up to the plane stride ([`plane_stride`]), so that vector reads running past the last
//! pixel stay inside the plane and read zeros. Outputs are computed on the "wide" grid of
//! [`super::conv`]: output q = oy·wp + ox reads plane position q + i·wp + j for tap (i, j); the
//! `kw − 1` columns per row that fall outside the image are computed and dropped.
//!
//! * Forward ([`conv_image`]): a micro-tile is `NR` = 8 output channels × up to 3 vectors of 16
//!   positions (24 accumulators); each (input channel, tap) step loads 3 vectors of the image and
//!   broadcasts 8 weights from a packed copy ([`pack_weights`]). The finished tile goes straight
//!   into the output tensor: each vector's output pixels are compressed together (dropping the
//!   wide grid's extra columns) and stored with the bias added.
//! * Input gradient: for stride 1 it is the forward convolution of ∂L/∂y, padded by `k − 1 − p`,
//!   with the kernel transposed and flipped (same micro-kernel, [`pack_weights`] with `flip`).
//! * Weight gradient ([`WeightGrad`]): ∂L/∂y is transposed to channels-last per image, so that
//!   output channels fill the vector lanes; a tile of (input channel, tap) pairs × 16–64 output
//!   channels accumulates over the output pixels (broadcasting the image value), with no
//!   horizontal reduction and no work on the padded grid's extra columns.

// The micro-kernels index accumulators, loads and weights by the same small loop counters; that
// reads better (and unrolls the same) as index loops.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// f32 lanes of one AVX-512 vector.
pub const LANES: usize = 16;
/// Output channels per forward micro-tile.
pub const NR: usize = 8;
/// Vectors of positions per forward micro-tile.
const MR: usize = 3;

/// The mask of the first `n` lanes of a vector (all 16 from `n` = 16 on).
pub fn first_lanes(n: usize) -> __mmask16 {
    if n >= LANES { !0 } else { (1u16 << n) - 1 }
}

/// Whether this CPU runs the kernels (AVX-512F).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::is_x86_feature_detected!("avx512f"))
}

/// Floats between consecutive padded planes: the plane plus at least one vector of zero slack.
pub fn plane_stride(hp: usize, wp: usize) -> usize {
    (hp * wp + LANES).next_multiple_of(LANES)
}

/// `dst[..n] = src[..n] + add`, 16 lanes at a time with a masked tail (a `memcpy` call per short
/// image row cost more than the copy).
///
/// # Safety
/// AVX-512F must be present; `src` readable and `dst` writable for `n` floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn copy_run(dst: *mut f32, src: *const f32, n: usize, add: f32) {
    // SAFETY: bounds are the caller's contract; masked lanes are neither read nor written.
    unsafe {
        let b = _mm512_set1_ps(add);
        let mut k = 0;
        while k + LANES <= n {
            let v = _mm512_loadu_ps(src.add(k));
            _mm512_storeu_ps(dst.add(k), _mm512_add_ps(v, b));
            k += LANES;
        }
        if k < n {
            let m = first_lanes(n - k);
            let v = _mm512_maskz_loadu_ps(m, src.add(k));
            _mm512_mask_storeu_ps(dst.add(k), m, _mm512_add_ps(v, b));
        }
    }
}

/// `dst[..n] = 0`, 16 lanes at a time with a masked tail.
///
/// # Safety
/// AVX-512F must be present; `dst` writable for `n` floats.
#[target_feature(enable = "avx512f")]
unsafe fn zero_run(dst: *mut f32, n: usize) {
    // SAFETY: as for `copy_run`.
    unsafe {
        let z = _mm512_setzero_ps();
        let mut k = 0;
        while k + LANES <= n {
            _mm512_storeu_ps(dst.add(k), z);
            k += LANES;
        }
        if k < n {
            let m = first_lanes(n - k);
            _mm512_mask_storeu_ps(dst.add(k), m, z);
        }
    }
}

/// Writes `planes` planes of `h × w` (contiguous in `src`) into `dst` as zero-padded planes of
/// width `w + 2·pad[1]` and height `h + 2·pad[0]`, `ps` floats apart, zeroing border and slack.
/// Each plane is alternating runs: zeros up to the first pixel, a row, zeros up to the next row
/// (right border + left border), …, zeros to the end of the slack.
pub fn pad_planes(src: &[f32], h: usize, w: usize, pad: [usize; 2], dst: &mut [f32], ps: usize) {
    let (hp, wp) = (h + 2 * pad[0], w + 2 * pad[1]);
    assert!(available(), "direct convolution needs AVX-512F");
    assert!(
        h * w > 0 && src.len().is_multiple_of(h * w),
        "pad_planes: input"
    );
    let planes = src.len() / (h * w);
    assert!(
        ps >= hp * wp && dst.len() >= planes * ps,
        "pad_planes: buffer"
    );
    for (plane, out) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(ps)) {
        // SAFETY: AVX-512F checked; the runs below tile out[0..ps) exactly: the zero run before
        // row y ends at (y + pad0)·wp + pad1, the row covers w floats, and the last zero run
        // ends at ps ≤ out.len(); every source row lies inside `plane`.
        unsafe {
            let o = out.as_mut_ptr();
            let mut at = 0;
            for y in 0..h {
                let start = (y + pad[0]) * wp + pad[1];
                zero_run(o.add(at), start - at);
                copy_run(o.add(start), plane.as_ptr().add(y * w), w, 0.0);
                at = start + w;
            }
            zero_run(o.add(at), ps - at);
        }
    }
}

/// Packs a `[cout, cin, kh, kw]` kernel for [`conv_image`]: blocks of `NR` output channels, each
/// `[cin][kh·kw][NR]`, zero beyond the last channel. With `flip` it packs the kernel of the
/// input-gradient convolution instead: output channel = the original input channel, input
/// channel = the original output channel, taps reversed.
pub fn pack_weights(weight: &[f32], cout: usize, cin: usize, taps: usize, flip: bool) -> Vec<f32> {
    assert_eq!(weight.len(), cout * cin * taps, "pack_weights: length");
    let (outs, ins) = if flip { (cin, cout) } else { (cout, cin) };
    let blocks = outs.div_ceil(NR);
    let mut packed = vec![0f32; blocks * ins * taps * NR];
    if packed.is_empty() {
        return packed;
    }
    // One block per task: this runs for every convolution call, forward and backward.
    packed
        .par_chunks_exact_mut(ins * taps * NR)
        .enumerate()
        .for_each(|(b, block)| {
            for c in 0..ins {
                for t in 0..taps {
                    for r in 0..NR {
                        let o = b * NR + r;
                        if o < outs {
                            block[(c * taps + t) * NR + r] = if flip {
                                weight[(c * cin + o) * taps + taps - 1 - t]
                            } else {
                                weight[(o * cin + c) * taps + t]
                            };
                        }
                    }
                }
            }
        });
    packed
}

/// The shape of one image's convolution on padded planes.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    /// Input channels.
    pub cin: usize,
    /// Plane stride of the input.
    pub ps: usize,
    /// Plane offset of each tap: i·wp + j.
    pub offsets: &'a [usize],
    /// Row width of the padded input (= width of the wide output grid).
    pub wp: usize,
    /// Output rows.
    pub oh: usize,
    /// Output columns.
    pub ow: usize,
}

impl Plan<'_> {
    /// Positions of the wide grid up to the last output pixel.
    fn wide(&self) -> usize {
        (self.oh - 1) * self.wp + self.ow
    }
}

/// Where the 16 positions of one vector of the wide grid go: the lanes that are output pixels
/// (`mask`) and the output index of the first of them (`dst`). The pixels of a vector are
/// consecutive in the output, so a compress and a masked store put them in place.
#[derive(Debug, Clone, Copy)]
struct Store {
    mask: u16,
    dst: usize,
}

impl Store {
    fn at(q0: usize, plan: &Plan) -> Self {
        let q_end = plan.wide();
        let mut mask = 0u16;
        for l in 0..LANES {
            let q = q0 + l;
            if q < q_end && q % plan.wp < plan.ow {
                mask |= 1 << l;
            }
        }
        let dst = q0 / plan.wp * plan.ow + (q0 % plan.wp).min(plan.ow);
        Self { mask, dst }
    }
}

/// One micro-tile: `NR` output channels × `M` vectors, summing input channels `0..cin` of `x`
/// (pointing at the tile's first position of its first channel; with `T` > 0 `offsets` holds
/// exactly `T` taps, and the tap loop is unrolled) against packed weights `w`;
/// row r (< `rows`) is written, plus `bias[r]` and (unless `residual` is null) the residual's
/// element at the same place, to the output pixels of `stores` in `out + r·plane`.
///
/// # Safety
/// AVX-512F must be present; every read `x + c·ps + off + v·LANES .. +LANES` and `w` (`cin ·
/// offsets.len() · NR` floats) must be in bounds, `bias` readable for `rows` floats, and
/// `out + r·plane + stores[v].dst` writable (and `residual + r·plane + stores[v].dst` readable,
/// unless null) for popcount(mask) floats.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize, const T: usize>(
    x: *const f32,
    ps: usize,
    cin: usize,
    offsets: &[usize],
    w: *const f32,
    stores: &[Store; M],
    out: *mut f32,
    plane: usize,
    rows: usize,
    bias: *const f32,
    residual: *const f32,
) {
    // SAFETY: bounds are the caller's contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NR]; M];
        let mut wp = w;
        // One (input channel, tap) step: M image vectors times NR broadcast weights.
        macro_rules! step {
            ($p:expr) => {{
                let p = $p;
                let mut xv = [_mm512_setzero_ps(); M];
                for (v, xv) in xv.iter_mut().enumerate() {
                    *xv = _mm512_loadu_ps(p.add(v * LANES));
                }
                for r in 0..NR {
                    let b = _mm512_set1_ps(*wp.add(r));
                    for v in 0..M {
                        acc[v][r] = _mm512_fmadd_ps(xv[v], b, acc[v][r]);
                    }
                }
                wp = wp.add(NR);
            }};
        }
        if T > 0 {
            // A fixed tap count (3×3): the tap loop unrolls with its offsets in registers.
            let taps: [usize; T] = std::array::from_fn(|t| offsets[t]);
            for c in 0..cin {
                let xc = x.add(c * ps);
                for &off in &taps {
                    step!(xc.add(off));
                }
            }
        } else {
            for c in 0..cin {
                let xc = x.add(c * ps);
                for &off in offsets {
                    step!(xc.add(off));
                }
            }
        }
        for r in 0..rows {
            let b = _mm512_set1_ps(*bias.add(r));
            for v in 0..M {
                let Store { mask, dst } = stores[v];
                let mut packed = _mm512_maskz_compress_ps(mask, _mm512_add_ps(acc[v][r], b));
                let n = mask.count_ones();
                let keep = ((1u32 << n) - 1) as u16;
                if !residual.is_null() {
                    let res = _mm512_maskz_loadu_ps(keep, residual.add(r * plane + dst));
                    packed = _mm512_add_ps(packed, res);
                }
                _mm512_mask_storeu_ps(out.add(r * plane + dst), keep, packed);
            }
        }
    }
}

/// Convolves one padded image `x` (`plan.cin` planes) with the packed kernel blocks `blocks` of
/// `packed` and writes output channels `blocks.start·NR ..` (as many as `out` holds, `[rows, oh,
/// ow]`) plus `bias` (one per row of `out`; zero when `None`) plus `residual` (shaped like `out`)
/// when given. Every element of `out` is written, so it may start uninitialized.
pub fn conv_image(
    x: &[f32],
    packed: &[f32],
    blocks: std::ops::Range<usize>,
    plan: &Plan,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    let taps = plan.offsets.len();
    let max_off = plan.offsets.iter().copied().max().unwrap_or(0);
    let plane = plan.oh * plan.ow;
    assert!(available(), "direct convolution needs AVX-512F");
    assert!(plane > 0 && plan.ow <= plan.wp, "conv_image: output shape");
    let vectors = plan.wide().div_ceil(LANES);
    assert!(
        plan.cin == 0 || max_off + vectors * LANES <= plan.ps,
        "conv_image: plane slack"
    );
    assert!(x.len() >= plan.cin * plan.ps, "conv_image: input");
    assert!(
        packed.len() >= blocks.end * plan.cin * taps * NR,
        "conv_image: kernel"
    );
    assert!(
        out.len().is_multiple_of(plane) && out.len() / plane <= blocks.len() * NR,
        "conv_image: output"
    );
    let rows = out.len() / plane;
    assert!(
        residual.is_none_or(|r| r.len() == out.len()),
        "conv_image: residual"
    );
    let res_ptr = residual.map_or(std::ptr::null(), |r| r.as_ptr());
    let zeros = [0f32; NR];
    let bias = bias.unwrap_or(&[]);
    assert!(bias.is_empty() || bias.len() >= rows, "conv_image: bias");
    let block_len = plan.cin * taps * NR;
    // Each tile: its first vector, its vector count and where its vectors' pixels go. The
    // vectors tile the wide grid, so every output pixel of every row is stored exactly once.
    let mut tiles = Vec::with_capacity(vectors.div_ceil(MR));
    let mut v0 = 0;
    while v0 < vectors {
        // Four vectors left are two tiles of two rather than three and one: a one-vector tile
        // does 8 broadcasts per 8 FMAs.
        let left = vectors - v0;
        let m = if left == 4 { 2 } else { MR.min(left) };
        let stores: [Store; MR] = std::array::from_fn(|v| Store::at((v0 + v) * LANES, plan));
        tiles.push((v0, m, stores));
        v0 += m;
    }
    let out_ptr = out.as_mut_ptr().cast::<f32>();
    let run = |v0: usize, m: usize, st: &[Store; MR], k: usize, b: usize| {
        let n = NR.min(rows.saturating_sub(k * NR));
        if n == 0 {
            return;
        }
        let bp = if bias.is_empty() {
            zeros.as_ptr()
        } else {
            bias[k * NR..].as_ptr()
        };
        // SAFETY: AVX-512F checked above; reads reach position max_off + vectors·LANES ≤ ps
        // of each plane (asserted), kernel block b < blocks.end (asserted); row k·NR + r < rows
        // of `out` receives the output pixels of positions v0·16 .. (v0 + m)·16, which lie
        // inside its plane, and the residual (same length as `out`, asserted) is read at the
        // same places; `bp` has n values.
        unsafe {
            let xp = x.as_ptr().add(v0 * LANES);
            let wp = packed.as_ptr().add(b * block_len);
            let op = out_ptr.add(k * NR * plane);
            let rp = if res_ptr.is_null() {
                res_ptr
            } else {
                res_ptr.add(k * NR * plane)
            };
            let (ps, cin, offs) = (plan.ps, plan.cin, plan.offsets);
            let (s2, s1) = (&[st[0], st[1]], &[st[0]]);
            match (m, offs.len()) {
                (3, 9) => tile::<3, 9>(xp, ps, cin, offs, wp, st, op, plane, n, bp, rp),
                (2, 9) => tile::<2, 9>(xp, ps, cin, offs, wp, s2, op, plane, n, bp, rp),
                (_, 9) => tile::<1, 9>(xp, ps, cin, offs, wp, s1, op, plane, n, bp, rp),
                (3, _) => tile::<3, 0>(xp, ps, cin, offs, wp, st, op, plane, n, bp, rp),
                (2, _) => tile::<2, 0>(xp, ps, cin, offs, wp, s2, op, plane, n, bp, rp),
                _ => tile::<1, 0>(xp, ps, cin, offs, wp, s1, op, plane, n, bp, rp),
            }
        }
    };
    // Tiles outer: one tile's image rows stay in L1 while the kernel blocks stream past them.
    for (v0, m, stores) in &tiles {
        for (k, b) in blocks.clone().enumerate() {
            run(*v0, *m, stores, k, b);
        }
    }
}

/// The transpose of a 16 × 16 block held as 16 row vectors: column k of the result is lane k of
/// every row. Three shuffle stages: pairs of rows interleaved by 32 bits, then by 64 bits (4 × 4
/// blocks inside each 128-bit lane), then the 128-bit lanes regrouped twice.
#[target_feature(enable = "avx512f")]
pub(super) fn transpose16(r: [__m512; LANES]) -> [__m512; LANES] {
    let pd = _mm512_castps_pd;
    let ps = _mm512_castpd_ps;
    // q[g][m]: rows 4g .. 4g + 4 at columns m, m + 4, m + 8, m + 12 (one per 128-bit lane).
    let mut q = [[_mm512_setzero_ps(); 4]; 4];
    for g in 0..4 {
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let (ab_lo, ab_hi) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let (cd_lo, cd_hi) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        q[g] = [
            ps(_mm512_unpacklo_pd(pd(ab_lo), pd(cd_lo))),
            ps(_mm512_unpackhi_pd(pd(ab_lo), pd(cd_lo))),
            ps(_mm512_unpacklo_pd(pd(ab_hi), pd(cd_hi))),
            ps(_mm512_unpackhi_pd(pd(ab_hi), pd(cd_hi))),
        ];
    }
    let mut out = [_mm512_setzero_ps(); LANES];
    for m in 0..4 {
        // 0x88: lanes 0 and 2 of each operand; 0xDD: lanes 1 and 3.
        let s0 = _mm512_shuffle_f32x4::<0x88>(q[0][m], q[1][m]);
        let s1 = _mm512_shuffle_f32x4::<0xDD>(q[0][m], q[1][m]);
        let s2 = _mm512_shuffle_f32x4::<0x88>(q[2][m], q[3][m]);
        let s3 = _mm512_shuffle_f32x4::<0xDD>(q[2][m], q[3][m]);
        out[m] = _mm512_shuffle_f32x4::<0x88>(s0, s2);
        out[m + 8] = _mm512_shuffle_f32x4::<0xDD>(s0, s2);
        out[m + 4] = _mm512_shuffle_f32x4::<0x88>(s1, s3);
        out[m + 12] = _mm512_shuffle_f32x4::<0xDD>(s1, s3);
    }
    out
}

/// Positions of ∂L/∂y per pass of [`WeightGrad`] (its rows stay in L1 across the pass).
const GRAD_BYTES: usize = 16 << 10;

/// One register tile of the weight gradient: for `P` (input channel, tap) pairs × `CV` vectors of
/// 16 output channels, adds Σ over the output pixels q = oy·wp + ox (oy < `rows`, ox < `ow`) of
/// x[offset_p + q·step] · ∂L/∂y[q, co] to `acc` (rows `ld` apart); the wide grid's extra columns
/// are skipped. ∂L/∂y is channels-last (`dyt`, rows `ld` apart), so the sum runs along the
/// positions with output channels in the lanes: no horizontal reduction. (The Winograd kernels
/// use the same tile for their products, with tiles or channels for q.)
///
/// # Safety
/// AVX-512F must be present; reads `dyt + q·ld .. + CV·LANES` and `x + offsets[p] + q·step` for
/// those q, and `acc + p·ld .. + CV·LANES` for p < P, must be in bounds.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_tile<const CV: usize, const P: usize, const LOAD: bool>(
    dyt: *const f32,
    ld: usize,
    x: *const f32,
    step: usize,
    offsets: &[usize],
    rows: usize,
    wp: usize,
    ow: usize,
    acc: *mut f32,
) {
    // SAFETY: bounds are the caller's contract.
    unsafe {
        let mut a = [[_mm512_setzero_ps(); CV]; P];
        let mut xs = [x; P];
        for p in 0..P {
            xs[p] = x.add(offsets[p]);
            if LOAD {
                for v in 0..CV {
                    a[p][v] = _mm512_loadu_ps(acc.add(p * ld + v * LANES));
                }
            }
        }
        for r in 0..rows {
            for q in r * wp..r * wp + ow {
                let mut d = [_mm512_setzero_ps(); CV];
                for (v, d) in d.iter_mut().enumerate() {
                    *d = _mm512_loadu_ps(dyt.add(q * ld + v * LANES));
                }
                let qx = q * step;
                for p in 0..P {
                    let b = _mm512_set1_ps(*xs[p].add(qx));
                    for v in 0..CV {
                        a[p][v] = _mm512_fmadd_ps(b, d[v], a[p][v]);
                    }
                }
            }
        }
        for p in 0..P {
            for v in 0..CV {
                _mm512_storeu_ps(acc.add(p * ld + v * LANES), a[p][v]);
            }
        }
    }
}

/// The register tile of [`grad_block`] for rows of `ld` floats (a multiple of 16): vectors of
/// output channels and (input channel, tap) pairs, 24 accumulators in all.
pub(super) fn grad_shape(ld: usize) -> (usize, usize) {
    match ld / LANES {
        v if v % 4 == 0 => (4, 6),
        v if v % 2 == 0 => (2, 12),
        _ => (1, 24),
    }
}

/// [`grad_tile`] for the tile shape `(cv, offsets.len())` that [`grad_shape`] gave: adds to
/// `acc` with `accumulate`, else overwrites it (then also half as many offsets).
///
/// # Safety
/// As [`grad_tile`]; `cv` and the number of offsets are one of [`grad_shape`]'s pairs (or, without
/// `accumulate`, half of one).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn grad_block(
    accumulate: bool,
    cv: usize,
    dyt: *const f32,
    ld: usize,
    x: *const f32,
    step: usize,
    offsets: &[usize],
    rows: usize,
    wp: usize,
    ow: usize,
    acc: *mut f32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        match (accumulate, cv, offsets.len()) {
            (true, 4, 6) => grad_tile::<4, 6, true>(dyt, ld, x, step, offsets, rows, wp, ow, acc),
            (true, 2, 12) => grad_tile::<2, 12, true>(dyt, ld, x, step, offsets, rows, wp, ow, acc),
            (true, 1, 24) => grad_tile::<1, 24, true>(dyt, ld, x, step, offsets, rows, wp, ow, acc),
            (false, 4, 6) => grad_tile::<4, 6, false>(dyt, ld, x, step, offsets, rows, wp, ow, acc),
            (false, 2, 12) => {
                grad_tile::<2, 12, false>(dyt, ld, x, step, offsets, rows, wp, ow, acc)
            }
            (false, 1, 24) => {
                grad_tile::<1, 24, false>(dyt, ld, x, step, offsets, rows, wp, ow, acc)
            }
            // Half tiles, for the last rows of an overwritten block.
            (false, 4, 3) => grad_tile::<4, 3, false>(dyt, ld, x, step, offsets, rows, wp, ow, acc),
            (false, 2, 6) => grad_tile::<2, 6, false>(dyt, ld, x, step, offsets, rows, wp, ow, acc),
            (false, 1, 12) => {
                grad_tile::<1, 12, false>(dyt, ld, x, step, offsets, rows, wp, ow, acc)
            }
            shape => unreachable!("weight gradient tile {shape:?}"),
        }
    }
}

/// The weight gradient of a stride-1 convolution, accumulated image by image:
/// ∂L/∂W[co, c, t] = Σ over images and wide positions q of ∂L/∂y[co, q] · x_pad[c, q + offset_t].
pub struct WeightGrad {
    cout: usize,
    cin: usize,
    taps: usize,
    /// Output channels rounded up to a whole number of vectors: the row length of `acc` and `dyt`.
    ld: usize,
    /// Vectors of output channels per tile.
    cv: usize,
    /// (input channel, tap) pairs per tile.
    pairs: usize,
    /// Plane offset of each pair (padded to a whole number of tiles with offset 0).
    offsets: Vec<usize>,
    /// `[pair][ld]` sums.
    acc: Vec<f32>,
    /// One image's ∂L/∂y on the wide grid (output pixels only), channels last.
    dyt: Vec<f32>,
}

impl WeightGrad {
    /// For `cout` output and `cin` input channels, tap offsets `taps` (i·wp + j) and input plane
    /// stride `ps`.
    pub fn new(cout: usize, cin: usize, taps: &[usize], ps: usize) -> Self {
        let ld = cout.next_multiple_of(LANES).max(LANES);
        let (cv, pairs) = grad_shape(ld);
        let mut offsets: Vec<usize> = (0..cin)
            .flat_map(|c| taps.iter().map(move |t| c * ps + t))
            .collect();
        offsets.resize(offsets.len().next_multiple_of(pairs), 0);
        Self {
            cout,
            cin,
            taps: taps.len(),
            ld,
            cv,
            pairs,
            acc: vec![0f32; offsets.len() * ld],
            offsets,
            dyt: Vec::new(),
        }
    }

    /// Adds one image: `xpad` its padded input (`cin` planes), `dy` its ∂L/∂y `[cout, oh, ow]`,
    /// `wp` the padded row width.
    pub fn add_image(&mut self, xpad: &[f32], dy: &[f32], oh: usize, ow: usize, wp: usize) {
        assert!(available(), "direct convolution needs AVX-512F");
        assert_eq!(
            dy.len(),
            self.cout * oh * ow,
            "weight gradient: ∂L/∂y length"
        );
        if oh == 0 || ow == 0 {
            return;
        }
        let q = (oh - 1) * wp + ow;
        let reach = self.offsets.iter().copied().max().unwrap_or(0) + q;
        assert!(xpad.len() >= reach, "weight gradient: input planes");
        let ld = self.ld;
        // Sized once per layer; the wide grid's dropped columns are never read (grad_tile skips
        // them), so only the output pixels are written.
        self.dyt.resize(q * ld, 0.0);
        // SAFETY: AVX-512F checked; dy holds cout planes of oh × ow (asserted) and dyt q rows of
        // ld ≥ cout columns.
        unsafe { to_channels_last(dy, self.cout, oh, ow, wp, ld, &mut self.dyt) };
        // Whole output rows per pass.
        let rows_per = (GRAD_BYTES / (4 * ld * wp)).max(1);
        for oy0 in (0..oh).step_by(rows_per) {
            let rows = rows_per.min(oh - oy0);
            let q0 = oy0 * wp;
            for p0 in (0..self.offsets.len()).step_by(self.pairs) {
                for v0 in (0..ld / LANES).step_by(self.cv) {
                    let offsets = &self.offsets[p0..p0 + self.pairs];
                    // SAFETY: AVX-512F checked; the pixels read, q0 + r·wp + ox with r < rows,
                    // ox < ow, are below q, whose ∂L/∂y rows have ld ≥ v0·16 + cv·16 columns;
                    // every x read is below max(offset) + q ≤ xpad.len() (asserted); acc rows
                    // p0..p0+pairs exist (offsets padded to whole tiles).
                    unsafe {
                        let dyt = self.dyt.as_ptr().add(q0 * ld + v0 * LANES);
                        let x = xpad.as_ptr().add(q0);
                        let acc = self.acc.as_mut_ptr().add(p0 * ld + v0 * LANES);
                        grad_block(true, self.cv, dyt, ld, x, 1, offsets, rows, wp, ow, acc);
                    }
                }
            }
        }
    }

    /// Adds the sums into `dw` (`[cout, cin, taps]`).
    pub fn add_to(&self, dw: &mut [f32]) {
        let pairs = self.cin * self.taps;
        assert_eq!(dw.len(), self.cout * pairs, "weight gradient: kernel");
        assert!(available(), "direct convolution needs AVX-512F");
        // SAFETY: AVX-512F checked; acc holds ≥ pairs rows of ld ≥ cout columns, dw cout rows of
        // `pairs` (asserted).
        unsafe { add_transposed(&self.acc, self.ld, pairs, self.cout, dw) };
    }
}

/// dst[(y·wp + x)·ld + c] = src[c][y][x]: an image of `channels` h × w planes made channels-last
/// (rows `wp` ≥ w pixels apart, `ld` floats per pixel, channels past the last written as 0), in
/// 16 × 16 blocks (16 channels × 16 pixels of a row) transposed in registers. ∂L/∂y for the
/// weight gradients, images and ∂L/∂y for the Winograd transforms.
///
/// # Safety
/// AVX-512F; `src` holds `channels` planes of h × w, `dst` ((h − 1)·wp + w) rows of `ld` ≥
/// channels.next_multiple_of(16) floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn to_channels_last(
    src: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    wp: usize,
    ld: usize,
    dst: &mut [f32],
) {
    let plane = h * w;
    for y in 0..h {
        for x0 in (0..w).step_by(LANES) {
            let nx = LANES.min(w - x0);
            let mask = first_lanes(nx);
            for c0 in (0..channels).step_by(LANES) {
                // SAFETY: channel c0 + r < channels reads nx pixels of row y of its plane
                // (masked), the others read nothing; the nx pixels written are rows of dst with
                // ld ≥ c0 + 16 columns (the caller's contract).
                unsafe {
                    let rows: [__m512; LANES] = std::array::from_fn(|r| {
                        if c0 + r < channels {
                            let at = (c0 + r) * plane + y * w + x0;
                            _mm512_maskz_loadu_ps(mask, src.as_ptr().add(at))
                        } else {
                            _mm512_setzero_ps()
                        }
                    });
                    let cols = transpose16(rows);
                    let out = dst.as_mut_ptr().add((y * wp + x0) * ld + c0);
                    for (k, col) in cols.iter().enumerate().take(nx) {
                        _mm512_storeu_ps(out.add(k * ld), *col);
                    }
                }
            }
        }
    }
}

/// dw[co][p] += acc[p][co] for co < cout, p < pairs, by 16 × 16 register transposes.
///
/// # Safety
/// AVX-512F; `acc` holds `pairs` rows of `ld` ≥ cout.next_multiple_of(16) floats, `dw` cout rows
/// of `pairs`.
#[target_feature(enable = "avx512f")]
unsafe fn add_transposed(acc: &[f32], ld: usize, pairs: usize, cout: usize, dw: &mut [f32]) {
    assert!(acc.len() >= pairs * ld && dw.len() >= cout * pairs);
    for p0 in (0..pairs).step_by(LANES) {
        let np = LANES.min(pairs - p0);
        let mask = first_lanes(np);
        for co0 in (0..cout).step_by(LANES) {
            // SAFETY: rows p0 + r < pairs of acc have ld ≥ co0 + 16 columns; row co0 + k < cout
            // of dw has np ≤ pairs − p0 columns from p0 (masked).
            unsafe {
                let rows: [__m512; LANES] = std::array::from_fn(|r| {
                    if r < np {
                        _mm512_loadu_ps(acc.as_ptr().add((p0 + r) * ld + co0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let cols = transpose16(rows);
                for (k, col) in cols.iter().enumerate().take(cout - co0) {
                    let d = dw.as_mut_ptr().add((co0 + k) * pairs + p0);
                    let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), *col);
                    _mm512_mask_storeu_ps(d, mask, sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !available() {
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut t = vec![0f32; 256];
        // SAFETY: AVX-512F checked; 16 rows of 16 floats each way.
        unsafe {
            let rows: [__m512; LANES] =
                std::array::from_fn(|r| _mm512_loadu_ps(m.as_ptr().add(r * LANES)));
            for (k, col) in transpose16(rows).iter().enumerate() {
                _mm512_storeu_ps(t.as_mut_ptr().add(k * LANES), *col);
            }
        }
        for r in 0..LANES {
            for k in 0..LANES {
                assert_eq!(t[k * LANES + r], m[r * LANES + k], "row {r}, column {k}");
            }
        }
    }
}
