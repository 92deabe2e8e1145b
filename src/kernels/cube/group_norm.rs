//! GroupNorm (with an optional per-channel shift before it and SiLU after it) as two CubeCL
//! kernels, forward and backward, one cube per (image, group). Burn composes the same forward
//! pass from about a dozen tensor operations (two reductions and the elementwise work around
//! them, each its own launch and pass over memory); here the forward pass reads the group three
//! times and writes it once, and the backward pass reads it twice and writes ∂L/∂x once.
//!
//! Sums are taken in f32 whatever the tensors' float type, the variance in two passes (the mean
//! first) rather than from E[x²] − E[x]².

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::ops::permute_nhwc_to_nchw;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Units per cube: a power of two (the tree reduction halves it), at most this, and at most
/// what the device allows.
const MAX_UNITS: usize = 256;

/// Adds up what every unit of the cube wrote at `shared[k·units + unit]`, for `k < count`: on
/// return `shared[k·units]` holds the k-th total (read it, then `sync_cube` before the slots are
/// written again).
#[cube]
fn cube_sums(shared: &mut Shared<[f32]>, #[comptime] units: usize, #[comptime] count: usize) {
    sync_cube();
    let unit = UNIT_POS_X as usize;
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if unit < stride {
            #[unroll]
            for k in 0..count {
                let here = k * units + unit;
                shared[here] += shared[here + stride];
            }
        }
        sync_cube();
        stride /= 2;
    }
}

/// Where element (image, channel, pixel) of a `[B, C, H, W]` input lies in its buffer: the
/// host makes sure H and W merge into one pixel axis and gives its stride (NCHW and
/// channels-last layouts both merge), so every layout is read without a copy.
#[cube]
fn at<F: Float>(t: &Tensor<F>, image: usize, channel: usize, pixel: usize, stride: u32) -> usize {
    image * t.stride(0) + channel * t.stride(1) + pixel * stride as usize
}

/// The (image, group) of this cube, whose cubes may spread over two dimensions (a device allows
/// at most 65,535 in some).
#[cube]
fn image_group() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// The shift of (image, channel) as f32, 0 without one.
#[cube]
fn shift_of<F: Float>(
    shift: &Tensor<F>,
    image: usize,
    channel: usize,
    #[comptime] has_shift: bool,
) -> f32 {
    let mut v = 0.0f32;
    if has_shift {
        v = f32::cast_from(shift[image * shift.stride(0) + channel * shift.stride(1)]);
    }
    v
}

/// ∂L/∂z for z = x̂·γ + β, given ∂L/∂y: SiLU's derivative σ(z)(1 + z(1 − σ(z))) when y = SiLU(z).
#[cube]
fn grad_pre_activation(z: f32, dy: f32, #[comptime] with_silu: bool) -> f32 {
    let mut dz = dy;
    if with_silu {
        let s = 1.0f32 / (1.0f32 + f32::exp(-z));
        dz = dy * s * (1.0f32 + z * (1.0f32 - s));
    }
    dz
}

// Both kernels walk a group channel by channel, the cube's units spread over the pixels: no
// index divisions, and in a channels-last layout the next channel's values are the neighbours
// of this one's, still in cache.

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn norm_forward_kernel<F: Float>(
    x: &Tensor<F>,
    shift: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    y: &mut Tensor<F>,
    stats: &mut Tensor<f32>,
    groups: u32,
    x_pixel: u32,
    epsilon: f32,
    #[comptime] units: usize,
    #[comptime] has_shift: bool,
    #[comptime] with_silu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let bg = image_group();
    let groups = groups as usize;
    // The same for every unit of a cube: no barrier is left waiting.
    if bg >= x.shape(0) * groups {
        terminate!();
    }
    let per = x.shape(1) / groups;
    let spatial = x.shape(2) * x.shape(3);
    let image = bg / groups;
    let c0 = (bg % groups) * per;
    let unit = UNIT_POS_X as usize;
    let dim = CUBE_DIM_X as usize;
    let mut shared = Shared::<[f32]>::new_slice(units);

    let mut acc = 0.0f32;
    for k in 0..per {
        let s = shift_of::<F>(shift, image, c0 + k, has_shift);
        let mut i = unit;
        while i < spatial {
            acc += f32::cast_from(x[at::<F>(x, image, c0 + k, i, x_pixel)]) + s;
            i += dim;
        }
    }
    shared[unit] = acc;
    cube_sums(&mut shared, units, 1usize);
    let n = f32::cast_from(per * spatial);
    let mean = shared[0] / n;
    sync_cube();

    let mut acc = 0.0f32;
    for k in 0..per {
        let s = shift_of::<F>(shift, image, c0 + k, has_shift) - mean;
        let mut i = unit;
        while i < spatial {
            let d = f32::cast_from(x[at::<F>(x, image, c0 + k, i, x_pixel)]) + s;
            acc += d * d;
            i += dim;
        }
    }
    shared[unit] = acc;
    cube_sums(&mut shared, units, 1usize);
    let rstd = 1.0f32 / f32::sqrt(shared[0] / n + epsilon);
    if unit == 0 {
        stats[2 * bg] = mean;
        stats[2 * bg + 1] = rstd;
    }

    for k in 0..per {
        let c = c0 + k;
        let s = shift_of::<F>(shift, image, c, has_shift) - mean;
        let (g_c, b_c) = (f32::cast_from(gamma[c]), f32::cast_from(beta[c]));
        let mut i = unit;
        while i < spatial {
            let xhat = (f32::cast_from(x[at::<F>(x, image, c, i, x_pixel)]) + s) * rstd;
            let mut v = xhat * g_c + b_c;
            if with_silu {
                v /= 1.0f32 + f32::exp(-v);
            }
            let to = image * y.stride(0) + c * y.stride(1) + i * y.stride(3);
            y[to] = F::cast_from(v);
            i += dim;
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn norm_backward_kernel<F: Float>(
    x: &Tensor<F>,
    shift: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    stats: &Tensor<f32>,
    dy: &Tensor<F>,
    dx: &mut Tensor<F>,
    dshift: &mut Tensor<f32>,
    dgamma: &mut Tensor<f32>,
    dbeta: &mut Tensor<f32>,
    groups: u32,
    x_pixel: u32,
    dy_pixel: u32,
    #[comptime] units: usize,
    #[comptime] has_shift: bool,
    #[comptime] with_silu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let bg = image_group();
    let groups = groups as usize;
    // The same for every unit of a cube: no barrier is left waiting.
    if bg >= x.shape(0) * groups {
        terminate!();
    }
    let channels = x.shape(1);
    let per = channels / groups;
    let spatial = x.shape(2) * x.shape(3);
    let image = bg / groups;
    let c0 = (bg % groups) * per;
    let unit = UNIT_POS_X as usize;
    let dim = CUBE_DIM_X as usize;
    let mean = stats[2 * bg];
    let rstd = stats[2 * bg + 1];
    let mut shared = Shared::<[f32]>::new_slice(3 * units);

    // Per channel: Σ ∂L/∂z·x̂ (∂L/∂γ of this image), Σ ∂L/∂z (∂L/∂β), Σ x̂; over the group,
    // Σ ∂L/∂x̂ = Σ_c γ_c Σ ∂L/∂z and Σ ∂L/∂x̂·x̂ = Σ_c γ_c Σ ∂L/∂z·x̂.
    let mut sum_g = 0.0f32;
    let mut sum_gx = 0.0f32;
    for k in 0..per {
        let c = c0 + k;
        let bc = image * channels + c;
        let s = shift_of::<F>(shift, image, c, has_shift) - mean;
        let (g_c, b_c) = (f32::cast_from(gamma[c]), f32::cast_from(beta[c]));
        let mut a_gx = 0.0f32;
        let mut a_g = 0.0f32;
        let mut a_x = 0.0f32;
        let mut i = unit;
        while i < spatial {
            let xhat = (f32::cast_from(x[at::<F>(x, image, c, i, x_pixel)]) + s) * rstd;
            let d = f32::cast_from(dy[at::<F>(dy, image, c, i, dy_pixel)]);
            let dz = grad_pre_activation(xhat * g_c + b_c, d, with_silu);
            a_gx += dz * xhat;
            a_g += dz;
            a_x += xhat;
            i += dim;
        }
        shared[unit] = a_gx;
        shared[units + unit] = a_g;
        shared[2 * units + unit] = a_x;
        cube_sums(&mut shared, units, 3usize);
        let (t_gx, t_g, t_x) = (shared[0], shared[units], shared[2 * units]);
        sync_cube();
        if unit == 0 {
            dgamma[bc] = t_gx;
            dbeta[bc] = t_g;
            if has_shift {
                dshift[bc] = t_x;
            }
        }
        sum_g += g_c * t_g;
        sum_gx += g_c * t_gx;
    }
    let inv_n = 1.0f32 / f32::cast_from(per * spatial);
    let (m_g, m_gx) = (sum_g * inv_n, sum_gx * inv_n);

    // ∂L/∂x = rstd·(∂L/∂x̂ − mean ∂L/∂x̂ − x̂·mean ∂L/∂x̂·x̂).
    for k in 0..per {
        let c = c0 + k;
        let s = shift_of::<F>(shift, image, c, has_shift) - mean;
        let (g_c, b_c) = (f32::cast_from(gamma[c]), f32::cast_from(beta[c]));
        let mut i = unit;
        while i < spatial {
            let xhat = (f32::cast_from(x[at::<F>(x, image, c, i, x_pixel)]) + s) * rstd;
            let d = f32::cast_from(dy[at::<F>(dy, image, c, i, dy_pixel)]);
            let dz = grad_pre_activation(xhat * g_c + b_c, d, with_silu);
            let to = image * dx.stride(0) + c * dx.stride(1) + i * dx.stride(3);
            dx[to] = F::cast_from(rstd * (dz * g_c - m_g - xhat * m_gx));
            i += dim;
        }
    }
    // ∂L/∂shift of a channel is the sum of its ∂L/∂x, from the channel's sums (unit 0 wrote
    // them and reads them back itself).
    if has_shift && unit == 0 {
        let hw = f32::cast_from(spatial);
        for k in 0..per {
            let bc = image * channels + c0 + k;
            let g_c = f32::cast_from(gamma[c0 + k]);
            dshift[bc] = rstd * (g_c * dbeta[bc] - hw * m_g - dshift[bc] * m_gx);
        }
    }
}

/// The units of one cube: a power of two, at least a plane (32) and at most [`MAX_UNITS`] and
/// what the device allows, otherwise the pixels of a channel rounded up (they are what the
/// units share).
fn units(x: &CubeTensor, spatial: usize) -> usize {
    let props = x.client.properties();
    let most = (props.hardware.max_units_per_cube as usize)
        .min(props.hardware.max_cube_dim.0 as usize)
        .clamp(1, MAX_UNITS);
    let most = 1 << most.ilog2();
    spatial.next_power_of_two().clamp(32.min(most), most)
}

/// The stride of H·W as one pixel axis of `[B, C, H, W]`, if H and W merge into one (NCHW and
/// channels-last layouts do; the stride of a dimension of size 1 may be anything).
fn pixel_stride(x: &CubeTensor) -> Option<usize> {
    let [_, _, h, w] = x.meta.shape().dims::<4>();
    let s = x.meta.strides();
    match (h, w) {
        (_, 1) => Some(s[2]),
        (1, _) => Some(s[3]),
        _ => (s[2] == w * s[3]).then_some(s[3]),
    }
}

/// x `[B, C, H, W]` as the kernels read it: unchanged when H and W merge into one pixel axis,
/// else contiguous. Returns it, its pixel stride and (B, C, H·W).
fn readable(x: CubeTensor, groups: usize) -> (CubeTensor, u32, (usize, usize, usize)) {
    let [b, c, h, w] = x.meta.shape().dims::<4>();
    assert!(
        groups > 0 && c.is_multiple_of(groups),
        "group_norm: {c} channels in {groups} groups"
    );
    let x = if pixel_stride(&x).is_some() {
        x
    } else {
        into_contiguous(x)
    };
    let stride = pixel_stride(&x).expect("a contiguous tensor's pixels merge");
    (x, stride as u32, (b, c, h * w))
}

/// Cubes for `count` (image, group) pairs, over two dimensions where one would exceed 65,535.
fn cube_count(count: usize) -> CubeCount {
    let x = count.clamp(1, 65_535);
    CubeCount::Static(x as u32, count.div_ceil(x) as u32, 1)
}

/// An uninitialized tensor shaped and laid out like `x` (channels-last when x is, so that the
/// convolution after it reads it without a copy), of type `dtype`.
fn empty_like(x: &CubeTensor, dtype: DType) -> CubeTensor {
    let [b, c, h, w] = x.meta.shape().dims::<4>();
    let s = x.meta.strides();
    let channels_last = c > 1 && s[1] == 1 && s[3] == c && s[2] == w * c && s[0] == h * w * c;
    let empty = |shape: Shape| empty_device_dtype(x.client.clone(), x.device.clone(), shape, dtype);
    if channels_last {
        permute_nhwc_to_nchw(empty(Shape::new([b, h, w, c])))
    } else {
        empty(x.shape())
    }
}

fn f32_buffer(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// y and the statistics of [`super::CubeKernels::ddpm_cube_norm`].
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    x: FloatTensor<CubeBackend>,
    shift: FloatTensor<CubeBackend>,
    gamma: FloatTensor<CubeBackend>,
    beta: FloatTensor<CubeBackend>,
    groups: usize,
    epsilon: f64,
    has_shift: bool,
    with_silu: bool,
) -> (FloatTensor<CubeBackend>, FloatTensor<CubeBackend>) {
    let (x, x_pixel, (b, c, spatial)) = readable(x, groups);
    let y = empty_like(&x, x.dtype);
    let stats = f32_buffer(&x, Shape::new([b * groups, 2]));
    if b * c * spatial == 0 {
        return (y, stats);
    }
    let units = units(&x, spatial);
    let (client, dtype) = (x.client.clone(), x.dtype);
    norm_forward_kernel::launch(
        &client,
        cube_count(b * groups),
        CubeDim::new_1d(units as u32),
        x.into_tensor_arg(),
        shift.into_tensor_arg(),
        into_contiguous(gamma).into_tensor_arg(),
        into_contiguous(beta).into_tensor_arg(),
        y.clone().into_tensor_arg(),
        stats.clone().into_tensor_arg(),
        groups as u32,
        x_pixel,
        epsilon as f32,
        units,
        has_shift,
        with_silu,
        dtype_to_storage_type(dtype),
    );
    (y, stats)
}

/// The gradients of [`super::CubeKernels::ddpm_cube_norm_backward`].
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(super) fn backward(
    x: FloatTensor<CubeBackend>,
    shift: FloatTensor<CubeBackend>,
    gamma: FloatTensor<CubeBackend>,
    beta: FloatTensor<CubeBackend>,
    stats: FloatTensor<CubeBackend>,
    dy: FloatTensor<CubeBackend>,
    groups: usize,
    has_shift: bool,
    with_silu: bool,
) -> (
    FloatTensor<CubeBackend>,
    FloatTensor<CubeBackend>,
    FloatTensor<CubeBackend>,
    FloatTensor<CubeBackend>,
) {
    let (x, x_pixel, (b, c, spatial)) = readable(x, groups);
    let (dy, dy_pixel, _) = readable(dy, groups);
    let dx = empty_like(&dy, x.dtype);
    let per_channel = || f32_buffer(&x, Shape::new([b, c]));
    let (dshift, dgamma, dbeta) = (per_channel(), per_channel(), per_channel());
    if b * c * spatial == 0 {
        return (dx, dshift, dgamma, dbeta);
    }
    let units = units(&x, spatial);
    let (client, dtype) = (x.client.clone(), x.dtype);
    norm_backward_kernel::launch(
        &client,
        cube_count(b * groups),
        CubeDim::new_1d(units as u32),
        x.into_tensor_arg(),
        shift.into_tensor_arg(),
        into_contiguous(gamma).into_tensor_arg(),
        into_contiguous(beta).into_tensor_arg(),
        into_contiguous(stats).into_tensor_arg(),
        dy.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        dshift.clone().into_tensor_arg(),
        dgamma.clone().into_tensor_arg(),
        dbeta.clone().into_tensor_arg(),
        groups as u32,
        x_pixel,
        dy_pixel,
        units,
        has_shift,
        with_silu,
        dtype_to_storage_type(dtype),
    );
    (dx, dshift, dgamma, dbeta)
}
