//! An EDM run's settings (`[edm]` in `config.toml`) and the keys an EDM run refuses.

use serde::{Deserialize, Serialize};

use super::RunConfig;
use crate::diffusion::Parameterization;
use crate::diffusion::edm::{EdmPrecond, LogNormalSigma};

/// An EDM run's settings (`[edm]` in `config.toml`); the defaults are EDM's.
///
/// ```
/// use ddpm::RunConfig;
/// use ddpm::config::LossName;
///
/// let cfg = RunConfig::from_toml("preset = \"tiny\"\n[edm]\nsigma_data = 0.6\n", "edm.toml")?;
/// let edm = cfg.edm.expect("an EDM run");
/// assert_eq!((edm.sigma_data, edm.p_mean, edm.p_std), (0.6, -1.2, 1.2));
/// assert!(cfg.validate().is_ok());
/// // The chain's own losses do not apply to it.
/// let hybrid = RunConfig { loss: LossName::Hybrid, ..cfg.clone() };
/// assert!(hybrid.validate().unwrap_err().to_string().contains("--loss"));
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdmConfig {
    /// σ_d, the data's standard deviation in the preconditioning.
    pub sigma_data: f64,
    /// P_mean: the mean of ln σ in training.
    pub p_mean: f64,
    /// P_std: the standard deviation of ln σ in training.
    pub p_std: f64,
    /// The smallest σ of the chain samplers walk (its step 0).
    pub sigma_min: f64,
    /// The largest σ of that chain (its step T − 1); it has `timesteps` levels in between.
    pub sigma_max: f64,
}

impl Default for EdmConfig {
    fn default() -> Self {
        Self {
            sigma_data: 0.5,
            p_mean: -1.2,
            p_std: 1.2,
            sigma_min: 0.002,
            sigma_max: 80.0,
        }
    }
}

impl EdmConfig {
    /// The preconditioning.
    pub fn precond(&self) -> EdmPrecond {
        EdmPrecond {
            sigma_data: self.sigma_data,
        }
    }

    /// The training distribution of σ.
    pub fn noise(&self) -> LogNormalSigma {
        LogNormalSigma {
            p_mean: self.p_mean,
            p_std: self.p_std,
        }
    }
}

impl RunConfig {
    /// Checks an EDM run's keys: its own σ's and the DDPM or VDM keys it has no use for.
    pub(super) fn validate_edm(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        let Some(e) = &self.edm else {
            return Ok(());
        };
        for (key, v) in [
            ("--sigma-data", e.sigma_data),
            ("--p-std", e.p_std),
            ("edm.sigma_min", e.sigma_min),
            ("edm.sigma_max", e.sigma_max),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{key} must be a positive finite number, got {v}");
            }
        }
        // σ's beyond e^±40 would overflow f32 in the preconditioning.
        if !(-10.0..=10.0).contains(&e.p_mean) {
            bail!(
                "--p-mean (the mean of ln σ) must be in [-10, 10], got {}",
                e.p_mean
            );
        }
        if e.p_std > 5.0 {
            bail!(
                "--p-std (the spread of ln σ) must be at most 5, got {}",
                e.p_std
            );
        }
        if e.sigma_data > 1e3 {
            bail!("--sigma-data must be at most 1000, got {}", e.sigma_data);
        }
        if e.sigma_min >= e.sigma_max {
            bail!(
                "edm.sigma_min {} must be below edm.sigma_max {}",
                e.sigma_min,
                e.sigma_max
            );
        }
        if self.timesteps < 2 {
            bail!("--timesteps: an EDM run's chain needs at least 2 levels");
        }
        let what = "--objective edm";
        if self.time.is_some() || self.schedule == "learned" {
            bail!("--time/--schedule learned: VDM's objective; {what} is another one");
        }
        if self.parameterization != Parameterization::Eps {
            bail!(
                "--parameterization: with {what} the preconditioning fixes what the network \
                 predicts (D = c_skip·x + c_out·F, a prediction of x0); drop --parameterization"
            );
        }
        self.refuse_chain_keys(
            what,
            &[
                ("--schedule", self.schedule != "linear"),
                ("trained_betas", self.trained_betas.is_some()),
            ],
            "σ is drawn as ln σ ~ N(P_mean, P_std²) (--p-mean, --p-std) and the loss weighted by \
             λ(σ) = (σ² + σ_d²)/(σ·σ_d)²",
        )
    }
}
