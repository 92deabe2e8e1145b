//! A run as a diffusers pipeline folder (`model_index.json`, `unet/`, `scheduler/`) that
//! `UNet2DModel.from_pretrained` and `DDPMPipeline.from_pretrained` load and run as `ddpm`
//! does; what diffusers cannot express is refused with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::unet_weights::transposed;
use crate::config::RunConfig;
use crate::diffusion::{Parameterization, VarianceType};
use crate::model::{TimeFeatures, TimeInjection, UNetConfig};
use crate::schedule::BetaSchedule;
use crate::store::tensors::{HostTensor, to_safetensors};

/// The diffusers `UNet2DModel` configuration of `u`, or why there is none.
pub fn unet_json(u: &UNetConfig) -> Result<Value> {
    if u.time_features != TimeFeatures::Sinusoidal || u.time_scale != 1.0 {
        bail!(
            "the network's time features (random Fourier, or a time scale other than 1) have no \
             diffusers UNet2DModel equivalent (its `fourier` embedding is another function)"
        );
    }
    if u.resblock_updown {
        bail!(
            "resblock_updown: residual-block resampling is not exported (diffusers' resnet \
               down/upsampling blocks are not verified to match)"
        );
    }
    if !u.fourier_features.is_empty() {
        bail!("fourier_features: diffusers' UNet2DModel has no Fourier features of the input");
    }
    if u.num_res_blocks == 0 {
        bail!("num_res_blocks 0 has no diffusers equivalent");
    }
    let widths: Vec<usize> = u.channel_mult.iter().map(|m| m * u.base_channels).collect();
    let attn_at = |i: usize| u.attention_resolutions.contains(&(u.image_size >> i));
    // diffusers has one head size for every attention block; this U-Net a head count (or size).
    let mut attention_channels: Vec<usize> = (0..widths.len())
        .filter(|&i| attn_at(i))
        .map(|i| widths[i])
        .collect();
    attention_channels.push(*widths.last().expect("at least one level"));
    let head_dim = match u.num_head_channels {
        Some(hc) => Value::from(hc),
        None if u.num_heads == 1 => Value::Null,
        None => {
            let dims: Vec<usize> = attention_channels.iter().map(|c| c / u.num_heads).collect();
            if dims.windows(2).any(|w| w[0] != w[1]) {
                bail!(
                    "num_heads {}: the attention blocks' head sizes differ ({dims:?}); diffusers \
                     has one head size (attention_head_dim) for all",
                    u.num_heads
                );
            }
            Value::from(dims[0])
        }
    };
    let out_channels = if u.learn_sigma {
        2 * u.out_channels
    } else {
        u.out_channels
    };
    let mut c = json!({
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "add_attention": true,
        "attention_head_dim": head_dim,
        "block_out_channels": widths,
        "center_input_sample": u.center_input,
        "down_block_types": (0..widths.len())
            .map(|i| if attn_at(i) { "AttnDownBlock2D" } else { "DownBlock2D" })
            .collect::<Vec<_>>(),
        "downsample_padding": u.downsample_padding,
        "downsample_type": "conv",
        "dropout": u.dropout,
        "flip_sin_to_cos": u.flip_sin_to_cos,
        "freq_shift": u.freq_shift,
        "in_channels": u.in_channels,
        "layers_per_block": u.num_res_blocks,
        "mid_block_scale_factor": 1,
        "norm_eps": u.norm_eps,
        "norm_num_groups": u.groups,
        // Given explicitly: with scale_shift, diffusers' middle attention otherwise has no norm.
        "attn_norm_num_groups": u.groups,
        "out_channels": out_channels,
        "resnet_time_scale_shift": match u.time_injection {
            TimeInjection::Add => "default",
            TimeInjection::ScaleShift => "scale_shift",
        },
        "sample_size": u.image_size,
        "time_embedding_type": "positional",
        "up_block_types": (0..widths.len())
            .rev()
            .map(|i| if attn_at(i) { "AttnUpBlock2D" } else { "UpBlock2D" })
            .collect::<Vec<_>>(),
        "upsample_type": "conv",
    });
    if let Some(k) = u.num_classes {
        // Our null class is the last row of the table: label k is "no class" in diffusers too.
        c["num_class_embeds"] = Value::from(k + 1);
    }
    Ok(c)
}

/// The diffusers `DDPMScheduler` configuration of a run, or why there is none.
pub fn scheduler_json(cfg: &RunConfig) -> Result<Value> {
    if cfg.vdm_time()?.is_some() {
        bail!(
            "a VDM run (--time / --schedule learned): its network takes 1000·t of a continuous \
             schedule, which no diffusers scheduler describes"
        );
    }
    if cfg.edm.is_some() {
        bail!(
            "an EDM run (--objective edm): its network is F inside EDM's preconditioning \
             (D = c_skip·x + c_out·F(c_in·x; ¼·ln σ)), which neither diffusers' UNet2DModel nor a \
             DDPM scheduler applies"
        );
    }
    let schedule = crate::config::diffusion::diffusion_from(cfg)?.schedule;
    let t = schedule.num_timesteps();
    let named = if cfg.trained_betas.is_some()
        || cfg.zero_terminal_snr
        || cfg.schedule.starts_with("file:")
    {
        None
    } else {
        match BetaSchedule::named(&cfg.schedule, t, cfg.beta_start, cfg.beta_end)? {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => Some(("linear", beta_start, beta_end)),
            BetaSchedule::Quadratic {
                beta_start,
                beta_end,
            } => Some(("scaled_linear", beta_start, beta_end)),
            BetaSchedule::Sigmoid {
                beta_start,
                beta_end,
            } => Some(("sigmoid", beta_start, beta_end)),
            BetaSchedule::Cosine { .. } => Some(("squaredcos_cap_v2", 0.0001, 0.02)),
            _ => None,
        }
    };
    let (beta_schedule, start, end, trained) = match named {
        Some((n, s, e)) => (n, s, e, Value::Null),
        // Any other schedule as its β's themselves.
        None => ("linear", 0.0001, 0.02, Value::from(schedule.betas.clone())),
    };
    let variance = match cfg.variance {
        VarianceType::FixedSmall => "fixed_small",
        VarianceType::FixedLarge => "fixed_large",
        VarianceType::LearnedRange => "learned_range",
        VarianceType::Learned => bail!(
            "--variance learned: this network outputs log σ², diffusers' `learned` reads the \
             channel as σ² (train with learned-range to export)"
        ),
    };
    let defaults = cfg.sampler_defaults.clone();
    let clip = defaults.as_ref().map_or("clip", |d| d.clip.as_str());
    if clip.starts_with("dynamic") {
        bail!(
            "sampler clip {clip}: diffusers' thresholding is capped by sample_max_value; not exported"
        );
    }
    Ok(json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.42.1",
        "beta_end": end,
        "beta_schedule": beta_schedule,
        "beta_start": start,
        "clip_sample": clip == "clip",
        "clip_sample_range": 1.0,
        "num_train_timesteps": t,
        "prediction_type": match cfg.parameterization {
            Parameterization::Eps => "epsilon",
            Parameterization::X0 => "sample",
            Parameterization::V => "v_prediction",
        },
        "rescale_betas_zero_snr": false,
        "steps_offset": defaults.as_ref().map_or(0, |d| d.steps_offset),
        "thresholding": false,
        "timestep_spacing": defaults.as_ref().map_or("leading", |d| d.spacing.as_str()),
        "trained_betas": trained,
        "variance_type": variance,
    }))
}

/// This crate's parameters under diffusers' names (the inverse of
/// [`super::unet_weights::from_diffusers`]): linear weights transposed, `qkv` split.
pub fn to_diffusers(
    ours: &BTreeMap<String, HostTensor>,
    u: &UNetConfig,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for (a, b, t) in [
        ("conv_in.weight", "conv_in.weight", false),
        ("conv_in.bias", "conv_in.bias", false),
        ("emb1.weight", "time_embedding.linear_1.weight", true),
        ("emb1.bias", "time_embedding.linear_1.bias", false),
        ("emb2.weight", "time_embedding.linear_2.weight", true),
        ("emb2.bias", "time_embedding.linear_2.bias", false),
        ("norm_out.gamma", "conv_norm_out.weight", false),
        ("norm_out.beta", "conv_norm_out.bias", false),
        ("conv_out.weight", "conv_out.weight", false),
        ("conv_out.bias", "conv_out.bias", false),
    ] {
        copy_param(ours, a, b, t, &mut out)?;
    }
    if u.num_classes.is_some() {
        // Our one-hot table [classes + 1, dim] is diffusers' embedding [num_class_embeds, dim].
        copy_param(
            ours,
            "class_emb.table.weight",
            "class_embedding.weight",
            false,
            &mut out,
        )?;
    }
    let levels = u.channel_mult.len();
    for i in 0..levels {
        for (half, theirs, stages) in [
            ("down", "down_blocks", u.num_res_blocks),
            ("up", "up_blocks", u.num_res_blocks + 1),
        ] {
            for j in 0..stages {
                let ours_prefix = format!("{half}.{i}.stages.{j}");
                res_block(
                    ours,
                    &format!("{ours_prefix}.res"),
                    &format!("{theirs}.{i}.resnets.{j}"),
                    &mut out,
                );
                if ours.contains_key(&format!("{ours_prefix}.attn.qkv.weight")) {
                    attention_block(
                        ours,
                        &format!("{ours_prefix}.attn"),
                        &format!("{theirs}.{i}.attentions.{j}"),
                        &mut out,
                    )?;
                }
            }
            if i + 1 < levels {
                let sampler = if half == "down" {
                    "downsamplers"
                } else {
                    "upsamplers"
                };
                for p in ["weight", "bias"] {
                    copy_param(
                        ours,
                        &format!("{half}.{i}.{half}.conv.{p}"),
                        &format!("{theirs}.{i}.{sampler}.0.conv.{p}"),
                        false,
                        &mut out,
                    )?;
                }
            }
        }
    }
    res_block(ours, "mid1", "mid_block.resnets.0", &mut out);
    res_block(ours, "mid2", "mid_block.resnets.1", &mut out);
    attention_block(ours, "mid_attn", "mid_block.attentions.0", &mut out)?;
    let total: usize = ours.values().map(|t| t.data.len()).sum();
    let mapped: usize = out.values().map(|t| t.data.len()).sum();
    if total != mapped {
        bail!(
            "{} of {total} parameter values found no diffusers name",
            total - mapped
        );
    }
    Ok(out)
}

/// Parameter `a` of ours as diffusers' `b` (transposed when `transpose`: a linear weight).
fn copy_param(
    ours: &BTreeMap<String, HostTensor>,
    a: &str,
    b: &str,
    transpose: bool,
    out: &mut BTreeMap<String, HostTensor>,
) -> Result<()> {
    let v = ours
        .get(a)
        .ok_or_else(|| anyhow::anyhow!("{a} is missing"))?;
    out.insert(
        b.to_string(),
        if transpose { transposed(v) } else { v.clone() },
    );
    Ok(())
}

/// The residual block `ours_prefix` as diffusers' ResnetBlock2D `theirs` (what it has of
/// norms, convolutions, time projection and skip).
fn res_block(
    ours: &BTreeMap<String, HostTensor>,
    ours_prefix: &str,
    theirs: &str,
    out: &mut BTreeMap<String, HostTensor>,
) {
    for (a, b) in [
        ("norm1.gamma", "norm1.weight"),
        ("norm1.beta", "norm1.bias"),
        ("conv1.weight", "conv1.weight"),
        ("conv1.bias", "conv1.bias"),
        ("emb_proj.bias", "time_emb_proj.bias"),
        ("norm2.gamma", "norm2.weight"),
        ("norm2.beta", "norm2.bias"),
        ("conv2.weight", "conv2.weight"),
        ("conv2.bias", "conv2.bias"),
        ("skip.weight", "conv_shortcut.weight"),
        ("skip.bias", "conv_shortcut.bias"),
    ] {
        if let Some(t) = ours.get(&format!("{ours_prefix}.{a}")) {
            out.insert(format!("{theirs}.{b}"), t.clone());
        }
    }
    if let Some(t) = ours.get(&format!("{ours_prefix}.emb_proj.weight")) {
        out.insert(format!("{theirs}.time_emb_proj.weight"), transposed(t));
    }
}

/// The attention block `ours_prefix` as diffusers' Attention `theirs`: the fused `qkv`
/// projection split into `to_q`, `to_k`, `to_v`.
fn attention_block(
    ours: &BTreeMap<String, HostTensor>,
    ours_prefix: &str,
    theirs: &str,
    out: &mut BTreeMap<String, HostTensor>,
) -> Result<()> {
    let get = |n: &str| {
        ours.get(&format!("{ours_prefix}.{n}"))
            .ok_or_else(|| anyhow::anyhow!("{ours_prefix}.{n} is missing"))
    };
    out.insert(
        format!("{theirs}.group_norm.weight"),
        get("norm.gamma")?.clone(),
    );
    out.insert(
        format!("{theirs}.group_norm.bias"),
        get("norm.beta")?.clone(),
    );
    let w = get("qkv.weight")?;
    let b = get("qkv.bias")?;
    let (rows, c3) = (w.shape[0], w.shape[1]);
    let c = c3 / 3;
    for (k, name) in ["to_q", "to_k", "to_v"].iter().enumerate() {
        let mut part = Vec::with_capacity(rows * c);
        for r in 0..rows {
            part.extend_from_slice(&w.data[r * c3 + k * c..r * c3 + (k + 1) * c]);
        }
        let part = HostTensor {
            shape: vec![rows, c],
            data: part,
        };
        out.insert(format!("{theirs}.{name}.weight"), transposed(&part));
        out.insert(
            format!("{theirs}.{name}.bias"),
            HostTensor {
                shape: vec![c],
                data: b.data[k * c..(k + 1) * c].to_vec(),
            },
        );
    }
    out.insert(
        format!("{theirs}.to_out.0.weight"),
        transposed(get("proj.weight")?),
    );
    out.insert(format!("{theirs}.to_out.0.bias"), get("proj.bias")?.clone());
    Ok(())
}

/// The files of a diffusers pipeline folder (paths relative to it, and their bytes) for `cfg`'s
/// U-Net with the weights `ours` (this crate's names); an error says what cannot be
/// represented.
pub fn pipeline_files(
    cfg: &RunConfig,
    ours: &BTreeMap<String, HostTensor>,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let u = cfg.unet_config()?;
    let unet = unet_json(&u)?;
    let scheduler = scheduler_json(cfg)?;
    let weights = to_diffusers(ours, &u)?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("JSON values serialize");
    Ok(vec![
        (
            PathBuf::from("model_index.json"),
            pretty(&json!({
                "_class_name": "DDPMPipeline",
                "_diffusers_version": "0.42.1",
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DModel"],
            }))
            .into_bytes(),
        ),
        (
            Path::new("unet").join("config.json"),
            pretty(&unet).into_bytes(),
        ),
        (
            Path::new("unet").join(super::WEIGHTS_FILE),
            to_safetensors(&weights)?,
        ),
        (
            Path::new("scheduler").join("scheduler_config.json"),
            pretty(&scheduler).into_bytes(),
        ),
    ])
}

/// Writes `files` (from [`pipeline_files`]) into the new folder `dir`; one that exists is
/// refused (an export never overwrites).
pub fn write_pipeline(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    if dir.exists() {
        bail!("exists; an export never overwrites");
    }
    for (path, bytes) in files {
        crate::files::write_atomic(&dir.join(path), bytes)?;
    }
    Ok(())
}
