//! The CubeCL kernels against burn's composed operations on CubeCL's CPU runtime (the code a GPU
//! runs, compiled for this CPU), values and gradients, through Fusion and Autodiff as training
//! uses them.

use super::{try_adamw, try_group_norm};
use crate::kernels::AdamWScalars;
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
        // W = 1 in every layout: a size-1 dimension's stride says nothing of the pixels'.
        (2, [2, 4, 3, 1]),
        (2, [2, 4, 3, 1]),
        (2, [2, 4, 3, 1]),
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
    let small = norm(4, 8, 1, &device);
    let x = random(shape, 3, &device) * 1.5 - 0.3;
    let shift = random([2, 8], 4, &device);
    let want = values(composed(&small, x.clone(), Some(&shift), true));
    let got = try_group_norm(&small, &x, Some(&shift), true).expect("covered");
    close(&values(got), &want, 1e-4, "f32 without autodiff");

    // More (image, group) pairs than a grid dimension may hold on some devices (65,535).
    let many = norm(16, 16, 2, &device);
    let wide = random([4100, 16, 1, 2], 8, &device);
    let want = values(composed(&many, wide.clone(), None, false));
    let got = try_group_norm(&many, &wide, None, false).expect("covered");
    close(&values(got), &want, 1e-4, "65,600 groups");

    // bf16 tensors (8 significant bits): the sums stay f32, so the error is the rounding of
    // the inputs and of the output, a few parts in 256.
    let half = cast(&small, DType::BF16);
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

/// θ', m', v' of one AdamW update, computed on the host in f64.
fn adamw_host(p: &[f32], g: &[f32], m: &[f32], v: &[f32], s: &AdamWScalars) -> [Vec<f32>; 3] {
    let mut out = [vec![], vec![], vec![]];
    for i in 0..p.len() {
        let (b1, b2) = (s.beta1 as f64, s.beta2 as f64);
        let g = g[i] as f64 * s.grad_scale as f64;
        let m1 = b1 * m[i] as f64 + (1.0 - b1) * g;
        let v1 = b2 * v[i] as f64 + (1.0 - b2) * g * g;
        let p1 = p[i] as f64 * s.keep as f64
            - m1 / ((v1 / s.bc2 as f64).sqrt() + s.eps as f64) * s.step as f64;
        out[0].push(p1 as f32);
        out[1].push(m1 as f32);
        out[2].push(v1 as f32);
    }
    out
}

#[test]
fn adamw_kernel_matches_the_update_computed_on_the_host() {
    let device = Device::cpu();
    let n = 1000;
    let t = |seed| random([n], seed, &device);
    let (p, g, m) = (t(1), t(2), t(3) * 0.1);
    let v = t(4).abs() * 0.01;
    let s = AdamWScalars {
        grad_scale: 0.5,
        beta1: 0.9,
        one_minus_beta1: 0.1,
        beta2: 0.999,
        one_minus_beta2: 0.001,
        bc2: 1.0 - 0.999f32.powi(3),
        eps: 1e-8,
        step: 2e-4 / (1.0 - 0.9f32.powi(3)),
        keep: 1.0 - 2e-4 * 0.01,
    };
    let host = |t: &Tensor<1>| values(t.clone());
    for first in [false, true] {
        let (m_in, v_in) = if first {
            (None, None)
        } else {
            (Some(&m), Some(&v))
        };
        let (p1, m1, v1) = try_adamw(&p, &g, m_in, v_in, s).expect("covered");
        let zeros = vec![0.0f32; n];
        let (hm, hv) = if first {
            (zeros.clone(), zeros)
        } else {
            (host(&m), host(&v))
        };
        let want = adamw_host(&host(&p), &host(&g), &hm, &hv, &s);
        let what = if first { "first update" } else { "update" };
        close(&host(&p1), &want[0], 1e-5, &format!("{what} θ"));
        close(&host(&m1), &want[1], 1e-6, &format!("{what} m"));
        close(&host(&v1), &want[2], 1e-6, &format!("{what} v"));
    }
    // Not covered: another type, another length, a device without the kernel.
    assert!(try_adamw(&p.clone().cast(DType::BF16), &g, None, None, s).is_none());
    assert!(try_adamw(&p, &random([n + 1], 5, &device), None, None, s).is_none());
    let flex = random([n], 1, &Device::flex());
    assert!(try_adamw(&flex, &flex, None, None, s).is_none());
}

#[test]
fn optimizer_steps_on_cubecl_match_the_cpu() {
    use crate::optim::adamw::{AdamW, AdamWConfig};
    use crate::store::params::named_params;
    use burn::module::Module;
    use std::collections::BTreeMap;
    let cpu = Device::flex();
    let cube = Device::cpu();
    let start = norm(4, 8, 9, &cpu);
    let config = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let run = |device: &Device| {
        let mut model = start.clone().to_device(device);
        let mut opt = AdamW::new(config);
        for step in 0..3u64 {
            let grads: BTreeMap<String, Tensor<1>> = named_params(&model)
                .into_iter()
                .enumerate()
                .map(|(i, (name, p))| {
                    let n = p.value.dims()[0];
                    (name, random([n], 100 * step + i as u64, device))
                })
                .collect();
            model = opt.step(model, &grads, 1e-3, 0.7);
        }
        let mut out: Vec<f32> = named_params(&model)
            .into_values()
            .flat_map(|p| values(p.value))
            .collect();
        out.extend(
            opt.m
                .values()
                .chain(opt.v.values())
                .flat_map(|t| values(t.clone())),
        );
        out
    };
    close(&run(&cube), &run(&cpu), 1e-5, "θ, m, v after three updates");
}
