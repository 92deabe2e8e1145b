//! Timing shared by the benchmarks.

use std::time::Instant;

/// Fastest seconds of `f` over `reps` runs after one warm-up (on a shared host the minimum is
/// the run least disturbed by other work; the median drifts with the neighbours' load).
pub fn fastest(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
