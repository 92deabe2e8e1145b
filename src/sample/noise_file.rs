//! Sampling noise read from a file instead of drawn: `init` (x_T, `[N, …]`) and `steps` (the
//! noise each stochastic step adds, `[S, N, …]`) in a safetensors file, so a run can be
//! compared with another implementation's without any random generator in common.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::rng::NoiseSource;

/// The noise of every image of a sampling call.
#[derive(Debug, Clone)]
pub struct NoiseFile {
    source: String,
    item: usize,
    n: usize,
    init: Vec<f32>,
    steps: Vec<Vec<f32>>,
}

impl NoiseFile {
    /// Reads `path` for `n` images of `item_shape`: `init` must be `[n, …item_shape]`; `steps`,
    /// when present, `[S, n, …item_shape]` with S at most `max_steps` (a file larger than that
    /// could be is refused unread).
    pub fn read(path: &Path, n: usize, item_shape: &[usize], max_steps: usize) -> Result<Self> {
        let source = path.display().to_string();
        let values = (n as u64)
            .saturating_mul(item_shape.iter().product::<usize>() as u64)
            .saturating_mul(max_steps as u64 + 1);
        let max = values.saturating_mul(4).saturating_add(1 << 20);
        let bytes = crate::files::read_capped(path, max)
            .with_context(|| format!("--noise: cannot read {source}"))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("--noise {source}: not a valid safetensors file"))?;
        let floats = |name: &str| -> Result<Option<(Vec<usize>, Vec<f32>)>> {
            let Ok(v) = st.tensor(name) else {
                return Ok(None);
            };
            if v.dtype() != safetensors::Dtype::F32 {
                bail!(
                    "--noise {source}: `{name}` is {:?}, expected F32",
                    v.dtype()
                );
            }
            let d = crate::store::tensors::le_f32(v.data());
            if d.iter().any(|x| !x.is_finite()) {
                bail!("--noise {source}: `{name}` holds non-finite values");
            }
            Ok(Some((v.shape().to_vec(), d)))
        };
        let mut want = vec![n];
        want.extend_from_slice(item_shape);
        let Some((shape, init)) = floats("init")? else {
            bail!("--noise {source}: no tensor `init` (x_T for every image, shape {want:?})");
        };
        if shape != want {
            bail!("--noise {source}: `init` has shape {shape:?}; --n {n} images need {want:?}");
        }
        let item: usize = item_shape.iter().product();
        let steps = match floats("steps")? {
            None => Vec::new(),
            Some((shape, data)) => {
                if shape.len() != want.len() + 1 || shape[1..] != want[..] {
                    bail!(
                        "--noise {source}: `steps` has shape {shape:?}; expected [S, {}]",
                        want.iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                data.chunks(n * item).map(<[f32]>::to_vec).collect()
            }
        };
        Ok(Self {
            source,
            item,
            n,
            init,
            steps,
        })
    }

    /// The noise of images `first..first + count`, in the order the sampler draws it.
    pub fn for_items(&self, first: usize, count: usize) -> FileNoise<'_> {
        FileNoise {
            file: self,
            first,
            count,
            draws: 0,
            short: false,
        }
    }
}

/// A [`NoiseSource`] serving one batch's rows of a [`NoiseFile`]: the first draw is `init`,
/// draw k + 1 is `steps[k]`.
pub struct FileNoise<'a> {
    file: &'a NoiseFile,
    first: usize,
    count: usize,
    draws: usize,
    short: bool,
}

impl FileNoise<'_> {
    /// An error when the sampler asked for more (or other) noise than the file holds.
    pub fn check(&self) -> Result<()> {
        if self.short {
            bail!(
                "--noise {}: holds x_T and {} step(s) of noise, the sampler drew {} times (one \
                 for x_T and one per stochastic step)",
                self.file.source,
                self.file.steps.len(),
                self.draws
            );
        }
        Ok(())
    }
}

impl NoiseSource for FileNoise<'_> {
    fn normal_f32(&mut self, n: usize) -> Vec<f32> {
        let f = self.file;
        let rows = self.first * f.item..(self.first + self.count) * f.item;
        let k = self.draws;
        self.draws += 1;
        let table = if k == 0 {
            Some(&f.init)
        } else {
            f.steps.get(k - 1)
        };
        match table {
            Some(t) if n == self.count * f.item && self.first + self.count <= f.n => {
                t[rows].to_vec()
            }
            _ => {
                // Reported by `check` once the batch is done; never a silent substitute.
                self.short = true;
                vec![0.0; n]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(k, s, d)| {
                (
                    k.to_string(),
                    s.clone(),
                    d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(k, s, b)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn batches_read_their_rows_in_draw_order_and_running_short_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("noise.safetensors");
        let init: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let steps: Vec<f32> = (0..12).map(|x| 100.0 + x as f32).collect();
        write(
            &p,
            &[("init", vec![3, 2], init), ("steps", vec![2, 3, 2], steps)],
        );
        let f = NoiseFile::read(&p, 3, &[2], 10).unwrap();
        let mut b = f.for_items(1, 2);
        assert_eq!(b.normal_f32(4), vec![2.0, 3.0, 4.0, 5.0]);
        assert_eq!(b.normal_f32(4), vec![102.0, 103.0, 104.0, 105.0]);
        assert_eq!(b.normal_f32(4), vec![108.0, 109.0, 110.0, 111.0]);
        b.check().unwrap();
        b.normal_f32(4);
        let e = b.check().unwrap_err().to_string();
        assert!(e.contains("2 step(s)") && e.contains("drew 4"), "{e}");
        let e = NoiseFile::read(&p, 4, &[2], 10).unwrap_err().to_string();
        assert!(e.contains("--n 4") && e.contains("[4, 2]"), "{e}");
        write(&p, &[("x", vec![1], vec![0.0])]);
        assert!(
            NoiseFile::read(&p, 1, &[1], 10)
                .unwrap_err()
                .to_string()
                .contains("`init`")
        );
    }
}
