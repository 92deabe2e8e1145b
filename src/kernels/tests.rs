//! The kernels against burn's generic operations on the flex backend, values and gradients.

use super::flex;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

fn random(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    let values = crate::rng::Rng::new(seed).normal_f32(n);
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn close(a: Tensor<4>, b: Tensor<4>, what: &str) {
    let (a, b) = (
        a.into_data().try_to_vec::<f32>().unwrap(),
        b.into_data().try_to_vec::<f32>().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}");
    close_slices(&a, &b, what);
}

fn close_slices(a: &[f32], b: &[f32], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// The gradients of `t` through the kernel and through burn agree.
fn close_grads<const D: usize>(
    t: &Tensor<D>,
    kernel: &burn::tensor::Gradients,
    burn: &burn::tensor::Gradients,
    what: &str,
) {
    close_slices(&grad_vec(t, kernel), &grad_vec(t, burn), what);
}

fn grad_vec<const D: usize>(t: &Tensor<D>, grads: &burn::tensor::Gradients) -> Vec<f32> {
    t.grad(grads)
        .expect("gradient")
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

fn convs(device: &Device) -> Vec<(Conv2d, [usize; 4])> {
    let conv = |cin, cout, k, stride, pad, bias_seed: f32| {
        let mut c = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(if pad == 0 {
                PaddingConfig2d::Valid
            } else {
                PaddingConfig2d::Explicit(pad, pad, pad, pad)
            })
            .init(device);
        // Non-zero biases so that the bias path is exercised.
        let b = (c.bias.take().unwrap().val().detach() + bias_seed).into_data();
        let b = burn::tensor::Tensor::<1>::from_data(b, device);
        c.bias = Some(Param::from_tensor(b));
        c
    };
    vec![
        // ≥ 8 input and output channels: the direct route, backward included.
        (conv(9, 10, 3, 1, 1, 0.4), [2, 9, 6, 7]),
        (conv(3, 5, 3, 1, 1, 0.3), [4, 3, 9, 7]),
        (conv(4, 6, 3, 2, 1, -0.2), [3, 4, 8, 8]),
        (conv(6, 4, 1, 1, 0, 0.1), [2, 6, 5, 5]),
        (conv(2, 3, 3, 1, 0, 0.5), [1, 2, 6, 6]),
    ]
}

#[test]
fn conv_kernel_matches_burn_values_and_gradients() {
    let device = Device::flex().autodiff();
    for (i, (conv, shape)) in convs(&device).into_iter().enumerate() {
        let x = random(shape, 10 + i as u64, &device).require_grad();
        let y_kernel = flex::try_conv2d(&conv, &x).expect("the kernel covers this convolution");
        let y_burn = conv.forward(x.clone());
        close(
            y_kernel.clone(),
            y_burn.clone(),
            &format!("conv {i} forward"),
        );

        let dy = random(y_burn.dims(), 20 + i as u64, &device);
        let g_kernel = (y_kernel * dy.clone()).sum().backward();
        let g_burn = (y_burn * dy).sum().backward();
        close_grads(&x, &g_kernel, &g_burn, &format!("conv {i} dx"));
        let w = conv.weight.val();
        close_grads(&w, &g_kernel, &g_burn, &format!("conv {i} dw"));
        let b = conv.bias.as_ref().unwrap().val();
        close_grads(&b, &g_kernel, &g_burn, &format!("conv {i} db"));
    }
}

#[test]
fn conv_kernel_runs_without_autodiff_and_declines_what_it_does_not_cover() {
    let device = Device::flex();
    let (conv, shape) = convs(&device).remove(0);
    let x = random(shape, 3, &device);
    close(
        flex::try_conv2d(&conv, &x).unwrap(),
        conv.forward(x.clone()),
        "inference conv",
    );
    let grouped = Conv2dConfig::new([4, 4], [3, 3])
        .with_groups(2)
        .init(&device);
    assert!(flex::try_conv2d(&grouped, &random([1, 4, 5, 5], 4, &device)).is_none());
    let dilated = Conv2dConfig::new([3, 3], [3, 3])
        .with_dilation([2, 2])
        .init(&device);
    assert!(flex::try_conv2d(&dilated, &random([1, 3, 9, 9], 5, &device)).is_none());
}

#[test]
fn group_norm_kernel_matches_burn_values_and_gradients() {
    let device = Device::flex().autodiff();
    for (i, (groups, shape)) in [
        (2usize, [3usize, 6, 5, 4]),
        (8, [2, 32, 7, 7]),
        (1, [2, 3, 2, 2]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut norm: GroupNorm = GroupNormConfig::new(groups, shape[1]).init(&device);
        // Non-trivial affine parameters.
        let c = shape[1];
        let gamma = Tensor::<1>::from_data(
            TensorData::new(crate::rng::Rng::new(30 + i as u64).normal_f32(c), [c]),
            &device,
        ) * 0.3
            + 1.0;
        norm.gamma = Some(Param::from_tensor(gamma));
        norm.beta = Some(Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(crate::rng::Rng::new(40 + i as u64).normal_f32(c), [c]),
            &device,
        )));
        for with_silu in [false, true] {
            let what = format!("group norm {i} silu {with_silu}");
            let x = (random(shape, 50 + i as u64, &device) * 2.0 + 0.5).require_grad();
            let y_kernel = flex::try_group_norm(&norm, &x, None, with_silu).expect("covered");
            let y_burn = norm.forward(x.clone());
            let y_burn = if with_silu { silu(y_burn) } else { y_burn };
            close(y_kernel.clone(), y_burn.clone(), &what);
            let dy = random(shape, 60 + i as u64, &device);
            let g_kernel = (y_kernel * dy.clone()).sum().backward();
            let g_burn = (y_burn * dy).sum().backward();
            close_grads(&x, &g_kernel, &g_burn, &format!("{what} dx"));
            for p in [
                norm.gamma.as_ref().unwrap().val(),
                norm.beta.as_ref().unwrap().val(),
            ] {
                close_grads(&p, &g_kernel, &g_burn, &format!("{what} dγ/dβ"));
            }
        }
    }
}

#[test]
fn layout_kernels_match_burn_values_and_gradients() {
    use super::flex_layout::{try_cat_channels, try_upsample2};
    let device = Device::flex().autodiff();
    let x = random([3, 4, 5, 6], 70, &device).require_grad();
    let up_kernel = try_upsample2(&x).expect("covered");
    let [b, c, h, w] = x.dims();
    let up_burn = x
        .clone()
        .reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w]);
    close(up_kernel.clone(), up_burn.clone(), "upsample");
    let dy = random(up_burn.dims(), 71, &device);
    let g_kernel = (up_kernel * dy.clone()).sum().backward();
    let g_burn = (up_burn * dy).sum().backward();
    close_grads(&x, &g_kernel, &g_burn, "upsample dx");

    let a = random([3, 2, 5, 6], 72, &device).require_grad();
    let cat_kernel = try_cat_channels(&a, &x).expect("covered");
    let cat_burn = Tensor::cat(vec![a.clone(), x.clone()], 1);
    close(cat_kernel.clone(), cat_burn.clone(), "cat");
    let dy = random(cat_burn.dims(), 73, &device);
    let g_kernel = (cat_kernel * dy.clone()).sum().backward();
    let g_burn = (cat_burn * dy).sum().backward();
    for (t, what) in [(&a, "cat da"), (&x, "cat dx")] {
        close_grads(t, &g_kernel, &g_burn, what);
    }
    assert!(try_cat_channels(&a, &random([3, 2, 5, 5], 74, &device)).is_none());
}

#[test]
fn shifted_group_norm_kernel_matches_burn_values_and_gradients() {
    let device = Device::flex().autodiff();
    let shape = [3usize, 8, 5, 4];
    let norm: GroupNorm = GroupNormConfig::new(4, shape[1]).init(&device);
    let x = (random(shape, 80, &device) * 1.5 - 0.2).require_grad();
    let shift = Tensor::<2>::from_data(
        TensorData::new(crate::rng::Rng::new(81).normal_f32(3 * 8), [3, 8]),
        &device,
    )
    .require_grad();
    for with_silu in [false, true] {
        let what = format!("shifted group norm silu {with_silu}");
        let y_kernel = flex::try_group_norm(&norm, &x, Some(&shift), with_silu).expect("covered");
        let y_burn = norm.forward(x.clone() + shift.clone().reshape([3, 8, 1, 1]));
        let y_burn = if with_silu { silu(y_burn) } else { y_burn };
        close(y_kernel.clone(), y_burn.clone(), &what);
        let dy = random(shape, 82, &device);
        let g_kernel = (y_kernel * dy.clone()).sum().backward();
        let g_burn = (y_burn * dy).sum().backward();
        close_grads(&x, &g_kernel, &g_burn, &format!("{what} dx"));
        close_grads(&shift, &g_kernel, &g_burn, &format!("{what} dshift"));
    }
}

#[test]
fn residual_conv_kernel_matches_burn_values_and_gradients() {
    let device = Device::flex().autodiff();
    // The first takes the direct route; the others (few channels, stride 2, 1×1) the GEMM route.
    for (i, (conv, shape)) in convs(&device).into_iter().enumerate() {
        let x = random(shape, 90 + i as u64, &device).require_grad();
        let y_shape = conv.forward(x.clone()).dims();
        let r = random(y_shape, 95 + i as u64, &device).require_grad();
        let y_kernel = flex::try_conv2d_residual(&conv, &x, &r).expect("covered");
        let y_burn = conv.forward(x.clone()) + r.clone();
        close(
            y_kernel.clone(),
            y_burn.clone(),
            &format!("residual conv {i}"),
        );
        let dy = random(y_shape, 99, &device);
        let g_kernel = (y_kernel * dy.clone()).sum().backward();
        let g_burn = (y_burn * dy).sum().backward();
        for (t, what) in [(&x, "dx"), (&r, "dresidual")] {
            close_grads(t, &g_kernel, &g_burn, &format!("residual conv {i} {what}"));
        }
        let w = conv.weight.val();
        close_grads(&w, &g_kernel, &g_burn, &format!("residual conv {i} dw"));
    }
    let wrong = random([1, 1, 2, 2], 3, &device);
    let (conv, shape) = convs(&device).remove(0);
    assert!(flex::try_conv2d_residual(&conv, &random(shape, 4, &device), &wrong).is_none());
}

#[test]
fn attention_kernel_matches_burn_values_and_gradients() {
    use burn::nn::{Linear, LinearConfig};
    let device = Device::flex().autodiff();
    // Non-zero biases and projection (the block's projection starts at zero, which would hide
    // the attention), all from seeded draws: burn's own initialization draws the biases from its
    // global generator, so each run compared a different block, and now and then one whose
    // softmax was so peaked that f32 rounding differed by 3e-4. Weights of scale 1/√cin keep the
    // attention logits of unit size.
    let linear = |cin: usize, cout: usize, seed: u64| -> Linear {
        let mut l = LinearConfig::new(cin, cout).init(&device);
        let scale = 1.0 / (cin as f32).sqrt();
        let mut rng = crate::rng::Rng::new(seed);
        let w: Vec<f32> = rng
            .normal_f32(cin * cout)
            .iter()
            .map(|v| v * scale)
            .collect();
        let b: Vec<f32> = rng.normal_f32(cout).iter().map(|v| 0.5 * v).collect();
        l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [cin, cout]), &device));
        l.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [cout]),
            &device,
        )));
        l
    };
    for (i, (shape, heads)) in [([2, 6, 3, 4], 2), ([3, 8, 5, 5], 1)]
        .into_iter()
        .enumerate()
    {
        let c = shape[1];
        let (qkv, proj) = (linear(c, 3 * c, 40 + i as u64), linear(c, c, 50 + i as u64));
        let h = random(shape, 60 + i as u64, &device).require_grad();
        let x = random(shape, 70 + i as u64, &device).require_grad();
        let y_kernel = flex_attention_kernel(&qkv, &proj, heads, &h, &x);
        let y_burn = super::composed_attention(&qkv, &proj, heads, h.clone(), x.clone());
        close(
            y_kernel.clone(),
            y_burn.clone(),
            &format!("attention {i} forward"),
        );

        let dy = random(shape, 80 + i as u64, &device);
        let g_kernel = (y_kernel * dy.clone()).sum().backward();
        let g_burn = (y_burn * dy).sum().backward();
        close_grads(&h, &g_kernel, &g_burn, &format!("attention {i} dh"));
        close_grads(&x, &g_kernel, &g_burn, &format!("attention {i} dx"));
        for (name, layer) in [("qkv", &qkv), ("proj", &proj)] {
            let w = layer.weight.val();
            close_grads(
                &w,
                &g_kernel,
                &g_burn,
                &format!("attention {i} d{name} weight"),
            );
            let b = layer.bias.as_ref().unwrap().val();
            close_grads(
                &b,
                &g_kernel,
                &g_burn,
                &format!("attention {i} d{name} bias"),
            );
        }
    }
}

fn flex_attention_kernel(
    qkv: &burn::nn::Linear,
    proj: &burn::nn::Linear,
    heads: usize,
    h: &Tensor<4>,
    x: &Tensor<4>,
) -> Tensor<4> {
    super::flex_attention::try_attention(qkv, proj, heads, h, x)
        .expect("the kernel covers this block")
}

#[test]
fn dropout_kernel_drops_scales_and_passes_gradients_through_the_same_mask() {
    use burn::nn::DropoutConfig;
    let device = Device::flex().autodiff();
    let d = DropoutConfig::new(0.25).init();
    let x = random([4, 8, 16, 16], 90, &device).require_grad();
    let y = super::flex_dropout::try_dropout(&d, &x).expect("training dropout on flex");
    let dy = random([4, 8, 16, 16], 91, &device);
    let grads = (y.clone() * dy.clone()).sum().backward();
    let xs = x.clone().into_data().try_to_vec::<f32>().unwrap();
    let ys = y.into_data().try_to_vec::<f32>().unwrap();
    let ds = dy.into_data().try_to_vec::<f32>().unwrap();
    let gs = grad_vec(&x, &grads);
    let scale = 1.0 / 0.75f32;
    let mut kept = 0;
    for i in 0..xs.len() {
        if ys[i] == 0.0 {
            assert_eq!(gs[i], 0.0, "[{i}] dropped, so no gradient");
        } else {
            kept += 1;
            assert_eq!(ys[i], xs[i] * scale, "[{i}]");
            assert_eq!(gs[i], ds[i] * scale, "[{i}] gradient through the same mask");
        }
    }
    // 8192 elements kept at rate 0.75: 6144 ± 5·39.
    assert!((6144 - 196..6144 + 196).contains(&kept), "kept {kept}");
    // Evaluation mode, no autodiff and p = 0 are left to burn (which returns x unchanged).
    let plain = random([1, 2, 3, 3], 92, &Device::flex());
    assert!(super::flex_dropout::try_dropout(&d, &plain).is_none());
    assert!(super::flex_dropout::try_dropout(&DropoutConfig::new(0.0).init(), &x).is_none());
}

/// x feeding the GroupNorm and a second consumer (as in every ResBlock): the kernel adds the
/// other consumer's gradient itself; the total must still be burn's.
#[test]
fn group_norm_kernel_adds_the_gradient_of_a_second_consumer() {
    let device = Device::flex().autodiff();
    let shape = [2, 16, 6, 6];
    let norm: GroupNorm = GroupNormConfig::new(4, 16).init(&device);
    let x = random(shape, 70, &device).require_grad();
    let (dy, dz) = (random(shape, 71, &device), random(shape, 72, &device));
    // The other consumer comes later in the graph (its backward runs first) and earlier.
    let later = |y: Tensor<4>| (y * dy.clone() + (x.clone() * x.clone()) * dz.clone()).sum();
    let kernel = flex::try_group_norm(&norm, &x, None, true).expect("covered");
    let burn = silu(norm.forward(x.clone()));
    let (gk, gb) = (later(kernel).backward(), later(burn).backward());
    close_grads(&x, &gk, &gb, "x with two consumers");
    // (Each backward pass consumes its graph: the earlier consumer is built twice.)
    let earlier = x.clone().exp();
    let kernel = flex::try_group_norm(&norm, &x, None, false).expect("covered");
    let gk = (kernel * dy.clone() + earlier * dz.clone())
        .sum()
        .backward();
    let earlier = x.clone().exp();
    let gb = (norm.forward(x.clone()) * dy.clone() + earlier * dz.clone())
        .sum()
        .backward();
    close_grads(&x, &gk, &gb, "x consumed before the norm too");
}

#[test]
fn lane_sum_matches_an_f64_sum_at_every_tail_length() {
    for n in [0usize, 1, 63, 64, 65, 128, 100, 1000] {
        let v = crate::rng::Rng::new(n as u64).normal_f32(n);
        let want: f64 = v.iter().map(|&x| x as f64).sum();
        let got = super::lane_sum(&v, |x| x);
        assert!(
            (got - want).abs() < 1e-5 * (1.0 + n as f64),
            "{n}: {got} vs {want}"
        );
    }
}
