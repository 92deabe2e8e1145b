//! Noise schedules β_1..β_T and every table derived from them, in f64.
//!
//! Indexing: the lecture numbers diffusion steps t = 1..T; tables here are 0-based, so entry
//! `i` holds the value for lecture step t = i + 1 (the convention of Improved DDPM's code).
//! Nothing here knows about tensors or networks: the tables are cast once to the tensor dtype
//! by the `diffusion` module.

#![deny(missing_docs)]

use std::fmt;
use std::path::Path;

/// An invalid schedule request. `flag` names the command-line flag (or config key) at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleError {
    /// The flag or key at fault, e.g. `--timesteps`.
    pub flag: String,
    /// What was wrong and what was expected.
    pub message: String,
}

impl ScheduleError {
    pub(crate) fn new(flag: &str, message: impl Into<String>) -> Self {
        Self {
            flag: flag.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.message)
    }
}

impl std::error::Error for ScheduleError {}

/// Default β_1 of Ho et al. (2020) at T = 1000.
pub const DEFAULT_BETA_START: f64 = 1e-4;
/// Default β_T of Ho et al. (2020) at T = 1000.
pub const DEFAULT_BETA_END: f64 = 0.02;
/// Offset s of the cosine schedule (Nichol & Dhariwal 2021, eq. 17).
pub const COSINE_S: f64 = 0.008;
/// Cap on β_t for the cosine schedule (Nichol & Dhariwal 2021, §3.2).
pub const COSINE_MAX_BETA: f64 = 0.999;

/// How β_1..β_T are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum BetaSchedule {
    /// β_t linear in t from `beta_start` to `beta_end` (Ho et al. 2020, §4), evaluated exactly
    /// as `numpy.linspace`: β_i = beta_start + i·(beta_end − beta_start)/(T − 1), β_T = beta_end.
    Linear {
        /// β_1.
        beta_start: f64,
        /// β_T.
        beta_end: f64,
    },
    /// √β_t linear in t (the `quad` schedule of Ho et al.'s code):
    /// β_i = (√beta_start + i·(√beta_end − √beta_start)/(T − 1))².
    Quadratic {
        /// β_1.
        beta_start: f64,
        /// β_T.
        beta_end: f64,
    },
    /// The sigmoid schedule of GeoDiff (Xu et al. 2022) as used by the Annotated Diffusion
    /// Model: β_i = beta_start + (beta_end − beta_start)·σ(x_i), x_i = linspace(−6, 6, T)_i,
    /// σ the logistic function.
    Sigmoid {
        /// β_1.
        beta_start: f64,
        /// β_T.
        beta_end: f64,
    },
    /// The cosine schedule (Nichol & Dhariwal 2021, eq. 17):
    /// ᾱ(t) = cos²(((t/T) + s)/(1 + s) · π/2), β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), max_beta).
    Cosine {
        /// The offset s (0.008).
        s: f64,
        /// The cap on β_t (0.999).
        max_beta: f64,
    },
    /// β_t = beta for every t (the `const` schedule of Ho et al.'s code).
    Constant {
        /// β.
        beta: f64,
    },
    /// Variational Diffusion Models' fixed schedule, linear in γ = −log SNR (Kingma et al.
    /// 2021): step i (1-based) has ᾱ_i = sigmoid(−γ(i/T)), γ(t) = γ_min + (γ_max − γ_min)·t.
    VdmLinear {
        /// γ at t = 0 (log SNR 13.3 by default).
        gamma_min: f64,
        /// γ at t = 1, the last step's −log SNR (−5 by default).
        gamma_max: f64,
    },
    /// An explicit list β_1..β_T.
    Custom(Vec<f64>),
}

/// VDM's default γ endpoints: SNR from e^{13.3} down to e^{−5}.
pub const VDM_GAMMA_MIN: f64 = -13.3;
/// See [`VDM_GAMMA_MIN`].
pub const VDM_GAMMA_MAX: f64 = 5.0;

impl BetaSchedule {
    /// The named schedule with the paper defaults. For `linear`, `quadratic` and `sigmoid`
    /// without explicit β bounds, the Ho et al. bounds (1e-4, 0.02) are scaled by 1000/T as
    /// Improved DDPM does for `linear`, so that ᾱ_T stays comparable across T. Explicit bounds
    /// are used as given. `constant` uses `beta_end` (default 0.02·1000/T).
    ///
    /// ```
    /// use ddpm::{BetaSchedule, NoiseSchedule};
    ///
    /// let linear = BetaSchedule::named("linear", 1000, None, None)?;
    /// let s = NoiseSchedule::new(&linear, 1000, false)?;
    /// // Ho et al.'s β_1 = 1e-4 … β_T = 0.02 leave almost no signal at t = T.
    /// assert!((s.betas[0] - 1e-4).abs() < 1e-12 && (s.betas[999] - 0.02).abs() < 1e-12);
    /// assert!(s.alphas_cumprod[999] < 1e-4);
    /// assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
    /// // An unknown name is an error naming the accepted ones, not a panic.
    /// assert!(BetaSchedule::named("cosinus", 1000, None, None).is_err());
    /// # Ok::<(), ddpm::schedule::ScheduleError>(())
    /// ```
    pub fn named(
        name: &str,
        timesteps: usize,
        beta_start: Option<f64>,
        beta_end: Option<f64>,
    ) -> Result<Self, ScheduleError> {
        check_timesteps(timesteps)?;
        let scale = 1000.0 / timesteps as f64;
        let start = beta_start.unwrap_or(scale * DEFAULT_BETA_START);
        let end = beta_end.unwrap_or(scale * DEFAULT_BETA_END);
        let bounded = matches!(name, "linear" | "quadratic" | "sigmoid" | "constant");
        if !bounded && (beta_start.is_some() || beta_end.is_some()) {
            let flag = if beta_start.is_some() {
                "--beta-start"
            } else {
                "--beta-end"
            };
            return Err(ScheduleError::new(
                flag,
                format!("the {name} schedule takes no β bounds"),
            ));
        }
        if bounded {
            if beta_end.is_none() && end >= 1.0 {
                return Err(ScheduleError::new(
                    "--timesteps",
                    format!(
                        "the default β_end 0.02 scaled by 1000/T is {end} at T = {timesteps}, outside (0, 1); pass --beta-end or use T ≥ 21"
                    ),
                ));
            }
            check_beta("--beta-start", start)?;
            check_beta("--beta-end", end)?;
            if start > end {
                return Err(ScheduleError::new(
                    "--beta-start",
                    format!("β_start = {start} is larger than β_end = {end}"),
                ));
            }
        }
        Ok(match name {
            "linear" => Self::Linear {
                beta_start: start,
                beta_end: end,
            },
            "quadratic" => Self::Quadratic {
                beta_start: start,
                beta_end: end,
            },
            "sigmoid" => Self::Sigmoid {
                beta_start: start,
                beta_end: end,
            },
            "cosine" => Self::Cosine {
                s: COSINE_S,
                max_beta: COSINE_MAX_BETA,
            },
            "constant" => Self::Constant { beta: end },
            "vdm-linear" => Self::VdmLinear {
                gamma_min: VDM_GAMMA_MIN,
                gamma_max: VDM_GAMMA_MAX,
            },
            other => {
                return Err(ScheduleError::new(
                    "--schedule",
                    format!(
                        "unknown schedule `{other}`; expected linear, quadratic, sigmoid, cosine, constant, vdm-linear or file:PATH"
                    ),
                ));
            }
        })
    }

    /// `vdm-linear` with the given γ_min/γ_max (where given); other schedules unchanged.
    pub fn with_gamma_range(self, range: (Option<f64>, Option<f64>)) -> Self {
        match self {
            Self::VdmLinear {
                gamma_min,
                gamma_max,
            } => Self::VdmLinear {
                gamma_min: range.0.unwrap_or(gamma_min),
                gamma_max: range.1.unwrap_or(gamma_max),
            },
            other => other,
        }
    }

    /// β_1..β_T for this schedule.
    pub fn betas(&self, timesteps: usize) -> Result<Vec<f64>, ScheduleError> {
        check_timesteps(timesteps)?;
        let t = timesteps;
        let betas = match self {
            Self::Linear {
                beta_start,
                beta_end,
            } => linspace(*beta_start, *beta_end, t),
            Self::Quadratic {
                beta_start,
                beta_end,
            } => linspace(beta_start.sqrt(), beta_end.sqrt(), t)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            Self::Sigmoid {
                beta_start,
                beta_end,
            } => linspace(-6.0, 6.0, t)
                .into_iter()
                .map(|x| beta_start + (beta_end - beta_start) / (1.0 + (-x).exp()))
                .collect(),
            Self::Cosine { s, max_beta } => {
                let alpha_bar = |u: f64| {
                    ((u + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..t)
                    .map(|i| {
                        let t1 = i as f64 / t as f64;
                        let t2 = (i + 1) as f64 / t as f64;
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(*max_beta)
                    })
                    .collect()
            }
            Self::Constant { beta } => vec![*beta; t],
            Self::VdmLinear {
                gamma_min,
                gamma_max,
            } => {
                // γ is the log noise-to-signal ratio: finite, increasing from γ(0) to γ(1).
                // Beyond ±30, ᾱ = sigmoid(−γ) rounds to 0 or 1 and the chain's β to 1 or 0.
                for (flag, g) in [("--gamma-min", gamma_min), ("--gamma-max", gamma_max)] {
                    if !(-30.0..=30.0).contains(g) {
                        return Err(ScheduleError::new(
                            flag,
                            format!(
                                "γ = {g} is outside [−30, 30] (ᾱ = sigmoid(−γ) would round to 0 or 1)"
                            ),
                        ));
                    }
                }
                if gamma_min >= gamma_max {
                    return Err(ScheduleError::new(
                        "--gamma-min",
                        format!(
                            "γ(0) = {gamma_min} must be below γ(1) = --gamma-max {gamma_max} \
                             (the noise grows with t)"
                        ),
                    ));
                }
                // γ linear in t (VDM's fixed baseline) and ᾱ = sigmoid(−γ).
                let gamma = |s: f64| gamma_min + (gamma_max - gamma_min) * s;
                betas_from_alphas_cumprod((1..=t).map(|i| sigmoid(-gamma(i as f64 / t as f64))))
            }
            Self::Custom(list) => {
                if list.len() != t {
                    return Err(ScheduleError::new(
                        "--timesteps",
                        format!("the β list has {} entries but T = {t}", list.len()),
                    ));
                }
                list.clone()
            }
        };
        for (i, &b) in betas.iter().enumerate() {
            if !(b > 0.0 && b < 1.0) {
                return Err(ScheduleError::new(
                    "--schedule",
                    format!("β_{} = {b} is outside (0, 1)", i + 1),
                ));
            }
        }
        Ok(betas)
    }
}

/// The β's of a chain with the given ᾱ's: β_i = 1 − ᾱ_i/ᾱ_{i−1}, with ᾱ_{−1} = 1.
pub fn betas_from_alphas_cumprod(alphas_cumprod: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut prev = 1.0;
    alphas_cumprod
        .into_iter()
        .map(|a| {
            let b = 1.0 - a / prev;
            prev = a;
            b
        })
        .collect()
}

/// Reads a β list from a text file: numbers separated by whitespace, commas or newlines, or a
/// JSON array; `#` starts a comment. Each β must lie in (0, 1).
pub fn read_betas_file(path: &Path) -> Result<Vec<f64>, ScheduleError> {
    let text = crate::files::read_text_capped(path, crate::files::TEXT_MAX).map_err(|e| {
        ScheduleError::new(
            "--schedule",
            format!("cannot read β file {}: {e}", path.display()),
        )
    })?;
    let mut betas = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for tok in line
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .filter(|s| !s.is_empty())
        {
            let b: f64 = tok.parse().map_err(|_| {
                ScheduleError::new(
                    "--schedule",
                    format!(
                        "{} line {}: `{tok}` is not a number",
                        path.display(),
                        lineno + 1
                    ),
                )
            })?;
            if !(b > 0.0 && b < 1.0) {
                return Err(ScheduleError::new(
                    "--schedule",
                    format!(
                        "{} line {}: β = {b} is outside (0, 1)",
                        path.display(),
                        lineno + 1
                    ),
                ));
            }
            betas.push(b);
        }
    }
    if betas.is_empty() {
        return Err(ScheduleError::new(
            "--schedule",
            format!("{} holds no β values", path.display()),
        ));
    }
    Ok(betas)
}

/// The most diffusion steps a chain may have: 100× the usual 1000, and every table of a chain
/// (f64 per step, a dozen of them) stays below a few hundred MB.
pub const MAX_TIMESTEPS: usize = 100_000;

fn check_timesteps(t: usize) -> Result<(), ScheduleError> {
    if t == 0 {
        return Err(ScheduleError::new(
            "--timesteps",
            "T must be at least 1, got 0",
        ));
    }
    if t > MAX_TIMESTEPS {
        return Err(ScheduleError::new(
            "--timesteps",
            format!("T must be at most {MAX_TIMESTEPS}, got {t}"),
        ));
    }
    Ok(())
}

fn check_beta(flag: &str, b: f64) -> Result<(), ScheduleError> {
    if !(b > 0.0 && b < 1.0) {
        return Err(ScheduleError::new(
            flag,
            format!("β = {b} is outside (0, 1)"),
        ));
    }
    Ok(())
}

/// The logistic function 1/(1 + e^(−x)), without overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `numpy.linspace(start, stop, n)` evaluated the way numpy does (start + i·step, last = stop).
pub fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// Rescales β so that the terminal SNR is exactly zero (Lin et al. 2024, "Common Diffusion
/// Noise Schedules and Sample Steps are Flawed", Algorithm 1): √ᾱ is shifted so that
/// √ᾱ_T = 0 and scaled so that √ᾱ_1 is unchanged; then β_t = 1 − ᾱ_t/ᾱ_{t−1}. The result has
/// β_T = 1, which only v- or x0-prediction can use (ε-prediction cannot recover x0 at t = T).
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut ab = 1.0;
    let mut sqrt_ab: Vec<f64> = betas
        .iter()
        .map(|b| {
            ab *= 1.0 - b;
            ab.sqrt()
        })
        .collect();
    let s0 = sqrt_ab[0];
    let st = *sqrt_ab.last().unwrap();
    if s0 == st {
        // T = 1 (or a degenerate list): nothing to interpolate; ᾱ_T = 0 means β_T = 1.
        return vec![1.0; betas.len()];
    }
    for v in &mut sqrt_ab {
        *v = (*v - st) * s0 / (s0 - st);
    }
    let mut prev = 1.0;
    sqrt_ab
        .iter()
        .map(|s| {
            let a = s * s;
            let beta = 1.0 - a / prev;
            prev = a;
            beta
        })
        .collect()
}

/// All the per-step f64 tables of a Gaussian diffusion (Ho et al. 2020 §2; Nichol & Dhariwal
/// 2021 §2), computed once from β. Entry `i` is lecture step t = i + 1.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// β_t, the forward variance of q(x_t|x_{t−1}) (Ho et al. eq. 2).
    pub betas: Vec<f64>,
    /// α_t = 1 − β_t.
    pub alphas: Vec<f64>,
    /// ᾱ_t = ∏_{s≤t} α_s (Ho et al. eq. 4).
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ_{t−1}, with ᾱ_0 = 1.
    pub alphas_cumprod_prev: Vec<f64>,
    /// ᾱ_{t+1}, with ᾱ_{T+1} = 0.
    pub alphas_cumprod_next: Vec<f64>,
    /// √ᾱ_t, the mean scale of q(x_t|x_0) (Ho et al. eq. 4).
    pub sqrt_alphas_cumprod: Vec<f64>,
    /// √(1 − ᾱ_t), the standard deviation of q(x_t|x_0).
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// log(1 − ᾱ_t), the log-variance of q(x_t|x_0).
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    /// √(1/ᾱ_t), used in x0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε (inverse of Ho et al. eq. 4).
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// √(1/ᾱ_t − 1).
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t, the posterior variance (Ho et al. eq. 7).
    pub posterior_variance: Vec<f64>,
    /// log β̃_t with β̃_1 (= 0) replaced by β̃_2 so the log is finite (Improved DDPM's code).
    /// For T = 1 the only entry is log β_1.
    pub posterior_log_variance_clipped: Vec<f64>,
    /// √ᾱ_{t−1}·β_t/(1 − ᾱ_t), the x_0 coefficient of μ̃_t (Ho et al. eq. 7).
    pub posterior_mean_coef1: Vec<f64>,
    /// √α_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t), the x_t coefficient of μ̃_t (Ho et al. eq. 7).
    pub posterior_mean_coef2: Vec<f64>,
    /// SNR(t) = ᾱ_t/(1 − ᾱ_t) (Kingma et al. 2021, eq. 3).
    pub snr: Vec<f64>,
    /// For each step of this chain, the step of the original chain it stands for (the identity
    /// unless respaced). Networks are always called with these original steps.
    pub timestep_map: Vec<usize>,
    /// The network's time input for step `i` of the original chain is
    /// `(i + time_offset)·time_scale`: the step itself for a DDPM chain (1, 0); for a chain
    /// discretizing a continuous-time (VDM) model over N steps, 1000·t with t = (i + 1)/N.
    pub time_scale: f64,
    /// See [`Self::time_scale`].
    pub time_offset: f64,
}

impl NoiseSchedule {
    /// Builds every table from β_1..β_T. Each β must lie in (0, 1]; β = 1 is allowed only at
    /// the last step (zero terminal SNR).
    pub fn from_betas(betas: Vec<f64>) -> Result<Self, ScheduleError> {
        let n = betas.len();
        check_timesteps(n)?;
        for (i, &b) in betas.iter().enumerate() {
            let ok = b > 0.0 && (b < 1.0 || (b == 1.0 && i == n - 1));
            if !ok {
                return Err(ScheduleError::new(
                    "--schedule",
                    format!("β_{} = {b} is outside (0, 1)", i + 1),
                ));
            }
        }
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alphas_cumprod.push(acc);
        }
        let mut alphas_cumprod_prev = vec![1.0];
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..n - 1]);
        let mut alphas_cumprod_next = alphas_cumprod[1..].to_vec();
        alphas_cumprod_next.push(0.0);

        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let ab = &alphas_cumprod;
        let abp = &alphas_cumprod_prev;
        let posterior_variance = map(&|i| betas[i] * (1.0 - abp[i]) / (1.0 - ab[i]));
        let posterior_log_variance_clipped = if n == 1 {
            vec![betas[0].ln()]
        } else {
            map(&|i| posterior_variance[if i == 0 { 1 } else { i }].ln())
        };
        Ok(Self {
            alphas_cumprod_next,
            sqrt_alphas_cumprod: map(&|i| ab[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - ab[i]).sqrt()),
            log_one_minus_alphas_cumprod: map(&|i| (1.0 - ab[i]).ln()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / ab[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / ab[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * abp[i].sqrt() / (1.0 - ab[i])),
            posterior_mean_coef2: map(&|i| (1.0 - abp[i]) * alphas[i].sqrt() / (1.0 - ab[i])),
            snr: map(&|i| ab[i] / (1.0 - ab[i])),
            posterior_variance,
            posterior_log_variance_clipped,
            timestep_map: (0..n).collect(),
            time_scale: 1.0,
            time_offset: 0.0,
            alphas_cumprod,
            alphas_cumprod_prev,
            alphas,
            betas,
        })
    }

    /// The schedule `kind` over T steps, optionally rescaled to zero terminal SNR.
    ///
    /// ```
    /// use ddpm::{BetaSchedule, NoiseSchedule};
    ///
    /// let cosine = BetaSchedule::named("cosine", 100, None, None)?;
    /// let rescaled = NoiseSchedule::new(&cosine, 100, true)?;
    /// // Lin et al. (2024): the last step is pure noise.
    /// assert_eq!(rescaled.alphas_cumprod[99], 0.0);
    /// # Ok::<(), ddpm::schedule::ScheduleError>(())
    /// ```
    pub fn new(
        kind: &BetaSchedule,
        timesteps: usize,
        zero_terminal_snr: bool,
    ) -> Result<Self, ScheduleError> {
        let mut betas = kind.betas(timesteps)?;
        if zero_terminal_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        Self::from_betas(betas)
    }

    /// Number of steps T of this chain.
    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// A shorter chain over the kept steps s_0 < s_1 < … (0-based indices into this chain),
    /// with β_i = 1 − ᾱ_{s_i}/ᾱ_{s_{i−1}} and ᾱ_{s_{−1}} = 1 (Nichol & Dhariwal 2021, §4), so
    /// that its ᾱ equals this chain's ᾱ at the kept steps. `timestep_map` composes.
    pub fn respace(&self, kept: &[usize]) -> Result<Self, ScheduleError> {
        if kept.is_empty() {
            return Err(ScheduleError::new("--respace", "no timesteps kept"));
        }
        let mut kept = kept.to_vec();
        kept.sort_unstable();
        kept.dedup();
        let n = self.num_timesteps();
        if let Some(&last) = kept.last()
            && last >= n
        {
            return Err(ScheduleError::new(
                "--respace",
                format!("timestep {last} is outside the chain of {n} steps"),
            ));
        }
        let betas = betas_from_alphas_cumprod(kept.iter().map(|&s| self.alphas_cumprod[s]));
        let mut out = Self::from_betas(betas)?;
        out.timestep_map = kept.iter().map(|&s| self.timestep_map[s]).collect();
        out.time_scale = self.time_scale;
        out.time_offset = self.time_offset;
        Ok(out)
    }

    /// The network's time input for step `step` of the original chain (a `timestep_map` value).
    pub fn network_time(&self, step: usize) -> f64 {
        (step as f64 + self.time_offset) * self.time_scale
    }
}

/// The steps to keep when respacing a chain of `num_timesteps` steps (0-based, sorted).
///
/// `spec` is either `ddimN` — a constant stride chosen so that exactly N steps
/// `0, k, 2k, …` are kept (as DDIM does) — or comma-separated section counts such as `"250"` or
/// `"10,10,20"`: the chain is cut into that many equal sections (the first ones one step longer
/// when T does not divide) and each section keeps its count of steps evenly spread across it,
/// rounded half-to-even as Improved DDPM's `space_timesteps` does.
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>, ScheduleError> {
    let bad = |m: String| ScheduleError::new("--respace", m);
    let spec = spec.trim();
    if let Some(rest) = spec.strip_prefix("ddim") {
        let want: usize = rest.parse().map_err(|_| {
            bad(format!(
                "`{spec}`: expected ddimN with N a positive integer"
            ))
        })?;
        if want == 0 {
            return Err(bad(format!("`{spec}`: N must be at least 1")));
        }
        for stride in 1..=num_timesteps {
            if num_timesteps.div_ceil(stride) == want {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        return Err(bad(format!(
            "`{spec}`: no integer stride gives exactly {want} steps out of {num_timesteps}"
        )));
    }
    let counts: Vec<usize> = spec
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            bad(format!(
                "`{spec}`: expected section counts such as 250 or 10,10,20, or ddimN"
            ))
        })?;
    if counts.is_empty() || counts.iter().all(|&c| c == 0) {
        return Err(bad(format!("`{spec}`: keeps no steps")));
    }
    let sections = counts.len();
    if sections > num_timesteps {
        return Err(bad(format!(
            "`{spec}`: {sections} sections cannot be cut from {num_timesteps} steps"
        )));
    }
    let size_per = num_timesteps / sections;
    let extra = num_timesteps % sections;
    let mut start = 0;
    let mut kept = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            return Err(bad(format!(
                "`{spec}`: section {} has {size} steps, cannot keep {count}",
                i + 1
            )));
        }
        let frac_stride = if count <= 1 {
            1.0
        } else {
            (size - 1) as f64 / (count - 1) as f64
        };
        let mut cur = 0.0f64;
        for _ in 0..count {
            kept.push(start + cur.round_ties_even() as usize);
            cur += frac_stride;
        }
        start += size;
    }
    kept.sort_unstable();
    kept.dedup();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
    }

    #[test]
    fn linear_scales_with_t_like_improved_ddpm() {
        let s = BetaSchedule::named("linear", 4000, None, None).unwrap();
        let b = s.betas(4000).unwrap();
        assert!(close(b[0], 0.25e-4, 1e-15));
        assert!(close(b[3999], 0.005, 1e-15));
    }

    #[test]
    fn rejects_bad_requests_naming_the_flag() {
        assert_eq!(
            BetaSchedule::named("linear", 0, None, None)
                .unwrap_err()
                .flag,
            "--timesteps"
        );
        assert_eq!(
            BetaSchedule::named("linear", 10, Some(0.5), Some(0.1))
                .unwrap_err()
                .flag,
            "--beta-start"
        );
        assert_eq!(
            BetaSchedule::named("linear", 10, None, Some(1.5))
                .unwrap_err()
                .flag,
            "--beta-end"
        );
        assert_eq!(
            BetaSchedule::named("warp", 10, None, None)
                .unwrap_err()
                .flag,
            "--schedule"
        );
        for spec in ["", "ddim", "ddimx", "ddim0", "1,,2", "abc", "0", "ddim999"] {
            let e = space_timesteps(1000, spec).unwrap_err();
            assert_eq!(e.flag, "--respace", "{spec}");
        }
        assert!(space_timesteps(10, "11").is_err());
    }

    #[test]
    fn cosine_caps_beta() {
        let b = BetaSchedule::named("cosine", 1000, None, None)
            .unwrap()
            .betas(1000)
            .unwrap();
        assert_eq!(b[999], COSINE_MAX_BETA);
        assert!(b.iter().all(|&x| x > 0.0 && x <= COSINE_MAX_BETA));
    }

    #[test]
    fn respaced_alphas_cumprod_match_at_kept_steps() {
        for name in ["linear", "cosine", "quadratic", "sigmoid"] {
            let s = NoiseSchedule::new(
                &BetaSchedule::named(name, 1000, None, None).unwrap(),
                1000,
                false,
            )
            .unwrap();
            for spec in ["250", "10,10,20", "ddim50", "1", "1000"] {
                let kept = space_timesteps(1000, spec).unwrap();
                let r = s.respace(&kept).unwrap();
                assert_eq!(r.timestep_map, kept);
                // α_i = 1 − β_i is recovered from β_i = 1 − ᾱ_{s_i}/ᾱ_{s_{i−1}} with an absolute
                // rounding error ≈ ε, i.e. a relative one ≈ ε/α_i; they add up along the chain.
                let mut bound = 0.0;
                for (i, &k) in kept.iter().enumerate() {
                    bound += 4.0 * f64::EPSILON / r.alphas[i];
                    assert!(
                        close(r.alphas_cumprod[i], s.alphas_cumprod[k], bound + 1e-14),
                        "{name} {spec} {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn section_counts_follow_improved_ddpm() {
        // Hand-computed: T = 10, "3": stride 4.5 → 0, round(4.5)=4 (half-to-even), 9.
        assert_eq!(space_timesteps(10, "3").unwrap(), vec![0, 4, 9]);
        // Two sections of 5 steps; 2 and 1 kept.
        assert_eq!(space_timesteps(10, "2,1").unwrap(), vec![0, 4, 5]);
        // ddim5 over 10: stride 2.
        assert_eq!(space_timesteps(10, "ddim5").unwrap(), vec![0, 2, 4, 6, 8]);
        assert_eq!(space_timesteps(1000, "250").unwrap().len(), 250);
        assert_eq!(space_timesteps(1000, "10,10,20").unwrap().len(), 40);
    }

    #[test]
    fn zero_terminal_snr_gives_zero_final_alpha_bar() {
        let b = BetaSchedule::named("linear", 1000, None, None)
            .unwrap()
            .betas(1000)
            .unwrap();
        let r = rescale_zero_terminal_snr(&b);
        let s = NoiseSchedule::from_betas(r).unwrap();
        assert!(s.alphas_cumprod[999].abs() < 1e-15);
        assert_eq!(s.snr[999], 0.0);
        let orig = NoiseSchedule::from_betas(b).unwrap();
        assert!(close(s.alphas_cumprod[0], orig.alphas_cumprod[0], 1e-12));
    }

    #[test]
    fn custom_list_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("betas.txt");
        std::fs::write(&p, "# my betas\n0.1, 0.2\n0.3\n").unwrap();
        assert_eq!(read_betas_file(&p).unwrap(), vec![0.1, 0.2, 0.3]);
        std::fs::write(&p, "[0.1, 1.2]").unwrap();
        let e = read_betas_file(&p).unwrap_err();
        assert!(e.message.contains("outside (0, 1)"), "{e}");
        std::fs::write(&p, "0.1 x").unwrap();
        assert!(read_betas_file(&p).unwrap_err().message.contains("`x`"));
        let missing = dir.path().join("none.txt");
        assert!(
            read_betas_file(&missing)
                .unwrap_err()
                .message
                .contains("none.txt")
        );
    }

    #[test]
    fn posterior_log_variance_is_clipped_at_first_step() {
        let s = NoiseSchedule::new(
            &BetaSchedule::named("linear", 100, None, None).unwrap(),
            100,
            false,
        )
        .unwrap();
        assert_eq!(s.posterior_variance[0], 0.0);
        assert_eq!(
            s.posterior_log_variance_clipped[0],
            s.posterior_variance[1].ln()
        );
        assert_eq!(
            s.posterior_log_variance_clipped[5],
            s.posterior_variance[5].ln()
        );
    }

    #[test]
    fn the_vdm_schedule_is_linear_in_log_snr() {
        // ᾱ_i = sigmoid(−γ(i/T)): log SNR_i = −γ_min − (γ_max − γ_min)·i/T, computed here from
        // the β's the schedule yields.
        let t = 500;
        let s = NoiseSchedule::new(
            &BetaSchedule::named("vdm-linear", t, None, None).unwrap(),
            t,
            false,
        )
        .unwrap();
        for i in [0usize, 1, 250, 499] {
            let want =
                -(VDM_GAMMA_MIN + (VDM_GAMMA_MAX - VDM_GAMMA_MIN) * (i + 1) as f64 / t as f64);
            assert!(
                (s.snr[i].ln() - want).abs() < 1e-9,
                "step {i}: {} vs {want}",
                s.snr[i].ln()
            );
        }
        assert!(BetaSchedule::named("vdm-linear", t, Some(1e-4), None).is_err());
    }
}
