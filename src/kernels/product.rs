//! out = init + A · src (+ add) where `src` and `out` are stacks of planes (an image's NCHW
//! channels, or the rows of a small matrix) and A is any strided matrix: the product behind 1×1
//! convolutions (A = W, or Wᵀ for ∂L/∂x) and the attention block's forward pass. The planes
//! are used as they lie, so there is nothing to pack: on AVX-512 a register tile of [`ROWS`]
//! output planes × up to [`VECS`] vectors of 16 positions broadcasts A and loads the positions
//! (masked at the end of a plane), starts from `init` and adds `add` as it stores; elsewhere a
//! plain loop.

// The tiles index accumulators and loads by the same small loop counters; that reads better
// (and unrolls the same) as index loops.
#![allow(clippy::needless_range_loop)]

use std::mem::MaybeUninit;

/// Output planes per register tile.
const ROWS: usize = 4;
/// Vectors of 16 positions per register tile, at most.
const VECS: usize = 6;

/// `rows` output planes of `plane` floats = `init` (one value per plane, or 0) + A · (`k` source
/// planes), where A[r][j] = `a[r·ars + j·acs]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Product<'a> {
    pub a: &'a [f32],
    pub ars: usize,
    pub acs: usize,
    pub rows: usize,
    pub k: usize,
    pub plane: usize,
    pub init: Option<&'a [f32]>,
}

impl Product<'_> {
    /// `out` (`rows` planes) = the product of the `k` planes of `src`, plus `add` (shaped like
    /// `out`) when given; every element of `out`'s planes is written.
    pub(super) fn run(&self, src: &[f32], add: Option<&[f32]>, out: &mut [MaybeUninit<f32>]) {
        let (rows, plane) = (self.rows, self.plane);
        assert!(src.len() >= self.k * plane, "product: source planes");
        assert!(out.len() >= rows * plane, "product: output planes");
        assert!(
            add.is_none_or(|a| a.len() >= rows * plane),
            "product: added planes"
        );
        assert!(self.init.is_none_or(|b| b.len() >= rows), "product: init");
        if rows == 0 || plane == 0 {
            return;
        }
        assert!(
            self.a.len() > (rows - 1) * self.ars + self.k.saturating_sub(1) * self.acs,
            "product: matrix"
        );
        #[cfg(target_arch = "x86_64")]
        if super::direct::available() {
            // SAFETY: AVX-512F is present; the slices' sizes are asserted above.
            unsafe { lanes::run(self, src, add, out) };
            return;
        }
        self.portable(src, add, out);
    }

    /// [`Self::run`] without AVX-512: a plane at a time.
    fn portable(&self, src: &[f32], add: Option<&[f32]>, out: &mut [MaybeUninit<f32>]) {
        let plane = self.plane;
        let mut acc = vec![0f32; plane];
        for r in 0..self.rows {
            acc.fill(self.init.map_or(0.0, |b| b[r]));
            for j in 0..self.k {
                let w = self.a[r * self.ars + j * self.acs];
                let s = &src[j * plane..(j + 1) * plane];
                acc.iter_mut().zip(s).for_each(|(o, &v)| *o += w * v);
            }
            if let Some(add) = add {
                let extra = &add[r * plane..(r + 1) * plane];
                acc.iter_mut().zip(extra).for_each(|(o, &v)| *o += v);
            }
            for (o, &v) in out[r * plane..(r + 1) * plane].iter_mut().zip(&acc) {
                o.write(v);
            }
        }
    }

    /// [`Self::run`] into initialized floats.
    pub(super) fn run_into(&self, src: &[f32], add: Option<&[f32]>, out: &mut [f32]) {
        // SAFETY: MaybeUninit<f32> has f32's layout, and `run` only writes through it.
        let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
        self.run(src, add, out);
    }
}

#[cfg(target_arch = "x86_64")]
mod lanes {
    use super::super::direct::{LANES, first_lanes};
    use super::{Product, ROWS, VECS};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Where one register tile lies.
    struct Tile<'a> {
        rows: usize,
        r0: usize,
        q0: usize,
        masks: &'a [__mmask16; VECS],
    }

    /// [`Product::run`] by register tiles: blocks of up to `VECS` vectors of positions, and in
    /// each the tiles of `ROWS` planes (reading the block of every source plane from L1).
    ///
    /// # Safety
    /// AVX-512F; the sizes [`Product::run`] asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(
        p: &Product,
        src: &[f32],
        add: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let plane = p.plane;
        let vectors = plane.div_ceil(LANES);
        for v0 in (0..vectors).step_by(VECS) {
            let nv = VECS.min(vectors - v0);
            let masks: [__mmask16; VECS] =
                std::array::from_fn(|v| first_lanes(plane.saturating_sub((v0 + v) * LANES)));
            for r0 in (0..p.rows).step_by(ROWS) {
                let t = Tile {
                    rows: ROWS.min(p.rows - r0),
                    r0,
                    q0: v0 * LANES,
                    masks: &masks,
                };
                // SAFETY: the caller's contract; lanes past the plane are masked off.
                unsafe {
                    match nv {
                        1 => tile::<1>(p, &t, src, add, out),
                        2 => tile::<2>(p, &t, src, add, out),
                        3 => tile::<3>(p, &t, src, add, out),
                        4 => tile::<4>(p, &t, src, add, out),
                        5 => tile::<5>(p, &t, src, add, out),
                        _ => tile::<VECS>(p, &t, src, add, out),
                    }
                }
            }
        }
    }

    /// Planes `r0 .. r0 + rows` × `V` vectors from position `q0` (rows past the end repeat the
    /// last one and are not stored).
    ///
    /// # Safety
    /// AVX-512F; as [`run`], for this tile.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const V: usize>(
        p: &Product,
        t: &Tile,
        src: &[f32],
        add: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let plane = p.plane;
        let row = |r: usize| t.r0 + r.min(t.rows - 1);
        // SAFETY: the caller's contract (every row index is clamped to the tile's rows).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
            if let Some(b) = p.init {
                for r in 0..ROWS {
                    acc[r] = [_mm512_set1_ps(*b.as_ptr().add(row(r))); V];
                }
            }
            let a: [*const f32; ROWS] = std::array::from_fn(|r| p.a.as_ptr().add(row(r) * p.ars));
            let mut s = src.as_ptr().add(t.q0);
            for j in 0..p.k {
                let x: [__m512; V] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(t.masks[v], s.add(v * LANES)));
                for r in 0..ROWS {
                    let w = _mm512_set1_ps(*a[r].add(j * p.acs));
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(w, x[v], acc[r][v]);
                    }
                }
                s = s.add(plane);
            }
            for r in 0..ROWS.min(t.rows) {
                let at = (t.r0 + r) * plane + t.q0;
                for v in 0..V {
                    let mut val = acc[r][v];
                    if let Some(add) = add {
                        let extra =
                            _mm512_maskz_loadu_ps(t.masks[v], add.as_ptr().add(at + v * LANES));
                        val = _mm512_add_ps(val, extra);
                    }
                    let dst = out.as_mut_ptr().add(at + v * LANES).cast();
                    _mm512_mask_storeu_ps(dst, t.masks[v], val);
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

    /// Against the sums in f64, for A stored either way round, with and without init and add,
    /// on planes that end inside a vector, span several blocks of vectors, and row counts that
    /// fill no tile.
    #[test]
    fn matches_the_sums() {
        for (case, &(rows, k, plane)) in
            [(1, 1, 1), (5, 3, 17), (7, 9, 49), (13, 6, 200), (4, 64, 96)]
                .iter()
                .enumerate()
        {
            let s = 10 * case as u64;
            let src = values(k * plane, s + 1);
            let init = values(rows, s + 2);
            let add = values(rows * plane, s + 3);
            let m = values(rows * k, s + 4);
            for transposed in [false, true] {
                let (ars, acs) = if transposed { (1, rows) } else { (k, 1) };
                for extras in [false, true] {
                    let p = Product {
                        a: &m,
                        ars,
                        acs,
                        rows,
                        k,
                        plane,
                        init: extras.then_some(&init[..]),
                    };
                    let mut out = vec![MaybeUninit::uninit(); rows * plane];
                    p.run(&src, extras.then_some(&add[..]), &mut out);
                    let mut portable = vec![MaybeUninit::uninit(); rows * plane];
                    p.portable(&src, extras.then_some(&add[..]), &mut portable);
                    for r in 0..rows {
                        for q in 0..plane {
                            let mut want: f64 = (0..k)
                                .map(|j| m[r * ars + j * acs] as f64 * src[j * plane + q] as f64)
                                .sum();
                            if extras {
                                want += init[r] as f64 + add[r * plane + q] as f64;
                            }
                            let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                            // SAFETY: both write every element of the output planes.
                            let got = unsafe { out[r * plane + q].assume_init() } as f64;
                            assert!((got - want).abs() < tol, "{rows}×{k}×{plane} [{r}][{q}]");
                            let other = unsafe { portable[r * plane + q].assume_init() } as f64;
                            assert!((other - want).abs() < tol, "portable [{r}][{q}]");
                        }
                    }
                }
            }
        }
    }
}
