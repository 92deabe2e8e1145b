//! The attention block of [`super::attention`] as a burn backend extension on `flex`, with its
//! autodiff backward pass.

use super::attention::{self, AttnGeometry, AttnState, AttnWeights};
use super::flex::{contiguous, data, on_flex, tensor};
use super::profile;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, backend_extension};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor};

/// Self-attention over the pixels of a feature map.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionBackend: burn::backend::Backend {
    /// x + proj(attention(qkv(h))) for `h`, `x` of shape `[B, C, H, W]`, with the weights of
    /// burn `Linear` layers (`wqkv: [C, 3C]`, `bqkv: [3C]`, `wproj: [C, C]`, `bproj: [C]`).
    #[allow(clippy::too_many_arguments)]
    fn ddpm_attention(
        h: FloatTensor<Self>,
        x: FloatTensor<Self>,
        wqkv: FloatTensor<Self>,
        bqkv: FloatTensor<Self>,
        wproj: FloatTensor<Self>,
        bproj: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;
}

/// What the backward pass keeps: h and the four parameters (contiguous), the kernel's state, the
/// geometry and the input shape.
#[derive(Debug, Clone)]
struct AttnOpState {
    h: FlexTensor,
    params: [FlexTensor; 4],
    state: AttnState,
    g: AttnGeometry,
    shape: Vec<usize>,
}

fn weights(p: &[FlexTensor; 4]) -> AttnWeights<'_> {
    AttnWeights {
        wqkv: data(&p[0]),
        bqkv: data(&p[1]),
        wproj: data(&p[2]),
        bproj: data(&p[3]),
    }
}

/// The forward pass: the output and what the backward pass keeps.
fn attention_forward(
    h: &FlexTensor,
    x: &FlexTensor,
    params: [&FlexTensor; 4],
    heads: usize,
) -> (FlexTensor, AttnOpState) {
    let (h, shape) = contiguous(h);
    let (x, _) = contiguous(x);
    let params = params.map(|p| contiguous(p).0);
    let g = AttnGeometry {
        batch: shape[0],
        channels: shape[1],
        pixels: shape[2..].iter().product(),
        heads,
    };
    let (y, state) = profile::time(
        || profile::attention(&g, "forward"),
        || attention::forward(data(&h), data(&x), &weights(&params), &g),
    );
    let out = tensor(y, shape.clone());
    let st = AttnOpState {
        h,
        params,
        state,
        g,
        shape,
    };
    (out, st)
}

impl AttentionBackend for Flex {
    fn ddpm_attention(
        h: FlexTensor,
        x: FlexTensor,
        wqkv: FlexTensor,
        bqkv: FlexTensor,
        wproj: FlexTensor,
        bproj: FlexTensor,
        heads: usize,
    ) -> FlexTensor {
        attention_forward(&h, &x, [&wqkv, &bqkv, &wproj, &bproj], heads).0
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 6> for AttentionBackward {
    type State = AttnOpState;

    fn backward(self, ops: Ops<Self::State, 6>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (dy, _) = contiguous(&grads.consume::<Flex>(&ops.node));
        let [node_h, node_x, node_wqkv, node_bqkv, node_wproj, node_bproj] =
            ops.parents.map(|n| n.map(|n| n.id));
        let s = ops.state;
        // ∂L/∂x: the residual passes ∂L/∂y through.
        if let Some(id) = node_x {
            grads.register::<Flex>(id, dy.clone());
        }
        let out = profile::time(
            || profile::attention(&s.g, "backward"),
            || {
                attention::backward(
                    data(&s.h),
                    &weights(&s.params),
                    &s.state,
                    data(&dy),
                    &s.g,
                    node_h.is_some(),
                )
            },
        );
        let c = s.g.channels;
        let parts = [
            (node_h, out.dh, s.shape.clone()),
            (node_wqkv, out.dwqkv, vec![c, 3 * c]),
            (node_bqkv, out.dbqkv, vec![3 * c]),
            (node_wproj, out.dwproj, vec![c, c]),
            (node_bproj, out.dbproj, vec![c]),
        ];
        for (node, values, shape) in parts {
            if let Some(id) = node {
                grads.register::<Flex>(id, tensor(values, shape));
            }
        }
    }
}

impl<C: CheckpointStrategy> AttentionBackend for Autodiff<Flex, C> {
    fn ddpm_attention(
        h: FloatTensor<Self>,
        x: FloatTensor<Self>,
        wqkv: FloatTensor<Self>,
        bqkv: FloatTensor<Self>,
        wproj: FloatTensor<Self>,
        bproj: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([
                h.node(),
                x.node(),
                wqkv.node(),
                bqkv.node(),
                wproj.node(),
                bproj.node(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let params = [
                    wqkv.primitive(),
                    bqkv.primitive(),
                    wproj.primitive(),
                    bproj.primitive(),
                ];
                let (y, state) = attention_forward(h.primitive(), x.primitive(), params, heads);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::ddpm_attention(
                h.into_primitive(),
                x.into_primitive(),
                wqkv.into_primitive(),
                bqkv.into_primitive(),
                wproj.into_primitive(),
                bproj.into_primitive(),
                heads,
            )),
        }
    }
}

/// The attention block through the kernel, or `None` when the kernel does not cover it (off
/// flex, a layer without bias, shapes that do not fit).
pub(super) fn try_attention(
    qkv: &Linear,
    proj: &Linear,
    heads: usize,
    h: &Tensor<4>,
    x: &Tensor<4>,
) -> Option<Tensor<4>> {
    let [_, c, _, _] = x.dims();
    let fits = on_flex(h)
        && on_flex(x)
        && h.dims() == x.dims()
        && heads > 0
        && c.is_multiple_of(heads)
        && qkv.weight.dims() == [c, 3 * c]
        && proj.weight.dims() == [c, c]
        && qkv.weight.val().dtype() == DType::F32
        && proj.weight.val().dtype() == DType::F32;
    if !fits {
        return None;
    }
    let bqkv = qkv.bias.as_ref()?.val();
    let bproj = proj.bias.as_ref()?.val();
    let y = <Dispatch as AttentionBackend>::ddpm_attention(
        h.clone().into_dispatch(),
        x.clone().into_dispatch(),
        qkv.weight.val().into_dispatch(),
        bqkv.into_dispatch(),
        proj.weight.val().into_dispatch(),
        bproj.into_dispatch(),
        heads,
    );
    Some(Tensor::from_dispatch(y))
}
