//! The CubeCL kernels against burn's composed operations on CubeCL's CPU runtime (the code a GPU
//! runs, compiled for this CPU), values and gradients, through Fusion and Autodiff as training
//! uses them.

use super::try_group_norm;
use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, Tensor, TensorData};

fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    let values = crate::rng::Rng::new(seed).normal_f32(n);
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 values")
}

/// |a − b| ≤ tol·(1 + |b|) elementwise.
fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.is_finite() && (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// A GroupNorm with affine parameters away from their initial 1 and 0.
fn norm(groups: usize, channels: usize, seed: u64, device: &Device) -> GroupNorm {
    let mut norm: GroupNorm = GroupNormConfig::new(groups, channels).init(device);
    norm.gamma = Some(Param::from_tensor(
        random([channels], seed, device) * 0.3 + 1.0,
    ));
    norm.beta = Some(Param::from_tensor(
        random([channels], seed + 1, device) * 0.5,
    ));
    norm
}

fn cast(norm: &GroupNorm, dtype: DType) -> GroupNorm {
    let mut norm = norm.clone();
    let to = |p: &Option<Param<Tensor<1>>>| Some(Param::from_tensor(p.as_ref()?.val().cast(dtype)));
    norm.gamma = to(&norm.gamma);
    norm.beta = to(&norm.beta);
    norm
}

fn composed(
    norm: &GroupNorm,
    x: Tensor<4>,
    shift: Option<&Tensor<2>>,
    with_silu: bool,
) -> Tensor<4> {
    let [b, c, _, _] = x.dims();
    let x = match shift {
        Some(s) => x + s.clone().reshape([b, c, 1, 1]),
        None => x,
    };
    let y = norm.forward(x);
    if with_silu { silu(y) } else { y }
}

/// A random `[B, C, H, W]` tensor in one of three layouts, by `which`: contiguous, channels-last
/// (as the GPU route's convolutions leave their outputs), or with H and W swapped in memory
/// (which the kernels copy first).
fn laid_out(shape: [usize; 4], which: usize, seed: u64, device: &Device) -> Tensor<4> {
    let [b, c, h, w] = shape;
    match which % 3 {
        0 => random(shape, seed, device),
        1 => random([b, h, w, c], seed, device).permute([0, 3, 1, 2]),
        _ => random([b, c, w, h], seed, device).swap_dims(2, 3),
    }
}

#[test]
fn group_norm_kernel_matches_burn_values_and_gradients() {
    let device = Device::cpu().autodiff();
    // Groups smaller than a cube's units, larger than them, one channel per group, one group.
    let cases = [
        (2usize, [3usize, 6, 5, 4]),
        (8, [2, 32, 16, 16]),
        (16, [2, 16, 3, 3]),
        (1, [2, 3, 2, 2]),
    ];
    for (i, (groups, shape)) in cases.into_iter().enumerate() {
        let seed = 10 * i as u64;
        let norm = norm(groups, shape[1], seed, &device);
        let x = (laid_out(shape, i, seed + 2, &device) * 2.0 + 0.5).require_grad();
        let shift = (random([shape[0], shape[1]], seed + 3, &device) * 0.7).require_grad();
        let dy = laid_out(shape, i + 1, seed + 4, &device);
        for (with_shift, with_silu) in [(false, false), (false, true), (true, false), (true, true)]
        {
            let what = format!("case {i} shift {with_shift} silu {with_silu}");
            let s = with_shift.then_some(&shift);
            let y_kernel = try_group_norm(&norm, &x, s, with_silu).expect("covered");
            let y_burn = composed(&norm, x.clone(), s, with_silu);
            close(
                &values(y_kernel.clone()),
                &values(y_burn.clone()),
                1e-4,
                &what,
            );
            // x has a second consumer, as in a ResBlock: its gradient adds to the kernel's.
            let loss = |y: Tensor<4>| (y * dy.clone()).sum() + (x.clone() * 0.25).sum();
            let g_kernel = loss(y_kernel).backward();
            let g_burn = loss(y_burn).backward();
            let grad = |t: &dyn Fn(&burn::tensor::Gradients) -> Vec<f32>, name: &str| {
                close(&t(&g_kernel), &t(&g_burn), 2e-4, &format!("{what} {name}"))
            };
            grad(&|g| values(x.grad(g).expect("∂x")), "∂x");
            let gamma = norm.gamma.as_ref().unwrap().val();
            let beta = norm.beta.as_ref().unwrap().val();
            grad(&|g| values(gamma.grad(g).expect("∂γ")), "∂γ");
            grad(&|g| values(beta.grad(g).expect("∂β")), "∂β");
            if with_shift {
                grad(&|g| values(shift.grad(g).expect("∂shift")), "∂shift");
            } else {
                assert!(shift.grad(&g_kernel).is_none(), "{what}: no ∂shift");
            }
        }
    }
}

#[test]
fn group_norm_kernel_runs_without_autodiff_and_in_bf16() {
    let device = Device::cpu();
    let shape = [2usize, 8, 6, 6];
    let norm = norm(4, 8, 1, &device);
    let x = random(shape, 3, &device) * 1.5 - 0.3;
    let shift = random([2, 8], 4, &device);
    let want = values(composed(&norm, x.clone(), Some(&shift), true));
    let got = try_group_norm(&norm, &x, Some(&shift), true).expect("covered");
    close(&values(got), &want, 1e-4, "f32 without autodiff");

    // bf16 tensors (8 significant bits): the sums stay f32, so the error is the rounding of
    // the inputs and of the output, a few parts in 256.
    let half = cast(&norm, DType::BF16);
    let (xh, sh) = (x.cast(DType::BF16), shift.cast(DType::BF16));
    let got = try_group_norm(&half, &xh, Some(&sh), true).expect("covered");
    assert_eq!(got.dtype(), DType::BF16);
    let want = values(composed(
        &cast(&half, DType::F32),
        xh.cast(DType::F32),
        Some(&sh.cast(DType::F32)),
        true,
    ));
    close(&values(got), &want, 2e-2, "bf16");
}

#[test]
fn group_norm_kernel_declines_what_it_does_not_cover() {
    let device = Device::cpu();
    let x = random([2, 8, 4, 4], 5, &device);
    let mut plain: GroupNorm = GroupNormConfig::new(4, 8).with_affine(false).init(&device);
    assert!(try_group_norm(&plain, &x, None, false).is_none(), "no γ, β");
    plain = norm(4, 8, 6, &device);
    let wrong_shift = random([2, 4], 7, &device);
    assert!(
        try_group_norm(&plain, &x, Some(&wrong_shift), false).is_none(),
        "shift shape"
    );
    let flex = random([2, 8, 4, 4], 5, &Device::flex());
    let on_flex = norm(4, 8, 6, &Device::flex());
    assert!(
        try_group_norm(&on_flex, &flex, None, false).is_none(),
        "not a CubeCL device"
    );
}
