//! The backward pass of the CubeCL GroupNorm under burn's `Autodiff`: the forward kernel keeps
//! its statistics, the backward kernel gives ∂L/∂x and per-image sums that become ∂L/∂shift,
//! ∂L/∂γ and ∂L/∂β (summed over the images, cast to the parameters' type).

use super::CubeKernels;
use crate::kernels::AdamWScalars;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, TensorMetadata};
use burn::tensor::Shape;

/// What the backward pass keeps: the forward pass's inputs and statistics.
#[derive(Debug, Clone)]
struct NormState<B: CubeKernels> {
    x: FloatTensor<B>,
    shift: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    stats: FloatTensor<B>,
    groups: usize,
    has_shift: bool,
    with_silu: bool,
}

impl<B: CubeKernels> NormState<B> {
    /// Registers ∂L/∂x, ∂L/∂shift, ∂L/∂γ and ∂L/∂β for the parents that want them.
    fn register_grads(
        self,
        grads: &mut Gradients,
        dy: FloatTensor<B>,
        [node_x, node_shift, node_gamma, node_beta]: [Option<NodeId>; 4],
    ) {
        let (shift_dtype, gamma_dtype) = (self.shift.dtype(), self.gamma.dtype());
        let channels = self.gamma.shape().num_elements();
        let (dx, dshift, dgamma, dbeta) = B::ddpm_cube_norm_backward(
            self.x,
            self.shift,
            self.gamma,
            self.beta,
            self.stats,
            dy,
            self.groups,
            self.has_shift,
            self.with_silu,
        );
        let over_images = |t: FloatTensor<B>| {
            let sum = B::float_reshape(B::float_sum_dim(t, 0), Shape::new([channels]));
            B::float_cast(sum, gamma_dtype.into())
        };
        if let Some(id) = node_x {
            grads.register::<B>(id, dx);
        }
        if let Some(id) = node_shift {
            grads.register::<B>(id, B::float_cast(dshift, shift_dtype.into()));
        }
        if let Some(id) = node_gamma {
            grads.register::<B>(id, over_images(dgamma));
        }
        if let Some(id) = node_beta {
            grads.register::<B>(id, over_images(dbeta));
        }
    }
}

/// The ids of an operation's parents (`None` for those that need no gradient).
fn parent_ids<S, const N: usize>(ops: &Ops<S, N>) -> [Option<NodeId>; N] {
    std::array::from_fn(|i| ops.parents[i].as_ref().map(|n| n.id))
}

#[derive(Debug)]
struct NormBackward;

impl<B: CubeKernels> Backward<B, 3> for NormBackward {
    type State = NormState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let [x, gamma, beta] = parent_ids(&ops);
        ops.state.register_grads(grads, dy, [x, None, gamma, beta]);
    }
}

#[derive(Debug)]
struct ShiftNormBackward;

impl<B: CubeKernels> Backward<B, 4> for ShiftNormBackward {
    type State = NormState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let nodes = parent_ids(&ops);
        ops.state.register_grads(grads, dy, nodes);
    }
}

/// Runs `forward` and, when a parent needs a gradient, records it with `backward` and the state
/// it returns. Returns y under autodiff and the statistics.
fn record<B: CubeKernels, C: CheckpointStrategy, const N: usize>(
    backward: impl Backward<B, N, State = NormState<B>>,
    parents: [NodeGuard; N],
    forward: impl FnOnce() -> (FloatTensor<B>, FloatTensor<B>, NormState<B>),
) -> (FloatTensor<Autodiff<B, C>>, FloatTensor<B>) {
    match backward.prepare::<C>(parents).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (y, stats, state) = forward();
            (prep.finish(state, y), stats)
        }
        OpsKind::UnTracked(prep) => {
            let (y, stats, _) = forward();
            (prep.finish(y), stats)
        }
    }
}

impl<B: CubeKernels, C: CheckpointStrategy> CubeKernels for Autodiff<B, C> {
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
        let forward = || {
            let (y, stats) = B::ddpm_cube_norm(
                x.primitive().clone(),
                shift.primitive().clone(),
                gamma.primitive().clone(),
                beta.primitive().clone(),
                groups,
                epsilon,
                has_shift,
                with_silu,
            );
            let state = NormState {
                x: x.primitive().clone(),
                shift: shift.primitive().clone(),
                gamma: gamma.primitive().clone(),
                beta: beta.primitive().clone(),
                stats: stats.clone(),
                groups,
                has_shift,
                with_silu,
            };
            (y, stats, state)
        };
        let (y, stats) = if has_shift {
            let parents = [x.node(), shift.node(), gamma.node(), beta.node()];
            record::<B, C, 4>(ShiftNormBackward, parents, forward)
        } else {
            record::<B, C, 3>(NormBackward, [x.node(), gamma.node(), beta.node()], forward)
        };
        (y, Self::from_inner(stats))
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
        // A backward pass of its own is not differentiated again: the results are constants.
        let (dx, dshift, dgamma, dbeta) = B::ddpm_cube_norm_backward(
            x.into_primitive(),
            shift.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            stats.into_primitive(),
            dy.into_primitive(),
            groups,
            has_shift,
            with_silu,
        );
        (
            Self::from_inner(dx),
            Self::from_inner(dshift),
            Self::from_inner(dgamma),
            Self::from_inner(dbeta),
        )
    }

    fn ddpm_cube_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // An optimizer's update is not differentiated: the results are constants.
        let (p, m, v) = B::ddpm_cube_adamw(
            param.into_primitive(),
            grad.into_primitive(),
            m.into_primitive(),
            v.into_primitive(),
            scalars,
        );
        (
            Self::from_inner(p),
            Self::from_inner(m),
            Self::from_inner(v),
        )
    }
}
