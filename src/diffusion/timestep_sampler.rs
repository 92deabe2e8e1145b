//! Drawing the training timestep t: uniformly (Algorithm 1, line 3) or by importance sampling
//! on the loss's second moment (Nichol & Dhariwal 2021, eq. 17).

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Losses of history kept per timestep before importance sampling starts.
pub const HISTORY_PER_TERM: usize = 10;
/// Probability mass mixed in uniformly so every t keeps being visited.
pub const UNIFORM_PROB: f64 = 0.001;

/// A timestep sampler with its state (serializable for checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum TimestepSampler {
    /// t ~ Uniform({1, …, T}).
    Uniform {
        /// T.
        num_timesteps: usize,
    },
    /// p_t ∝ √E\[L_t²\], estimated from the last 10 losses at each t, mixed with 0.001 uniform;
    /// uniform until every t has 10 losses of history. Samples are weighted 1/(T·p_t) so the
    /// objective stays unbiased.
    LossSecondMoment {
        /// The last losses seen at each t (oldest first).
        history: Vec<Vec<f64>>,
    },
}

impl TimestepSampler {
    /// A uniform sampler over T steps.
    pub fn uniform(num_timesteps: usize) -> Self {
        Self::Uniform { num_timesteps }
    }

    /// Whether a (deserialized) sampler is usable: every loss in its history finite and ≥ 0,
    /// at most the kept number per timestep.
    pub fn is_valid(&self) -> bool {
        match self {
            Self::Uniform { .. } => true,
            Self::LossSecondMoment { history } => history.iter().all(|h| {
                h.len() <= HISTORY_PER_TERM && h.iter().all(|l| l.is_finite() && *l >= 0.0)
            }),
        }
    }

    /// An importance sampler over T steps, starting with no history.
    pub fn loss_second_moment(num_timesteps: usize) -> Self {
        Self::LossSecondMoment {
            history: vec![Vec::new(); num_timesteps],
        }
    }

    /// T.
    pub fn num_timesteps(&self) -> usize {
        match self {
            Self::Uniform { num_timesteps } => *num_timesteps,
            Self::LossSecondMoment { history } => history.len(),
        }
    }

    /// The sampling distribution p_t.
    pub fn probabilities(&self) -> Vec<f64> {
        let n = self.num_timesteps();
        match self {
            Self::LossSecondMoment { history }
                if history.iter().all(|h| h.len() == HISTORY_PER_TERM) =>
            {
                let w: Vec<f64> = history
                    .iter()
                    .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / h.len() as f64).sqrt())
                    .collect();
                let total: f64 = w.iter().sum();
                if !(total > 0.0 && total.is_finite()) {
                    return vec![1.0 / n as f64; n];
                }
                w.iter()
                    .map(|x| x / total * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / n as f64)
                    .collect()
            }
            _ => vec![1.0 / n as f64; n],
        }
    }

    /// Draws `batch` timesteps and their importance weights 1/(T·p_t).
    pub fn sample(&self, batch: usize, rng: &mut Rng) -> (Vec<usize>, Vec<f64>) {
        let n = self.num_timesteps();
        if let Self::Uniform { .. } = self {
            return ((0..batch).map(|_| rng.below(n)).collect(), vec![1.0; batch]);
        }
        let p = self.probabilities();
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for &x in &p {
            acc += x;
            cdf.push(acc);
        }
        let ts: Vec<usize> = (0..batch)
            .map(|_| {
                let u = rng.uniform() * acc;
                cdf.partition_point(|&c| c <= u).min(n - 1)
            })
            .collect();
        let weights = ts.iter().map(|&t| 1.0 / (n as f64 * p[t])).collect();
        (ts, weights)
    }

    /// Records the per-sample losses observed at timesteps `ts`.
    pub fn update(&mut self, ts: &[usize], losses: &[f64]) {
        if let Self::LossSecondMoment { history } = self {
            for (&t, &l) in ts.iter().zip(losses) {
                let h = &mut history[t];
                if h.len() == HISTORY_PER_TERM {
                    h.remove(0);
                }
                h.push(l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_until_warm_then_proportional_to_rms_loss() {
        let mut s = TimestepSampler::loss_second_moment(3);
        assert_eq!(s.probabilities(), vec![1.0 / 3.0; 3]);
        for _ in 0..HISTORY_PER_TERM {
            s.update(&[0, 1, 2], &[1.0, 2.0, 3.0]);
        }
        let p = s.probabilities();
        // √E[L²] = 1, 2, 3 → 1/6, 2/6, 3/6, then mixed with the uniform mass.
        for (i, want) in [1.0, 2.0, 3.0].iter().enumerate() {
            let want = want / 6.0 * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / 3.0;
            assert!((p[i] - want).abs() < 1e-15);
        }
        // History keeps only the last 10 losses.
        s.update(&[0], &[100.0]);
        if let TimestepSampler::LossSecondMoment { history } = &s {
            assert_eq!(history[0].len(), HISTORY_PER_TERM);
            assert_eq!(*history[0].last().unwrap(), 100.0);
        }
    }

    #[test]
    fn importance_sampling_frequencies_and_unbiased_weights() {
        let mut s = TimestepSampler::loss_second_moment(4);
        for _ in 0..HISTORY_PER_TERM {
            s.update(&[0, 1, 2, 3], &[1.0, 1.0, 2.0, 4.0]);
        }
        let p = s.probabilities();
        let mut rng = Rng::new(5);
        let n = 100_000;
        let (ts, w) = s.sample(n, &mut rng);
        let mut counts = [0usize; 4];
        let mut wsum = 0.0;
        for (&t, &wi) in ts.iter().zip(&w) {
            counts[t] += 1;
            wsum += wi;
        }
        for t in 0..4 {
            let sd = (n as f64 * p[t] * (1.0 - p[t])).sqrt();
            assert!((counts[t] as f64 - n as f64 * p[t]).abs() < 5.0 * sd);
        }
        // E[1/(T p_t)] = 1 under p: the weighted objective is unbiased.
        let mean_w = wsum / n as f64;
        assert!((mean_w - 1.0).abs() < 0.02, "{mean_w}");
    }
}
