//! Dropout with a counter-based mask: element i of a call with seed s is kept when a 64-bit hash
//! of (s, i) falls below the keep probability, so the mask is computed in parallel, needs no
//! storage (the backward pass recomputes it from the seed) and is the same for the same seed.
//! Burn draws a Bernoulli tensor element by element from one ChaCha stream on one thread (3.5%
//! of a `cifar10` training step on the CPU, the other core idle), then multiplies twice.

use rayon::prelude::*;

/// SplitMix64's finalizer: a bijective 64-bit mix whose output bits each depend on every input
/// bit.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether element `i` is kept: the top 24 bits of the hash, as a fraction of 2²⁴, below
/// `threshold` / 2²⁴.
#[inline(always)]
fn kept(seed: u64, i: u64, threshold: u64) -> bool {
    (mix(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 40) < threshold
}

/// The 24-bit threshold of keep probability 1 − `prob`.
fn threshold(prob: f64) -> u64 {
    ((1.0 - prob) * (1u64 << 24) as f64).round() as u64
}

/// y = x · mask / (1 − prob), mask\[i\] = 1 with probability 1 − prob (from `seed`). The backward
/// pass of dropout is the same function applied to ∂L/∂y with the same seed.
pub fn apply(x: &[f32], prob: f64, seed: u64) -> Vec<f32> {
    assert!(
        (0.0..1.0).contains(&prob),
        "dropout: probability {prob} outside [0, 1)"
    );
    let t = threshold(prob);
    let scale = (1.0 / (1.0 - prob)) as f32;
    const CHUNK: usize = 1 << 14;
    let mut y = super::uninit(x.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(k, (ys, xs))| {
            let base = (k * CHUNK) as u64;
            for (j, (o, &v)) in ys.iter_mut().zip(xs).enumerate() {
                let keep = kept(seed, base + j as u64, t);
                o.write(if keep { v * scale } else { 0.0 });
            }
        });
    // SAFETY: the chunks tile y and every element of each is written.
    unsafe { super::assume_init(y) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_right_fraction_and_scales_what_it_keeps() {
        let n = 1 << 20;
        let x: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        for prob in [0.1, 0.5] {
            let y = apply(&x, prob, 42);
            let scale = (1.0 / (1.0 - prob)) as f32;
            let mut kept = 0usize;
            for (a, b) in x.iter().zip(&y) {
                if *b != 0.0 {
                    kept += 1;
                    assert_eq!(*b, a * scale);
                }
            }
            // Binomial(n, 1 − p): within 5 standard deviations.
            let mean = n as f64 * (1.0 - prob);
            let sd = (n as f64 * prob * (1.0 - prob)).sqrt();
            assert!(
                (kept as f64 - mean).abs() < 5.0 * sd,
                "p {prob}: kept {kept}, expected {mean} ± {sd}"
            );
        }
    }

    #[test]
    fn the_mask_depends_on_the_seed_only() {
        let x = vec![1f32; 10_000];
        let (a, b, c) = (apply(&x, 0.3, 1), apply(&x, 0.3, 1), apply(&x, 0.3, 2));
        assert_eq!(a, b);
        let differ = a.iter().zip(&c).filter(|(u, v)| u != v).count();
        // Two independent masks of keep rate 0.7 differ at 2·0.7·0.3 = 42% of the places.
        assert!((3_700..4_700).contains(&differ), "{differ} of 10000 differ");
    }

    #[test]
    fn neighbouring_elements_are_independent() {
        // Kept pairs (i, i + 1) at rate (1 − p)² for p = 0.5: 0.25 ± 5σ.
        let n = 1 << 18;
        let y = apply(&vec![1f32; n], 0.5, 7);
        let pairs = y.windows(2).filter(|w| w[0] != 0.0 && w[1] != 0.0).count();
        let mean = (n - 1) as f64 * 0.25;
        let sd = ((n - 1) as f64 * 0.25 * 0.75).sqrt() * 2.0; // overlapping windows: ≤ 2× the sd
        assert!((pairs as f64 - mean).abs() < 5.0 * sd, "{pairs} vs {mean}");
    }
}
