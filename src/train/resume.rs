//! What `--resume` checks before it continues a run: which configuration keys may change
//! between segments of a run, and that every piece of saved state is whole, of this model's
//! shapes, finite and consistent with the dataset and the diffusion.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};

use crate::config::RunConfig;
use crate::run::state::TrainState;
use crate::store::tensors::HostTensor;

/// Keys a resumed segment may change; each change is applied and reported. Every other key
/// (except `out`, which only says where the run is) defines the model, the diffusion, the
/// objective or the random streams, and must stay as the run was made.
pub const CHANGEABLE_ON_RESUME: [&str; 20] = [
    "steps",
    "lr",
    "schedule_lr",
    "warmup_steps",
    "grad_clip",
    "adam_beta1",
    "adam_beta2",
    "adam_eps",
    "weight_decay",
    "ema_decay",
    "ema_warmup_power",
    "log_every",
    "sample_every",
    "sample_count",
    "sample_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "device",
    "precision",
    "data",
];

fn flag(key: &str) -> String {
    match key {
        "mlp" => "the [mlp] table".into(),
        "classes" => "the dataset's classes (--data)".into(),
        "edm" => "--objective edm and its settings (--sigma-data, --p-mean, --p-std, [edm])".into(),
        "posthoc_ema" => "--posthoc-ema (its widths and --snapshot-every)".into(),
        _ => format!("--{}", key.replace('_', "-")),
    }
}

fn show(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "(none)".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// Compares the configuration of this invocation with the run's saved one: a changed key that
/// may not change is an error naming its flag; the changes that apply are returned as lines
/// for the log (`--lr: 0.001 → 0.0001`).
pub fn compare_configs(saved: &RunConfig, now: &RunConfig) -> Result<Vec<String>> {
    let as_map = |c: &RunConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    // The network is compared as resolved (preset, dropout and variance decide it).
    let with_model = |c: &RunConfig| {
        let mut m = as_map(c);
        m.insert(
            "model".into(),
            serde_json::to_value(c.unet_config().ok()).unwrap_or_default(),
        );
        m
    };
    let (a, b) = (with_model(saved), with_model(now));
    let mut applied = Vec::new();
    // The network last: a changed preset or dropout is better named by its own flag.
    let keys = b.iter().filter(|(k, _)| *k != "model");
    for (key, new) in keys.chain(b.get_key_value("model")) {
        if key == "out" {
            continue;
        }
        let old = a.get(key);
        if old == Some(new) || (old.is_none() && new.is_null()) {
            continue;
        }
        // A dropout override equal to what the network had anyway changes nothing.
        if key == "dropout" && a.get("model") == b.get("model") {
            continue;
        }
        if CHANGEABLE_ON_RESUME.contains(&key.as_str()) {
            applied.push(format!(
                "{}: {} → {}",
                flag(key),
                show(old),
                show(Some(new))
            ));
        } else if key == "model" {
            bail!(
                "--resume: the network would differ from the run's (its preset, dropout or [model] \
                 table changed); a resumed run keeps its network: drop the flag or start a new --out"
            );
        } else {
            bail!(
                "--resume: {} cannot change when a run is resumed: the run was made with {key} = {}, \
                 this invocation asks for {}; drop the flag (the run keeps its own) or start a new --out",
                flag(key),
                show(old),
                show(Some(new))
            );
        }
    }
    Ok(applied)
}

/// Checks a saved map of per-parameter state (EMA weights, or one of AdamW's moments) against
/// the model's parameters: the same names, each with the parameter's number of values, all
/// finite. `what` names the state and its file in errors.
pub fn check_state_tensors(
    tensors: &BTreeMap<String, HostTensor>,
    params: &BTreeMap<String, Vec<usize>>,
    what: &str,
) -> Result<()> {
    if let Some(missing) = params.keys().find(|k| !tensors.contains_key(*k)) {
        bail!(
            "{what}: has no values for parameter {missing} ({} of the model's {} parameters present); \
             the file is partial or of another configuration, and resuming would silently restart it",
            params.keys().filter(|k| tensors.contains_key(*k)).count(),
            params.len()
        );
    }
    if let Some(extra) = tensors.keys().find(|k| !params.contains_key(*k)) {
        bail!(
            "{what}: holds {extra}, which the model does not have (a file of another configuration?)"
        );
    }
    for (name, shape) in params {
        let t = &tensors[name];
        let want: usize = shape.iter().product();
        if t.data.len() != want {
            bail!(
                "{what}: {name} holds {} values, the model's parameter has {want} (shape {shape:?}); \
                 a file of another configuration?",
                t.data.len()
            );
        }
    }
    Ok(())
}

/// Splits an optimizer file's tensors (`m.NAME`, `v.NAME`) into the two moments; any other name
/// is an error.
pub fn split_moments(
    tensors: BTreeMap<String, HostTensor>,
    what: &str,
) -> Result<(BTreeMap<String, HostTensor>, BTreeMap<String, HostTensor>)> {
    let (mut m, mut v) = (BTreeMap::new(), BTreeMap::new());
    for (k, t) in tensors {
        if let Some(n) = k.strip_prefix("m.") {
            m.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_prefix("v.") {
            v.insert(n.to_string(), t);
        } else {
            bail!("{what}: tensor {k} is neither a first (m.) nor a second (v.) moment");
        }
    }
    Ok((m, v))
}

/// Checks a loaded `state.json` against its checkpoint, the dataset, the batch size and the
/// diffusion: every count must be one that `step` steps can have reached.
pub fn check_state(
    state: &TrainState,
    ckpt: &Path,
    num_timesteps: usize,
    dataset_len: usize,
    batch_size: usize,
    path: &Path,
) -> Result<()> {
    let p = path.display();
    let dir_step = ckpt
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(s) = dir_step
        && s != state.step
    {
        bail!(
            "{p}: says step {}, but it is in the checkpoint of step {s}",
            state.step
        );
    }
    if state.data.offset > dataset_len {
        bail!(
            "{p}: data.offset {} is beyond the {dataset_len} items of the dataset (a state of another \
             dataset, or a damaged file)",
            state.data.offset
        );
    }
    if state.t_sampler.num_timesteps() != num_timesteps {
        bail!(
            "{p}: the timestep sampler covers {} timesteps, the diffusion has {num_timesteps}",
            state.t_sampler.num_timesteps()
        );
    }
    if !state.t_sampler.is_valid() {
        bail!("{p}: the timestep sampler's loss history holds non-finite or negative values");
    }
    // Every step makes one optimizer update and one EMA update.
    if state.adam_step != state.step || state.ema_updates != state.step {
        bail!(
            "{p}: adam_step {} / ema_updates {} differ from the step {} (every step makes one of \
             each); the file is damaged or was edited",
            state.adam_step,
            state.ema_updates,
            state.step
        );
    }
    for (name, rng) in [("rng_t", &state.rng_t), ("rng_noise", &state.rng_noise)] {
        if !rng.is_valid() {
            bail!(
                "{p}: the generator {name} has the all-zero state, which draws only zeros; the \
                 file is damaged or was edited"
            );
        }
    }
    // Each finished epoch took at least one item; `step` steps took `step × batch` items.
    let served = state.step.saturating_mul(batch_size as u64);
    if state.data.epoch > served {
        bail!(
            "{p}: data epoch {} cannot follow from {} steps of {batch_size} items",
            state.data.epoch,
            state.step
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changeable_keys_apply_and_fixed_keys_refuse() {
        let saved = RunConfig::default();
        let mut now = saved.clone();
        now.out = "elsewhere".into();
        assert!(compare_configs(&saved, &now).unwrap().is_empty());
        now.lr = 1e-4;
        now.steps = 900;
        let notes = compare_configs(&saved, &now).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes.iter().any(|n| n.starts_with("--lr: 0.001 → 0.0001")),
            "{notes:?}"
        );
        for (key, change) in [
            (
                "--seed",
                Box::new(|c: &mut RunConfig| c.seed = 5) as Box<dyn Fn(&mut _)>,
            ),
            (
                "--batch-size",
                Box::new(|c: &mut RunConfig| c.batch_size = 8),
            ),
            (
                "--schedule",
                Box::new(|c: &mut RunConfig| c.schedule = "cosine".into()),
            ),
            (
                "--timesteps",
                Box::new(|c: &mut RunConfig| c.timesteps = 100),
            ),
            (
                "--preset",
                Box::new(|c: &mut RunConfig| c.preset = "tiny".into()),
            ),
        ] {
            let mut c = saved.clone();
            change(&mut c);
            let e = compare_configs(&saved, &c).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let mut c = saved.clone();
        c.dropout = Some(0.3);
        let e = compare_configs(&saved, &c).unwrap_err().to_string();
        assert!(e.contains("--dropout"), "{e}");
        let mut c = saved.clone();
        let mut m = c.unet_config().unwrap();
        m.num_res_blocks += 1;
        c.model = Some(m);
        let e = compare_configs(&saved, &c).unwrap_err().to_string();
        assert!(e.contains("network"), "{e}");
    }

    #[test]
    fn state_tensors_must_cover_the_model() {
        let params: BTreeMap<String, Vec<usize>> =
            [("a".to_string(), vec![2, 3]), ("b".to_string(), vec![4])].into();
        let t = |n: usize| HostTensor {
            shape: vec![n],
            data: vec![0.5; n],
        };
        let full: BTreeMap<String, HostTensor> = [("a".into(), t(6)), ("b".into(), t(4))].into();
        check_state_tensors(&full, &params, "ema").unwrap();
        let mut partial = full.clone();
        partial.remove("b");
        let e = check_state_tensors(&partial, &params, "ema.safetensors").unwrap_err();
        assert!(
            e.to_string()
                .contains("ema.safetensors: has no values for parameter b"),
            "{e}"
        );
        let e = check_state_tensors(&BTreeMap::new(), &params, "x").unwrap_err();
        assert!(e.to_string().contains("0 of the model's 2"), "{e}");
        let mut wrong = full.clone();
        wrong.insert("b".into(), t(8));
        let e = check_state_tensors(&wrong, &params, "x").unwrap_err();
        assert!(e.to_string().contains("holds 8 values"), "{e}");
        let mut extra = full;
        extra.insert("c".into(), t(1));
        assert!(check_state_tensors(&extra, &params, "x").is_err());
        let (m, v) =
            split_moments([("m.a".into(), t(6)), ("v.a".into(), t(6))].into(), "o").unwrap();
        assert_eq!((m.len(), v.len()), (1, 1));
        assert!(split_moments([("q.a".into(), t(6))].into(), "o").is_err());
    }
}
