//! Published models in Hugging Face diffusers' format: a `UNet2DModel` (`config.json` +
//! `diffusion_pytorch_model.safetensors`) and its `DDPMScheduler` / `DDIMScheduler`
//! (`scheduler_config.json`), in the flat Hub layout or a pipeline's (`model_index.json`,
//! `unet/`, `scheduler/`), read into this crate's U-Net and run configuration.

pub mod export;
pub mod scheduler;
pub mod unet_config;
pub mod unet_weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use safetensors::Dtype;

use crate::config::RunConfig;
use crate::model::UNetConfig;
use crate::store::tensors::{HostTensor, le_f32, read_safetensors_as};

/// The weights file diffusers writes.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// The PyTorch pickle of the same weights (older Hub repos have only this).
pub const PICKLE_FILE: &str = "diffusion_pytorch_model.bin";

/// Where a diffusers model's files are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The U-Net's folder (`config.json` and the weights).
    pub unet: PathBuf,
    /// The scheduler's configuration, when there is one.
    pub scheduler: Option<PathBuf>,
}

/// The diffusers layout of `dir`, or `None` when it is not a diffusers folder (a `config.json`
/// beside diffusers weights or naming a `UNet2DModel`, or a pipeline's `model_index.json`).
pub fn layout(dir: &Path) -> Option<Layout> {
    let existing = |p: PathBuf| p.is_file().then_some(p);
    let scheduler = || {
        existing(dir.join("scheduler").join("scheduler_config.json"))
            .or_else(|| existing(dir.join("scheduler_config.json")))
    };
    // A pipeline folder; some Hub repos also keep a model_index.json beside a flat U-Net.
    if dir.join("model_index.json").is_file() && dir.join("unet").join("config.json").is_file() {
        return Some(Layout {
            unet: dir.join("unet"),
            scheduler: scheduler(),
        });
    }
    // A flat model folder: config.json beside the weights. Its config is then read by the
    // importer, which names what is wrong with it (invalid JSON, another model class).
    let has_weights = dir.join(WEIGHTS_FILE).is_file() || dir.join(PICKLE_FILE).is_file();
    if has_weights && dir.join("config.json").exists() {
        return Some(Layout {
            unet: dir.to_path_buf(),
            scheduler: scheduler(),
        });
    }
    let config =
        crate::files::read_text_capped(&dir.join("config.json"), crate::files::TEXT_MAX).ok()?;
    if !config.contains("UNet2DModel") {
        return dir.join("model_index.json").is_file().then(|| Layout {
            unet: dir.join("unet"),
            scheduler: scheduler(),
        });
    }
    Some(Layout {
        unet: dir.to_path_buf(),
        scheduler: scheduler(),
    })
}

/// A diffusers model read into this crate's terms.
pub struct Imported {
    /// The run configuration: the U-Net in `model`, the scheduler's noise schedule,
    /// parameterization and variance, and its sampling defaults.
    pub config: RunConfig,
    /// The weights under this crate's parameter names.
    pub weights: BTreeMap<String, HostTensor>,
}

/// Reads the diffusers model in `dir` (either layout).
pub fn import(dir: &Path) -> Result<Imported> {
    let Some(l) = layout(dir) else {
        bail!(
            "{}: not a diffusers model folder (expected config.json of a UNet2DModel with {WEIGHTS_FILE}, \
             or a pipeline's model_index.json with unet/ and scheduler/)",
            dir.display()
        );
    };
    let unet = unet_in(&l)?;
    let weights_path = l.unet.join(WEIGHTS_FILE);
    let bin = l.unet.join(PICKLE_FILE);
    if !weights_path.is_file() && bin.is_file() {
        let source = bin.display().to_string();
        let weights = unet_weights::from_diffusers(read_pickle_tensors(&bin)?, &source)?;
        return Ok(Imported {
            config: run_config_of(unet, &l)?,
            weights,
        });
    }
    if !weights_path.is_file() {
        if l.unet.join(format!("{WEIGHTS_FILE}.index.json")).is_file() {
            bail!(
                "{}: the weights are sharded; a DDPM U-Net fits one file (re-save it unsharded)",
                l.unet.display()
            );
        }
        bail!("{}: missing", weights_path.display());
    }
    let source = weights_path.display().to_string();
    let weights = unet_weights::from_diffusers(read_float_tensors(&weights_path)?, &source)?;
    Ok(Imported {
        config: run_config_of(unet, &l)?,
        weights,
    })
}

/// The run configuration of a diffusers folder (its U-Net and scheduler), without the weights.
pub fn config_of(dir: &Path) -> Result<RunConfig> {
    let l = layout(dir).with_context(|| format!("{}: not a diffusers folder", dir.display()))?;
    run_config_of(unet_in(&l)?, &l)
}

fn run_config_of(unet: UNetConfig, l: &Layout) -> Result<RunConfig> {
    let mut config = RunConfig {
        preset: "custom".into(),
        data: "none".into(),
        model: Some(unet),
        ..RunConfig::default()
    };
    match &l.scheduler {
        Some(p) => scheduler::apply(p, &mut config)?,
        None => scheduler::apply_defaults(&mut config),
    }
    check_variance(&config)?;
    Ok(config)
}

/// A scheduler variance that needs an output channel the U-Net lacks (or the reverse) is an
/// error.
fn check_variance(config: &RunConfig) -> Result<()> {
    let learned = config.model.as_ref().is_some_and(|m| m.learn_sigma);
    if learned != config.variance.is_learned() {
        bail!(
            "the scheduler's variance_type ({:?}) does not match the U-Net's outputs \
             ({} channels of variance)",
            config.variance,
            if learned { "with" } else { "without" }
        );
    }
    Ok(())
}

/// Named tensors of a safetensors file as f32 (from F32, F16 or BF16), finite.
pub fn read_float_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    read_safetensors_as(path, "F32, F16 or BF16", |dtype, raw| match dtype {
        Dtype::F32 => Some(le_f32(raw)),
        Dtype::F16 => Some(
            raw.chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
        Dtype::BF16 => Some(
            raw.chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
        ),
        _ => None,
    })
}

/// Named tensors of a PyTorch pickle (`torch.save` of a state dict; zip or legacy format) as
/// f32, read without Python and without executing the pickle.
pub fn read_pickle_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    use pytorch_reader::DType as P;
    let reader = pytorch_reader::PytorchReader::new(path)
        .with_context(|| format!("{}: not a readable PyTorch checkpoint", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, t) in reader.tensors() {
        let raw = t
            .read()
            .with_context(|| format!("{}: cannot read tensor {name}", path.display()))?;
        let data: Vec<f32> = match t.dtype() {
            P::F32 => le_f32(&raw),
            P::F64 => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            P::F16 => raw
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            P::BF16 => raw
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => bail!(
                "{}: tensor {name} is {other:?}; expected a float type",
                path.display()
            ),
        };
        if data.len() != t.num_elements() {
            bail!(
                "{}: tensor {name} holds {} values for shape {:?}",
                path.display(),
                data.len(),
                t.shape()
            );
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: tensor {name} holds a non-finite value at index {i}",
                path.display()
            );
        }
        out.insert(
            name.clone(),
            HostTensor {
                shape: t.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// IEEE half precision to single (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: f·2^−24.
            let v = f as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// The U-Net configuration of a diffusers folder laid out as `l`.
fn unet_in(l: &Layout) -> Result<UNetConfig> {
    let p = l.unet.join("config.json");
    let text = crate::files::read_text_capped(&p, crate::files::TEXT_MAX)
        .with_context(|| format!("cannot read {}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))?;
    unet_config::unet_config(&v, &p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_convert_exactly() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0000, 0.0),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
