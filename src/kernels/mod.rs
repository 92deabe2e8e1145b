//! Hand-written CPU kernels for the operations that dominate a U-Net step on burn's `flex`
//! backend: convolution (im2col + a tuned GEMM, forward and backward), GroupNorm fused with the
//! SiLU that follows it, and a vectorizable `exp`.
//!
//! The model calls [`conv2d`] and [`group_norm`]; on a flex device they run these kernels (as a
//! burn backend extension with its own backward pass), anywhere else — or after
//! [`set_enabled`]`(false)` — burn's generic implementation, so the model code stays
//! backend-generic. Tests compare both paths, values and gradients.

pub mod conv;
pub mod fast_math;
#[cfg(feature = "flex")]
mod flex;
pub mod group_norm;
#[cfg(test)]
mod tests;

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the kernels on or off for the whole process (off: burn's generic operations everywhere;
/// for comparisons and benchmarks).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether the kernels are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// `conv.forward(x)`, through the fast kernel where it applies.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex::try_conv2d(conv, &x) {
        return y;
    }
    conv.forward(x)
}

/// `norm.forward(x)`, followed by SiLU when `with_silu`, through the fused kernel where it applies.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex::try_group_norm(norm, &x, with_silu) {
        return y;
    }
    let y = norm.forward(x);
    if with_silu { silu(y) } else { y }
}
