//! A small, seedable, serializable random number generator (xoshiro256++, Blackman & Vigna
//! 2019) with uniform and standard normal draws. Its whole state is four `u64`s, so training
//! checkpoints can store it and resume bit-identically, whatever backend runs the network.

use serde::{Deserialize, Serialize};

pub mod streams;

/// xoshiro256++ generator. Seeded through SplitMix64 so that any `u64` seed is usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    ///
    /// ```
    /// use ddpm::rng::Rng;
    ///
    /// let (mut a, mut b) = (Rng::new(42), Rng::new(42));
    /// assert_eq!(a.normal_f32(4), b.normal_f32(4));
    /// // Its whole state serializes: a resumed run continues the same stream.
    /// let saved = serde_json::to_string(&a)?;
    /// let mut c: Rng = serde_json::from_str(&saved)?;
    /// assert_eq!(a.next_u64(), c.next_u64());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Self { s }
    }

    /// Whether this state can generate: xoshiro's all-zero state only ever yields zeros (a
    /// damaged or edited `state.json`; no seed leads there).
    pub fn is_valid(&self) -> bool {
        self.s != [0; 4]
    }

    /// An independent generator derived from this one's seed stream and a label, for
    /// sub-streams (data shuffling, noise, timesteps) that must not disturb each other.
    pub fn fork(&mut self, label: u64) -> Self {
        Self::new(self.next_u64() ^ label.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform on [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n) (Lemire's unbiased multiply-shift). `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        let n = n as u64;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as usize;
            }
        }
    }

    /// Fills `out` with independent N(0, 1) draws (Box–Muller in f64).
    pub fn fill_normal(&mut self, out: &mut [f64]) {
        let mut chunks = out.chunks_exact_mut(2);
        for pair in &mut chunks {
            let (a, b) = self.normal_pair();
            pair[0] = a;
            pair[1] = b;
        }
        if let [last] = chunks.into_remainder() {
            *last = self.normal_pair().0;
        }
    }

    /// `n` independent N(0, 1) draws as f32.
    pub fn normal_f32(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0.0f64; n];
        self.fill_normal(&mut v);
        v.into_iter().map(|x| x as f32).collect()
    }

    /// One N(0, 1) draw.
    pub fn normal(&mut self) -> f64 {
        self.normal_pair().0
    }

    fn normal_pair(&mut self) -> (f64, f64) {
        // u1 in (0, 1] so the log is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        (r * th.cos(), r * th.sin())
    }

    /// Shuffles `v` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Where a sampler's Gaussian noise comes from: one generator for the whole batch, or
/// [`ItemRngs`] — one per item, so an item's noise does not depend on the batch it is in.
pub trait NoiseSource {
    /// `n` independent N(0, 1) draws as f32, for `n` values laid out item after item.
    fn normal_f32(&mut self, n: usize) -> Vec<f32>;
}

impl NoiseSource for Rng {
    fn normal_f32(&mut self, n: usize) -> Vec<f32> {
        Rng::normal_f32(self, n)
    }
}

/// One generator per batch item: a draw of `n` values takes `n / items` from each item's own
/// stream, in item order.
#[derive(Debug, Clone)]
pub struct ItemRngs(pub Vec<Rng>);

impl ItemRngs {
    /// The streams of items `first..first + count` of a sequence seeded by `seed`: item i's
    /// stream is the same whichever batch (or process) draws it.
    pub fn for_items(seed: u64, first: usize, count: usize) -> Self {
        Self(
            (first..first + count)
                .map(|i| streams::sample_item(seed, i as u64))
                .collect(),
        )
    }
}

impl NoiseSource for ItemRngs {
    fn normal_f32(&mut self, n: usize) -> Vec<f32> {
        let k = self.0.len();
        assert!(
            k > 0 && n.is_multiple_of(k),
            "{n} values do not split over {k} items"
        );
        self.0
            .iter_mut()
            .flat_map(|r| r.normal_f32(n / k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_round_trips() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let saved = serde_json::to_string(&a).unwrap();
        let mut c: Rng = serde_json::from_str(&saved).unwrap();
        assert_eq!(a.normal(), c.normal());
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }

    #[test]
    fn normal_moments_within_monte_carlo_tolerance() {
        let n = 200_000;
        let mut v = vec![0.0; n];
        Rng::new(1).fill_normal(&mut v);
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: mean 1/√n, variance √(2/n); allow 5σ.
        assert!(mean.abs() < 5.0 / (n as f64).sqrt(), "{mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt(), "{var}");
    }

    #[test]
    fn below_is_uniform() {
        let mut r = Rng::new(3);
        let mut counts = [0usize; 5];
        let n = 50_000;
        for _ in 0..n {
            counts[r.below(5)] += 1;
        }
        let p = 0.2;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        for c in counts {
            assert!((c as f64 - n as f64 * p).abs() < 5.0 * sd, "{counts:?}");
        }
    }

    #[test]
    fn item_streams_do_not_depend_on_the_batch() {
        // Items 0..4 drawn as one batch or as two batches of two: the same values per item.
        let mut whole = ItemRngs::for_items(9, 0, 4);
        let a = NoiseSource::normal_f32(&mut whole, 12);
        let b = NoiseSource::normal_f32(&mut whole, 8);
        let (mut lo, mut hi) = (ItemRngs::for_items(9, 0, 2), ItemRngs::for_items(9, 2, 2));
        let (a_lo, a_hi) = (
            NoiseSource::normal_f32(&mut lo, 6),
            NoiseSource::normal_f32(&mut hi, 6),
        );
        let (b_lo, b_hi) = (
            NoiseSource::normal_f32(&mut lo, 4),
            NoiseSource::normal_f32(&mut hi, 4),
        );
        assert_eq!(a, [a_lo, a_hi].concat());
        assert_eq!(b, [b_lo, b_hi].concat());
        assert_ne!(a[..3], a[3..6], "items have their own streams");
    }
}
