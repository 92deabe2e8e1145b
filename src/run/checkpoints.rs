//! Checkpoints: a directory per step holding `model.safetensors`, `ema.safetensors`,
//! `optimizer.safetensors` and `state.json`, written to a temporary directory and renamed into
//! place, with `latest` naming the newest complete one.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use burn::module::Module;

use crate::error::{ErrorKind, Refused};
use crate::files::{remove_dir_aside, write_atomic, write_dir_atomic};
use crate::optim::adamw::AdamW;
use crate::optim::ema::Ema;
use crate::run::state::TrainState;
use crate::store::params::{host_params, to_host_map};
use crate::store::tensors::{HostTensor, checksum, to_safetensors};

/// The files of a complete training checkpoint.
pub const CHECKPOINT_FILES: [&str; 4] = [
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
];

/// The directory of the checkpoint at `step` under `run/checkpoints`.
pub fn step_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Writes a checkpoint directory atomically: `files` (name → bytes) go into a temporary
/// directory that is renamed to `step-XXXXXXXX`; then `latest` is updated, and all but the
/// newest `keep` checkpoints are removed, each renamed aside before it is deleted so that no
/// partial checkpoint is ever visible under a `step-*` name.
pub fn write_checkpoint<N: AsRef<str>, B: AsRef<[u8]>>(
    run: &Path,
    step: u64,
    files: &[(N, B)],
    keep: usize,
) -> Result<PathBuf> {
    let root = run.join("checkpoints");
    let final_dir = step_dir(run, step);
    write_dir_atomic(&final_dir, files)?;
    write_atomic(&root.join("latest"), format!("step-{step:08}\n").as_bytes())?;
    // Prune complete checkpoints older than this one, so `keep` counts only what resume could
    // use; a newer or incomplete `step-*` (left by an older version) takes no slot.
    let mut steps: Vec<u64> = list_checkpoints(run)?
        .into_iter()
        .filter(|&s| s < step && is_complete(&step_dir(run, s)))
        .collect();
    steps.sort_unstable();
    if keep > 0 && steps.len() + 1 > keep {
        for old in &steps[..steps.len() + 1 - keep] {
            remove_dir_aside(&step_dir(run, *old))?;
        }
    }
    Ok(final_dir)
}

/// Saves a training checkpoint of `run` at `state.step`: the weights, their EMA (in the
/// weights' shapes, so it loads like them), the optimizer's moments, `extra` files and
/// `state.json` with every other file's checksum; keeps the newest `keep`. Refuses non-finite
/// values: checkpoints only ever hold finite ones.
pub fn save<M: Module>(
    run: &Path,
    model: &M,
    ema: &Ema,
    opt: &AdamW,
    state: &TrainState,
    extra: Vec<(String, Vec<u8>)>,
    keep: usize,
) -> Result<PathBuf> {
    let weights = host_params(model);
    let model_b = to_safetensors(&weights)?;
    // EMA weights keep the parameters' shapes, so `ema.safetensors` loads like the model.
    let shapes = weights
        .iter()
        .map(|(k, w)| (k.clone(), w.shape.clone()))
        .collect();
    let ema_host = averaged_host(&shapes, &ema.params);
    let ema_b = to_safetensors(&ema_host)?;
    let mut o = to_host_map(&opt.m, "m.");
    o.extend(to_host_map(&opt.v, "v."));
    for (what, map) in [
        ("weight", &weights),
        ("EMA weight", &ema_host),
        ("optimizer state", &o),
    ] {
        if let Some((name, _)) = map
            .iter()
            .find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
        {
            bail!(
                "step {}: {what} {name} is not finite; the checkpoint is not written",
                state.step
            );
        }
    }
    let opt_b = to_safetensors(&o)?;
    let mut files = vec![
        ("model.safetensors".to_string(), model_b),
        ("ema.safetensors".to_string(), ema_b),
        ("optimizer.safetensors".to_string(), opt_b),
    ];
    files.extend(extra);
    let mut state = state.clone();
    state.checksums = files
        .iter()
        .map(|(name, bytes)| (name.clone(), checksum(bytes)))
        .collect();
    files.push(("state.json".into(), serde_json::to_vec_pretty(&state)?));
    write_checkpoint(run, state.step, &files, keep)
}

/// An average of the weights (flattened, by name) in the weights' `shapes`, so that it loads
/// like them.
pub fn averaged_host(
    shapes: &BTreeMap<String, Vec<usize>>,
    params: &BTreeMap<String, burn::tensor::Tensor<1>>,
) -> BTreeMap<String, HostTensor> {
    params
        .iter()
        .map(|(k, t)| {
            let shape = shapes.get(k).cloned().unwrap_or_else(|| vec![t.dims()[0]]);
            (k.clone(), HostTensor::from_tensor(t, shape))
        })
        .collect()
}

/// Steps of the `step-*` directories under `run/checkpoints` (complete or not).
pub fn list_checkpoints(run: &Path) -> Result<Vec<u64>> {
    let root = run.join("checkpoints");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", root.display())),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-")
            && let Ok(s) = n.parse::<u64>()
        {
            out.push(s);
        }
    }
    Ok(out)
}

/// Whether `dir` holds every file of a training checkpoint.
pub fn is_complete(dir: &Path) -> bool {
    CHECKPOINT_FILES.iter().all(|f| dir.join(f).is_file())
}

/// The newest complete checkpoint of a run, whatever `checkpoints/latest` says (it may be
/// missing or stale after a crash between a checkpoint's rename and its update).
pub fn newest_complete(run: &Path) -> Result<Option<PathBuf>> {
    let mut steps = list_checkpoints(run)?;
    steps.sort_unstable();
    Ok(steps
        .iter()
        .rev()
        .map(|s| step_dir(run, *s))
        .find(|d| is_complete(d)))
}

/// Resolves a user path to a checkpoint directory: a checkpoint directory itself (holding
/// `state.json`), or a run directory, whose newest complete checkpoint it picks.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some(dir) = newest_complete(path)? {
        return Ok(dir);
    }
    if path.join("checkpoints").is_dir() {
        return Err(Refused::error(
            ErrorKind::NotFound,
            format!(
                "{}: the run holds no complete checkpoint (a step-* directory with {})",
                path.display(),
                CHECKPOINT_FILES.join(", ")
            ),
        ));
    }
    Err(Refused::error(
        ErrorKind::NotFound,
        format!(
            "{}: neither a checkpoint directory (with state.json) nor a run directory (with \
             checkpoints/step-*)",
            path.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tensors::read_safetensors;

    #[test]
    fn safetensors_round_trip_and_atomic_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = BTreeMap::new();
        m.insert(
            "a.weight".to_string(),
            HostTensor {
                shape: vec![2, 2],
                data: vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE],
            },
        );
        let bytes = to_safetensors(&m).unwrap();
        let p = dir.path().join("m.safetensors");
        write_atomic(&p, &bytes).unwrap();
        assert_eq!(read_safetensors(&p).unwrap(), m);
        let files: Vec<(&str, Vec<u8>)> = CHECKPOINT_FILES
            .iter()
            .map(|f| (*f, b"{}".to_vec()))
            .collect();
        for step in [10, 20, 30] {
            write_checkpoint(dir.path(), step, &files, 2).unwrap();
        }
        let mut steps = list_checkpoints(dir.path()).unwrap();
        steps.sort();
        assert_eq!(steps, vec![20, 30]);
        assert_eq!(resolve(dir.path()).unwrap(), step_dir(dir.path(), 30));
        let e = resolve(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("neither a checkpoint directory"), "{e}");
        // A checkpoint directory missing a file is never chosen; `latest` does not decide.
        std::fs::remove_file(step_dir(dir.path(), 30).join("ema.safetensors")).unwrap();
        assert_eq!(resolve(dir.path()).unwrap(), step_dir(dir.path(), 20));
        std::fs::remove_file(dir.path().join("checkpoints/latest")).unwrap();
        assert_eq!(resolve(dir.path()).unwrap(), step_dir(dir.path(), 20));
        let mut nan = m.clone();
        nan.get_mut("a.weight").unwrap().data[2] = f32::NAN;
        let p = dir.path().join("nan.safetensors");
        write_atomic(&p, &to_safetensors(&nan).unwrap()).unwrap();
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("a.weight") && e.contains("index 2"), "{e}");
        std::fs::write(dir.path().join("bad.safetensors"), b"garbage").unwrap();
        assert!(read_safetensors(&dir.path().join("bad.safetensors")).is_err());
        // An incomplete newer directory takes no slot and never costs the new checkpoint.
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(step_dir(other.path(), 90)).unwrap();
        for step in [10, 20] {
            write_checkpoint(other.path(), step, &files, 1).unwrap();
        }
        let mut steps = list_checkpoints(other.path()).unwrap();
        steps.sort();
        assert_eq!(steps, vec![20, 90]);
        assert_eq!(resolve(other.path()).unwrap(), step_dir(other.path(), 20));
    }
}
