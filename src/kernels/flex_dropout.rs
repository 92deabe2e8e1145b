//! The dropout of [`super::dropout`] as a burn backend extension on `flex`, with its autodiff
//! backward pass (the same mask, recomputed from the seed).

use super::dropout;
use super::flex::{contiguous, data, on_flex, tensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, backend_extension};
use burn::nn::Dropout;
use burn::tensor::{Distribution, Tensor};

/// Dropout with a counter-based mask.
#[backend_extension(Flex, Autodiff)]
pub trait DropoutBackend: burn::backend::Backend {
    /// x · mask / (1 − prob) with the mask of `seed`.
    fn ddpm_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self>;
}

impl DropoutBackend for Flex {
    fn ddpm_dropout(x: FlexTensor, prob: f64, seed: u64) -> FlexTensor {
        let (x, shape) = contiguous(&x);
        tensor(dropout::apply(data(&x), prob, seed), shape)
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    /// The probability and the seed.
    type State = (f64, u64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (prob, seed) = ops.state;
        if let Some(node) = node {
            grads.register::<Flex>(node.id, Flex::ddpm_dropout(dy, prob, seed));
        }
    }
}

impl<C: CheckpointStrategy> DropoutBackend for Autodiff<Flex, C> {
    fn ddpm_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self> {
        match DropoutBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                (prob, seed),
                Flex::ddpm_dropout(x.into_primitive(), prob, seed),
            ),
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::ddpm_dropout(x.into_primitive(), prob, seed))
            }
        }
    }
}

/// A seed from the device's random number generator (so that `ddpm`'s seeding of burn decides
/// the masks): two uniform floats of 24 random bits each.
fn draw_seed(x: &Tensor<4>) -> u64 {
    let r: Tensor<1> = Tensor::random([2], Distribution::Default, &x.device());
    let v = r
        .into_data()
        .try_to_vec::<f32>()
        .expect("a random f32 tensor reads back as f32");
    let bits = |f: f32| (f64::from(f) * (1u64 << 24) as f64) as u64;
    (bits(v[0]) << 24) | bits(v[1])
}

/// `dropout.forward(x)` through the kernel, or `None` when burn's own would not drop anything
/// (evaluation, no autodiff, probability 0) or the tensor is not on flex.
pub(super) fn try_dropout(d: &Dropout, x: &Tensor<4>) -> Option<Tensor<4>> {
    if !d.training.is_enabled() || d.prob == 0.0 || !x.device().is_autodiff() || !on_flex(x) {
        return None;
    }
    let seed = draw_seed(x);
    let y = <Dispatch as DropoutBackend>::ddpm_dropout(x.clone().into_dispatch(), d.prob, seed);
    Some(Tensor::from_dispatch(y))
}
