//! `ddpm schedule`: print a noise schedule's tables.

use std::io::Write;
use std::path::Path;

use clap::{Args, ValueEnum};

use super::{CliError, CliResult};
use crate::schedule::{BetaSchedule, NoiseSchedule, read_betas_file, space_timesteps};

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// The flags that choose a noise schedule, shared by `ddpm schedule` and `ddpm train`.
#[derive(Args, Debug, Clone, Default)]
pub struct ScheduleFlags {
    /// Noise schedule: linear, quadratic, sigmoid, cosine, constant, vdm-linear (VDM's linear-in-γ), learned (VDM time only),
    /// or file:PATH (a list of β values) [default: linear].
    #[arg(long)]
    pub schedule: Option<String>,
    /// Number of diffusion steps T (from the file for file:PATH) [default: 1000].
    #[arg(long, value_parser = super::at_least_one)]
    pub timesteps: Option<usize>,
    /// β_1 (linear, quadratic, sigmoid); default 1e-4·1000/T.
    #[arg(long)]
    pub beta_start: Option<f64>,
    /// β_T (linear, quadratic, sigmoid) or the constant β; default 0.02·1000/T.
    #[arg(long)]
    pub beta_end: Option<f64>,
    /// Rescale to zero terminal SNR (Lin et al. 2024).
    #[arg(long)]
    pub zero_terminal_snr: bool,
    /// γ(0) = −log SNR at t = 0 of vdm-linear, of cosine in VDM time, of a learned schedule's
    /// start [default: -13.3].
    #[arg(long, allow_hyphen_values = true)]
    pub gamma_min: Option<f64>,
    /// γ(1) of the same schedules [default: 5].
    #[arg(long, allow_hyphen_values = true)]
    pub gamma_max: Option<f64>,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm schedule --schedule cosine --timesteps 1000 --format json\n  ddpm schedule --schedule linear --respace ddim50\n  ddpm schedule --schedule file:betas.txt --format csv"
)]
pub struct ScheduleArgs {
    #[command(flatten)]
    schedule: ScheduleFlags,
    /// Respace to a shorter chain: section counts ("250", "10,10,20") or "ddimN".
    #[arg(long)]
    respace: Option<String>,
    /// Print the schedule of a trained run (or checkpoint) instead: a learned VDM schedule
    /// (its EMA) discretized over --timesteps steps (default: the run's sampling chain).
    #[arg(long, conflicts_with_all = ["schedule", "beta_start", "beta_end", "zero_terminal_snr", "gamma_min", "gamma_max"])]
    checkpoint: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// Builds the schedule a set of schedule flags asks for (shared with train/sample).
pub fn build_schedule(
    name: &str,
    timesteps: Option<usize>,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    gamma_range: (Option<f64>, Option<f64>),
    zero_terminal_snr: bool,
) -> Result<NoiseSchedule, CliError> {
    let (kind, t) = if let Some(path) = name.strip_prefix("file:") {
        let betas = read_betas_file(Path::new(path))?;
        if let Some(t) = timesteps
            && t != betas.len()
        {
            return Err(CliError::Usage(format!(
                "--timesteps: {t} given but {path} holds {} β values",
                betas.len()
            )));
        }
        let n = betas.len();
        (BetaSchedule::Custom(betas), n)
    } else {
        let t = timesteps.unwrap_or(1000);
        if name == "learned" {
            return Err(CliError::Usage(
                "--schedule learned: a learned schedule belongs to a run; print it with \
                 --checkpoint RUN"
                    .into(),
            ));
        }
        (
            BetaSchedule::named(name, t, beta_start, beta_end)?.with_gamma_range(gamma_range),
            t,
        )
    };
    Ok(NoiseSchedule::new(&kind, t, zero_terminal_snr)?)
}

/// The tables in output order: (name, values).
fn columns(s: &NoiseSchedule) -> Vec<(&'static str, &[f64])> {
    vec![
        ("betas", &s.betas),
        ("alphas", &s.alphas),
        ("alphas_cumprod", &s.alphas_cumprod),
        ("alphas_cumprod_prev", &s.alphas_cumprod_prev),
        ("alphas_cumprod_next", &s.alphas_cumprod_next),
        ("sqrt_alphas_cumprod", &s.sqrt_alphas_cumprod),
        (
            "sqrt_one_minus_alphas_cumprod",
            &s.sqrt_one_minus_alphas_cumprod,
        ),
        (
            "log_one_minus_alphas_cumprod",
            &s.log_one_minus_alphas_cumprod,
        ),
        ("sqrt_recip_alphas_cumprod", &s.sqrt_recip_alphas_cumprod),
        (
            "sqrt_recipm1_alphas_cumprod",
            &s.sqrt_recipm1_alphas_cumprod,
        ),
        ("posterior_variance", &s.posterior_variance),
        (
            "posterior_log_variance_clipped",
            &s.posterior_log_variance_clipped,
        ),
        ("posterior_mean_coef1", &s.posterior_mean_coef1),
        ("posterior_mean_coef2", &s.posterior_mean_coef2),
        ("snr", &s.snr),
    ]
}

/// A number as JSON: shortest round-trip decimal, with ±Infinity as strings (JSON has none).
fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(v.to_string()))
}

pub fn run(args: ScheduleArgs) -> CliResult {
    let f = &args.schedule;
    let mut s = match &args.checkpoint {
        Some(run) => {
            let (s, ends) = crate::run::load::run_schedule(run, f.timesteps)
                .map_err(|e| CliError::Usage(format!("--checkpoint: {e:#}")))?;
            if let Some((g0, g1)) = ends {
                eprintln!(
                    "{}: γ(0) = {g0:.4}, γ(1) = {g1:.4} (log SNR {:.4} … {:.4}); step i is t = (i + 1)/{}",
                    run.display(),
                    -g0,
                    -g1,
                    s.num_timesteps()
                );
            }
            s
        }
        None => build_schedule(
            f.schedule.as_deref().unwrap_or("linear"),
            f.timesteps,
            f.beta_start,
            f.beta_end,
            (f.gamma_min, f.gamma_max),
            f.zero_terminal_snr,
        )?,
    };
    if let Some(spec) = &args.respace {
        let kept = space_timesteps(s.num_timesteps(), spec)?;
        s = s.respace(&kept)?;
    }
    let cols = columns(&s);
    let mut out = std::io::stdout().lock();
    let res = match args.format {
        Format::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert("timesteps".into(), serde_json::json!(s.timestep_map));
            for (name, vals) in &cols {
                obj.insert(
                    name.to_string(),
                    serde_json::Value::Array(vals.iter().map(|&v| json_number(v)).collect()),
                );
            }
            writeln!(out, "{}", serde_json::Value::Object(obj))
        }
        Format::Csv => {
            let header: Vec<&str> = cols.iter().map(|c| c.0).collect();
            let mut text = format!("timestep,{}\n", header.join(","));
            for i in 0..s.num_timesteps() {
                text.push_str(&s.timestep_map[i].to_string());
                for (_, vals) in &cols {
                    text.push(',');
                    text.push_str(&vals[i].to_string());
                }
                text.push('\n');
            }
            out.write_all(text.as_bytes())
        }
        Format::Table => {
            let shown = [
                "betas",
                "alphas_cumprod",
                "posterior_variance",
                "posterior_mean_coef1",
                "posterior_mean_coef2",
                "snr",
            ];
            let mut text = format!("{:>8}", "timestep");
            for name in shown {
                text.push_str(&format!(" {name:>22}"));
            }
            text.push('\n');
            for i in 0..s.num_timesteps() {
                text.push_str(&format!("{:>8}", s.timestep_map[i]));
                for name in shown {
                    let vals = cols.iter().find(|c| c.0 == name).unwrap().1;
                    text.push_str(&format!(" {:>22.15e}", vals[i]));
                }
                text.push('\n');
            }
            out.write_all(text.as_bytes())
        }
    };
    res.map_err(|e| CliError::Failure(e.into()))
}
