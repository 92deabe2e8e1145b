//! Named tensors on the host and their safetensors files: writing (whole or as a stream),
//! reading with every value checked finite, and the checksum a checkpoint records of each file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

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
}
