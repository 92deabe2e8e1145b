//! Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
//! Diffusion Models", §3 and Appendix C.2): power-function averages tracked during training,
//! and the least-squares combination of their snapshots that approximates any other average
//! after training.
//!
//! A power-function average at step t weighs the weights of step τ ≤ t by
//! p_t(τ) = (γ + 1)·τ^γ / t^(γ+1); its width relative to t is
//! σ_rel = √((γ + 1) / ((γ + 2)²·(γ + 3))). It is tracked with
//! θ̂_t = β_t·θ̂_(t−1) + (1 − β_t)·θ_t, β_t = (1 − 1/t)^(γ+1). Snapshots θ̂_i of profiles
//! (t_i, γ_i) combine into Σ x_i·θ̂_i, x minimizing ∫ (Σ x_i·p_i(τ) − p_target(τ))² dτ: the
//! normal equations A x = b with A_ij = ⟨p_i, p_j⟩ and b_i = ⟨p_i, p_target⟩ in closed form.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::tensor::Tensor;

/// σ_rel of the power function with exponent γ.
pub fn sigma_rel_of(gamma: f64) -> f64 {
    ((gamma + 1.0) / ((gamma + 2.0).powi(2) * (gamma + 3.0))).sqrt()
}

/// The largest σ_rel a power function with γ ≥ 0 has (γ = 0, the uniform average): 1/√12.
pub const SIGMA_REL_MAX: f64 = 0.288_675_134_594_812_9;

/// The exponent γ ≥ 0 whose profile has width `sigma_rel` (in (0, 1/√12]): the root of
/// (γ + 2)²(γ + 3)·σ² = γ + 1 on γ ≥ 0, where σ_rel falls monotonically in γ.
pub fn gamma_of(sigma_rel: f64) -> Result<f64> {
    if !(sigma_rel > 0.0 && sigma_rel <= SIGMA_REL_MAX) {
        bail!(
            "σ_rel must be in (0, {SIGMA_REL_MAX:.4}] (1/√12, the uniform average), got {sigma_rel}"
        );
    }
    // Bisection on the decreasing σ_rel(γ) over [0, hi].
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while sigma_rel_of(hi) > sigma_rel {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if sigma_rel_of(mid) > sigma_rel {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// ⟨p_a, p_b⟩ = ∫ p_a(τ)·p_b(τ) dτ for the profiles at (t_a, γ_a) and (t_b, γ_b):
/// (γ_a + 1)(γ_b + 1)·m^(γ_a+γ_b+1) / ((γ_a + γ_b + 1)·t_a^(γ_a+1)·t_b^(γ_b+1)), m = min(t_a, t_b).
pub fn profile_dot(t_a: f64, gamma_a: f64, t_b: f64, gamma_b: f64) -> f64 {
    let m = t_a.min(t_b);
    // In ratios to m, so that large t and γ neither overflow nor underflow.
    (gamma_a + 1.0)
        * (gamma_b + 1.0)
        * (m / t_a).powf(gamma_a + 1.0)
        * (m / t_b).powf(gamma_b + 1.0)
        / ((gamma_a + gamma_b + 1.0) * m)
}

/// The coefficients x of the snapshots `snapshots` (each (t_i, γ_i)) whose combination best
/// approximates the profile `target` (t, γ) in L², from the normal equations.
///
/// ```
/// use ddpm::optim::power_ema::{gamma_of, posthoc_coefficients};
///
/// // Two widths snapshotted every 100 steps up to 1000.
/// let (g5, g10) = (gamma_of(0.05)?, gamma_of(0.10)?);
/// let snaps: Vec<(f64, f64)> =
///     (1..=10).flat_map(|i| [(100.0 * i as f64, g5), (100.0 * i as f64, g10)]).collect();
/// // A width that was tracked comes back as its own last snapshot…
/// let x = posthoc_coefficients(&snaps, (1000.0, g10))?;
/// assert!((x[19] - 1.0).abs() < 1e-6 && x[..19].iter().all(|v| v.abs() < 1e-6));
/// // …and one in between mixes several, their weights summing to one (the profiles' mass).
/// let x = posthoc_coefficients(&snaps, (1000.0, gamma_of(0.07)?))?;
/// assert!((x.iter().sum::<f64>() - 1.0).abs() < 0.01);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn posthoc_coefficients(snapshots: &[(f64, f64)], target: (f64, f64)) -> Result<Vec<f64>> {
    let n = snapshots.len();
    if n == 0 {
        bail!("no snapshots to combine");
    }
    let mut a: Vec<Vec<f64>> = snapshots
        .iter()
        .map(|&(ti, gi)| {
            snapshots
                .iter()
                .map(|&(tj, gj)| profile_dot(ti, gi, tj, gj))
                .collect()
        })
        .collect();
    let mut b: Vec<f64> = snapshots
        .iter()
        .map(|&(ti, gi)| profile_dot(ti, gi, target.0, target.1))
        .collect();
    solve(&mut a, &mut b)?;
    Ok(b)
}

/// Solves a x = b in place (x into `b`) by Gaussian elimination with partial pivoting.
fn solve(a: &mut [Vec<f64>], b: &mut [f64]) -> Result<()> {
    let n = b.len();
    let scale = a
        .iter()
        .flatten()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col].abs() <= 1e-15 * scale {
            bail!(
                "the snapshots' profiles are linearly dependent (two snapshots at the same step \
                 with the same σ_rel?)"
            );
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, below) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (r, row) in below.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            if f != 0.0 {
                for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= f * p;
                }
                b[col + 1 + r] -= f * b[col];
            }
        }
    }
    for col in (0..n).rev() {
        let tail: f64 = (col + 1..n).map(|k| a[col][k] * b[k]).sum();
        b[col] = (b[col] - tail) / a[col][col];
    }
    Ok(())
}

/// A power-function average of the weights, tracked during training.
#[derive(Debug, Clone)]
pub struct PowerEma {
    /// Its width σ_rel.
    pub sigma_rel: f64,
    /// Its exponent γ.
    pub gamma: f64,
    /// Updates taken (t).
    pub updates: u64,
    /// The averaged weights (flattened) by parameter name.
    pub params: BTreeMap<String, Tensor<1>>,
}

impl PowerEma {
    /// An empty average of width `sigma_rel`.
    pub fn new(sigma_rel: f64) -> Result<Self> {
        Ok(Self {
            sigma_rel,
            gamma: gamma_of(sigma_rel)?,
            updates: 0,
            params: BTreeMap::new(),
        })
    }

    /// β_t = (1 − 1/t)^(γ+1) at update t (0 at the first: the average starts as a copy).
    pub fn beta_at(&self, t: u64) -> f64 {
        (1.0 - 1.0 / t.max(1) as f64).powf(self.gamma + 1.0)
    }

    /// θ̂ ← β_t·θ̂ + (1 − β_t)·θ for every parameter.
    pub fn update(&mut self, current: &BTreeMap<String, Tensor<1>>) {
        self.updates += 1;
        let beta = self.beta_at(self.updates);
        super::ema::blend(&mut self.params, current, beta);
    }

    /// The file name of this profile's state in a checkpoint and its snapshots.
    pub fn file_name(&self) -> String {
        file_name(self.sigma_rel)
    }
}

/// `power-ema-<σ_rel>.safetensors`, σ_rel with three decimals.
pub fn file_name(sigma_rel: f64) -> String {
    format!("power-ema-{sigma_rel:.3}.safetensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simpson's rule on [0, t] with `n` (even) intervals.
    fn integrate(f: impl Fn(f64) -> f64, t: f64, n: usize) -> f64 {
        let h = t / n as f64;
        (0..=n)
            .map(|i| {
                let w = if i == 0 || i == n {
                    1.0
                } else if i % 2 == 1 {
                    4.0
                } else {
                    2.0
                };
                w * f(i as f64 * h)
            })
            .sum::<f64>()
            * h
            / 3.0
    }

    fn profile(t: f64, g: f64) -> impl Fn(f64) -> f64 {
        move |tau: f64| {
            if tau <= t {
                (g + 1.0) * tau.powf(g) / t.powf(g + 1.0)
            } else {
                0.0
            }
        }
    }

    /// σ_rel is the profile's standard deviation over t, by quadrature; γ inverts it.
    #[test]
    fn sigma_rel_is_the_profiles_relative_width_and_gamma_inverts_it() {
        for g in [0.0, 1.5, 6.94, 16.97, 40.0] {
            let p = profile(1.0, g);
            let mass = integrate(&p, 1.0, 20_000);
            let mean = integrate(|x| x * p(x), 1.0, 20_000);
            let var = integrate(|x| x * x * p(x), 1.0, 20_000) - mean * mean;
            assert!((mass - 1.0).abs() < 1e-6, "γ {g}: mass {mass}");
            assert!((var.sqrt() - sigma_rel_of(g)).abs() < 1e-6, "γ {g}");
            let back = gamma_of(sigma_rel_of(g)).unwrap();
            assert!((back - g).abs() < 1e-9 * (1.0 + g), "γ {g} → {back}");
        }
        // EDM2's two tracked profiles.
        assert!((gamma_of(0.05).unwrap() - 16.97).abs() < 0.01);
        assert!((gamma_of(0.10).unwrap() - 6.94).abs() < 0.01);
        assert!(gamma_of(0.0).is_err() && gamma_of(0.3).is_err());
    }

    #[test]
    fn profile_dot_products_equal_quadrature() {
        for (ta, ga, tb, gb) in [
            (1.0, 3.0, 1.0, 3.0),
            (0.6, 7.0, 1.0, 2.0),
            (1.0, 0.5, 0.3, 12.0),
        ] {
            let (pa, pb) = (profile(ta, ga), profile(tb, gb));
            let m = f64::min(ta, tb);
            let q = integrate(|x| pa(x) * pb(x), m, 200_000);
            let c = profile_dot(ta, ga, tb, gb);
            assert!((q - c).abs() < 1e-6 * c, "{q} vs {c}");
        }
    }

    /// A profile among the snapshots is reconstructed as itself.
    #[test]
    fn a_tracked_profile_is_reconstructed_as_itself() {
        let (g1, g2) = (gamma_of(0.05).unwrap(), gamma_of(0.10).unwrap());
        let snaps: Vec<(f64, f64)> = (1..=10)
            .flat_map(|i| [(i as f64 * 100.0, g1), (i as f64 * 100.0, g2)])
            .collect();
        let x = posthoc_coefficients(&snaps, (700.0, g2)).unwrap();
        for (i, v) in x.iter().enumerate() {
            let want = if i == 13 { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-6, "x[{i}] = {v}");
        }
    }

    /// Two profiles tracked on a synthetic trajectory, snapshotted every 100 steps, give a
    /// third profile's average at the end (tracked directly alongside) to 0.005, where the
    /// trajectory moves by about 1 over the profiles' widths.
    #[test]
    fn snapshots_reconstruct_an_average_that_was_not_tracked() {
        let device = crate::device::by_name("cpu").unwrap();
        let theta = |t: f64| (t / 230.0).sin() + t / 700.0 + 0.3 * (t / 61.0).cos();
        let mut tracked: Vec<PowerEma> = [0.05, 0.10, 0.07, 0.15]
            .iter()
            .map(|&s| PowerEma::new(s).unwrap())
            .collect();
        let mut snaps = Vec::new();
        let mut values = Vec::new();
        let host = |e: &PowerEma| {
            e.params["w"]
                .clone()
                .into_data()
                .iter::<f32>()
                .next()
                .unwrap() as f64
        };
        for t in 1..=3000u64 {
            let mut cur = BTreeMap::new();
            cur.insert(
                "w".to_string(),
                Tensor::<1>::from_data(
                    burn::tensor::TensorData::new(vec![theta(t as f64) as f32], [1]),
                    &device,
                ),
            );
            for e in tracked.iter_mut() {
                e.update(&cur);
            }
            if t % 100 == 0 {
                for e in &tracked[..2] {
                    snaps.push((t as f64, e.gamma));
                    values.push(host(e));
                }
            }
        }
        for target in &tracked[2..] {
            let x = posthoc_coefficients(&snaps, (3000.0, target.gamma)).unwrap();
            let got: f64 = x.iter().zip(&values).map(|(a, v)| a * v).sum();
            let want = host(target);
            assert!(
                (got - want).abs() < 0.005,
                "σ_rel {}: reconstructed {got}, tracked {want}",
                target.sigma_rel
            );
        }
    }
}
