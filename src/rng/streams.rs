//! Every random stream of the crate, named in one place with how its seed is derived from the
//! user's `--seed`. The streams one command uses together are independent of each other, so a
//! feature that draws from one never changes what another gives: a run resumes bit-identically,
//! and N processes draw what one process does. (Streams of different commands may coincide:
//! training's timestep stream is `sample_item(seed, 1)`'s generator.) Changing a derivation
//! changes the results of existing seeds.

use super::Rng;

/// The odd constant of Weyl sequences (2^64 / φ), which spreads consecutive counters apart.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Training: the generators of the timesteps t and of the noise ε (Algorithm 1), forked from
/// the run's seed; saved in every checkpoint's `state.json` and continued from there.
pub fn training(seed: u64) -> (Rng, Rng) {
    let mut seeder = Rng::new(seed);
    let t = seeder.fork(1);
    let noise = seeder.fork(2);
    (t, noise)
}

/// Training: the backend generator's seed (dropout masks) for micro-batch `micro` of `step`
/// on `rank`. Each rank draws its own masks.
pub fn dropout(seed: u64, step: u64, micro: u64, rank: u64) -> u64 {
    seed ^ step.wrapping_mul(GOLDEN) ^ micro << 48 ^ rank << 56
}

/// Training a class-conditional model: which labels of micro-batch `micro` of `step` are
/// dropped to the null class (classifier-free guidance).
pub fn class_drop(seed: u64, step: u64, micro: u64) -> Rng {
    Rng::new(seed ^ 0xC1A5_5D20_0000_0000 ^ step.wrapping_mul(GOLDEN) ^ micro << 40)
}

/// Training: the noise of the sample grids written during a run (the same at every step, so
/// the grids show the model changing, not the noise).
pub fn training_grid(seed: u64) -> Rng {
    Rng::new(seed ^ 0x5A3B_1E00)
}

/// Data: the order of the items in epoch `epoch`.
pub fn epoch_order(seed: u64, epoch: u64) -> Rng {
    Rng::new(seed ^ epoch.wrapping_mul(GOLDEN))
}

/// Data: whether the item at `offset` of epoch `epoch` is mirrored (`--hflip`). (For the first
/// item of epoch 0 this is the seed of [`epoch_order`]'s epoch 0; kept so seeds keep their runs.)
pub fn flip(seed: u64, epoch: u64, offset: usize) -> Rng {
    Rng::new(seed ^ epoch.rotate_left(17) ^ (offset as u64).wrapping_mul(0xA24B_AED4_963E_E407))
}

/// The toy 2-D datasets' points.
pub fn toy_points(seed: u64) -> Rng {
    Rng::new(seed ^ 0x70_7932)
}

/// Training a guidance classifier: its timesteps and noise.
pub fn guidance_classifier(seed: u64) -> Rng {
    Rng::new(seed ^ 0xC1A5_51F1)
}

/// A guidance classifier's accuracy on noisy held-out images: the noise at each timestep.
pub fn classifier_accuracy(seed: u64) -> Rng {
    Rng::new(seed ^ 0x7E57)
}

/// Sampling with `--variance analytic`: the images and noise its Γ_t are estimated from.
pub fn analytic_variance(seed: u64) -> Rng {
    Rng::new(seed ^ 0xA7A1)
}

/// Sampling: image `i`'s own stream (its x_T and the noise of every step), the same whichever
/// batch or process draws it.
pub fn sample_item(seed: u64, i: u64) -> Rng {
    Rng::new(seed).fork(i)
}

/// `eval nll`: the timesteps and noise of batch `batch`.
pub fn nll_batch(seed: u64, batch: u64) -> Rng {
    Rng::new(seed).fork(batch)
}

// The streams below start from the seed itself; each belongs to its own command, so they never
// meet in one run.

/// `eval guidance`: the noise of the samples at each guidance scale (the same at every scale, so
/// the scales are compared on the same noise).
pub fn guided_samples(seed: u64) -> Rng {
    Rng::new(seed)
}

/// `eval`'s judging classifier: its training batches' noise.
pub fn judge_training(seed: u64) -> Rng {
    Rng::new(seed)
}

/// `plot`: the noise of the forward-process pictures.
pub fn plot_noise(seed: u64) -> Rng {
    Rng::new(seed)
}

/// Random Fourier time features: their frequencies.
pub fn fourier_features(seed: u64) -> Rng {
    Rng::new(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streams_of_one_seed_differ() {
        // (The dropout seed feeds the backend's generator, not an `Rng`; it is checked below.)
        let first = |mut r: Rng| r.next_u64();
        let (t, noise) = training(7);
        let draws = [
            first(t),
            first(noise),
            first(class_drop(7, 1, 0)),
            first(training_grid(7)),
            first(epoch_order(7, 1)),
            first(flip(7, 1, 3)),
            first(toy_points(7)),
            first(guidance_classifier(7)),
            first(classifier_accuracy(7)),
            first(analytic_variance(7)),
            first(sample_item(7, 0)),
        ];
        for (i, a) in draws.iter().enumerate() {
            for b in &draws[i + 1..] {
                assert_ne!(a, b, "two streams of seed 7 start alike");
            }
        }
    }

    #[test]
    fn per_step_streams_change_with_the_step_the_micro_batch_and_the_rank() {
        assert_ne!(dropout(7, 1, 0, 0), dropout(7, 2, 0, 0));
        assert_ne!(dropout(7, 1, 0, 0), dropout(7, 1, 1, 0));
        assert_ne!(dropout(7, 1, 0, 0), dropout(7, 1, 0, 1));
        assert_ne!(
            class_drop(7, 1, 0).next_u64(),
            class_drop(7, 1, 1).next_u64()
        );
    }
}
