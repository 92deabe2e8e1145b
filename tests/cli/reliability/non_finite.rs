//! Round 2, item 2: no NaN result is reported as a success. Samples, bounds and guidance
//! statistics are checked, and the error names the likely cause; what is known to overflow is
//! refused before any work.

use super::*;

/// The run's EMA weights multiplied by `factor` (finite, but far beyond any trained network).
fn scale_ema(run: &str, step: u64, factor: f32) {
    let p = ckpt(run, step).join("ema.safetensors");
    let mut m = read_safetensors(&p).unwrap();
    for t in m.values_mut() {
        for v in &mut t.data {
            *v *= factor;
        }
    }
    write_tensors(&p, &m);
}

#[test]
fn diverged_weights_give_errors_not_black_images() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    scale_ema(&r, 1, 1e30);
    let out = f.path("s");
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &r,
            "--n",
            "2",
            "--steps",
            "3",
            "--quiet",
            "--out",
            &out,
        ]),
        "non-finite",
    );
    assert!(e.contains("|w| = 1.000e30"), "{e}");
    assert!(!Path::new(&out).join("grid.png").exists());
    let e = fails_with(
        ddpm(&[
            "eval",
            "nll",
            "--checkpoint",
            &r,
            "--data",
            &f.data,
            "--limit",
            "2",
            "--t-samples",
            "2",
            "--quiet",
        ]),
        "not a number of bits",
    );
    assert!(e.contains(&r), "{e}");
    let e = fails_with(
        ddpm(&[
            "plot",
            "chain",
            "--checkpoint",
            &r,
            "--steps",
            "3",
            "--n",
            "2",
            "--out",
            &f.path("chain.png"),
        ]),
        "non-finite",
    );
    assert!(e.contains("|w|"), "{e}");
    assert!(!Path::new(&f.path("chain.png")).exists());
}

#[test]
fn overflowing_settings_are_refused_or_named() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    let out = f.path("s");
    for flag in ["--guidance", "--classifier-scale"] {
        let o = ddpm(&["sample", "--checkpoint", &r, flag, "1e300", "--out", &out]);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        let e = fails_with(o, flag);
        assert!(e.contains("got 1e300"), "{e}");
    }
    // A --noise file of finite but enormous values: named as the cause.
    let mut m = BTreeMap::new();
    m.insert(
        "init".to_string(),
        HostTensor {
            shape: vec![2, 1, 8, 8],
            data: vec![3e38; 128],
        },
    );
    let noise = f.path("noise.safetensors");
    write_tensors(Path::new(&noise), &m);
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &r,
            "--n",
            "2",
            "--steps",
            "2",
            "--quiet",
            "--noise",
            &noise,
            "--out",
            &out,
        ]),
        "non-finite",
    );
    assert!(e.contains("--noise"), "{e}");
    // ε-prediction on a zero-terminal-SNR chain: x̂0 is undefined at its last step.
    let z = f.path("z");
    ok(f.train(&z, "1", &["--zero-terminal-snr"]));
    for sampler in ["ddpm", "ddim", "dpmpp2m"] {
        let args = [
            "sample",
            "--checkpoint",
            &z,
            "--sampler",
            sampler,
            "--steps",
            "50",
        ];
        let o = ddpm(&[&args[..], &["--spacing", "trailing", "--out", &out]].concat());
        assert_eq!(o.status.code(), Some(2), "{sampler}");
        fails_with(o, "zero-terminal-SNR");
    }
    ok(ddpm(&[
        "sample",
        "--checkpoint",
        &z,
        "--sampler",
        "ddim",
        "--steps",
        "5",
        "--n",
        "2",
        "--quiet",
        "--out",
        &f.path("zl"),
    ]));
}

/// An overflowing gradient norm used to make the clip factor 0: every update was zero and the
/// run reported success.
#[test]
fn a_non_finite_gradient_norm_stops_training() {
    let f = Fixture::new();
    let r = f.path("r");
    let e = fails_with(
        f.train(
            &r,
            "3",
            &[
                "--loss",
                "hybrid",
                "--variance",
                "learned-range",
                "--hybrid-lambda",
                "1e30",
            ],
        ),
        "non-finite gradient norm",
    );
    assert!(e.contains("--hybrid-lambda"), "{e}");
    assert!(!ckpt(&r, 1).exists());
}

/// `eval guidance` used to print `classifier FD NaN` and exit 0.
#[test]
fn guidance_statistics_of_nan_samples_are_an_error() {
    let f = Fixture::new();
    f.add_labels();
    let r = f.path("r");
    ok(f.train(&r, "1", &["--class-cond"]));
    scale_ema(&r, 1, 1e30);
    let judge = f.path("judge.safetensors");
    ok(ddpm(&[
        "eval",
        "classifier-train",
        "--data",
        &f.data,
        "--out",
        &judge,
    ]));
    let e = fails_with(
        ddpm(&[
            "eval",
            "guidance",
            "--checkpoint",
            &r,
            "--classifier",
            &judge,
            "--reference",
            &f.data,
            "--guidance",
            "0,1",
            "--per-class",
            "1",
            "--steps",
            "2",
            "--quiet",
        ]),
        "not finite",
    );
    assert!(e.contains("w = 0") && e.contains(&r), "{e}");
}
