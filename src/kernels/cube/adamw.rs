//! One AdamW update of a parameter as one CubeCL kernel: reads θ, g, m, v once and writes θ',
//! m', v'. Burn records the same update as about a dozen tensor operations per parameter, each
//! of which the fusion stream processes on the host before it launches anything; a U-Net has
//! a few hundred parameters.

use crate::kernels::AdamWScalars;
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    param: &Tensor<f32>,
    grad: &Tensor<f32>,
    m: &Tensor<f32>,
    v: &Tensor<f32>,
    param_out: &mut Tensor<f32>,
    m_out: &mut Tensor<f32>,
    v_out: &mut Tensor<f32>,
    grad_scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bc2: f32,
    eps: f32,
    step: f32,
    keep: f32,
) {
    let i = ABSOLUTE_POS;
    if i < param.len() {
        // In the order of the composed update (src/optim/adamw.rs), rounding included.
        let g = grad[i] * grad_scale;
        let m1 = m[i] * beta1 + g * one_minus_beta1;
        let v1 = v[i] * beta2 + g * g * one_minus_beta2;
        m_out[i] = m1;
        v_out[i] = v1;
        param_out[i] = param[i] * keep - m1 / (f32::sqrt(v1 / bc2) + eps) * step;
    }
}

fn like(t: &CubeTensor) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), t.shape(), t.dtype)
}

/// θ', m', v' of one AdamW update (f32 tensors of one length).
pub(super) fn step(
    param: FloatTensor<CubeBackend>,
    grad: FloatTensor<CubeBackend>,
    m: FloatTensor<CubeBackend>,
    v: FloatTensor<CubeBackend>,
    s: AdamWScalars,
) -> (
    FloatTensor<CubeBackend>,
    FloatTensor<CubeBackend>,
    FloatTensor<CubeBackend>,
) {
    let [param, grad, m, v] = [param, grad, m, v].map(into_contiguous);
    let (param_out, m_out, v_out) = (like(&param), like(&m), like(&v));
    let n = param.shape().num_elements();
    if n == 0 {
        return (param_out, m_out, v_out);
    }
    let client = param.client.clone();
    let cube_dim = CubeDim::new(&client, n);
    let cube_count = calculate_cube_count_elemwise(&client, n, cube_dim);
    adamw_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        param.into_tensor_arg(),
        grad.into_tensor_arg(),
        m.into_tensor_arg(),
        v.into_tensor_arg(),
        param_out.clone().into_tensor_arg(),
        m_out.clone().into_tensor_arg(),
        v_out.clone().into_tensor_arg(),
        s.grad_scale,
        s.beta1,
        s.one_minus_beta1,
        s.beta2,
        s.one_minus_beta2,
        s.bc2,
        s.eps,
        s.step,
        s.keep,
    );
    (param_out, m_out, v_out)
}
