//! diffusers `UNet2DModel` tensor names onto this crate's U-Net parameters (and back): the
//! current attention names (`to_q/to_k/to_v/to_out.0`) and the 2022 ones
//! (`query/key/value/proj_attn`); linear weights transposed ([out, in] → [in, out]); the three
//! attention projections joined into one `qkv`.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::store::tensors::HostTensor;

/// Where a diffusers tensor goes.
enum Target {
    /// A parameter of ours, transposed when it is a linear weight.
    Param { name: String, transpose: bool },
    /// Part `index` (q 0, k 1, v 2) of the `qkv` parameter `name` (weight or bias).
    Qkv {
        name: String,
        index: usize,
        weight: bool,
    },
}

fn leaf(sub: &str) -> Option<(&'static str, bool)> {
    Some(match sub {
        "weight" => ("weight", false),
        "bias" => ("bias", false),
        _ => return None,
    })
}

/// Our name for a residual block's sub-tensor `sub` (e.g. `norm1.weight`) under `prefix`.
fn resnet(prefix: &str, sub: &str) -> Option<Target> {
    let (module, p) = sub.split_once('.')?;
    let (ours, transpose) = match module {
        "norm1" | "norm2" => {
            let leaf = match p {
                "weight" => "gamma",
                "bias" => "beta",
                _ => return None,
            };
            return Some(Target::Param {
                name: format!("{prefix}.{module}.{leaf}"),
                transpose: false,
            });
        }
        "conv1" | "conv2" => (module, false),
        "conv_shortcut" => ("skip", false),
        "time_emb_proj" => ("emb_proj", p == "weight"),
        _ => return None,
    };
    let (p, _) = leaf(p)?;
    Some(Target::Param {
        name: format!("{prefix}.{ours}.{p}"),
        transpose,
    })
}

/// Our name for an attention block's sub-tensor under `prefix`.
fn attention(prefix: &str, sub: &str) -> Option<Target> {
    let (module, p) = sub.rsplit_once('.')?;
    let weight = match p {
        "weight" => true,
        "bias" => false,
        _ => return None,
    };
    let index = match module {
        "to_q" | "query" => 0,
        "to_k" | "key" => 1,
        "to_v" | "value" => 2,
        "to_out.0" | "proj_attn" => {
            return Some(Target::Param {
                name: format!("{prefix}.proj.{p}"),
                transpose: weight,
            });
        }
        "group_norm" => {
            return Some(Target::Param {
                name: format!("{prefix}.norm.{}", if weight { "gamma" } else { "beta" }),
                transpose: false,
            });
        }
        _ => return None,
    };
    Some(Target::Qkv {
        name: format!("{prefix}.qkv.{p}"),
        index,
        weight,
    })
}

/// Where the diffusers tensor `name` goes, or `None` for a name this U-Net has no place for.
fn target(name: &str) -> Option<Target> {
    let param = |n: String, transpose: bool| Some(Target::Param { name: n, transpose });
    match name {
        "conv_in.weight" | "conv_in.bias" | "conv_out.weight" | "conv_out.bias" => {
            return param(name.to_string(), false);
        }
        "conv_norm_out.weight" => return param("norm_out.gamma".into(), false),
        "conv_norm_out.bias" => return param("norm_out.beta".into(), false),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("time_embedding.linear_") {
        let (i, p) = rest.split_once('.')?;
        let (p, _) = leaf(p)?;
        return param(format!("emb{i}.{p}"), p == "weight");
    }
    if let Some(rest) = name.strip_prefix("mid_block.") {
        if let Some(sub) = rest.strip_prefix("resnets.0.") {
            return resnet("mid1", sub);
        }
        if let Some(sub) = rest.strip_prefix("resnets.1.") {
            return resnet("mid2", sub);
        }
        return attention("mid_attn", rest.strip_prefix("attentions.0.")?);
    }
    let (half, ours) = if let Some(r) = name.strip_prefix("down_blocks.") {
        (r, "down")
    } else {
        (name.strip_prefix("up_blocks.")?, "up")
    };
    let (level, rest) = half.split_once('.')?;
    let level: usize = level.parse().ok()?;
    if let Some(r) = rest
        .strip_prefix("downsamplers.0.conv.")
        .or_else(|| rest.strip_prefix("upsamplers.0.conv."))
    {
        let (p, _) = leaf(r)?;
        return param(format!("{ours}.{level}.{ours}.conv.{p}"), false);
    }
    let (kind, rest) = rest.split_once('.')?;
    let (j, sub) = rest.split_once('.')?;
    let j: usize = j.parse().ok()?;
    let stage = format!("{ours}.{level}.stages.{j}");
    match kind {
        "resnets" => resnet(&format!("{stage}.res"), sub),
        "attentions" => attention(&format!("{stage}.attn"), sub),
        _ => None,
    }
}

/// A matrix transposed (PyTorch's [out, in] linear weights ↔ burn's [in, out]).
pub(crate) fn transposed(t: &HostTensor) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = t.data[i * c + j];
        }
    }
    HostTensor {
        shape: vec![c, r],
        data,
    }
}

/// The diffusers tensors of a `UNet2DModel` under this crate's names. Every tensor must have a
/// place (an unknown name is an error naming it); shapes are checked when the network loads.
pub fn from_diffusers(
    tensors: BTreeMap<String, HostTensor>,
    source: &str,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    let mut qkv: BTreeMap<String, [Option<HostTensor>; 3]> = BTreeMap::new();
    for (name, t) in tensors {
        match target(&name) {
            None => bail!(
                "{source}: tensor {name} has no place in this U-Net (a model type or block this \
                 importer does not know)"
            ),
            Some(Target::Param {
                name: ours,
                transpose,
            }) => {
                if transpose && t.shape.len() != 2 {
                    bail!(
                        "{source}: {name} has shape {:?}, expected a matrix",
                        t.shape
                    );
                }
                out.insert(ours, if transpose { transposed(&t) } else { t });
            }
            Some(Target::Qkv {
                name: ours,
                index,
                weight,
            }) => {
                if weight && t.shape.len() != 2 {
                    bail!(
                        "{source}: {name} has shape {:?}, expected a matrix",
                        t.shape
                    );
                }
                let t = if weight { transposed(&t) } else { t };
                qkv.entry(ours).or_default()[index] = Some(t);
            }
        }
    }
    for (name, parts) in qkv {
        let [Some(q), Some(k), Some(v)] = parts else {
            bail!("{source}: the attention projection {name} lacks one of q, k, v");
        };
        // [in, 3·out]: q, k and v side by side in every row; biases end to end.
        let joined = if q.shape.len() == 2 {
            let (rows, c) = (q.shape[0], q.shape[1]);
            if k.shape != q.shape || v.shape != q.shape {
                bail!("{source}: the q, k, v projections of {name} differ in shape");
            }
            let mut data = Vec::with_capacity(rows * 3 * c);
            for r in 0..rows {
                for part in [&q, &k, &v] {
                    data.extend_from_slice(&part.data[r * c..(r + 1) * c]);
                }
            }
            HostTensor {
                shape: vec![rows, 3 * c],
                data,
            }
        } else {
            HostTensor {
                shape: vec![q.data.len() * 3],
                data: [q.data, k.data, v.data].concat(),
            }
        };
        out.insert(name, joined);
    }
    Ok(out)
}
