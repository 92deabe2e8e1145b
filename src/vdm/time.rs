//! Time in a VDM run: continuous t ∈ (0, 1], or the grid s(i) = i/T of the paper's discrete
//! loss L_T; where the loss's times and weights come from, and the chain samplers walk.

use super::gamma::{FixedGamma, alpha_sq};
use super::learned::LearnedGamma;
use crate::rng::Rng;
use crate::schedule::{MAX_TIMESTEPS, NoiseSchedule, ScheduleError, betas_from_alphas_cumprod};
use burn::tensor::{Tensor, TensorData};

/// The network sees 1000·t, the range of a DDPM network's step input.
pub const NETWORK_TIME_SCALE: f64 = 1000.0;

/// How a VDM loss treats time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    /// L_∞: t ~ U(0, 1), weight γ'(t) (Kingma et al. 2021, eq. 17).
    Continuous,
    /// L_T: t = i/T with i uniform in 1..=T, weight T·(exp(γ(t) − γ(t − 1/T)) − 1) (eq. 14).
    Discrete(usize),
}

impl Time {
    /// Reads a `--time` value: `continuous`, `discrete:T`, or `discrete` (`None`: the DDPM chain
    /// of `--timesteps` steps with the losses of `--loss`, not a VDM loss).
    pub fn parse(value: &str) -> anyhow::Result<Option<Self>> {
        match value {
            "continuous" => Ok(Some(Self::Continuous)),
            "discrete" => Ok(None),
            v => match v.strip_prefix("discrete:").map(str::parse::<usize>) {
                Some(Ok(t)) if (1..=MAX_TIMESTEPS).contains(&t) => Ok(Some(Self::Discrete(t))),
                _ => anyhow::bail!(
                    "--time: `{v}` is not a time; expected continuous, discrete (the DDPM chain of \
                     --timesteps steps) or discrete:T with 1 ≤ T ≤ {MAX_TIMESTEPS} (VDM's discrete \
                     loss)"
                ),
            },
        }
    }

    /// `n` training times: uniform on (0, 1) (on the grid for discrete time); with `antithetic`,
    /// one uniform draw shifted by i/n (Kingma et al.'s low-discrepancy sampler), each time still
    /// uniform on its own.
    pub fn draw(self, n: usize, antithetic: bool, rng: &mut Rng) -> Vec<f64> {
        let u = super::gamma::sample_times(n, antithetic, rng);
        match self {
            // t = 0 has probability zero but the generator can return it; it would leave the
            // diffusion term undefined for a γ' that diverges there.
            Self::Continuous => u.into_iter().map(|t| t.max(f64::MIN_POSITIVE)).collect(),
            Self::Discrete(steps) => u
                .into_iter()
                .map(|t| ((t * steps as f64).floor() as usize).min(steps - 1) as f64 + 1.0)
                .map(|i| i / steps as f64)
                .collect(),
        }
    }
}

/// γ and γ' at host times, in f64.
pub trait GammaSource {
    /// (γ(t), γ'(t)) for each t.
    fn eval(&self, t: &[f64]) -> (Vec<f64>, Vec<f64>);
    /// (γ(0), γ(1)).
    fn ends(&self) -> (f64, f64) {
        let (g, _) = self.eval(&[0.0, 1.0]);
        (g[0], g[1])
    }
}

impl GammaSource for FixedGamma {
    fn eval(&self, t: &[f64]) -> (Vec<f64>, Vec<f64>) {
        (
            t.iter().map(|&t| self.gamma(t)).collect(),
            t.iter().map(|&t| self.dgamma(t)).collect(),
        )
    }
}

impl GammaSource for LearnedGamma {
    fn eval(&self, t: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let tt = Tensor::<1>::from_data(
            TensorData::new(t.to_vec(), [t.len()]),
            (&self.device(), self.dtype()),
        );
        let (g, d) = self.gamma(tt);
        let host = |x: Tensor<1>| -> Vec<f64> {
            x.detach()
                .into_data()
                .convert::<f64>()
                .try_into_vec()
                .expect("a float tensor")
        };
        (host(g), host(d))
    }

    fn ends(&self) -> (f64, f64) {
        self.endpoints()
    }
}

/// A trained VDM model's process: how it treats time and its γ (fixed, or loaded from the
/// checkpoint).
pub struct VdmProcess {
    /// Continuous or discrete time.
    pub time: Time,
    /// The schedule.
    pub gamma: Box<dyn GammaSource>,
}

/// The times, γ's and weights of one batch of a VDM loss.
#[derive(Debug, Clone)]
pub struct LossTimes {
    /// t of each example.
    pub t: Vec<f64>,
    /// γ(t).
    pub gamma: Vec<f64>,
    /// The weight of ½‖ε − ε̂‖²: γ'(t), or T·expm1(γ(t) − γ(s)) in discrete time.
    pub weight: Vec<f64>,
    /// Discrete time: s = t − 1/T and γ(s) (the weight's other end).
    pub prev: Option<(Vec<f64>, Vec<f64>)>,
}

impl LossTimes {
    /// Evaluates the schedule at `t` (drawn by [`Time::draw`]).
    pub fn new(time: Time, gamma: &dyn GammaSource, t: Vec<f64>) -> Self {
        match time {
            Time::Continuous => {
                let (g, d) = gamma.eval(&t);
                Self {
                    t,
                    gamma: g,
                    weight: d,
                    prev: None,
                }
            }
            Time::Discrete(steps) => {
                let h = 1.0 / steps as f64;
                let s: Vec<f64> = t.iter().map(|t| (t - h).max(0.0)).collect();
                let mut both = t.clone();
                both.extend_from_slice(&s);
                let (g, _) = gamma.eval(&both);
                let (gt, gs) = g.split_at(t.len());
                let weight = gt
                    .iter()
                    .zip(gs)
                    .map(|(a, b)| super::gamma::discrete_weight(*a, *b, steps))
                    .collect();
                Self {
                    t,
                    gamma: gt.to_vec(),
                    weight,
                    prev: Some((s, gs.to_vec())),
                }
            }
        }
    }

    /// The network's time input for each example (1000·t).
    pub fn network_times(&self) -> Vec<f64> {
        self.t.iter().map(|t| t * NETWORK_TIME_SCALE).collect()
    }
}

/// The N-step chain samplers walk for a VDM model: step i stands for t = (i + 1)/N, so ᾱ_i =
/// sigmoid(−γ((i + 1)/N)) and the network is called with 1000·(i + 1)/N, as in training; the
/// chain's last sample is the data x (its ᾱ = 1), which z_0 (γ(0) ≈ −13) approximates.
pub fn chain(gamma: &dyn GammaSource, steps: usize) -> Result<NoiseSchedule, ScheduleError> {
    if !(1..=MAX_TIMESTEPS).contains(&steps) {
        return Err(ScheduleError::new(
            "--timesteps",
            format!("T must be in 1..={MAX_TIMESTEPS}, got {steps}"),
        ));
    }
    let t: Vec<f64> = (1..=steps).map(|i| i as f64 / steps as f64).collect();
    let (g, _) = gamma.eval(&t);
    let (g0, g1) = gamma.ends();
    let mut s = NoiseSchedule::from_betas(betas_from_alphas_cumprod(g.into_iter().map(alpha_sq)))
        .map_err(|e| {
        ScheduleError::new(
            "γ",
            format!(
                "the {steps}-step chain of γ from {g0} to {g1} is not a diffusion ({}); ᾱ = \
                     sigmoid(−γ) rounds to 0 or 1 where |γ| exceeds about 35",
                e.message
            ),
        )
    })?;
    s.time_scale = NETWORK_TIME_SCALE / steps as f64;
    s.time_offset = 1.0;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear() -> FixedGamma {
        FixedGamma::Linear {
            gamma_min: -13.3,
            gamma_max: 5.0,
        }
    }

    #[test]
    fn parses_every_form_and_refuses_the_rest() {
        assert_eq!(Time::parse("continuous").unwrap(), Some(Time::Continuous));
        assert_eq!(Time::parse("discrete").unwrap(), None);
        assert_eq!(
            Time::parse("discrete:250").unwrap(),
            Some(Time::Discrete(250))
        );
        for bad in [
            "discrete:0",
            "discrete:",
            "discrete:x",
            "cont",
            "",
            "discrete:100001",
        ] {
            let e = Time::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--time") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn discrete_times_are_uniform_on_the_grid() {
        let mut rng = Rng::new(3);
        let steps = 5;
        let mut counts = [0usize; 5];
        let n = 40_000;
        for _ in 0..n / 8 {
            for t in Time::Discrete(steps).draw(8, true, &mut rng) {
                let i = (t * steps as f64).round() as usize;
                assert!((t * steps as f64 - i as f64).abs() < 1e-12 && (1..=steps).contains(&i));
                counts[i - 1] += 1;
            }
        }
        // Each count is binomial(n, 1/5) at most (antithetic draws are less variable).
        let sd = (n as f64 * 0.2 * 0.8).sqrt();
        for c in counts {
            assert!((c as f64 - n as f64 / 5.0).abs() < 5.0 * sd, "{counts:?}");
        }
    }

    #[test]
    fn loss_weights_follow_the_schedule() {
        let g = linear();
        let c = LossTimes::new(Time::Continuous, &g, vec![0.25, 0.5]);
        assert_eq!(c.weight, vec![18.3, 18.3]);
        assert_eq!(c.gamma[1], g.gamma(0.5));
        let d = LossTimes::new(Time::Discrete(4), &g, vec![0.25, 1.0]);
        let (s, gs) = d.prev.clone().unwrap();
        assert_eq!(s, vec![0.0, 0.75]);
        assert_eq!(gs[1], g.gamma(0.75));
        // T·(SNR(s)/SNR(t) − 1) from the SNRs themselves.
        let snr = |t: f64| (-g.gamma(t)).exp();
        for (i, &t) in d.t.iter().enumerate() {
            let want = 4.0 * (snr(t - 0.25) / snr(t) - 1.0);
            assert!((d.weight[i] - want).abs() < 1e-9 * want);
        }
        assert_eq!(d.network_times(), vec![250.0, 1000.0]);
    }

    #[test]
    fn the_sampling_chain_has_the_continuous_alphas_and_network_times() {
        for g in [
            linear(),
            FixedGamma::Cosine {
                gamma_min: -13.3,
                gamma_max: 5.0,
            },
            FixedGamma::ddpm_linear(),
        ] {
            let s = chain(&g, 1000).unwrap();
            for i in [0, 1, 500, 999] {
                let want = alpha_sq(g.gamma((i + 1) as f64 / 1000.0));
                assert!(
                    (s.alphas_cumprod[i] - want).abs() < 1e-12 * want.max(1e-300) + 1e-15,
                    "{g:?} step {i}: {} vs {want}",
                    s.alphas_cumprod[i]
                );
            }
            assert_eq!(s.network_time(0), 1.0);
            assert_eq!(s.network_time(999), 1000.0);
            let r = s.respace(&[99, 499, 999]).unwrap();
            assert_eq!(r.network_time(r.timestep_map[0]), 100.0);
            let short = chain(&g, 4).unwrap();
            assert_eq!(short.network_time(1), 500.0);
        }
    }
}
