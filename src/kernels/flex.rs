//! The kernels plugged into burn's `flex` CPU backend as a backend extension, with their autodiff
//! backward passes.

use super::{conv, group_norm, profile};
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{Bytes, DType, Device, Shape, Tensor};

/// Operations of the U-Net that burn's generic implementations make slow on the CPU.
#[backend_extension(Flex, Autodiff)]
pub trait KernelBackend: burn::backend::Backend {
    /// 2-D convolution with bias, one group, no dilation, symmetric zero padding.
    fn ddpm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;

    /// [`Self::ddpm_conv2d`] plus `residual` (shaped like the output): a ResBlock's skip
    /// connection added as the output is stored.
    fn ddpm_conv2d_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;

    /// Affine GroupNorm over `[B, C, H, W]`, followed by SiLU when `with_silu`.
    fn ddpm_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        with_silu: bool,
    ) -> FloatTensor<Self>;

    /// [`Self::ddpm_group_norm`] of x + shift, `shift` being `[B, C]` (one value per image and
    /// channel, broadcast over the pixels).
    #[allow(clippy::too_many_arguments)]
    fn ddpm_group_norm_shift(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        with_silu: bool,
    ) -> FloatTensor<Self>;
}

/// A contiguous copy (or the tensor itself when it already is one) and its shape.
pub(super) fn contiguous(t: &FlexTensor) -> (FlexTensor, Vec<usize>) {
    let t = t.to_contiguous();
    let shape = t.shape().to_vec();
    (t, shape)
}

pub(super) fn data(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("ddpm kernels take contiguous f32 tensors")
}

pub(super) fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape)),
        DType::F32,
    )
}

fn conv_geometry(
    x: &[usize],
    w: &[usize],
    stride: [usize; 2],
    pad: [usize; 2],
) -> conv::ConvGeometry {
    conv::ConvGeometry {
        batch: x[0],
        cin: x[1],
        h: x[2],
        w: x[3],
        cout: w[0],
        kh: w[2],
        kw: w[3],
        stride,
        pad,
    }
}

fn norm_geometry(x: &[usize], groups: usize) -> group_norm::NormGeometry {
    group_norm::NormGeometry {
        batch: x[0],
        channels: x[1],
        spatial: x[2..].iter().product(),
        groups,
    }
}

impl KernelBackend for Flex {
    fn ddpm_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FlexTensor {
        conv_forward(&conv_state(&x, &weight, stride, padding), &bias, None)
    }

    fn ddpm_conv2d_residual(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FlexTensor {
        conv_forward(
            &conv_state(&x, &weight, stride, padding),
            &bias,
            Some(&residual),
        )
    }

    fn ddpm_group_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        epsilon: f64,
        with_silu: bool,
    ) -> FlexTensor {
        norm_forward(&x, None, &gamma, &beta, groups, epsilon, with_silu).0
    }

    fn ddpm_group_norm_shift(
        x: FlexTensor,
        shift: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        epsilon: f64,
        with_silu: bool,
    ) -> FlexTensor {
        norm_forward(&x, Some(&shift), &gamma, &beta, groups, epsilon, with_silu).0
    }
}

/// What a convolution's backward pass keeps: contiguous x and weight, and the geometry.
type ConvState = (FlexTensor, FlexTensor, conv::ConvGeometry);

fn conv_state(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
) -> ConvState {
    let (x, xs) = contiguous(x);
    let (w, ws) = contiguous(weight);
    let g = conv_geometry(&xs, &ws, stride, padding);
    (x, w, g)
}

/// conv(x, weight) + bias (+ residual), x and the weight already made contiguous by
/// [`conv_state`].
fn conv_forward(
    (x, w, g): &ConvState,
    bias: &FlexTensor,
    residual: Option<&FlexTensor>,
) -> FlexTensor {
    let (b, _) = contiguous(bias);
    let y = match residual {
        None => profile::time(
            || profile::conv(g, "forward"),
            || conv::forward(data(x), data(w), data(&b), g),
        ),
        Some(r) => {
            let (r, _) = contiguous(r);
            profile::time(
                || profile::conv(g, "forward + residual"),
                || conv::forward_residual(data(x), data(w), data(&b), data(&r), g),
            )
        }
    };
    tensor(y, vec![g.batch, g.cout, g.out_h(), g.out_w()])
}

/// Registers `make()` as the gradient of `node` when there is a node that wants one.
fn register(grads: &mut Gradients, node: Option<NodeId>, make: impl FnOnce() -> FlexTensor) {
    if let Some(id) = node {
        grads.register::<Flex>(id, make());
    }
}

/// The ids of an operation's parents (`None` for those that need no gradient).
fn parent_ids<S, const N: usize>(ops: &Ops<S, N>) -> [Option<NodeId>; N] {
    std::array::from_fn(|i| ops.parents[i].as_ref().map(|n| n.id))
}

/// Registers ∂L/∂x, ∂L/∂W and ∂L/∂b of a convolution for the parents that want them (∂L/∂x is
/// computed only then).
fn register_conv_grads(
    grads: &mut Gradients,
    dy: &FlexTensor,
    (x, w, g): ConvState,
    [node_x, node_w, node_b]: [Option<NodeId>; 3],
) {
    let pass = if node_x.is_some() {
        "backward"
    } else {
        "backward (no ∂L/∂x)"
    };
    let out = profile::time(
        || profile::conv(&g, pass),
        || conv::backward(data(&x), data(&w), data(dy), &g, node_x.is_some()),
    );
    register(grads, node_x, || tensor(out.dx, x.shape().to_vec()));
    register(grads, node_w, || tensor(out.dweight, w.shape().to_vec()));
    register(grads, node_b, || tensor(out.dbias, vec![g.cout]));
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (dy, _) = contiguous(&grads.consume::<Flex>(&ops.node));
        let nodes = parent_ids(&ops);
        register_conv_grads(grads, &dy, ops.state, nodes);
    }
}

#[derive(Debug)]
struct ConvResidualBackward;

impl Backward<Flex, 4> for ConvResidualBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (dy, _) = contiguous(&grads.consume::<Flex>(&ops.node));
        let [node_x, node_w, node_b, node_r] = parent_ids(&ops);
        // ∂L/∂residual is ∂L/∂y itself.
        register(grads, node_r, || dy.clone());
        register_conv_grads(grads, &dy, ops.state, [node_x, node_w, node_b]);
    }
}

/// What a GroupNorm's backward pass keeps: x, γ, β, the shift when there is one, the statistics.
#[derive(Debug, Clone)]
pub(super) struct NormState {
    x: FlexTensor,
    /// x as the autodiff graph knows it (training only): lets the backward pass take the
    /// gradient that x's other consumers have registered and add its own to it over the pool.
    x_tracked: Option<FloatTensor<Autodiff<Flex>>>,
    gamma: FlexTensor,
    beta: FlexTensor,
    shift: Option<FlexTensor>,
    stats: group_norm::NormStats,
    g: group_norm::NormGeometry,
    with_silu: bool,
}

impl NormState {
    /// Registers ∂L/∂x, ∂L/∂shift, ∂L/∂γ and ∂L/∂β for the parents that want them.
    fn register_grads(
        self,
        grads: &mut Gradients,
        dy: &FlexTensor,
        [node_x, node_shift, node_gamma, node_beta]: [Option<NodeId>; 4],
    ) {
        // x usually has another consumer (a residual connection, a skip convolution) whose
        // gradient is registered already: it is added as ∂L/∂x is written (burn would add the
        // two in a separate pass on one thread).
        let prev = match (node_x, &self.x_tracked) {
            (Some(_), Some(xt)) => grads.remove::<Flex>(xt).map(|p| contiguous(&p).0),
            _ => None,
        };
        let out = profile::time(
            || profile::norm(&self.g, self.with_silu, "backward"),
            || {
                group_norm::backward(
                    data(&self.x),
                    data(&self.gamma),
                    data(&self.beta),
                    self.shift.as_ref().map(data),
                    &self.stats,
                    data(dy),
                    prev.as_ref().map(data),
                    &self.g,
                    self.with_silu,
                )
            },
        );
        let (b, c) = (self.g.batch, self.g.channels);
        register(grads, node_x, || tensor(out.dx, self.x.shape().to_vec()));
        register(grads, node_shift, || tensor(out.dshift, vec![b, c]));
        register(grads, node_gamma, || tensor(out.dgamma, vec![c]));
        register(grads, node_beta, || tensor(out.dbeta, vec![c]));
    }
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 3> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (dy, _) = contiguous(&grads.consume::<Flex>(&ops.node));
        let [node_x, node_gamma, node_beta] = parent_ids(&ops);
        ops.state
            .register_grads(grads, &dy, [node_x, None, node_gamma, node_beta]);
    }
}

#[derive(Debug)]
struct ShiftNormBackward;

impl Backward<Flex, 4> for ShiftNormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (dy, _) = contiguous(&grads.consume::<Flex>(&ops.node));
        let nodes = parent_ids(&ops);
        ops.state.register_grads(grads, &dy, nodes);
    }
}

impl<C: CheckpointStrategy> KernelBackend for Autodiff<Flex, C> {
    fn ddpm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = conv_state(x.primitive(), weight.primitive(), stride, padding);
                let y = conv_forward(&state, bias.primitive(), None);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::ddpm_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                stride,
                padding,
            )),
        }
    }

    fn ddpm_conv2d_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        match ConvResidualBackward
            .prepare::<C>([x.node(), weight.node(), bias.node(), residual.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = conv_state(x.primitive(), weight.primitive(), stride, padding);
                let y = conv_forward(&state, bias.primitive(), Some(residual.primitive()));
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::ddpm_conv2d_residual(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                residual.into_primitive(),
                stride,
                padding,
            )),
        }
    }

    fn ddpm_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        with_silu: bool,
    ) -> FloatTensor<Self> {
        match NormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mut state) = norm_forward(
                    x.primitive(),
                    None,
                    gamma.primitive(),
                    beta.primitive(),
                    groups,
                    epsilon,
                    with_silu,
                );
                state.x_tracked = Some(x.clone());
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::ddpm_group_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                groups,
                epsilon,
                with_silu,
            )),
        }
    }

    fn ddpm_group_norm_shift(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        with_silu: bool,
    ) -> FloatTensor<Self> {
        match ShiftNormBackward
            .prepare::<C>([x.node(), shift.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mut state) = norm_forward(
                    x.primitive(),
                    Some(shift.primitive()),
                    gamma.primitive(),
                    beta.primitive(),
                    groups,
                    epsilon,
                    with_silu,
                );
                state.x_tracked = Some(x.clone());
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::ddpm_group_norm_shift(
                x.into_primitive(),
                shift.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                groups,
                epsilon,
                with_silu,
            )),
        }
    }
}

/// The forward pass of a GroupNorm: its output and what its backward pass keeps.
fn norm_forward(
    x: &FlexTensor,
    shift: Option<&FlexTensor>,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    groups: usize,
    epsilon: f64,
    with_silu: bool,
) -> (FlexTensor, NormState) {
    let (x, xs) = contiguous(x);
    let shift = shift.map(|s| contiguous(s).0);
    let (gamma, _) = contiguous(gamma);
    let (beta, _) = contiguous(beta);
    let g = norm_geometry(&xs, groups);
    let (y, stats) = profile::time(
        || profile::norm(&g, with_silu, "forward"),
        || {
            group_norm::forward(
                data(&x),
                data(&gamma),
                data(&beta),
                shift.as_ref().map(data),
                &g,
                epsilon,
                with_silu,
            )
        },
    );
    let state = NormState {
        x,
        x_tracked: None,
        gamma,
        beta,
        shift,
        stats,
        g,
        with_silu,
    };
    (tensor(y, xs), state)
}

/// Whether `x` lives on the flex backend (with or without autodiff) as f32.
pub(super) fn on_flex(x: &Tensor<4>) -> bool {
    super::enabled() && x.dtype() == DType::F32 && x.device() == Device::flex()
}

/// The kernel's view of a convolution layer: its padding, or `None` when the kernel does not
/// cover it (groups, dilation, asymmetric padding, no bias, mismatched input).
fn kernel_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<[usize; 2]> {
    if !on_flex(x) || conv.groups != 1 || conv.dilation != [1, 1] || conv.bias.is_none() {
        return None;
    }
    let pad = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    let [_, cin, h, w] = x.dims();
    let [_, wcin, kh, kw] = conv.weight.dims();
    if cin != wcin || h + 2 * pad[0] < kh || w + 2 * pad[1] < kw {
        return None; // burn's own path reports the mismatch
    }
    Some(pad)
}

/// The convolution through the kernel, or `None` when the kernel does not cover it.
pub(super) fn try_conv2d(conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let pad = kernel_padding(conv, x)?;
    let bias = conv.bias.as_ref()?.val();
    let y = <Dispatch as KernelBackend>::ddpm_conv2d(
        x.clone().into_dispatch(),
        conv.weight.val().into_dispatch(),
        bias.into_dispatch(),
        conv.stride,
        pad,
    );
    Some(Tensor::from_dispatch(y))
}

/// The convolution plus `residual` through the kernel, or `None` when the kernel does not cover
/// it or the residual is not shaped like the output.
pub(super) fn try_conv2d_residual(
    conv: &Conv2d,
    x: &Tensor<4>,
    residual: &Tensor<4>,
) -> Option<Tensor<4>> {
    let pad = kernel_padding(conv, x)?;
    let [b, _, h, w] = x.dims();
    let [cout, _, kh, kw] = conv.weight.dims();
    let out = [
        b,
        cout,
        (h + 2 * pad[0] - kh) / conv.stride[0] + 1,
        (w + 2 * pad[1] - kw) / conv.stride[1] + 1,
    ];
    if !on_flex(residual) || residual.dims() != out {
        return None;
    }
    let bias = conv.bias.as_ref()?.val();
    let y = <Dispatch as KernelBackend>::ddpm_conv2d_residual(
        x.clone().into_dispatch(),
        conv.weight.val().into_dispatch(),
        bias.into_dispatch(),
        residual.clone().into_dispatch(),
        conv.stride,
        pad,
    );
    Some(Tensor::from_dispatch(y))
}

/// GroupNorm (+ SiLU) of x (+ shift, `[B, C]`) through the kernel, or `None` when the kernel does
/// not cover it.
pub(super) fn try_group_norm(
    norm: &GroupNorm,
    x: &Tensor<4>,
    shift: Option<&Tensor<2>>,
    with_silu: bool,
) -> Option<Tensor<4>> {
    let [b, c, _, _] = x.dims();
    if !on_flex(x) || !norm.affine || c != norm.num_channels {
        return None;
    }
    if shift.is_some_and(|s| s.dims() != [b, c] || s.dtype() != DType::F32) {
        return None;
    }
    let gamma = norm.gamma.as_ref()?.val().into_dispatch();
    let beta = norm.beta.as_ref()?.val().into_dispatch();
    let x = x.clone().into_dispatch();
    let (groups, eps) = (norm.num_groups, norm.epsilon);
    let y = match shift {
        None => {
            <Dispatch as KernelBackend>::ddpm_group_norm(x, gamma, beta, groups, eps, with_silu)
        }
        Some(s) => <Dispatch as KernelBackend>::ddpm_group_norm_shift(
            x,
            s.clone().into_dispatch(),
            gamma,
            beta,
            groups,
            eps,
            with_silu,
        ),
    };
    Some(Tensor::from_dispatch(y))
}
