//! The Inception-v3 of pytorch-fid (the TensorFlow FID graph `pool_3`, as ported by Seitzer's
//! pytorch-fid): its blocks, its pooling quirks (average pools that exclude padding in the
//! Mixed 5, 6 and 7b blocks; a max pool in Mixed_7c), bilinear resizing to 299×299
//! (`align_corners = False`) and the input scaling from [0, 1] to [-1, 1]. It returns the
//! 2048-d average-pooled features FID is computed on.
//!
//! Weights come from pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (read directly, or
//! after `scripts/inception_to_safetensors.py`) or, for tests, from [`SyntheticWeights`], a
//! hash of each parameter's name and index that `tests/fixtures/make_fid_fixture.py`
//! reproduces to run pytorch-fid's own model with the same numbers. Batch norms are folded into
//! the convolutions on loading (eval mode, ε = 0.001).

use crate::kernels;
use anyhow::{Context, Result, bail};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::HashMap;
use std::path::Path;

/// The side the network sees.
pub const INPUT_SIZE: usize = 299;
/// Feature dimensions.
pub const FEATURES: usize = 2048;
const BN_EPSILON: f64 = 1e-3;

/// Where parameters come from: `tensor(name, shape)` gives the values of the named parameter
/// (pytorch-fid's state-dict names), row-major, after checking the shape.
pub trait Weights {
    /// The parameter `name`, which must have `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

/// A PyTorch checkpoint (`.pth`), read without Python.
pub struct PthWeights {
    reader: pytorch_reader::PytorchReader,
    path: String,
}

impl PthWeights {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let reader = pytorch_reader::PytorchReader::new(path)
            .with_context(|| format!("{}: not a readable PyTorch checkpoint", path.display()))?;
        Ok(Self {
            reader,
            path: path.display().to_string(),
        })
    }
}

fn check_shape(path: &str, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        bail!(
            "{path}: parameter {name} has shape {got:?}, the Inception-v3 of pytorch-fid needs {want:?} (is this pt_inception-2015-12-05-6726825d.pth?)"
        );
    }
    Ok(())
}

impl Weights for PthWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.reader.get(name).with_context(|| {
            format!(
                "{}: no parameter {name} (is this pytorch-fid's pt_inception-2015-12-05-6726825d.pth?)",
                self.path
            )
        })?;
        check_shape(&self.path, name, t.shape(), shape)?;
        let bytes = t.read()?;
        Ok(match t.dtype() {
            pytorch_reader::DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            pytorch_reader::DType::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_ne_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => bail!("{}: parameter {name} is {other:?}, expected f32", self.path),
        })
    }
}

/// A safetensors file with pytorch-fid's parameter names (f32 or f64), parsed once on opening.
pub struct SafetensorsWeights {
    /// Name → (dtype, shape, raw little-endian bytes).
    tensors: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    path: String,
}

impl SafetensorsWeights {
    /// Reads `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_capped(path, crate::files::BINARY_MAX)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
            .collect();
        Ok(Self {
            tensors,
            path: path.display().to_string(),
        })
    }
}

impl Weights for SafetensorsWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (dtype, got, data) = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: no parameter {name}", self.path))?;
        check_shape(&self.path, name, got, shape)?;
        let values = crate::store::tensors::float_values(*dtype, data).with_context(|| {
            format!("{}: parameter {name} is {dtype:?}, expected F32", self.path)
        })?;
        Ok(values.into_iter().map(|v| v as f32).collect())
    }
}

/// Opens a weights file by its content: a safetensors file or a PyTorch checkpoint.
pub fn open_weights(path: &Path) -> Result<Box<dyn Weights>> {
    if !path.exists() {
        bail!(
            "--inception {}: no such file (pytorch-fid's weights: https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)",
            path.display()
        );
    }
    if !path.is_file() {
        bail!(
            "--inception {}: not a regular file (a directory, device or pipe); give the weights \
             file itself",
            path.display()
        );
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        Ok(Box::new(SafetensorsWeights::open(path)?))
    } else {
        Ok(Box::new(PthWeights::open(path)?))
    }
}

/// Deterministic stand-in weights for tests: every value is a function of the parameter's name
/// and index only (SplitMix64 of FNV-1a(name) + index), scaled like a He-initialized ReLU
/// network with batch-norm statistics near the identity.
pub struct SyntheticWeights;

/// FNV-1a, 64 bit.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's output function.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1) from (key, index).
pub fn synthetic_uniform(key: u64, i: u64) -> f64 {
    (splitmix64(key.wrapping_add(i)) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

impl Weights for SyntheticWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = fnv1a(name);
        let n: usize = shape.iter().product();
        let (scale, offset) = if name.ends_with("conv.weight") {
            let fan_in: usize = shape[1..].iter().product();
            ((6.0 / fan_in as f64).sqrt(), 0.0)
        } else if name.ends_with("bn.weight") {
            (0.1, 1.0)
        } else if name.ends_with("bn.running_var") {
            (0.5, 1.0)
        } else {
            (0.1, 0.0)
        };
        Ok((0..n as u64)
            .map(|i| (offset + scale * synthetic_uniform(key, i)) as f32)
            .collect())
    }
}

/// Every parameter the network reads, with its shape, in loading order.
pub fn parameter_shapes() -> Result<Vec<(String, Vec<usize>)>> {
    struct Recorder(std::cell::RefCell<Vec<(String, Vec<usize>)>>);
    impl Weights for Recorder {
        fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
            self.0.borrow_mut().push((name.to_string(), shape.to_vec()));
            Ok(vec![
                if name.ends_with("running_var") {
                    1.0
                } else {
                    0.0
                };
                shape.iter().product()
            ])
        }
    }
    let r = Recorder(Default::default());
    InceptionV3::load(&r, &crate::device::any()?)?;
    Ok(r.0.into_inner())
}

/// Writes [`SyntheticWeights`] as a safetensors file with pytorch-fid's names: a stand-in for
/// the real weights in tests and for trying the FID pipeline end to end. FIDs computed with it
/// mean nothing.
pub fn write_synthetic_weights(path: &Path) -> Result<()> {
    let mut tensors = std::collections::BTreeMap::new();
    for (name, shape) in parameter_shapes()? {
        let data = SyntheticWeights.tensor(&name, &shape)?;
        tensors.insert(name, crate::store::tensors::HostTensor { shape, data });
    }
    crate::files::write_atomic(path, &crate::store::tensors::to_safetensors(&tensors)?)
}

/// Convolution (no bias) + batch norm (folded) + ReLU, pytorch-fid's `BasicConv2d`.
struct BasicConv {
    conv: Conv2d,
}

impl BasicConv {
    #[allow(clippy::too_many_arguments)]
    fn load(
        w: &dyn Weights,
        name: &str,
        channels: [usize; 2],
        kernel: [usize; 2],
        stride: usize,
        pad: [usize; 2],
        device: &Device,
    ) -> Result<Self> {
        let [cin, cout] = channels;
        let weight = w.tensor(
            &format!("{name}.conv.weight"),
            &[cout, cin, kernel[0], kernel[1]],
        )?;
        let gamma = w.tensor(&format!("{name}.bn.weight"), &[cout])?;
        let beta = w.tensor(&format!("{name}.bn.bias"), &[cout])?;
        let mean = w.tensor(&format!("{name}.bn.running_mean"), &[cout])?;
        let var = w.tensor(&format!("{name}.bn.running_var"), &[cout])?;
        let per_out = weight.len() / cout;
        let mut folded = vec![0f32; weight.len()];
        let mut bias = vec![0f32; cout];
        for c in 0..cout {
            let s = gamma[c] as f64 / (var[c] as f64 + BN_EPSILON).sqrt();
            for i in 0..per_out {
                folded[c * per_out + i] = (weight[c * per_out + i] as f64 * s) as f32;
            }
            bias[c] = (beta[c] as f64 - mean[c] as f64 * s) as f32;
        }
        let mut conv = Conv2dConfig::new(channels, kernel)
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad[0], pad[1], pad[0], pad[1]))
            .with_initializer(Initializer::Zeros)
            .init(device);
        conv.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(folded, [cout, cin, kernel[0], kernel[1]]),
            device,
        ));
        conv.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [cout]),
            device,
        )));
        Ok(Self { conv })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(kernels::conv2d(&self.conv, x))
    }
}

/// Loads the convolutions of one block: `(suffix, [cin, cout], kernel, stride, padding)`.
type ConvSpec = (&'static str, [usize; 2], [usize; 2], usize, [usize; 2]);

fn load_all(
    w: &dyn Weights,
    block: &str,
    specs: &[ConvSpec],
    device: &Device,
) -> Result<HashMap<&'static str, BasicConv>> {
    specs
        .iter()
        .map(|&(name, ch, k, s, p)| {
            let full = if block.is_empty() {
                name.to_string()
            } else {
                format!("{block}.{name}")
            };
            Ok((name, BasicConv::load(w, &full, ch, k, s, p, device)?))
        })
        .collect()
}

fn avg_pool_3x3_exclude_pad(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(
        x,
        AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false),
    )
}

fn max_pool_3x3(x: Tensor<4>, stride: usize, pad: usize) -> Tensor<4> {
    max_pool2d(
        x,
        MaxPoolOptions::new([3, 3])
            .with_stride([stride, stride])
            .with_padding([pad, pad]),
    )
}

/// The kinds of mixed block (torchvision's InceptionA–E with pytorch-fid's pooling patches).
#[derive(Debug, Clone, Copy)]
enum Kind {
    A,
    B,
    C,
    D,
    /// InceptionE with an average pool (Mixed_7b).
    E1,
    /// InceptionE with a max pool (Mixed_7c).
    E2,
}

struct Mixed {
    kind: Kind,
    convs: HashMap<&'static str, BasicConv>,
}

impl Mixed {
    fn load(w: &dyn Weights, name: &str, kind: Kind, cin: usize, device: &Device) -> Result<Self> {
        let specs: Vec<ConvSpec> = match kind {
            Kind::A => {
                let pool = if name == "Mixed_5b" { 32 } else { 64 };
                vec![
                    ("branch1x1", [cin, 64], [1, 1], 1, [0, 0]),
                    ("branch5x5_1", [cin, 48], [1, 1], 1, [0, 0]),
                    ("branch5x5_2", [48, 64], [5, 5], 1, [2, 2]),
                    ("branch3x3dbl_1", [cin, 64], [1, 1], 1, [0, 0]),
                    ("branch3x3dbl_2", [64, 96], [3, 3], 1, [1, 1]),
                    ("branch3x3dbl_3", [96, 96], [3, 3], 1, [1, 1]),
                    ("branch_pool", [cin, pool], [1, 1], 1, [0, 0]),
                ]
            }
            Kind::B => vec![
                ("branch3x3", [cin, 384], [3, 3], 2, [0, 0]),
                ("branch3x3dbl_1", [cin, 64], [1, 1], 1, [0, 0]),
                ("branch3x3dbl_2", [64, 96], [3, 3], 1, [1, 1]),
                ("branch3x3dbl_3", [96, 96], [3, 3], 2, [0, 0]),
            ],
            Kind::C => {
                let c7 = match name {
                    "Mixed_6b" => 128,
                    "Mixed_6e" => 192,
                    _ => 160,
                };
                vec![
                    ("branch1x1", [cin, 192], [1, 1], 1, [0, 0]),
                    ("branch7x7_1", [cin, c7], [1, 1], 1, [0, 0]),
                    ("branch7x7_2", [c7, c7], [1, 7], 1, [0, 3]),
                    ("branch7x7_3", [c7, 192], [7, 1], 1, [3, 0]),
                    ("branch7x7dbl_1", [cin, c7], [1, 1], 1, [0, 0]),
                    ("branch7x7dbl_2", [c7, c7], [7, 1], 1, [3, 0]),
                    ("branch7x7dbl_3", [c7, c7], [1, 7], 1, [0, 3]),
                    ("branch7x7dbl_4", [c7, c7], [7, 1], 1, [3, 0]),
                    ("branch7x7dbl_5", [c7, 192], [1, 7], 1, [0, 3]),
                    ("branch_pool", [cin, 192], [1, 1], 1, [0, 0]),
                ]
            }
            Kind::D => vec![
                ("branch3x3_1", [cin, 192], [1, 1], 1, [0, 0]),
                ("branch3x3_2", [192, 320], [3, 3], 2, [0, 0]),
                ("branch7x7x3_1", [cin, 192], [1, 1], 1, [0, 0]),
                ("branch7x7x3_2", [192, 192], [1, 7], 1, [0, 3]),
                ("branch7x7x3_3", [192, 192], [7, 1], 1, [3, 0]),
                ("branch7x7x3_4", [192, 192], [3, 3], 2, [0, 0]),
            ],
            Kind::E1 | Kind::E2 => vec![
                ("branch1x1", [cin, 320], [1, 1], 1, [0, 0]),
                ("branch3x3_1", [cin, 384], [1, 1], 1, [0, 0]),
                ("branch3x3_2a", [384, 384], [1, 3], 1, [0, 1]),
                ("branch3x3_2b", [384, 384], [3, 1], 1, [1, 0]),
                ("branch3x3dbl_1", [cin, 448], [1, 1], 1, [0, 0]),
                ("branch3x3dbl_2", [448, 384], [3, 3], 1, [1, 1]),
                ("branch3x3dbl_3a", [384, 384], [1, 3], 1, [0, 1]),
                ("branch3x3dbl_3b", [384, 384], [3, 1], 1, [1, 0]),
                ("branch_pool", [cin, 192], [1, 1], 1, [0, 0]),
            ],
        };
        Ok(Self {
            kind,
            convs: load_all(w, name, &specs, device)?,
        })
    }

    fn chain(&self, names: &[&str], x: Tensor<4>) -> Tensor<4> {
        names.iter().fold(x, |h, n| self.convs[n].forward(h))
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = |n: &str, h: Tensor<4>| self.convs[n].forward(h);
        let parts = match self.kind {
            Kind::A => vec![
                c("branch1x1", x.clone()),
                self.chain(&["branch5x5_1", "branch5x5_2"], x.clone()),
                self.chain(
                    &["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
                    x.clone(),
                ),
                c("branch_pool", avg_pool_3x3_exclude_pad(x)),
            ],
            Kind::B => vec![
                c("branch3x3", x.clone()),
                self.chain(
                    &["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
                    x.clone(),
                ),
                max_pool_3x3(x, 2, 0),
            ],
            Kind::C => vec![
                c("branch1x1", x.clone()),
                self.chain(&["branch7x7_1", "branch7x7_2", "branch7x7_3"], x.clone()),
                self.chain(
                    &[
                        "branch7x7dbl_1",
                        "branch7x7dbl_2",
                        "branch7x7dbl_3",
                        "branch7x7dbl_4",
                        "branch7x7dbl_5",
                    ],
                    x.clone(),
                ),
                c("branch_pool", avg_pool_3x3_exclude_pad(x)),
            ],
            Kind::D => vec![
                self.chain(&["branch3x3_1", "branch3x3_2"], x.clone()),
                self.chain(
                    &[
                        "branch7x7x3_1",
                        "branch7x7x3_2",
                        "branch7x7x3_3",
                        "branch7x7x3_4",
                    ],
                    x.clone(),
                ),
                max_pool_3x3(x, 2, 0),
            ],
            Kind::E1 | Kind::E2 => {
                let b3 = c("branch3x3_1", x.clone());
                let bd = self.chain(&["branch3x3dbl_1", "branch3x3dbl_2"], x.clone());
                let pooled = match self.kind {
                    Kind::E1 => avg_pool_3x3_exclude_pad(x.clone()),
                    _ => max_pool_3x3(x.clone(), 1, 1),
                };
                vec![
                    c("branch1x1", x),
                    c("branch3x3_2a", b3.clone()),
                    c("branch3x3_2b", b3),
                    c("branch3x3dbl_3a", bd.clone()),
                    c("branch3x3dbl_3b", bd),
                    c("branch_pool", pooled),
                ]
            }
        };
        Tensor::cat(parts, 1)
    }
}

/// pytorch-fid's `InceptionV3([3])`: images in [0, 1] → 2048-d pool_3 features.
pub struct InceptionV3 {
    stem: HashMap<&'static str, BasicConv>,
    mixed: Vec<Mixed>,
    device: Device,
}

impl InceptionV3 {
    /// Builds the network from `weights`.
    pub fn load(weights: &dyn Weights, device: &Device) -> Result<Self> {
        let stem = load_all(
            weights,
            "",
            &[
                ("Conv2d_1a_3x3", [3, 32], [3, 3], 2, [0, 0]),
                ("Conv2d_2a_3x3", [32, 32], [3, 3], 1, [0, 0]),
                ("Conv2d_2b_3x3", [32, 64], [3, 3], 1, [1, 1]),
                ("Conv2d_3b_1x1", [64, 80], [1, 1], 1, [0, 0]),
                ("Conv2d_4a_3x3", [80, 192], [3, 3], 1, [0, 0]),
            ],
            device,
        )?;
        let blocks = [
            ("Mixed_5b", Kind::A, 192),
            ("Mixed_5c", Kind::A, 256),
            ("Mixed_5d", Kind::A, 288),
            ("Mixed_6a", Kind::B, 288),
            ("Mixed_6b", Kind::C, 768),
            ("Mixed_6c", Kind::C, 768),
            ("Mixed_6d", Kind::C, 768),
            ("Mixed_6e", Kind::C, 768),
            ("Mixed_7a", Kind::D, 768),
            ("Mixed_7b", Kind::E1, 1280),
            ("Mixed_7c", Kind::E2, 2048),
        ];
        let mixed = blocks
            .iter()
            .map(|&(name, kind, cin)| Mixed::load(weights, name, kind, cin, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stem,
            mixed,
            device: device.clone(),
        })
    }

    /// Features of `n` RGB images `[n, 3, h, w]` with values in [0, 1], row-major `[n, 2048]`.
    pub fn features(&self, images: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
        assert_eq!(
            images.len(),
            n * 3 * h * w,
            "inception: image buffer length"
        );
        if n == 0 {
            return Vec::new();
        }
        let mut x = resize_bilinear(images, n * 3, [h, w], [INPUT_SIZE, INPUT_SIZE]);
        x.iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
        let x = Tensor::<4>::from_data(
            TensorData::new(x, [n, 3, INPUT_SIZE, INPUT_SIZE]),
            &self.device,
        );
        let s = |name: &str, x: Tensor<4>| self.stem[name].forward(x);
        let x = s("Conv2d_2b_3x3", s("Conv2d_2a_3x3", s("Conv2d_1a_3x3", x)));
        let x = max_pool_3x3(x, 2, 0);
        let x = max_pool_3x3(s("Conv2d_4a_3x3", s("Conv2d_3b_1x1", x)), 2, 0);
        let x = self.mixed.iter().fold(x, |h, m| m.forward(h));
        let [b, c, _, _] = x.dims();
        let pooled = x.mean_dim(3).mean_dim(2).reshape([b, c]);
        pooled
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 features")
    }
}

/// Bilinear resizing of `planes` planes, PyTorch's `interpolate(mode="bilinear",
/// align_corners=False)` without antialiasing: source coordinate (d + ½)·in/out − ½, clamped
/// at 0, in f32 as PyTorch computes it.
pub fn resize_bilinear(src: &[f32], planes: usize, from: [usize; 2], to: [usize; 2]) -> Vec<f32> {
    if from == to {
        return src.to_vec();
    }
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|d| {
                let s = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(n_in - 1);
                let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
                let l1 = s - i0 as f32;
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (ys, xs) = (axis(from[0], to[0]), axis(from[1], to[1]));
    let mut out = vec![0f32; planes * to[0] * to[1]];
    for (p, plane) in out.chunks_mut(to[0] * to[1]).enumerate() {
        let s = &src[p * from[0] * from[1]..(p + 1) * from[0] * from[1]];
        for (oy, &(y0, y1, hy0, hy1)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in xs.iter().enumerate() {
                let at = |y: usize, x: usize| s[y * from[1] + x];
                plane[oy * to[1] + ox] = hy0 * (wx0 * at(y0, x0) + wx1 * at(y0, x1))
                    + hy1 * (wx0 * at(y1, x0) + wx1 * at(y1, x1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fid_inception.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    /// Against pytorch-fid's own network with the same synthetic weights
    /// (tests/fixtures/make_fid_fixture.py): 1e-4 relative, as the port must be.
    #[test]
    fn features_match_pytorch_fid() {
        let f = fixture();
        let images: Vec<f32> = floats(&f["images"]).iter().map(|&v| v as f32).collect();
        let want = floats(&f["features"]);
        let net = InceptionV3::load(&SyntheticWeights, &Device::flex()).unwrap();
        let got = net.features(&images, 2, 32, 32);
        assert_eq!(got.len(), want.len());
        let norm = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
        let mut worst = 0f64;
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((*g as f64 - w).abs() / (w.abs() + 1e-2 * norm));
        }
        eprintln!("inception port vs pytorch-fid: worst relative difference {worst:.2e}");
        assert!(worst < 1e-4, "worst relative difference {worst}");
    }

    /// A real torch.save checkpoint (written by make_fid_fixture.py) holds the synthetic values.
    #[test]
    fn pth_checkpoints_are_read_without_python() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/inception_head.pth"
        );
        let w = open_weights(Path::new(path)).unwrap();
        for (name, shape) in [
            ("Conv2d_1a_3x3.conv.weight", vec![32, 3, 3, 3]),
            ("Conv2d_1a_3x3.bn.running_var", vec![32]),
        ] {
            assert_eq!(
                w.tensor(name, &shape).unwrap(),
                SyntheticWeights.tensor(name, &shape).unwrap()
            );
        }
        let err = w
            .tensor("Conv2d_1a_3x3.conv.weight", &[32, 3, 5, 5])
            .unwrap_err();
        assert!(format!("{err:#}").contains("[32, 3, 3, 3]"), "{err:#}");
        assert!(
            format!(
                "{:#}",
                w.tensor("Mixed_5b.branch1x1.conv.weight", &[64, 192, 1, 1])
                    .unwrap_err()
            )
            .contains("no parameter")
        );
    }

    #[test]
    fn synthetic_values_follow_their_definition() {
        // SplitMix64 reference value (Vigna's splitmix64.c from state 0: first output).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        let v = SyntheticWeights
            .tensor("x.bn.running_var", &[1000])
            .unwrap();
        assert!(v.iter().all(|&x| (0.5..1.5).contains(&x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / 1000.0;
        // U(0.5, 1.5): mean 1, standard error of the mean 0.289/√1000 ≈ 0.009.
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
    }

    #[test]
    fn resize_matches_hand_computed_bilinear_values() {
        // 2 → 4 along a row: source x = (d + ½)/2 − ½ = −0.25 (clamped to 0), 0.25, 0.75, 1.25
        // (upper neighbour clamped): values a, 0.75a + 0.25b, 0.25a + 0.75b, b.
        let out = resize_bilinear(&[1.0, 5.0], 1, [1, 2], [1, 4]);
        assert_eq!(out, vec![1.0, 2.0, 4.0, 5.0]);
        // Same size is the identity; a constant image stays constant at any size.
        assert_eq!(
            resize_bilinear(&[1.0, 2.0], 1, [1, 2], [1, 2]),
            vec![1.0, 2.0]
        );
        let c = resize_bilinear(&[0.3; 28 * 28], 1, [28, 28], [299, 299]);
        assert!(c.iter().all(|&v| (v - 0.3).abs() < 1e-6));
    }

    #[test]
    fn wrong_weights_are_clear_errors() {
        struct Short;
        impl Weights for Short {
            fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
                check_shape("w.safetensors", name, &shape[..1], shape)?;
                Ok(vec![0.0; shape.iter().product()])
            }
        }
        let err = InceptionV3::load(&Short, &Device::flex()).err().unwrap();
        assert!(
            format!("{err:#}").contains("Conv2d_1a_3x3.conv.weight has shape [32]"),
            "{err:#}"
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pth");
        assert!(format!("{:#}", open_weights(&missing).err().unwrap()).contains("no such file"));
        let junk = dir.path().join("junk.pth");
        std::fs::write(&junk, b"not a checkpoint").unwrap();
        assert!(
            format!("{:#}", open_weights(&junk).err().unwrap())
                .contains("not a readable PyTorch checkpoint")
        );
    }
}
