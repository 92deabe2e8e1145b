//! `ddpm train` end to end on tiny synthetic data: bit-identical resume and clear errors.

use std::path::Path;

use crate::common::{ddpm, write_idx};

fn common<'a>(data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--quiet",
        "--data",
        data,
        "--preset",
        "tiny",
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--timesteps",
        "50",
        "--dropout",
        "0.1",
        "--checkpoint-every",
        "3",
        "--sample-count",
        "4",
        "--sample-steps",
        "3",
        "--log-every",
        "1",
        "--out",
        out,
        "--t-sampler",
        "loss-second-moment",
        "--grad-accum",
        "2",
    ]
}

#[test]
fn resume_continues_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    write_idx(&data_dir, 10, 8, 12345);
    let data = format!("idx:{}", data_dir.display());
    let straight = tmp.path().join("straight");
    let split = tmp.path().join("split");
    let (s, p) = (straight.display().to_string(), split.display().to_string());
    let o = ddpm(&common(&data, &s, "6"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ddpm(&common(&data, &p, "3"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Without --resume an existing run is refused, not overwritten.
    let o = ddpm(&common(&data, &p, "6"));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    let o = ddpm(&["train", "--quiet", "--out", &p, "--steps", "6", "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        let a = std::fs::read(straight.join("checkpoints/step-00000006").join(f)).unwrap();
        let b = std::fs::read(split.join("checkpoints/step-00000006").join(f)).unwrap();
        assert!(
            a == b,
            "{f} differs between the straight and the resumed run"
        );
    }
    let grid = split.join("samples/step-00000006.png");
    assert!(grid.is_file());
    let log = std::fs::read_to_string(split.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6);
}

#[test]
fn bad_inputs_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run").display().to_string();
    let check = |args: &[&str], needle: &str| {
        let o = ddpm(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle),
            "{args:?}: expected `{needle}` in: {err}"
        );
    };
    // Missing dataset files.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    check(
        &[
            "train",
            "--data",
            &format!("idx:{}", empty.display()),
            "--out",
            &out,
        ],
        "train-images-idx3-ubyte",
    );
    // Truncated file.
    let trunc = tmp.path().join("trunc");
    write_idx(&trunc, 4, 8, 12345);
    let f = trunc.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    check(
        &[
            "train",
            "--data",
            &format!("idx:{}", trunc.display()),
            "--out",
            &out,
        ],
        "truncated",
    );
    // Wrong magic number.
    let mut bad = bytes.clone();
    bad[3] = 0x01;
    std::fs::write(&f, &bad).unwrap();
    check(
        &[
            "train",
            "--data",
            &format!("idx:{}", trunc.display()),
            "--out",
            &out,
        ],
        "wrong magic",
    );
    // Corrupt gzip.
    let gz = tmp.path().join("gz");
    std::fs::create_dir_all(&gz).unwrap();
    std::fs::write(
        gz.join("train-images-idx3-ubyte.gz"),
        [0x1f, 0x8b, 8, 0, 9, 9, 9],
    )
    .unwrap();
    check(
        &[
            "train",
            "--data",
            &format!("idx:{}", gz.display()),
            "--out",
            &out,
        ],
        "corrupt",
    );
    // Image size that does not fit the preset.
    let small = tmp.path().join("small");
    write_idx(&small, 4, 8, 12345);
    check(
        &[
            "train",
            "--data",
            &format!("idx:{}", small.display()),
            "--preset",
            "mnist",
            "--out",
            &out,
        ],
        "28×28",
    );
    // Unknown config key.
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "stpes = 10\n").unwrap();
    let o = ddpm(&["train", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stpes"));
    // Bad flag values exit 2 naming the flag.
    let o = ddpm(&["train", "--variance", "huge"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--variance"));
    let o = ddpm(&["train", "--grad-accum", "3", "--batch-size", "4"]);
    assert_eq!(o.status.code(), Some(2));
    // A checkpoint from another configuration.
    let data = format!("idx:{}", small.display());
    let run = tmp.path().join("r2").display().to_string();
    let o = ddpm(&[
        "train",
        "--quiet",
        "--data",
        &data,
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--timesteps",
        "50",
        "--sample-count",
        "1",
        "--sample-steps",
        "2",
        "--out",
        &run,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let other = tmp.path().join("other.toml");
    std::fs::write(&other, format!("data = \"{data}\"\npreset = \"tiny\"\nsteps = 2\nbatch_size = 2\ntimesteps = 50\nout = \"{run}\"\ndropout = 0.0\nvariance = \"learned-range\"\nloss = \"hybrid\"\n")).unwrap();
    check(
        &[
            "train",
            "--quiet",
            "--config",
            other.to_str().unwrap(),
            "--resume",
        ],
        "cannot change when a run is resumed",
    );
    // A non-finite loss stops the run and keeps the last good checkpoint.
    let nan_run = tmp.path().join("nan").display().to_string();
    let o = ddpm(&[
        "train",
        "--quiet",
        "--data",
        &data,
        "--preset",
        "tiny",
        "--steps",
        "5",
        "--batch-size",
        "2",
        "--timesteps",
        "50",
        "--lr",
        "1e30",
        "--warmup-steps",
        "0",
        "--grad-clip",
        "0",
        "--checkpoint-every",
        "1",
        "--out",
        &nan_run,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("non-finite loss") && err.contains("step-0000000"),
        "{err}"
    );
    assert!(
        Path::new(&nan_run)
            .join("checkpoints/step-00000001/state.json")
            .is_file()
    );
}

#[test]
fn sample_from_a_trained_checkpoint_with_every_sampler() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    write_idx(&data_dir, 8, 8, 12345);
    let data = format!("idx:{}", data_dir.display());
    let run = tmp.path().join("run").display().to_string();
    let o = ddpm(&[
        "train",
        "--quiet",
        "--data",
        &data,
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--timesteps",
        "40",
        "--sample-count",
        "1",
        "--sample-steps",
        "2",
        "--out",
        &run,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (sampler, steps) in [
        ("ddpm", "40"),
        ("ddpm", "10"),
        ("ddim", "5"),
        ("dpmpp2m", "5"),
    ] {
        let out = tmp.path().join(format!("s-{sampler}-{steps}"));
        let o = ddpm(&[
            "sample",
            "--quiet",
            "--checkpoint",
            &run,
            "--n",
            "5",
            "--batch-size",
            "3",
            "--sampler",
            sampler,
            "--steps",
            steps,
            "--out",
            out.to_str().unwrap(),
            "--save-chain",
            "--safetensors",
            "--seed",
            "3",
        ]);
        assert!(
            o.status.success(),
            "{sampler}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for f in [
            "grid.png",
            "chain.png",
            "samples.safetensors",
            "images/00000.png",
            "images/00004.png",
        ] {
            assert!(out.join(f).is_file(), "{sampler}: {f} missing");
        }
    }
    // Analytic-DPM variance on a respaced chain.
    let out = tmp.path().join("analytic");
    let o = ddpm(&[
        "sample",
        "--quiet",
        "--checkpoint",
        &run,
        "--n",
        "2",
        "--sampler",
        "ddpm",
        "--steps",
        "10",
        "--analytic-variance",
        "--analytic-images",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("grid.png").is_file());
    let o = ddpm(&[
        "sample",
        "--checkpoint",
        &run,
        "--sampler",
        "ddim",
        "--analytic-variance",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    // The denoising chain picture.
    let chain = tmp.path().join("chain.png");
    let o = ddpm(&[
        "plot",
        "chain",
        "--checkpoint",
        &run,
        "--steps",
        "40",
        "--n",
        "2",
        "--out",
        chain.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = image::open(&chain).unwrap();
    // 2 samples × (x_t, x̂0) rows of 10 steps of 8×8 images drawn 8× (64 / 8), 8-pixel gaps,
    // 90 px of row labels, 60 of title and column labels.
    assert_eq!(
        (png.width(), png.height()),
        (90 + 10 * (64 + 8) + 8, 60 + 4 * (64 + 8) + 8)
    );
    // The same seed reproduces the same images.
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    for d in [&a, &b] {
        let o = ddpm(&[
            "sample",
            "--quiet",
            "--checkpoint",
            &run,
            "--n",
            "2",
            "--sampler",
            "ddim",
            "--steps",
            "4",
            "--eta",
            "1",
            "--out",
            d.to_str().unwrap(),
        ]);
        assert!(o.status.success());
    }
    assert_eq!(
        std::fs::read(a.join("grid.png")).unwrap(),
        std::fs::read(b.join("grid.png")).unwrap()
    );
    // Bad input.
    let o = ddpm(&[
        "sample",
        "--checkpoint",
        tmp.path().join("nope").to_str().unwrap(),
        "--out",
        a.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--checkpoint"));
    let o = ddpm(&[
        "sample",
        "--checkpoint",
        &run,
        "--sampler",
        "euler",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = ddpm(&[
        "sample",
        "--checkpoint",
        &run,
        "--steps",
        "41",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn classifier_fd_and_its_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    write_idx(&data_dir, 20, 8, 12345);
    let mut labels = vec![];
    for x in [0x0801u32, 20] {
        labels.extend(x.to_be_bytes());
    }
    labels.extend((0..20u8).map(|i| i % 10));
    std::fs::write(data_dir.join("train-labels-idx1-ubyte"), labels).unwrap();
    let data = format!("idx:{}", data_dir.display());
    let cls = tmp.path().join("c.safetensors");
    let o = ddpm(&[
        "eval",
        "classifier-train",
        "--data",
        &data,
        "--batch-size",
        "8",
        "--out",
        cls.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = tmp.path().join("samples");
    std::fs::create_dir_all(&samples).unwrap();
    for i in 0..3u8 {
        image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y * i as u32) as u8]))
            .save(samples.join(format!("{i}.png")))
            .unwrap();
    }
    let fd = |s: &str| {
        ddpm(&[
            "eval",
            "fd",
            "--classifier",
            cls.to_str().unwrap(),
            "--samples",
            s,
            "--reference",
            &data,
            "--json",
        ])
    };
    let folder = format!("folder:{}", samples.display());
    let o = fd(&folder);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["fd"].as_f64().unwrap() >= -1e-9 && v["n_samples"] == 3);
    // Too few samples for a full-rank covariance: a warning, not silence.
    assert!(String::from_utf8_lossy(&o.stderr).contains("rank-deficient"));
    // The same set against itself is at distance 0.
    let o = fd(&data);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["fd"].as_f64().unwrap().abs() < 1e-6, "{v}");
    // Mixed sizes and non-image files are refused.
    image::GrayImage::new(10, 10)
        .save(samples.join("big.png"))
        .unwrap();
    let o = fd(&folder);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mixed sizes"));
    std::fs::remove_file(samples.join("big.png")).unwrap();
    std::fs::write(samples.join("notes.txt"), "x").unwrap();
    let o = fd(&folder);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an image"));
    // A weights file of the wrong kind.
    let o = ddpm(&[
        "eval",
        "fd",
        "--classifier",
        data_dir.join("train-labels-idx1-ubyte").to_str().unwrap(),
        "--samples",
        &folder,
        "--reference",
        &data,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--judge"));
}

/// `--precision bf16`: the tiny U-Net trains in bfloat16 with f32 master weights; the run records
/// the setting, logs finite losses and writes its checkpoints and samples; a bad value is named.
#[test]
fn bf16_mixed_precision_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    write_idx(&data_dir, 10, 8, 12345);
    let data = format!("idx:{}", data_dir.display());
    let run = tmp.path().join("bf16");
    let r = run.display().to_string();
    let mut args = common(&data, &r, "3");
    args.extend(["--precision", "bf16"]);
    let o = ddpm(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("precision = \"bf16\""), "{config}");
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 3, "{log}");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    let mut bad = common(&data, &tmp.path().join("bad").display().to_string(), "3")
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    bad.extend(["--precision".into(), "fp8".into()]);
    let o = ddpm(&bad.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--precision") && err.contains("fp8"), "{err}");
}
