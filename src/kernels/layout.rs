//! Data movement of the U-Net on contiguous NCHW f32 buffers, spread over the thread pool:
//! nearest 2× upsampling and channel concatenation, with their adjoints (burn runs both on one
//! thread, through strided iterators).

use rayon::prelude::*;

/// Planes per task: enough work per task for small planes.
fn min_planes(plane: usize) -> usize {
    (4096 / plane.max(1)).max(1)
}

/// y[p, 2i + a, 2j + b] = x[p, i, j] for each of the `x.len() / (h·w)` planes of `h × w`.
pub fn upsample2(x: &[f32], h: usize, w: usize) -> Vec<f32> {
    let plane = h * w;
    assert!(
        plane > 0 && x.len().is_multiple_of(plane),
        "upsample2: input"
    );
    let mut y = super::uninit(4 * x.len());
    y.par_chunks_mut(4 * plane)
        .zip(x.par_chunks(plane))
        .with_min_len(min_planes(plane))
        .for_each(|(yp, xp)| {
            for (src, rows) in xp.chunks_exact(w).zip(yp.chunks_exact_mut(4 * w)) {
                let (top, bottom) = rows.split_at_mut(2 * w);
                for (pair, &v) in top.chunks_exact_mut(2).zip(src) {
                    pair[0].write(v);
                    pair[1].write(v);
                }
                bottom.copy_from_slice(top);
            }
        });
    // SAFETY: each output plane is 2h rows of 2w, written as h pairs of rows (top from the
    // input row, bottom copied from top).
    unsafe { super::assume_init(y) }
}

/// The adjoint of [`upsample2`]: dx[p, i, j] = Σ over the 2×2 block of dy above (i, j).
pub fn upsample2_backward(dy: &[f32], h: usize, w: usize) -> Vec<f32> {
    let plane = h * w;
    assert!(
        plane > 0 && dy.len().is_multiple_of(4 * plane),
        "upsample2 backward: gradient"
    );
    let mut dx = super::zeroed(dy.len() / 4);
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks(4 * plane))
        .with_min_len(min_planes(plane))
        .for_each(|(xp, yp)| {
            for (dst, rows) in xp.chunks_exact_mut(w).zip(yp.chunks_exact(4 * w)) {
                let (top, bottom) = rows.split_at(2 * w);
                for ((d, t), b) in dst
                    .iter_mut()
                    .zip(top.chunks_exact(2))
                    .zip(bottom.chunks_exact(2))
                {
                    *d = (t[0] + t[1]) + (b[0] + b[1]);
                }
            }
        });
    dx
}

/// `[B, ca, …] ++ [B, cb, …] → [B, ca + cb, …]` along the channels; `plane` elements per channel.
pub fn cat_channels(a: &[f32], b: &[f32], batch: usize, plane: usize) -> Vec<f32> {
    assert!(batch > 0, "cat_channels: batch");
    let (la, lb) = (a.len() / batch, b.len() / batch);
    assert!(
        la * batch == a.len() && lb * batch == b.len() && la % plane.max(1) == 0,
        "cat_channels: inputs"
    );
    if la == 0 || lb == 0 {
        return if la == 0 { b.to_vec() } else { a.to_vec() };
    }
    let mut y = super::uninit(a.len() + b.len());
    y.par_chunks_mut(la + lb)
        .zip(a.par_chunks(la.max(1)).zip(b.par_chunks(lb.max(1))))
        .for_each(|(yb, (ab, bb))| {
            yb[..la].write_copy_of_slice(ab);
            yb[la..].write_copy_of_slice(bb);
        });
    // SAFETY: each image's la + lb outputs are written from its two parts.
    unsafe { super::assume_init(y) }
}

/// The adjoint of [`cat_channels`]: splits `[B, ca + cb, …]` into the two parts (`la`, `lb`
/// elements per image).
pub fn split_channels(dy: &[f32], batch: usize, la: usize, lb: usize) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(dy.len(), batch * (la + lb), "split_channels: gradient");
    if la == 0 || lb == 0 {
        let (a, b) = if la == 0 {
            (Vec::new(), dy.to_vec())
        } else {
            (dy.to_vec(), Vec::new())
        };
        return (a, b);
    }
    let mut da = super::uninit(batch * la);
    let mut db = super::uninit(batch * lb);
    da.par_chunks_mut(la)
        .zip(db.par_chunks_mut(lb))
        .zip(dy.par_chunks(la + lb))
        .for_each(|((a, b), y)| {
            a.write_copy_of_slice(&y[..la]);
            b.write_copy_of_slice(&y[la..]);
        });
    // SAFETY: both outputs are written image by image from each image's la + lb gradients.
    unsafe { (super::assume_init(da), super::assume_init(db)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).normal_f32(n)
    }

    #[test]
    fn upsampling_repeats_each_pixel_in_a_2x2_block_and_its_adjoint_sums_them() {
        let (planes, h, w) = (300, 3, 5);
        let x = values(planes * h * w, 1);
        let y = upsample2(&x, h, w);
        for p in 0..planes {
            for i in 0..2 * h {
                for j in 0..2 * w {
                    assert_eq!(
                        y[(p * 2 * h + i) * 2 * w + j],
                        x[(p * h + i / 2) * w + j / 2]
                    );
                }
            }
        }
        // ⟨dy, U x⟩ = ⟨Uᵀ dy, x⟩ for the adjoint, checked entry by entry: (Uᵀ dy)[p,i,j] is the
        // sum of dy over the block, computed here in f64.
        let dy = values(y.len(), 2);
        let dx = upsample2_backward(&dy, h, w);
        for p in 0..planes {
            for i in 0..h {
                for j in 0..w {
                    let mut s = 0f64;
                    for a in 0..2 {
                        for b in 0..2 {
                            s += dy[(p * 2 * h + 2 * i + a) * 2 * w + 2 * j + b] as f64;
                        }
                    }
                    let got = dx[(p * h + i) * w + j] as f64;
                    assert!((got - s).abs() < 1e-5, "{p} {i} {j}: {got} vs {s}");
                }
            }
        }
    }

    #[test]
    fn channel_concatenation_and_its_split_are_inverse() {
        let (batch, ca, cb, plane) = (5, 3, 2, 7);
        let a = values(batch * ca * plane, 3);
        let b = values(batch * cb * plane, 4);
        let y = cat_channels(&a, &b, batch, plane);
        for n in 0..batch {
            for c in 0..ca + cb {
                for k in 0..plane {
                    let want = if c < ca {
                        a[(n * ca + c) * plane + k]
                    } else {
                        b[(n * cb + c - ca) * plane + k]
                    };
                    assert_eq!(y[(n * (ca + cb) + c) * plane + k], want);
                }
            }
        }
        let (da, db) = split_channels(&y, batch, ca * plane, cb * plane);
        assert_eq!((da, db), (a.clone(), b));
        // A part without channels.
        assert_eq!(cat_channels(&a, &[], batch, plane), a);
        assert_eq!(
            split_channels(&a, batch, ca * plane, 0),
            (a.clone(), Vec::new())
        );
    }
}
