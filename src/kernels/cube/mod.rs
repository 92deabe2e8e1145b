//! The U-Net's kernels for burn's CubeCL backend (CUDA, wgpu, and CubeCL's CPU runtime, on
//! which the tests run them): a backend extension implemented for `CubeBackend`, routed through
//! burn's `Fusion` (as an opaque operation in its stream) and given its own backward pass under
//! `Autodiff`.
//!
//! Today: GroupNorm with the optional shift before it and SiLU after it, in f32, f16 or bf16
//! (sums in f32), in any layout the convolutions leave; AdamW's update of one f32 parameter.

mod adamw;
mod autodiff;
mod group_norm;
#[cfg(all(test, feature = "cubecl-cpu"))]
mod tests;

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn_cubecl::CubeBackend;

use super::AdamWScalars;
use burn::nn::GroupNorm;
use burn::tensor::{DType, Shape, Tensor};

/// Operations of the U-Net written as CubeCL kernels.
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait CubeKernels: Backend {
    /// Affine GroupNorm of x (+ shift, `[B, C]`, when `has_shift`; otherwise `shift` is any
    /// tensor and unread) over `[B, C, H, W]`, then SiLU when `with_silu`. Returns y and the
    /// f32 statistics `[B·groups, 2]` (mean, 1/√(var + ε)) the backward pass needs.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = norm_meta)]
    fn ddpm_cube_norm(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        has_shift: bool,
        with_silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The backward pass of [`Self::ddpm_cube_norm`] given ∂L/∂y: ∂L/∂x (x's type) and, in f32
    /// `[B, C]`, ∂L/∂shift (when `has_shift`) and each image's share of ∂L/∂γ and ∂L/∂β.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::type_complexity)]
    #[fusion(meta = norm_backward_meta)]
    fn ddpm_cube_norm_backward(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        groups: usize,
        has_shift: bool,
        with_silu: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    /// One AdamW update of a parameter θ with gradient g and moments m, v (f32, one length):
    /// returns θ', m', v'.
    #[fusion(meta = adamw_meta)]
    fn ddpm_cube_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl CubeKernels for CubeBackend {
    fn ddpm_cube_norm(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        has_shift: bool,
        with_silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        group_norm::forward(x, shift, gamma, beta, groups, epsilon, has_shift, with_silu)
    }

    fn ddpm_cube_norm_backward(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        groups: usize,
        has_shift: bool,
        with_silu: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        group_norm::backward(
            x, shift, gamma, beta, stats, dy, groups, has_shift, with_silu,
        )
    }

    fn ddpm_cube_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        adamw::step(param, grad, m, v, scalars)
    }
}

fn adamw_meta(
    param: &TensorSpec,
    _grad: &TensorSpec,
    m: &TensorSpec,
    v: &TensorSpec,
    _scalars: &AdamWScalars,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    (param.clone(), m.clone(), v.clone())
}

#[allow(clippy::too_many_arguments)]
fn norm_meta(
    x: &TensorSpec,
    _shift: &TensorSpec,
    _gamma: &TensorSpec,
    _beta: &TensorSpec,
    groups: &usize,
    _epsilon: &f64,
    _has_shift: &bool,
    _with_silu: &bool,
) -> (TensorSpec, TensorSpec) {
    let stats = Shape::new([x.shape[0] * groups, 2]);
    (x.clone(), TensorSpec::new(stats, DType::F32))
}

#[allow(clippy::too_many_arguments)]
fn norm_backward_meta(
    x: &TensorSpec,
    _shift: &TensorSpec,
    _gamma: &TensorSpec,
    _beta: &TensorSpec,
    _stats: &TensorSpec,
    _dy: &TensorSpec,
    _groups: &usize,
    _has_shift: &bool,
    _with_silu: &bool,
) -> (TensorSpec, TensorSpec, TensorSpec, TensorSpec) {
    let per_channel = || TensorSpec::new(Shape::new([x.shape[0], x.shape[1]]), DType::F32);
    (x.clone(), per_channel(), per_channel(), per_channel())
}

/// Whether x lives on a CubeCL device in a float type these kernels take.
fn on_cube<const D: usize>(x: &Tensor<D>) -> bool {
    super::enabled()
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && matches!(
            x.device().without_autodiff().as_dispatch(),
            burn::backend::DispatchDevice::Cube(_)
        )
}

/// θ', m', v' of one AdamW update by the kernel, or `None` where it does not apply (not a
/// CubeCL device, not all f32 of one length).
pub(super) fn try_adamw(
    param: &Tensor<1>,
    grad: &Tensor<1>,
    m: Option<&Tensor<1>>,
    v: Option<&Tensor<1>>,
    scalars: AdamWScalars,
) -> Option<(Tensor<1>, Tensor<1>, Tensor<1>)> {
    let fits =
        |t: &Tensor<1>| t.dtype() == DType::F32 && t.dims() == param.dims() && !t.is_autodiff();
    if !on_cube(param) || !fits(param) || !fits(grad) || !m.is_none_or(fits) || !v.is_none_or(fits)
    {
        return None;
    }
    let zeros = || grad.zeros_like();
    let (m, v) = (
        m.cloned().unwrap_or_else(zeros),
        v.cloned().unwrap_or_else(zeros),
    );
    let (p, m, v) = <Dispatch as CubeKernels>::ddpm_cube_adamw(
        param.clone().into_dispatch(),
        grad.clone().into_dispatch(),
        m.clone().into_dispatch(),
        v.clone().into_dispatch(),
        scalars,
    );
    Some((
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    ))
}

/// GroupNorm(x + shift) (then SiLU) by the kernel, or `None` where it does not apply (not a
/// CubeCL device, no affine parameters, mismatched shapes or types).
pub(super) fn try_group_norm(
    norm: &GroupNorm,
    x: &Tensor<4>,
    shift: Option<&Tensor<2>>,
    with_silu: bool,
) -> Option<Tensor<4>> {
    let [b, c, _, _] = x.dims();
    if !on_cube(x) || !norm.affine || c != norm.num_channels || c % norm.num_groups != 0 {
        return None;
    }
    let gamma = norm.gamma.as_ref()?.val();
    let beta = norm.beta.as_ref()?.val();
    let dtype = x.dtype();
    if gamma.dtype() != dtype || beta.dtype() != dtype {
        return None;
    }
    if shift.is_some_and(|s| s.dims() != [b, c] || s.dtype() != dtype) {
        return None;
    }
    // Without a shift the kernel reads none; γ stands in for the argument.
    let (shift, has_shift) = match shift {
        Some(s) => (s.clone().into_dispatch(), true),
        None => (gamma.clone().into_dispatch(), false),
    };
    let (y, _stats) = <Dispatch as CubeKernels>::ddpm_cube_norm(
        x.clone().into_dispatch(),
        shift,
        gamma.into_dispatch(),
        beta.into_dispatch(),
        norm.num_groups,
        norm.epsilon,
        has_shift,
        with_silu,
    );
    Some(Tensor::from_dispatch(y))
}
