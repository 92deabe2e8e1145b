//! A diffusers scheduler configuration (`scheduler_config.json` of a DDPMScheduler,
//! DDIMScheduler or another scheduler with the same noise-schedule keys) read onto a run
//! configuration: the noise schedule, what the network predicts, the reverse variance, and how
//! diffusers samples (step spacing and offset, x̂0 clipping). Absent keys take diffusers'
//! defaults.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::unet_config::Keys;
use crate::config::RunConfig;
use crate::diffusion::{Parameterization, VarianceType};
use crate::sample::SamplerDefaults;

/// Applies the scheduler configuration in `path` to `config`.
pub fn apply(path: &Path, config: &mut RunConfig) -> Result<()> {
    let text = crate::files::read_text_capped(path, crate::files::TEXT_MAX)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let source = path.display().to_string();
    apply_value(&value, &source, config)?;
    // The chain these values make, checked here so that a bad value is reported as the key of
    // this file that holds it, not as the command-line flag a run would have used.
    if let Err(e) = crate::config::diffusion::diffusion_from(config) {
        if let Some(s) = e.downcast_ref::<crate::schedule::ScheduleError>() {
            let key = match s.flag.as_str() {
                "--beta-start" => "beta_start",
                "--beta-end" => "beta_end",
                "--timesteps" => "num_train_timesteps",
                "--schedule" => "beta_schedule / trained_betas",
                other => other,
            };
            bail!("{source}: {key}: {}", s.message);
        }
        return Err(e.context(format!("{source}: the noise schedule it describes")));
    }
    Ok(())
}

/// diffusers' DDPMScheduler defaults (for a model saved without a scheduler).
pub fn apply_defaults(config: &mut RunConfig) {
    apply_value(&serde_json::json!({}), "the default DDPMScheduler", config)
        .expect("the defaults are representable");
}

fn apply_value(value: &serde_json::Value, source: &str, c: &mut RunConfig) -> Result<()> {
    let k = Keys::new(value, source)?;
    let class = k.str_or("_class_name", "DDPMScheduler")?;
    if !class.ends_with("Scheduler") {
        anyhow::bail!("{source}: `_class_name` is {class}, not a diffusers scheduler");
    }
    c.timesteps = k.usize_or("num_train_timesteps", 1000)?;
    if c.timesteps == 0 {
        return Err(k.refuse("num_train_timesteps", "at least 1 step"));
    }
    let start = k.f64_or("beta_start", 0.0001)?;
    let end = k.f64_or("beta_end", 0.02)?;
    c.trained_betas = None;
    match k.raw("trained_betas") {
        Some(v) if !v.is_null() => {
            let list: Option<Vec<f64>> = v
                .as_array()
                .and_then(|a| a.iter().map(serde_json::Value::as_f64).collect());
            let list =
                list.ok_or_else(|| k.refuse("trained_betas", "expected a list of numbers"))?;
            if list.len() != c.timesteps {
                return Err(k.refuse(
                    "trained_betas",
                    &format!(
                        "{} values for num_train_timesteps = {}",
                        list.len(),
                        c.timesteps
                    ),
                ));
            }
            c.schedule = "custom".into();
            c.trained_betas = Some(list);
        }
        _ => {
            c.schedule = match k.str_or("beta_schedule", "linear")? {
                "linear" => "linear",
                "scaled_linear" => "quadratic",
                "squaredcos_cap_v2" => "cosine",
                "sigmoid" => "sigmoid",
                _ => {
                    return Err(k.refuse(
                        "beta_schedule",
                        "expected linear, scaled_linear, squaredcos_cap_v2 or sigmoid",
                    ));
                }
            }
            .into();
        }
    }
    let ranged = matches!(c.schedule.as_str(), "linear" | "quadratic" | "sigmoid");
    c.beta_start = ranged.then_some(start);
    c.beta_end = ranged.then_some(end);
    c.zero_terminal_snr = k.bool_or("rescale_betas_zero_snr", false)?;
    c.parameterization = match k.str_or("prediction_type", "epsilon")? {
        "epsilon" => Parameterization::Eps,
        "sample" => Parameterization::X0,
        "v_prediction" => Parameterization::V,
        _ => {
            return Err(k.refuse(
                "prediction_type",
                "expected epsilon, sample or v_prediction",
            ));
        }
    };
    c.variance = match k.str_or("variance_type", "fixed_small")? {
        "fixed_small" | "fixed_small_log" => VarianceType::FixedSmall,
        "fixed_large" | "fixed_large_log" => VarianceType::FixedLarge,
        "learned_range" => VarianceType::LearnedRange,
        "learned" => {
            return Err(k.refuse(
                "variance_type",
                "diffusers' `learned` reads the variance channel as σ² itself, this crate's \
                 learned variance as log σ² (improved-diffusion); learned_range is supported",
            ));
        }
        _ => {
            return Err(k.refuse(
                "variance_type",
                "expected fixed_small, fixed_large, learned_range (or their _log forms)",
            ));
        }
    };
    let clip = if k.bool_or("thresholding", false)? {
        // s = clamp(quantile(|x̂0|, ratio), 1, sample_max_value): with the default maximum 1 that
        // is plain clipping to [−1, 1].
        if k.f64_or("sample_max_value", 1.0)? != 1.0 {
            return Err(k.refuse(
                "sample_max_value",
                "only 1 (thresholding is then clipping to [−1, 1]); ddpm's dynamic:P is uncapped",
            ));
        }
        "clip"
    } else if k.bool_or("clip_sample", true)? {
        if k.f64_or("clip_sample_range", 1.0)? != 1.0 {
            return Err(k.refuse("clip_sample_range", "only clipping to [−1, 1] is supported"));
        }
        "clip"
    } else {
        "none"
    };
    let spacing = match k.str_or("timestep_spacing", "leading")? {
        s @ ("leading" | "trailing" | "linspace") => s,
        _ => {
            return Err(k.refuse("timestep_spacing", "expected leading, trailing or linspace"));
        }
    };
    if !k.bool_or("set_alpha_to_one", true)? {
        return Err(k.refuse(
            "set_alpha_to_one",
            "DDIM's last step here goes to ᾱ = 1 (the data), as set_alpha_to_one = true",
        ));
    }
    c.sampler_defaults = Some(SamplerDefaults {
        spacing: spacing.into(),
        steps_offset: k.usize_or("steps_offset", 0)?,
        clip: clip.into(),
        diffusers_ddim: true,
    });
    Ok(())
}
