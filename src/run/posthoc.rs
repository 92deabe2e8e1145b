//! Post-hoc EMA of a run (Karras et al. 2024, §3): its snapshots of power-function averages
//! combined, after training, into the average of any width σ_rel at a checkpoint's step, written
//! as a new run directory whose EMA weights are that average.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::checkpoints::{CHECKPOINT_FILES, resolve, write_checkpoint};
use super::load::run_config;
use super::state::TrainState;
use crate::error::{ErrorKind, Refused};
use crate::optim::power_ema::{file_name, gamma_of, posthoc_coefficients, profile_dot};
use crate::store::tensors::{HostTensor, checksum, read_safetensors, to_safetensors};

/// One snapshot file: its step, its profile's exponent and where it is.
#[derive(Debug, Clone)]
struct Snapshot {
    step: u64,
    gamma: f64,
    file: PathBuf,
}

/// What a reconstruction did.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// The run directory written.
    pub out: PathBuf,
    /// The width reconstructed.
    pub sigma_rel: f64,
    /// The step of the average (the checkpoint's).
    pub step: u64,
    /// How many snapshots were combined.
    pub snapshots: usize,
    /// ‖Σ x_i·p_i − p‖/‖p‖: how far the combination's profile is from the one asked for.
    pub profile_error: f64,
}

/// The snapshots of the run `run` at steps up to `step`, for every tracked width.
fn snapshots(run: &Path, sigma_rels: &[f64], step: u64) -> Result<Vec<Snapshot>> {
    let root = run.join("posthoc");
    let entries = std::fs::read_dir(&root)
        .with_context(|| format!("{}: the run kept no post-hoc EMA snapshots", root.display()))?;
    let mut steps: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("step-")?.parse().ok()
        })
        .filter(|&s| s >= 1 && s <= step)
        .collect();
    steps.sort_unstable();
    let gammas: Vec<f64> = sigma_rels
        .iter()
        .map(|&s| gamma_of(s))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for s in steps {
        for (&sigma, &gamma) in sigma_rels.iter().zip(&gammas) {
            let file = super::posthoc_dir(run, s).join(file_name(sigma));
            if !file.is_file() {
                bail!(
                    "{}: missing (each snapshot directory holds every tracked width)",
                    file.display()
                );
            }
            out.push(Snapshot {
                step: s,
                gamma,
                file,
            });
        }
    }
    Ok(out)
}

/// The average of width `sigma_rel` at the step of the checkpoint `path` (a run: its newest),
/// from the run's snapshots up to that step, written to the new run directory `out` (a copy of
/// the checkpoint whose `ema.safetensors` is the reconstruction; `out` must not exist).
pub fn reconstruct(path: &Path, sigma_rel: f64, out: &Path) -> crate::Result<Reconstruction> {
    Ok(reconstruct_inner(path, sigma_rel, out)?)
}

fn reconstruct_inner(path: &Path, sigma_rel: f64, out: &Path) -> Result<Reconstruction> {
    if out.exists() {
        return Err(Refused::error(
            ErrorKind::Config,
            format!(
                "{}: exists; a reconstruction never overwrites",
                out.display()
            ),
        ));
    }
    let ckpt = resolve(path)?;
    let cfg = run_config(&ckpt)?;
    let run = ckpt
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let Some(p) = &cfg.posthoc_ema else {
        return Err(Refused::error(
            ErrorKind::Config,
            format!(
                "{}: the run tracked no post-hoc EMA; train it with --posthoc-ema 0.05,0.10",
                run.display()
            ),
        ));
    };
    let target_gamma = gamma_of(sigma_rel)
        .map_err(|e| Refused::error(ErrorKind::Config, format!("--sigma-rel: {e:#}")))?;
    let state_path = ckpt.join("state.json");
    let text = crate::files::read_text_capped(&state_path, crate::files::TEXT_MAX)?;
    let mut state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid training state", state_path.display()))?;
    let snaps = snapshots(&run, &p.sigma_rels, state.step)?;
    if snaps.is_empty() {
        bail!(
            "{}: no snapshot at or before step {}",
            run.join("posthoc").display(),
            state.step
        );
    }
    let profiles: Vec<(f64, f64)> = snaps.iter().map(|s| (s.step as f64, s.gamma)).collect();
    let target = (state.step as f64, target_gamma);
    let x = posthoc_coefficients(&profiles, target)?;
    let profile_error = relative_error(&profiles, &x, target);

    // Σ x_i·θ̂_i in f64, one snapshot in memory at a time.
    let mut sum: BTreeMap<String, (Vec<usize>, Vec<f64>)> = BTreeMap::new();
    for (s, &xi) in snaps.iter().zip(&x) {
        for (name, t) in read_safetensors(&s.file)? {
            let (shape, acc) = sum
                .entry(name.clone())
                .or_insert_with(|| (t.shape.clone(), vec![0.0; t.data.len()]));
            if *shape != t.shape {
                bail!(
                    "{}: {name} has shape {:?}, other snapshots {shape:?}",
                    s.file.display(),
                    t.shape
                );
            }
            for (a, v) in acc.iter_mut().zip(&t.data) {
                *a += xi * f64::from(*v);
            }
        }
    }
    let average: BTreeMap<String, HostTensor> = sum
        .into_iter()
        .map(|(k, (shape, v))| {
            let data = v.into_iter().map(|v| v as f32).collect();
            (k, HostTensor { shape, data })
        })
        .collect();
    if let Some((name, _)) = average
        .iter()
        .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
    {
        bail!("the reconstruction of {name} is not finite; the snapshots may be damaged");
    }
    let ema = to_safetensors(&average)?;

    // The checkpoint's other files as they are, its EMA replaced, the checksums updated.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&ckpt)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name == "state.json" || name == "ema.safetensors" || !entry.path().is_file() {
            continue;
        }
        files.push((name, std::fs::read(entry.path())?));
    }
    files.push(("ema.safetensors".into(), ema));
    state.checksums = files
        .iter()
        .map(|(n, b)| (n.clone(), checksum(b)))
        .collect();
    files.push(("state.json".into(), serde_json::to_vec_pretty(&state)?));
    debug_assert!(
        CHECKPOINT_FILES
            .iter()
            .all(|f| files.iter().any(|(n, _)| n == f))
    );
    let mut new_cfg = cfg.clone();
    new_cfg.out = out.display().to_string();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::files::write_atomic(&super::config_path(out), new_cfg.to_toml()?.as_bytes())?;
    write_checkpoint(out, state.step, &files, 1)?;
    Ok(Reconstruction {
        out: out.to_path_buf(),
        sigma_rel,
        step: state.step,
        snapshots: snaps.len(),
        profile_error,
    })
}

/// ‖Σ x_i·p_i − p‖/‖p‖ from the profiles' inner products.
fn relative_error(profiles: &[(f64, f64)], x: &[f64], target: (f64, f64)) -> f64 {
    let dot = |a: (f64, f64), b: (f64, f64)| profile_dot(a.0, a.1, b.0, b.1);
    let mut xax = 0.0;
    for (i, &pi) in profiles.iter().enumerate() {
        for (j, &pj) in profiles.iter().enumerate() {
            xax += x[i] * x[j] * dot(pi, pj);
        }
    }
    let xb: f64 = profiles
        .iter()
        .zip(x)
        .map(|(&p, xi)| xi * dot(p, target))
        .sum();
    let tt = dot(target, target);
    ((xax - 2.0 * xb + tt).max(0.0) / tt).sqrt()
}
