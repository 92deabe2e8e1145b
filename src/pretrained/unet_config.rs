//! A diffusers `UNet2DModel` `config.json` read onto this crate's U-Net configuration: every key
//! that changes the network is mapped or refused by name; absent keys take diffusers' defaults.

use anyhow::{Result, bail};
use serde_json::{Map, Value};

use crate::model::{TimeFeatures, TimeInjection, UNetConfig};

/// Reads config values with diffusers' defaults, naming the file in every error.
pub(crate) struct Keys<'a> {
    map: &'a Map<String, Value>,
    source: &'a str,
}

impl<'a> Keys<'a> {
    pub(crate) fn new(value: &'a Value, source: &'a str) -> Result<Self> {
        match value.as_object() {
            Some(map) => Ok(Self { map, source }),
            None => bail!("{source}: not a JSON object"),
        }
    }

    /// The value of `key`, or `None` when absent (null is a value here).
    pub(crate) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn bad(&self, key: &str, v: &Value, expected: &str) -> anyhow::Error {
        anyhow::anyhow!("{}: `{key}` is {v}, expected {expected}", self.source)
    }

    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.bad(key, v, "a non-negative integer")),
        }
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| self.bad(key, v, "a number")),
        }
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, v, "true or false")),
        }
    }

    pub(crate) fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.bad(key, v, "a string")),
        }
    }

    fn list<T>(
        &self,
        key: &str,
        default: Vec<T>,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Vec<T>> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(&f).collect::<Option<Vec<T>>>())
                .ok_or_else(|| self.bad(key, v, "a list")),
        }
    }

    /// A refusal naming the key and its value.
    pub(crate) fn refuse(&self, key: &str, why: &str) -> anyhow::Error {
        let v = self.raw(key).cloned().unwrap_or(Value::Null);
        anyhow::anyhow!(
            "{}: `{key}` = {v} cannot be represented: {why}",
            self.source
        )
    }
}

/// The U-Net a diffusers `UNet2DModel` configuration describes.
pub fn unet_config(config: &Value, source: &str) -> Result<UNetConfig> {
    let k = Keys::new(config, source)?;
    let class = k.str_or("_class_name", "UNet2DModel")?;
    if class != "UNet2DModel" {
        bail!(
            "{source}: `_class_name` is {class}; only UNet2DModel (the DDPM U-Net) can be imported"
        );
    }
    let (in_channels, learn_sigma) = channels(&k)?;
    let image_size = image_size(&k)?;
    let blocks = widths(&k)?;
    let base = blocks[0];
    let attention_resolutions = attention_resolutions(&k, blocks.len(), image_size)?;
    refuse_other_designs(&k)?;
    let (time_injection, groups) = time_injection_and_groups(&k, base)?;
    // null: one head per block; absent: diffusers' default of 8 channels per head.
    let num_head_channels =
        match k.raw("attention_head_dim") {
            Some(Value::Null) => None,
            None => Some(8),
            Some(v) => Some(v.as_u64().filter(|&x| x > 0).ok_or_else(|| {
                k.refuse("attention_head_dim", "expected null or a positive integer")
            })? as usize),
        };
    let downsample_padding = k.usize_or("downsample_padding", 1)?;
    if downsample_padding > 1 {
        return Err(k.refuse("downsample_padding", "expected 0 or 1"));
    }
    let config = UNetConfig {
        in_channels,
        out_channels: in_channels,
        image_size,
        base_channels: base,
        channel_mult: blocks.iter().map(|c| c / base).collect(),
        num_res_blocks: k.usize_or("layers_per_block", 2)?,
        attention_resolutions,
        num_heads: 1,
        num_head_channels,
        dropout: k.f64_or("dropout", 0.0)?,
        groups,
        time_features: TimeFeatures::Sinusoidal,
        time_injection,
        resblock_updown: false,
        learn_sigma,
        time_scale: 1.0,
        num_classes: None,
        fourier_features: Vec::new(),
        norm_eps: k.f64_or("norm_eps", 1e-5)?,
        downsample_padding,
        flip_sin_to_cos: k.bool_or("flip_sin_to_cos", true)?,
        freq_shift: k.f64_or("freq_shift", 0.0)?,
        center_input: k.bool_or("center_input_sample", false)?,
    };
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{source}: the network it describes is invalid here: {e}"))?;
    Ok(config)
}

/// The input channels, and whether the output holds a learned variance too (twice as many).
fn channels(k: &Keys) -> Result<(usize, bool)> {
    let in_channels = k.usize_or("in_channels", 3)?;
    let out_channels = k.usize_or("out_channels", 3)?;
    if out_channels == in_channels {
        Ok((in_channels, false))
    } else if out_channels == 2 * in_channels {
        Ok((in_channels, true))
    } else {
        Err(k.refuse(
            "out_channels",
            &format!("expected in_channels ({in_channels}) or twice it (a learned variance)"),
        ))
    }
}

/// The side of the square images (`sample_size`, a number or a square pair).
fn image_size(k: &Keys) -> Result<usize> {
    match k.raw("sample_size") {
        None | Some(Value::Null) => bail!(
            "{}: `sample_size` is missing; the image size must be known",
            k.source
        ),
        Some(Value::Array(a)) => {
            let s: Vec<u64> = a.iter().filter_map(Value::as_u64).collect();
            if s.len() != 2 || s[0] != s[1] {
                return Err(k.refuse("sample_size", "only square images are supported"));
            }
            Ok(s[0] as usize)
        }
        Some(_) => k.usize_or("sample_size", 0),
    }
}

/// Each level's width (`block_out_channels`), every one a multiple of the first.
fn widths(k: &Keys) -> Result<Vec<usize>> {
    let blocks = k.list("block_out_channels", vec![224, 448, 672, 896], |v| {
        v.as_u64().map(|x| x as usize)
    })?;
    let base = *blocks
        .first()
        .ok_or_else(|| k.refuse("block_out_channels", "empty"))?;
    if base == 0 || blocks.iter().any(|c| c % base != 0) {
        return Err(k.refuse(
            "block_out_channels",
            "every level's width must be a multiple of the first (the U-Net's channel multipliers)",
        ));
    }
    Ok(blocks)
}

/// The resolutions with attention, from the down and up block types (which must agree level
/// by level) of `levels` levels on images of side `image_size`.
fn attention_resolutions(k: &Keys, levels: usize, image_size: usize) -> Result<Vec<usize>> {
    let default_down = [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ];
    let default_up = [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ];
    let names = |key: &str, d: &[&'static str]| {
        k.list(key, d.iter().map(|s| s.to_string()).collect(), |v| {
            v.as_str().map(str::to_string)
        })
    };
    let down = names("down_block_types", &default_down)?;
    let up = names("up_block_types", &default_up)?;
    if down.len() != levels || up.len() != levels {
        bail!(
            "{}: {} down blocks and {} up blocks for {levels} entries of `block_out_channels`",
            k.source,
            down.len(),
            up.len(),
        );
    }
    let mut attention_resolutions = Vec::new();
    for (i, d) in down.iter().enumerate() {
        let attn = match d.as_str() {
            "DownBlock2D" => false,
            "AttnDownBlock2D" => true,
            _ => {
                return Err(k.refuse(
                    "down_block_types",
                    &format!("block {i} is {d}; DownBlock2D and AttnDownBlock2D are supported"),
                ));
            }
        };
        let u = &up[levels - 1 - i];
        let up_attn = match u.as_str() {
            "UpBlock2D" => false,
            "AttnUpBlock2D" => true,
            _ => {
                return Err(k.refuse(
                    "up_block_types",
                    &format!("{u}; UpBlock2D and AttnUpBlock2D are supported"),
                ));
            }
        };
        if attn != up_attn {
            return Err(k.refuse(
                "up_block_types",
                &format!(
                    "attention at resolution {} on the way down but not up (or the reverse); this \
                     U-Net has attention at the same resolutions in both halves",
                    image_size >> i
                ),
            ));
        }
        if attn {
            attention_resolutions.push(image_size >> i);
        }
    }
    Ok(attention_resolutions)
}

/// Refuses the designs this U-Net does not have: other resampling, activation, time features,
/// middle block, output scaling, class embeddings.
fn refuse_other_designs(k: &Keys) -> Result<()> {
    for (key, want, what) in [
        ("downsample_type", "conv", "a strided convolution"),
        (
            "upsample_type",
            "conv",
            "nearest upsampling and a convolution",
        ),
        ("act_fn", "silu", "SiLU"),
        (
            "time_embedding_type",
            "positional",
            "sinusoidal time features",
        ),
        (
            "mid_block_type",
            "UNetMidBlock2D",
            "a resnet-attention-resnet middle",
        ),
    ] {
        let v = k.str_or(key, want)?;
        if v != want {
            return Err(k.refuse(key, &format!("this U-Net has {what} (`{want}`)")));
        }
    }
    if !k.bool_or("add_attention", true)? {
        return Err(k.refuse(
            "add_attention",
            "the middle block always has attention here",
        ));
    }
    if k.f64_or("mid_block_scale_factor", 1.0)? != 1.0 {
        return Err(k.refuse("mid_block_scale_factor", "only 1 (no output scaling)"));
    }
    for key in ["class_embed_type", "num_class_embeds"] {
        if k.raw(key).is_some_and(|v| !v.is_null()) {
            return Err(k.refuse(
                key,
                "class-conditional diffusers U-Nets are not supported yet",
            ));
        }
    }
    Ok(())
}

/// How the time embedding (4 × `base` wide) enters the residual blocks, and the GroupNorm
/// groups of blocks and attention (which must be the same).
fn time_injection_and_groups(k: &Keys, base: usize) -> Result<(TimeInjection, usize)> {
    let time_injection = match k.str_or("resnet_time_scale_shift", "default")? {
        "default" => TimeInjection::Add,
        "scale_shift" => TimeInjection::ScaleShift,
        _ => {
            return Err(k.refuse("resnet_time_scale_shift", "expected default or scale_shift"));
        }
    };
    if let Some(d) = k.raw("time_embedding_dim").filter(|v| !v.is_null())
        && d.as_u64() != Some(4 * base as u64)
    {
        return Err(k.refuse(
            "time_embedding_dim",
            &format!(
                "the time embedding is 4 × block_out_channels[0] = {}",
                4 * base
            ),
        ));
    }
    let groups = k.usize_or("norm_num_groups", 32)?;
    match k.raw("attn_norm_num_groups").filter(|v| !v.is_null()) {
        Some(g) if g.as_u64() != Some(groups as u64) => {
            return Err(k.refuse(
                "attn_norm_num_groups",
                "attention normalizes with the same groups as the residual blocks here",
            ));
        }
        // diffusers' middle attention then has no normalization at all.
        None if time_injection == TimeInjection::ScaleShift => {
            return Err(k.refuse(
                "attn_norm_num_groups",
                "with resnet_time_scale_shift = scale_shift and no attn_norm_num_groups, \
                 diffusers' middle attention has no GroupNorm, which this U-Net always has",
            ));
        }
        _ => {}
    }
    Ok((time_injection, groups))
}
