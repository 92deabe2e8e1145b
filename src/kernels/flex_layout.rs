//! The layout kernels of [`super::layout`] as a burn backend extension on `flex`, with their
//! autodiff backward passes.

use super::flex::{contiguous, data, on_flex, tensor};
use super::{layout, profile};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;

/// Data movement that burn runs on one thread.
#[backend_extension(Flex, Autodiff)]
pub trait LayoutBackend: burn::backend::Backend {
    /// Nearest 2× upsampling of `[B, C, H, W]`.
    fn ddpm_upsample2(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Concatenation of `[B, Ca, H, W]` and `[B, Cb, H, W]` along the channels.
    fn ddpm_cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl LayoutBackend for Flex {
    fn ddpm_upsample2(x: FlexTensor) -> FlexTensor {
        let (x, s) = contiguous(&x);
        let y = profile::time(
            || format!("upsample2 {}ch {}×{} forward", s[1], s[2], s[3]),
            || layout::upsample2(data(&x), s[2], s[3]),
        );
        tensor(y, vec![s[0], s[1], 2 * s[2], 2 * s[3]])
    }

    fn ddpm_cat_channels(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (a, sa) = contiguous(&a);
        let (b, sb) = contiguous(&b);
        let y = profile::time(
            || format!("cat {}+{}ch {}×{} forward", sa[1], sb[1], sa[2], sa[3]),
            || layout::cat_channels(data(&a), data(&b), sa[0], sa[2] * sa[3]),
        );
        tensor(y, vec![sa[0], sa[1] + sb[1], sa[2], sa[3]])
    }
}

#[derive(Debug)]
struct UpsampleBackward;

impl Backward<Flex, 1> for UpsampleBackward {
    /// The input's shape.
    type State = Vec<usize>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let (dy, _) = contiguous(&grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        if let Some(node) = node {
            let dx = profile::time(
                || format!("upsample2 {}ch {}×{} backward", s[1], s[2], s[3]),
                || layout::upsample2_backward(data(&dy), s[2], s[3]),
            );
            grads.register::<Flex>(node.id, tensor(dx, s));
        }
    }
}

#[derive(Debug)]
struct CatBackward;

impl Backward<Flex, 2> for CatBackward {
    /// The two inputs' shapes.
    type State = [Vec<usize>; 2];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let (dy, _) = contiguous(&grads.consume::<Flex>(&ops.node));
        let [sa, sb] = ops.state;
        let per = |s: &[usize]| s[1..].iter().product::<usize>();
        let (da, db) = profile::time(
            || format!("cat {}+{}ch {}×{} backward", sa[1], sb[1], sa[2], sa[3]),
            || layout::split_channels(data(&dy), sa[0], per(&sa), per(&sb)),
        );
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, tensor(da, sa));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, tensor(db, sb));
        }
    }
}

impl<C: CheckpointStrategy> LayoutBackend for Autodiff<Flex, C> {
    fn ddpm_upsample2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.primitive().shape().to_vec();
        match UpsampleBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(shape, Flex::ddpm_upsample2(x.into_primitive())),
            OpsKind::UnTracked(prep) => prep.finish(Flex::ddpm_upsample2(x.into_primitive())),
        }
    }

    fn ddpm_cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let shapes = [
            a.primitive().shape().to_vec(),
            b.primitive().shape().to_vec(),
        ];
        match CatBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                shapes,
                Flex::ddpm_cat_channels(a.into_primitive(), b.into_primitive()),
            ),
            OpsKind::UnTracked(prep) => prep.finish(Flex::ddpm_cat_channels(
                a.into_primitive(),
                b.into_primitive(),
            )),
        }
    }
}

/// Nearest 2× upsampling through the kernel, or `None` off flex.
pub(super) fn try_upsample2(x: &Tensor<4>) -> Option<Tensor<4>> {
    if !on_flex(x) {
        return None;
    }
    let y = <Dispatch as LayoutBackend>::ddpm_upsample2(x.clone().into_dispatch());
    Some(Tensor::from_dispatch(y))
}

/// Channel concatenation through the kernel, or `None` off flex or when the shapes differ
/// outside the channels.
pub(super) fn try_cat_channels(a: &Tensor<4>, b: &Tensor<4>) -> Option<Tensor<4>> {
    let (sa, sb) = (a.dims(), b.dims());
    if !on_flex(a) || !on_flex(b) || sa[0] != sb[0] || sa[2..] != sb[2..] || sa[0] == 0 {
        return None;
    }
    let y = <Dispatch as LayoutBackend>::ddpm_cat_channels(
        a.clone().into_dispatch(),
        b.clone().into_dispatch(),
    );
    Some(Tensor::from_dispatch(y))
}
