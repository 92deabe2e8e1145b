use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::*;

fn dev() -> Device {
    Device::flex()
}

#[test]
fn presets_have_the_published_parameter_counts() {
    assert_eq!(
        UNet::new(&UNetConfig::mnist(), &dev())
            .unwrap()
            .num_params(),
        1_623_169
    );
    assert_eq!(
        UNet::new(&UNetConfig::cifar10(), &dev())
            .unwrap()
            .num_params(),
        35_746_307
    );
}

#[test]
fn every_option_builds_and_keeps_the_shape() {
    let mut configs = vec![UNetConfig::tiny()];
    let mut c = UNetConfig::tiny();
    c.time_injection = TimeInjection::ScaleShift;
    c.resblock_updown = true;
    c.learn_sigma = true;
    c.time_features = TimeFeatures::Fourier {
        scale: 16.0,
        seed: 3,
    };
    c.time_scale = 1e-3;
    c.num_head_channels = Some(4);
    c.dropout = 0.1;
    configs.push(c);
    for cfg in configs {
        let net = UNet::new(&cfg, &dev()).unwrap();
        let x = Tensor::<4>::zeros([2, 1, 8, 8], &dev());
        let t = Tensor::<1>::from_floats([0.0, 999.0], &dev());
        let y = net.forward(x, t);
        assert_eq!(y.dims(), [2, cfg.output_channels(), 8, 8]);
    }
}

#[test]
fn sizes_the_levels_cannot_halve_are_a_clear_error() {
    let mut c = UNetConfig::mnist();
    c.image_size = 30;
    let e = UNet::new(&c, &dev()).unwrap_err();
    assert!(e.0.contains("cannot be halved"), "{e}");
    let mut c = UNetConfig::mnist();
    c.groups = 7;
    assert!(UNet::new(&c, &dev()).unwrap_err().0.contains("GroupNorm"));
}

#[test]
fn output_depends_on_time_and_input() {
    // The zero-initialized output layer makes a fresh net output 0; perturb it first.
    let mut c = UNetConfig::tiny();
    c.groups = 2;
    let net = UNet::new(&c, &dev()).unwrap();
    let net = net.map(&mut Perturb);
    let x = Tensor::<4>::random(
        [1, 1, 8, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev(),
    );
    let y1 = net.forward(x.clone(), Tensor::<1>::from_floats([10.0], &dev()));
    let y2 = net.forward(x.clone(), Tensor::<1>::from_floats([500.0], &dev()));
    let y3 = net.forward(x * 2.0, Tensor::<1>::from_floats([10.0], &dev()));
    let d = |a: Tensor<4>, b: Tensor<4>| (a - b).abs().sum().into_scalar::<f32>();
    assert!(d(y1.clone(), y2) > 1e-4);
    assert!(d(y1, y3) > 1e-4);
}

struct Perturb;
impl burn::module::ModuleMapper for Perturb {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| {
            let n = t.random_like(burn::tensor::Distribution::Normal(0.0, 0.05));
            t + n
        })
    }
}

#[test]
fn mlp_denoiser_shapes() {
    let m = Mlp::new(&MlpConfig::default(), &dev());
    let y = m.forward(
        Tensor::<2>::zeros([5, 2], &dev()),
        Tensor::<1>::zeros([5], &dev()),
    );
    assert_eq!(y.dims(), [5, 2]);
}

#[test]
fn activation_estimate_follows_the_measured_peak() {
    // BENCHMARKS.md: cifar10 training at batch 128 peaks at 5.14 GiB RSS on the CPU. The
    // estimate (values of one forward pass, f32) must be of that size, not off by a factor.
    let bytes = UNetConfig::cifar10().activation_values() as f64 * 4.0 * 128.0;
    let measured = 5.14 * (1u64 << 30) as f64;
    assert!(
        (0.8..1.5).contains(&(bytes / measured)),
        "estimate {:.2} GiB vs measured 5.14 GiB",
        bytes / (1u64 << 30) as f64
    );
    // It grows with the image size and the width.
    let mut wide = UNetConfig::cifar10();
    wide.base_channels *= 2;
    assert!(wide.activation_values() > UNetConfig::cifar10().activation_values());
    assert!(UNetConfig::mnist().activation_values() < UNetConfig::cifar10().activation_values());
}

#[test]
fn noisy_classifier_gradient_matches_finite_differences() {
    use crate::sample::{ClassifierGradient, ClassifierGuide};
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Distribution, TensorData};
    dev().seed(11);
    let mut cfg = UNetConfig::tiny();
    cfg.time_injection = TimeInjection::ScaleShift;
    // Loaded without autodiff, as for sampling: the gradient is taken w.r.t. the input only.
    let net = NoisyClassifier::new(&cfg, 3, &dev()).unwrap();
    let x = Tensor::<4>::random([2, 1, 8, 8], Distribution::Normal(0.0, 1.0), &dev());
    let t = Tensor::<1>::from_floats([5.0, 700.0], &dev());
    assert_eq!(net.logits(x.clone(), t.clone()).dims(), [2, 3]);
    let labels = [2usize, 0];
    let g: Vec<f64> = ClassifierGradient::gradient(
        &ClassifierGuide::new(&net, 1.0),
        x.clone(),
        t.clone(),
        &labels,
    )
    .into_data()
    .convert::<f64>()
    .try_into_vec()
    .unwrap();
    let logp = |x: Tensor<4>| -> Vec<f64> {
        log_softmax(net.logits(x, t.clone()), 1)
            .into_data()
            .convert::<f64>()
            .try_into_vec()
            .unwrap()
    };
    let xs: Vec<f32> = x
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap();
    let h = 1e-2f32;
    for (item, pixel) in [(0usize, 0usize), (0, 27), (1, 9), (1, 63)] {
        let k = item * 64 + pixel;
        let shifted = |d: f32| {
            let mut v = xs.clone();
            v[k] += d;
            Tensor::<4>::from_data(TensorData::new(v, [2, 1, 8, 8]), &dev())
        };
        let (up, down) = (logp(shifted(h)), logp(shifted(-h)));
        let fd = (up[item * 3 + labels[item]] - down[item * 3 + labels[item]]) / (2.0 * h as f64);
        assert!(
            (fd - g[k]).abs() < 2e-3 + 0.05 * fd.abs(),
            "item {item} pixel {pixel}: autodiff {} vs finite difference {fd}",
            g[k]
        );
    }
    assert!(
        g.iter().any(|v| v.abs() > 1e-6),
        "a gradient that is all zero"
    );
}

#[test]
fn fourier_features_join_the_input_and_resolve_the_pixel_grid() {
    use burn::tensor::TensorData;
    let d = dev();
    let vals = [-1.0f32, -0.5, 0.0, 2.0 / 255.0, 1.0, 0.3];
    let x = Tensor::<4>::from_data(TensorData::new(vals.to_vec(), [1, 1, 2, 3]), &d);
    let f = super::unet::with_fourier_features(x, &[7, 8]);
    assert_eq!(f.dims(), [1, 5, 2, 3]);
    let got: Vec<f32> = f.into_data().convert::<f32>().try_into_vec().unwrap();
    for (i, &v) in vals.iter().enumerate() {
        for (k, n) in [7, 8].iter().enumerate() {
            let h = v as f64 * 2f64.powi(*n) * std::f64::consts::TAU;
            let (s, c) = (got[(1 + 2 * k) * 6 + i], got[(2 + 2 * k) * 6 + i]);
            assert!(
                (s as f64 - h.sin()).abs() < 2e-3,
                "sin 2^{n}: {s} vs {}",
                h.sin()
            );
            assert!(
                (c as f64 - h.cos()).abs() < 2e-3,
                "cos 2^{n}: {c} vs {}",
                h.cos()
            );
        }
        assert_eq!(got[i], v);
    }
    // A network with them takes 1 + 2·2 input channels and still maps images to images.
    let mut c = UNetConfig::tiny();
    c.fourier_features = vec![7, 8];
    let plain = UNet::new(&UNetConfig::tiny(), &d).unwrap().num_params();
    let net = UNet::new(&c, &d).unwrap();
    assert_eq!(net.num_params() - plain, 4 * 9 * c.base_channels);
    let x = Tensor::<4>::random([2, 1, 8, 8], burn::tensor::Distribution::Default, &d);
    let t = Tensor::<1>::from_floats([3.0, 700.0], &d);
    assert_eq!(net.forward(x, t).dims(), [2, 1, 8, 8]);
    c.fourier_features = vec![21];
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("fourier_features")
    );
}

/// The output is ε, x0 or v of the input's shape: other output channels are refused before a
/// network is built (they used to train and then fail inside a convolution of the sample grid).
#[test]
fn output_channels_must_match_the_input() {
    let mut c = UNetConfig::tiny();
    c.out_channels = 5;
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("out_channels (5)") && e.contains("in_channels (1)"),
        "{e}"
    );
    assert!(UNet::new(&c, &Device::flex()).is_err());
    c.out_channels = 1;
    c.validate().unwrap();
}
