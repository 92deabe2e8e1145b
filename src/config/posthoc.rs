//! Post-hoc EMA settings (`[posthoc_ema]` in `config.toml`): the power-function averages a run
//! tracks and how often it keeps a snapshot of them (Karras et al. 2024, §3).

use serde::{Deserialize, Serialize};

use crate::optim::power_ema::SIGMA_REL_MAX;

/// Which averages to track and how often to snapshot them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosthocEmaConfig {
    /// The widths σ_rel of the tracked power-function averages (EDM2: 0.05 and 0.10).
    pub sigma_rels: Vec<f64>,
    /// A snapshot of every average each this many steps (and at the last step), in
    /// `RUN/posthoc/step-N/`.
    pub snapshot_every: u64,
}

impl PosthocEmaConfig {
    /// Checks the widths and the cadence; errors name the flags.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.sigma_rels.is_empty() || self.sigma_rels.len() > 8 {
            bail!(
                "--posthoc-ema: give 1 to 8 widths σ_rel (e.g. 0.05,0.10), got {}",
                self.sigma_rels.len()
            );
        }
        for &s in &self.sigma_rels {
            if !(s > 0.0 && s <= SIGMA_REL_MAX) {
                bail!("--posthoc-ema: σ_rel {s} must be in (0, {SIGMA_REL_MAX:.4}]");
            }
        }
        let names: std::collections::BTreeSet<String> = self
            .sigma_rels
            .iter()
            .map(|&s| crate::optim::power_ema::file_name(s))
            .collect();
        if names.len() != self.sigma_rels.len() {
            bail!("--posthoc-ema: two widths are equal to three decimals");
        }
        if self.snapshot_every == 0 {
            bail!("--snapshot-every must be at least 1");
        }
        crate::config::fit_toml(&[("--snapshot-every", self.snapshot_every)])
    }
}
