//! Checkpoints: a directory per step holding `model.safetensors`, `ema.safetensors`,
//! `optimizer.safetensors` and `state.json`, written to a temporary directory and renamed into
//! place, with `latest` naming the newest complete one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use crate::files::{remove_dir_aside, write_atomic, write_dir_atomic};

/// The files of a complete training checkpoint.
pub const CHECKPOINT_FILES: [&str; 4] = [
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
];

/// A named tensor on the host: shape and f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Copies a flat device tensor to the host with `shape`.
    pub fn from_tensor(t: &Tensor<1>, shape: Vec<usize>) -> Self {
        let data = t
            .to_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 tensor data");
        Self { shape, data }
    }

    /// A flat f32 tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<1> {
        Tensor::<1>::from_data(
            TensorData::new(self.data.clone(), [self.data.len()]),
            (device, DType::F32),
        )
    }
}

/// Serializes named tensors as safetensors bytes.
pub fn to_safetensors(tensors: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), t.shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| Ok((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::tensor::serialize(views, None)?)
}

/// The bytes that start a safetensors file holding one f32 tensor `name` of `shape`: its
/// length-prefixed header, after which the tensor's values follow as little-endian f32, so a
/// tensor too large to hold in memory can be written as it is produced.
pub fn safetensors_f32_header(name: &str, shape: &[usize]) -> Vec<u8> {
    let bytes = shape.iter().product::<usize>() * 4;
    // The keys in the order the safetensors crate writes them.
    let json = format!(
        "{{{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,{bytes}]}}}}",
        serde_json::Value::from(name),
        serde_json::Value::from(shape.to_vec()),
    );
    // The data starts 8-byte aligned: the header is padded with spaces (as safetensors does).
    let mut header = json.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out
}

/// The CRC-32 of `bytes` as 8 hex digits: what `state.json` records of each checkpoint file.
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// Checks `bytes`, read from a checkpoint file, against the checksum its checkpoint's
/// `state.json` recorded when it was written. Files outside a checkpoint, and checkpoints
/// without recorded checksums (older ones, imported runs), are not checked; an unreadable
/// `state.json` is left to the reader of the state to report.
fn verify_recorded_checksum(path: &Path, bytes: &[u8]) -> Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(());
    };
    let Ok(text) = crate::files::read_text_capped(&dir.join("state.json"), crate::files::TEXT_MAX)
    else {
        return Ok(());
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(());
    };
    let Some(want) = state["checksums"][name].as_str() else {
        return Ok(());
    };
    let got = checksum(bytes);
    if got != want {
        bail!(
            "{}: its bytes changed after it was written (CRC-32 {got}, its checkpoint's \
             state.json records {want}); the file is damaged — take another checkpoint",
            path.display()
        );
    }
    Ok(())
}

/// Reads named f32 tensors from a safetensors file; a non-finite value is an error naming the
/// tensor.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    read_safetensors_as(path, "F32", |dtype, raw| {
        (dtype == Dtype::F32).then(|| le_f32(raw))
    })
}

/// Little-endian f32 values.
pub fn le_f32(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Named tensors of a safetensors file, each turned into f32 by `decode` (`None` for a dtype it
/// does not read, reported against `expected`); a non-finite value is an error naming the
/// tensor.
pub fn read_safetensors_as(
    path: &Path,
    expected: &str,
    decode: impl Fn(Dtype, &[u8]) -> Option<Vec<f32>>,
) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = crate::files::read_capped(path, crate::files::BINARY_MAX)
        .with_context(|| format!("cannot read {}", path.display()))?;
    verify_recorded_checksum(path, &bytes)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let Some(data) = decode(view.dtype(), view.data()) else {
            bail!(
                "{}: tensor {name} is {:?}, expected {expected}",
                path.display(),
                view.dtype()
            );
        };
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: tensor {name} holds a non-finite value ({} at index {i}); the weights are \
                 damaged (a diverged run or a corrupt file)",
                path.display(),
                data[i]
            );
        }
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// The values of a safetensors tensor stored as little-endian F32 or F64, as f64 (exact);
/// `None` for any other dtype.
pub fn float_values(dtype: Dtype, data: &[u8]) -> Option<Vec<f64>> {
    match dtype {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
                .collect(),
        ),
        Dtype::F64 => Some(
            data.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
        _ => None,
    }
}

/// The directory of the checkpoint at `step` under `run/checkpoints`.
pub fn step_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Writes a checkpoint directory atomically: `files` (name → bytes) go into a temporary
/// directory that is renamed to `step-XXXXXXXX`; then `latest` is updated, and all but the
/// newest `keep` checkpoints are removed, each renamed aside before it is deleted so that no
/// partial checkpoint is ever visible under a `step-*` name.
pub fn write_checkpoint(
    run: &Path,
    step: u64,
    files: &[(&str, Vec<u8>)],
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
        bail!(
            "{}: the run holds no complete checkpoint (a step-* directory with {})",
            path.display(),
            CHECKPOINT_FILES.join(", ")
        );
    }
    bail!(
        "{}: neither a checkpoint directory (with state.json) nor a run directory (with checkpoints/step-*)",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_tensor_reads_back_as_the_library_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        for shape in [vec![3usize, 1, 2, 2], vec![5, 2], vec![1]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
            let mut bytes = safetensors_f32_header("samples", &shape);
            bytes.extend(data.iter().flat_map(|x| x.to_le_bytes()));
            let p = dir.path().join("s.safetensors");
            std::fs::write(&p, &bytes).unwrap();
            let m = BTreeMap::from([("samples".to_string(), HostTensor { shape, data })]);
            assert_eq!(read_safetensors(&p).unwrap(), m);
            assert_eq!(bytes, to_safetensors(&m).unwrap());
        }
    }

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
