//! The input transform of Winograd's minimal filtering F(2×2, 3×3) on AVX-512 (Lavin & Gray
//! 2016) for 3×3 stride-1 padding-1 convolutions, and the shapes it takes: V = Bᵀ d B of the 4×4
//! input patch d around each 2×2 block of outputs, 16 values per tile and channel. The
//! convolutions themselves run on [`super::winograd4`]'s F(4×4, 3×3); this transform serves the
//! weight gradient of layers with many input channels ([`super::winograd_grad`]), because it
//! reads the planar image in place: tiles fill the vector lanes along a tile row, even and odd
//! image columns split by two permutes, and V is `[16][cin][tiles]` (the 16 planes each
//! [`spread`] apart).

use super::direct::{LANES, NR, available, first_lanes};
use std::arch::x86_64::*;

/// Positions of the 4×4 transformed tile.
pub(super) const XI: usize = 16;

/// The shapes of one Winograd convolution (3×3, stride 1, padding 1: output size = input size),
/// for F(2×2) here and F(4×4) in [`super::winograd4`].
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
}

/// The distance between the planes of a transformed tensor (V, M, Z) for `n` floats per plane:
/// rounded up so that consecutive planes start one cache line apart modulo 4 KiB. The transforms
/// touch all planes at the same offset at once; with plane sizes that are multiples of 2 KiB (32
/// input channels × 208 tiles is 26 KiB) those streams fell into two sets of the L1 cache.
pub(super) fn spread(n: usize) -> usize {
    const LINE: usize = 16;
    const PAGE: usize = 1024;
    let n = n.next_multiple_of(LINE);
    let lines = (n % PAGE) / LINE;
    n + (PAGE / LINE + 1 - lines) % (PAGE / LINE) * LINE
}

/// Whether the F(2×2) transform runs on this CPU and is worth it for `g`: ≥ 8 channels in and
/// out, images of at least 10×10 (on smaller ones the 2×2 tiles fill few vector lanes per tile
/// row), at least one image per thread (the tasks are groups of images), and one image's V
/// within 64 MiB of per-thread scratch (a 256×256 image of 128 channels would need 134 MB).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_are_spread_one_line_apart_modulo_a_page() {
        for n in [1usize, 16, 1000, 1024, 6656, 26624, 40000] {
            let d = spread(n);
            assert!(d >= n && d - n < 1024 + 16, "{n} → {d}");
            assert_eq!(d % 16, 0);
            assert_eq!((d % 1024) / 16, 1, "{n} → {d}");
        }
    }
}
