//! Hand-written CPU kernels for the operations that dominate a U-Net step on burn's `flex`
//! backend: convolution (Winograd F(4×4, 3×3) with channels in the lanes, forward and both
//! gradients; 1×1 kernels as products on the planes; direct AVX-512 tiles for other stride-1
//! kernels, GEMMs otherwise; optionally adding a residual),
//! GroupNorm fused with the SiLU that follows it (and optionally a per-channel shift before it),
//! the attention block after its GroupNorm (q/k/v projection, softmax attention and output
//! projection per image), dropout with a counter-based mask, nearest upsampling and channel
//! concatenation over the thread pool, and vectorized `exp` / sigmoid.
//!
//! The model calls [`conv2d`], [`conv2d_residual`], [`group_norm()`], [`group_norm_shifted`],
//! [`self_attention`], [`dropout()`], [`upsample2`] and [`cat_channels`]; on a flex device they
//! run these kernels (as burn backend extensions with their own backward passes), anywhere else
//! — or after [`set_enabled`]`(false)` — burn's generic implementation, so the model code stays
//! backend-generic. Tests compare both paths, values and gradients.
//!
//! With the `cube` feature (implied by `cuda`, `wgpu` and `cubecl-cpu`), `cube/` holds CubeCL
//! kernels for the GPU routes, written once for every CubeCL runtime: the GroupNorm (+ shift,
//! + SiLU) forward and backward passes, and [`adamw`]'s update of a parameter. Their tests run
//! on CubeCL's CPU runtime (`cargo test --release --features cubecl-cpu --lib kernels::cube`).

/// Defines the function `$name` twice, as written and compiled for AVX-512, and calls the
/// second when the CPU has it (the crate itself is built for baseline x86-64, whose SIMD is 4
/// lanes wide).
macro_rules! with_avx512 {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$m])*
        #[inline(never)]
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn generic($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast($($arg: $ty),*) -> $ret {
                    generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: every feature `fast` is compiled for was detected on this CPU.
                    return unsafe { fast($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

pub mod attention;
pub mod conv;
#[cfg(target_arch = "x86_64")]
mod conv_direct;
#[cfg(feature = "cube")]
mod cube;
#[cfg(target_arch = "x86_64")]
pub mod direct;
pub mod dropout;
pub mod fast_math;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod flex_attention;
#[cfg(feature = "flex")]
mod flex_dropout;
#[cfg(feature = "flex")]
mod flex_layout;
pub mod group_norm;
pub mod layout;
mod matmul;
#[cfg(target_arch = "x86_64")]
mod pointwise;
mod product;
pub mod profile;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub mod winograd;
#[cfg(target_arch = "x86_64")]
pub mod winograd4;
#[cfg(target_arch = "x86_64")]
mod winograd4_grad;

use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, GroupNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// `n` zeros, written by the whole thread pool when there are many: an output buffer is
/// allocated on the calling thread, where a serial `memset` (or the first-touch page faults)
/// would leave the other threads idle.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    if n < 1 << 16 {
        return vec![0f32; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0f32, n));
    v
}

/// a += b elementwise, over the pool when long.
pub(crate) fn add_assign(a: &mut [f32], b: &[f32]) {
    use rayon::prelude::*;
    assert_eq!(a.len(), b.len(), "add_assign: lengths");
    a.par_iter_mut()
        .zip(b.par_iter())
        .with_min_len(1 << 14)
        .for_each(|(x, y)| *x += y);
}

/// Σ f(x) over a slice, accumulated in 64 f32 partial sums (four independent vectors of 16, so
/// that the additions overlap instead of waiting on each other: a plain `iter().sum()` is one
/// serial chain, a few cycles per element), combined in f64.
#[inline(always)]
pub(crate) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    const WIDE: usize = 64;
    let mut acc = [0f32; WIDE];
    let chunks = xs.chunks_exact(WIDE);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..WIDE {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + rest.iter().map(|&v| f(v) as f64).sum::<f64>()
}

/// Grows `buf` to at least `n` floats (scratch kept across calls; its contents are overwritten
/// before use).
pub(crate) fn grow(buf: &mut Vec<f32>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
}

/// `n` uninitialized floats for a kernel that writes every one of them (then [`assume_init`]).
pub(crate) fn uninit(n: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialization; the capacity is n.
    unsafe { v.set_len(n) };
    v
}

/// The floats of a buffer from [`uninit`].
///
/// # Safety
/// Every element must have been written.
pub(crate) unsafe fn assume_init(v: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, layout-compatible element type, all elements initialized (the
    // caller's contract); the original vector is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

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

/// `conv.forward(x) + residual`, the residual added by the kernel as it stores where it applies.
pub fn conv2d_residual(conv: &Conv2d, x: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex::try_conv2d_residual(conv, &x, &residual) {
        return y;
    }
    conv.forward(x) + residual
}

/// The constants of one AdamW update, computed on the host in f64 and cast once (as the update
/// composed from tensor operations casts them): g ← g·grad_scale, m' = β1·m + (1 − β1)·g,
/// v' = β2·v + (1 − β2)·g², θ' = θ·keep − m' / (√(v' / bc2) + ε)·step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// The gradient's factor (clipping).
    pub grad_scale: f32,
    /// β1.
    pub beta1: f32,
    /// 1 − β1.
    pub one_minus_beta1: f32,
    /// β2.
    pub beta2: f32,
    /// 1 − β2.
    pub one_minus_beta2: f32,
    /// 1 − β2ᵗ.
    pub bc2: f32,
    /// ε.
    pub eps: f32,
    /// lr / (1 − β1ᵗ).
    pub step: f32,
    /// 1 − lr·weight decay.
    pub keep: f32,
}

/// θ', m', v' of one AdamW update by a device kernel (moments absent before the first update
/// are zeros), or `None` where there is none for this device (the caller composes the update
/// from tensor operations).
#[allow(unused_variables)]
pub fn adamw(
    param: &Tensor<1>,
    grad: &Tensor<1>,
    m: Option<&Tensor<1>>,
    v: Option<&Tensor<1>>,
    scalars: AdamWScalars,
) -> Option<(Tensor<1>, Tensor<1>, Tensor<1>)> {
    #[cfg(feature = "cube")]
    if let Some(out) = cube::try_adamw(param, grad, m, v, scalars) {
        return Some(out);
    }
    None
}

/// `norm.forward(x)`, followed by SiLU when `with_silu`, through the fused kernel where it applies.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex::try_group_norm(norm, &x, None, with_silu) {
        return y;
    }
    #[cfg(feature = "cube")]
    if let Some(y) = cube::try_group_norm(norm, &x, None, with_silu) {
        return y;
    }
    let y = norm.forward(x);
    if with_silu { silu(y) } else { y }
}

/// `norm.forward(x + shift)` with `shift` (`[B, C]`) broadcast over the pixels, followed by SiLU
/// when `with_silu`: the fused kernel adds the shift on the fly where it applies.
pub fn group_norm_shifted(
    norm: &GroupNorm,
    x: Tensor<4>,
    shift: Tensor<2>,
    with_silu: bool,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex::try_group_norm(norm, &x, Some(&shift), with_silu) {
        return y;
    }
    #[cfg(feature = "cube")]
    if let Some(y) = cube::try_group_norm(norm, &x, Some(&shift), with_silu) {
        return y;
    }
    let [b, c] = shift.dims();
    let y = norm.forward(x + shift.reshape([b, c, 1, 1]));
    if with_silu { silu(y) } else { y }
}

/// Nearest 2× upsampling, `[B, C, H, W] → [B, C, 2H, 2W]`, through the kernel where it applies.
pub fn upsample2(x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex_layout::try_upsample2(&x) {
        return y;
    }
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

/// `[B, Ca, H, W] ++ [B, Cb, H, W] → [B, Ca + Cb, H, W]`, through the kernel where it applies.
pub fn cat_channels(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex_layout::try_cat_channels(&a, &b) {
        return y;
    }
    Tensor::cat(vec![a, b], 1)
}

/// `dropout.forward(x)`: on flex a counter-based mask computed over the thread pool (and
/// recomputed in the backward pass), elsewhere burn's.
pub fn dropout(dropout: &Dropout, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex_dropout::try_dropout(dropout, &x) {
        return y;
    }
    dropout.forward(x)
}

/// `x + proj(softmax(q kᵀ/√d) v)` with q, k, v = `qkv(h)` split into `heads` heads, over the
/// pixels of `h`, `x` (`[B, C, H, W]`): the core of an attention block after its GroupNorm.
/// One fused kernel (forward and backward) where it applies; burn's operations otherwise.
pub fn self_attention(
    qkv: &Linear,
    proj: &Linear,
    heads: usize,
    h: Tensor<4>,
    x: Tensor<4>,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex_attention::try_attention(qkv, proj, heads, &h, &x) {
        return y;
    }
    composed_attention(qkv, proj, heads, h, x)
}

/// [`self_attention`] through burn's operations (its fused `attention` where the backend has
/// one: flex without autodiff).
fn composed_attention(
    qkv: &Linear,
    proj: &Linear,
    heads: usize,
    h: Tensor<4>,
    x: Tensor<4>,
) -> Tensor<4> {
    let [b, c, hh, w] = x.dims();
    let (n, d) = (hh * w, c / heads);
    let tokens = h.reshape([b, c, n]).swap_dims(1, 2);
    let qkv = qkv.forward(tokens); // [B, N, 3C]
    let split = |i: usize| {
        qkv.clone()
            .narrow(2, i * c, c)
            .reshape([b, n, heads, d])
            .swap_dims(1, 2) // [B, heads, N, d]
    };
    let (q, k, v) = (split(0), split(1), split(2));
    let options = AttentionModuleOptions {
        scale: Some(1.0 / (d as f64).sqrt()),
        softcap: None,
        is_causal: false,
    };
    let out = burn_attention(q, k, v, None, None, options)
        .swap_dims(1, 2)
        .reshape([b, n, c]);
    x + proj.forward(out).swap_dims(1, 2).reshape([b, c, hh, w])
}
